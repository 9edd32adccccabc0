"""The agent loop's own rules: hook verdicts, history sent back to the model, format errors, resume."""
from __future__ import annotations

import json

import pytest

from actions.types import Click, Point
from agent.models.vllm import EncoderCacheTooSmall, VLLMClient
from agent.hooks import AgentHooks, HookDecision
from agent.loop import Agent, AgentConfig
from agent.trajectory import read_info, read_trajectory
from tests.e2e_support import DONE, kimi_reply
from tests.fault_server import MemoryDesktop
from envs.base import ActionResult
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


def test_after_a_skip_the_next_prompt_says_the_action_did_not_run(tmp_path):
    with LoopbackServer([CLICK, DONE]) as server:
        run(server, tmp_path, hooks=Verdict(HookDecision(verdict="skip")))
        last = server.requests[1]["messages"][-1]["content"][-1]["text"]
    assert "Your previous action (click (320, 100)) was skipped by the user and did not run." in last


def test_a_stop_records_the_step_then_ends_the_run(tmp_path):
    with LoopbackServer([CLICK, DONE]) as server:
        _, desktop, result = run(server, tmp_path, hooks=Verdict(HookDecision(verdict="stop", reason="enough")))
    assert result.status == "stopped" and result.error == "enough" and desktop.executed == []
    steps = read_trajectory(tmp_path / "run")
    assert len(steps) == 1 and steps[0].stopped == "enough" and steps[0].result.skipped
    assert read_info(tmp_path / "run").status == "stopped"


def test_a_retry_hint_and_the_discarded_answer_are_recorded_in_the_step(tmp_path):
    class RetryOnce(AgentHooks):
        asked = 0

        def before_action(self, context):
            self.asked += 1
            if self.asked == 1:
                return HookDecision(verdict="retry", hint="the button is at the top", reason="asked again")
            return None

    other = kimi_reply("Click the top.", "pyautogui.click(x=0.5, y=0.1)")
    with LoopbackServer([CLICK, other, DONE]) as server:
        _, desktop, result = run(server, tmp_path, hooks=RetryOnce())
        second = json.dumps(server.requests[1])
    assert result.status == "done" and desktop.executed == [Click(at=Point(x=320, y=40))]
    assert "Hint from the user: the button is at the top" in second
    first = read_trajectory(tmp_path / "run")[0]
    assert len(first.retries) == 1
    retry = first.retries[0]
    assert (retry.hint, retry.reason) == ("the button is at the top", "asked again")
    assert retry.actions == [Click(at=Point(x=320, y=100))] and "Click the middle." in retry.summary
    assert first.action == Click(at=Point(x=320, y=40)) and not read_trajectory(tmp_path / "run")[1].retries


def test_the_first_step_after_a_resume_is_marked(tmp_path):
    with LoopbackServer([CLICK, DONE]) as server:
        run(server, tmp_path, hooks=Verdict(HookDecision(verdict="stop", reason="enough")))
    with LoopbackServer([CLICK, DONE]) as server:
        agent = Agent(MemoryDesktop(640, 400), VLLMClient(server.base_url, retries=0),
                      AgentConfig(max_steps=5, out_dir=tmp_path / "run"))
        result = agent.run("click the middle, then finish", resume=True)
    steps = read_trajectory(tmp_path / "run")
    assert result.status == "done" and [s.step for s in steps] == [1, 2, 3]
    assert [s.resumed for s in steps] == [False, True, False]
    assert read_info(tmp_path / "run").steps == 3 == result.steps


def test_run_json_counts_the_recorded_steps_after_an_interrupt(tmp_path):
    class CtrlC(AgentHooks):
        def before_action(self, context):
            if context.step == 2:
                raise KeyboardInterrupt  # the second Ctrl-C: stop at once, the step in flight is not recorded
            return None

    with LoopbackServer([CLICK, CLICK, DONE]) as server:
        with pytest.raises(KeyboardInterrupt):
            run(server, tmp_path, hooks=CtrlC())
    info = read_info(tmp_path / "run")
    assert info.status == "stopped" and info.error == "interrupted"
    assert info.steps == len(read_trajectory(tmp_path / "run")) == 1


def test_a_steps_settle_time_is_recorded_under_that_step(tmp_path):
    class Settling(MemoryDesktop):
        def __init__(self):
            super().__init__(640, 400)
            self.settles = iter([111.0, 222.0])

        def execute(self, action):
            super().execute(action)
            return ActionResult(settle_ms=next(self.settles))

        def observe(self):  # like LocalDesktop: the next observation carries the wait that preceded it
            observation = super().observe()
            return observation.model_copy(update={"timings_ms": {"grab": 0.0, "settle": 999.0, "encode": 1.0}})

    with LoopbackServer([CLICK, CLICK, DONE]) as server:
        agent = Agent(Settling(), VLLMClient(server.base_url, retries=0),
                      AgentConfig(max_steps=5, out_dir=tmp_path / "run"))
        agent.run("click twice")
    steps = read_trajectory(tmp_path / "run")
    assert [s.timings.get("settle_ms") for s in steps] == [111.0, 222.0, None]
    assert all("settle" not in s.timings for s in steps)


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


