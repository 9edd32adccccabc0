"""Verified completion (--verify-done) and the loop guard's tiers against the REAL vLLM (the session server,
tests/real_vllm.py: tiny random-weight Kimi-VL, max_model_len 4096, in_token_limit 4096).

Every reply is scripted through vLLM's own structured outputs (``structured_outputs: {"choice": [TEXT]}``, as in
tests/agent_real_vllm_driver.py), so each request with its screenshots, each reply and its usage go through the real
server; the script picks TEXT from the request itself. The desktop is in memory (tests.fault_server.MemoryDesktop):
nothing here needs a display.

- a DONE overturned by the check, then the run finishing (the scenario of tests/verify_support.py: the checker's
  answer depends on the colour of the screenshot it was really sent);
- each loop shape (the scenarios of tests/safety/test_loop_guard.py) detected, noted, noted harder, and stopped.
"""
from __future__ import annotations

from typing import Any

import pytest

from agent.loop import Agent, AgentConfig
from agent.models.vllm import VLLMClient
from agent.reply import ModelReply
from agent.safety.loop_guard import LoopGuard
from agent.trajectory import read_trajectory
from tests.e2e_support import kimi_reply
from tests.fault_server import MemoryDesktop
from tests.safety.test_loop_guard import SCENARIOS, check_tiers, step_of
from tests.verify_support import TASK, answer, check_run, is_check, paint_blue


class ScriptedVLLM(VLLMClient):
    """The real client; each request constrained to the one reply ``script(messages)`` gives."""

    def __init__(self, base_url: str, script, **kwargs: Any) -> None:
        super().__init__(base_url, retries=3, backoff=0.2, timeout=300, **kwargs)
        self.script = script
        self.sent: list[list[dict[str, Any]]] = []
        self.replies: list[ModelReply] = []

    def complete(self, messages, **kwargs: Any) -> ModelReply:  # type: ignore[override]
        text = self.script(messages)
        extra = {**(kwargs.pop("extra", None) or {}), "structured_outputs": {"choice": [text]}}
        reply = super().complete(messages, extra=extra, **kwargs)
        assert reply.text == text, (reply.text, text)  # the scripted reply, whole
        self.sent.append(messages)
        self.replies.append(reply)
        return reply


def config(real_vllm, out, images: int = 2, **extra) -> AgentConfig:
    # few screenshots a request and a 512-token reply keep every prompt well inside the server's 4096 tokens
    return AgentConfig(max_steps=12, out_dir=out, stream=False, max_images=images, max_tokens=512,
                       model_dir=real_vllm.model_dir, **extra)


def brief(text: str) -> str:
    """The scenario's reply with a one-word thinking: fewer tokens for the CPU to generate (~2x faster)."""
    return text.replace(kimi_reply("", "").split("◁/think▷")[0], "◁think▷OK.")


def test_a_done_overturned_by_the_check_then_the_run_finishes(real_vllm, tmp_path):
    client = ScriptedVLLM(real_vllm.base_url, answer)
    desktop = MemoryDesktop(640, 400, on_execute=paint_blue)
    try:
        result = Agent(desktop, client, config(real_vllm, tmp_path / "run", verify_done=True)).run(TASK)
    finally:
        client.close()
    steps = read_trajectory(tmp_path / "run")
    check_run(result, steps, tmp_path / "run", [m for m in client.sent if is_check(m)])
    # the checks' usage is the real server's: one screenshot and a short text, far below a step's prompt
    checks = [s.verification for s in (steps[0], steps[2])]
    assert all(0 < v.usage.prompt_tokens < steps[2].usage.prompt_tokens for v in checks)


# One shape against the real server (the guard is client-side logic: every shape, each tier, runs against the
# loopback in tests/safety/test_loop_guard.py); the others would add ~30 CPU-decoded requests to the suite.
@pytest.mark.parametrize("shape", ["alternate"])
def test_each_loop_shape_is_noted_noted_harder_and_stopped(real_vllm, tmp_path, shape):
    reply, on_execute = SCENARIOS[shape]
    client = ScriptedVLLM(real_vllm.base_url, lambda messages: brief(reply(step_of(messages))))
    desktop = MemoryDesktop(640, 400, on_execute=on_execute)
    try:
        result = Agent(desktop, client, config(real_vllm, tmp_path / shape, images=1),
                       hooks=LoopGuard()).run("do the task")
    finally:
        client.close()
    steps = read_trajectory(tmp_path / shape)
    noted_at, counts = {"repeat": (3, (3, 4, 5)), "alternate": (4, (4, 5, 6)), "no_change": (4, (3, 4, 5)),
                        "retype": (3, (2, 3, 4))}[shape]
    check_tiers(shape, result, steps, [{"messages": m} for m in client.sent], noted_at=noted_at, counts=counts)
