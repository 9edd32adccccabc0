"""The agent loop's own rules: hook verdicts, history sent back to the model, format errors, resume."""
from __future__ import annotations

import json

import pytest

from actions.types import Click, Point
from agent.models.vllm import VLLMClient
from agent.hooks import AgentHooks, HookDecision
from agent.loop import Agent, AgentConfig
from agent.trajectory import read_info, read_trajectory
from tests.e2e_support import DONE, kimi_reply
from tests.fault_server import MemoryDesktop
from tests.loopback import LoopbackServer

CLICK = kimi_reply("Click the middle.", "pyautogui.click(x=0.5, y=0.25)")


def run(server, tmp_path, hooks=None, max_steps=5, **config):
    desktop = MemoryDesktop(640, 400)
    client = VLLMClient(server.base_url, retries=0)
    agent = Agent(desktop, client, AgentConfig(max_steps=max_steps, out_dir=tmp_path / "run", **config), hooks=hooks)
    return agent, desktop, agent.run("click the middle, then finish")


class Verdict(AgentHooks):
    def __init__(self, decision: HookDecision) -> None:
        self.decision = decision

    def before_action(self, context):
        return self.decision if context.step == 1 else None


def test_normalized_points_become_screen_pixels_of_the_observed_monitor(tmp_path):
    with LoopbackServer([CLICK, DONE]) as server:
        _, desktop, result = run(server, tmp_path)
    assert result.status == "done" and result.steps == 2
    assert desktop.executed == [Click(at=Point(x=320, y=100))]
    steps = read_trajectory(tmp_path / "run")
    assert steps[0].action == Click(at=Point(x=320, y=100))
    assert steps[0].monitor is not None and steps[0].monitor.width == 640
    assert read_info(tmp_path / "run").status == "done"


def test_an_approval_with_a_reason_executes_and_is_noted(tmp_path):
    hook = Verdict(HookDecision(verdict="execute", reason="confirmed by the user"))
    with LoopbackServer([CLICK, DONE]) as server:
        _, desktop, result = run(server, tmp_path, hooks=hook)
    assert result.status == "done" and len(desktop.executed) == 1
    assert "execute: confirmed by the user" in read_trajectory(tmp_path / "run")[0].notes


def test_a_replaced_action_runs_instead_and_is_marked_as_the_users(tmp_path):
    other = Click(at=Point(x=10, y=20), button="right")
    with LoopbackServer([CLICK, DONE]) as server:
        _, desktop, _ = run(server, tmp_path, hooks=Verdict(HookDecision(verdict="replace", actions=[other])))
    assert desktop.executed == [other]
    assert read_trajectory(tmp_path / "run")[0].decided_by == "user"


def test_a_skipped_step_runs_nothing_and_says_so(tmp_path):
    with LoopbackServer([CLICK, DONE]) as server:
        _, desktop, result = run(server, tmp_path, hooks=Verdict(HookDecision(verdict="skip")))
    assert desktop.executed == [] and result.status == "done"
    assert read_trajectory(tmp_path / "run")[0].result.skipped


def test_a_stop_records_the_step_then_ends_the_run(tmp_path):
    with LoopbackServer([CLICK, DONE]) as server:
        _, desktop, result = run(server, tmp_path, hooks=Verdict(HookDecision(verdict="stop", reason="enough")))
    assert result.status == "stopped" and result.error == "enough" and desktop.executed == []
    assert len(read_trajectory(tmp_path / "run")) == 1
    assert read_info(tmp_path / "run").status == "stopped"


def test_earlier_turns_go_back_as_summaries_without_thinking(tmp_path):
    with LoopbackServer([CLICK, DONE]) as server:
        run(server, tmp_path)
        second = server.requests[1]
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assistant = second["messages"][2]["content"]
    text = assistant if isinstance(assistant, str) else json.dumps(assistant)
    assert "pyautogui.click(x=0.5, y=0.25)" in text and "◁think▷" not in text and "corner" not in text


def test_an_unparseable_answer_is_fed_back_and_too_many_fail_the_run(tmp_path):
    garbage = "◁think▷hmm◁/think▷I would click somewhere nice."
    with LoopbackServer([garbage] * 3) as server:
        _, desktop, result = run(server, tmp_path, max_format_errors=3)
        last = json.dumps(server.requests[-1]["messages"][-1])
    assert result.status == "fail" and "could not be parsed" in result.error and desktop.executed == []
    assert "could not be used" in last
    assert all(s.parse_error for s in read_trajectory(tmp_path / "run"))


def test_a_reply_cut_off_in_its_thinking_is_asked_again_once(tmp_path):
    cut = "◁think▷" + "very long thinking " * 5
    with LoopbackServer([cut, CLICK, DONE]) as server:
        _, desktop, result = run(server, tmp_path)
    assert result.status == "done" and len(desktop.executed) == 1
    assert any("cut off" in n for n in read_trajectory(tmp_path / "run")[0].notes)


def test_resume_continues_after_the_last_recorded_step(tmp_path):
    with LoopbackServer([CLICK, CLICK]) as server:
        _, _, first = run(server, tmp_path, max_steps=2)
    assert first.status == "max_steps"
    with LoopbackServer([DONE]) as server:
        desktop = MemoryDesktop(640, 400)
        agent = Agent(desktop, VLLMClient(server.base_url, retries=0),
                      AgentConfig(max_steps=5, out_dir=tmp_path / "run"))
        result = agent.run("click the middle, then finish", resume=True)
        request = server.requests[0]
    assert result.status == "done" and [s.step for s in read_trajectory(tmp_path / "run")] == [1, 2, 3]
    assert [m["role"] for m in request["messages"]].count("assistant") == 2  # both earlier turns came back


def test_a_second_run_into_a_used_directory_is_refused(tmp_path):
    with LoopbackServer([DONE, DONE]) as server:
        run(server, tmp_path)
        with pytest.raises(FileExistsError, match="--resume"):
            run(server, tmp_path)