# ---- what the server refuses or cuts short, in a run (issue 14) ----------------------------------------------------
def big_run(server, tmp_path, *, max_steps=10, **config):
    """A run on a 1920x1080 desktop (2,695 tokens a screenshot) whose budget believes in a 128K context."""
    desktop = MemoryDesktop(1920, 1080)
    client = VLLMClient(server.base_url, retries=0)
    config = {"max_context": 131072, **config}
    agent = Agent(desktop, client, AgentConfig(max_steps=max_steps, out_dir=tmp_path / "run", **config))
    return agent, desktop, agent.run("click the middle, then finish")


@pytest.mark.parametrize("version, wording", [
    ("0.32", "Input length"),  # screenshots push the prompt over max_model_len
    ("0.9", "in the messages"),  # prompt + max_tokens over max_model_len
])
def test_an_overflow_refusal_trims_harder_and_the_run_goes_on(tmp_path, version, wording):
    with LoopbackServer([CLICK] * 6 + [DONE], max_model_len=16384, vllm_version=version) as server:
        _, desktop, result = big_run(server, tmp_path)
        refusals = list(server.refusals)
    assert result.status == "done" and len(desktop.executed) == 6
    assert len(refusals) == 1 and wording in refusals[0]
    steps = read_trajectory(tmp_path / "run")
    [refused] = [s for s in steps if s.budget["retried_after_refusal"]]
    assert any("refused for length; trimmed harder and retried" in n for n in refused.notes)
    assert refused.budget["max_model_len"] == 16384 and refused.budget["refusal"] == refusals[0]
    later = steps[steps.index(refused) + 1:]
    assert later and all(s.usage.prompt_tokens + 8192 <= 16384 for s in later)  # the reply reserve is there


def test_a_reply_clamped_inside_its_thinking_tightens_the_budget_and_is_asked_again(tmp_path):
    long_thinking = "◁think▷" + "hmm " * 8000  # ~10,700 tokens: more than the room left at step 3
    with LoopbackServer([CLICK, CLICK, long_thinking, CLICK, DONE], max_model_len=16384) as server:
        _, desktop, result = big_run(server, tmp_path)
        requests, clamps, refusals = server.requests, list(server.clamps), list(server.refusals)
    assert result.status == "done" and len(desktop.executed) == 3 and refusals == []
    assert len(clamps) == 1 and clamps[0]["prompt_tokens"] + clamps[0]["room"] == 16384
    third = read_trajectory(tmp_path / "run")[2]
    assert third.parse_error is None and third.actions  # the answer asked for again was used
    assert third.budget["reply_clamped"] == (f"{clamps[0]['room']} of max_tokens=8192 tokens after a "
                                             f"{clamps[0]['prompt_tokens']}-token prompt")
    assert third.budget["retried_after_refusal"] and "reply clamped" in third.budget["refusal"]
    assert any("clamped the reply" in n for n in third.notes) and any("asked again once" in n for n in third.notes)
    assert len(requests) == 5 and "cut off" in json.dumps(requests[3]["messages"][-1])
    assert image_count(requests[3]) < image_count(requests[2])  # trimmed before asking again


def image_count(request: dict) -> int:
    return sum(1 for m in request["messages"] if isinstance(m["content"], list)
               for part in m["content"] if part.get("type") == "image_url")


def test_a_screenshot_over_the_encoder_cache_ends_the_run_with_the_fix_and_no_retry(tmp_path):
    with LoopbackServer([CLICK, DONE], encoder_cache_size=2048) as server:
        with pytest.raises(EncoderCacheTooSmall, match="--max-num-batched-tokens >= 2691"):
            big_run(server, tmp_path)
        assert len(server.requests) == 1
    info = read_info(tmp_path / "run")
    assert info.status == "error" and "--max-num-batched-tokens >= 2691" in info.error


def test_max_tokens_lowered_by_the_client_is_noted_in_the_step(tmp_path):
    with LoopbackServer([CLICK, DONE], max_model_len=4096) as server:
        _, _, result = run(server, tmp_path, reply_reserve=1024)  # max_tokens stays the variant's 8192
        asked = [r["max_tokens"] for r in server.requests]
    assert result.status == "done" and asked == [8192, 2048, 2048]
    first, second = read_trajectory(tmp_path / "run")
    assert any("max_model_len=4096" in n and "max_tokens=2048" in n for n in first.notes)
    assert not any("max_tokens=2048" in n for n in second.notes)


def test_the_thinking_is_stored_once_per_step(tmp_path):
    with LoopbackServer([CLICK, DONE]) as server:
        run(server, tmp_path)
    line = json.loads((tmp_path / "run" / "trajectory.jsonl").read_text(encoding="utf-8").splitlines()[0])
    thinking = "Let me look at the screen. Maybe click(x=0.99, y=0.99)? No, that is the corner."
    assert line["response"] == CLICK and line["thinking"] is None  # once, inside the raw response
    assert json.dumps(line, ensure_ascii=False).count(thinking) == 1
    assert read_trajectory(tmp_path / "run")[0].thinking == thinking  # read back whole
