"""The loop guard with tiers (agent/safety/loop_guard.py): each loop shape detected, noted, noted harder, stopped.

Whole runs of the agent loop against the loopback server with scripted replies (the reply is chosen from the step
number in the request, so the answer asked again after a note is the same loop) on an in-memory desktop whose
screen the scenario changes (or not) per action. The same shapes against the real vLLM: tests/test_verify_done_real_vllm.py.
"""
from __future__ import annotations

import json
import re

from actions.types import Click, Point, Press, TypeText
from agent.debug.report import build_report
from agent.hooks import StepContext
from agent.models.vllm import VLLMClient
from agent.loop import Agent, AgentConfig
from agent.safety.guards import add_guard_arguments, guard_hooks
from agent.safety.loop_guard import LoopGuard, LoopGuardConfig
from agent.trajectory import StepRecord, read_info, read_trajectory
from envs.base import ActionResult
from tests.e2e_support import kimi_reply
from tests.fault_server import MemoryDesktop
from tests.loopback import LoopbackServer

_STEP = re.compile(r"Step (\d+) of at most \d+")


def step_of(messages) -> int:
    for message in reversed(messages):
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or []
                                                            if isinstance(p, dict)]
        for text in reversed(parts):
            if m := _STEP.search(text or ""):
                return int(m.group(1))
    raise AssertionError("no step prompt in the request")


def click(x: float, y: float) -> str:
    return kimi_reply(f"Click at {x}, {y}.", f"pyautogui.click(x={x}, y={y})")


WRITE = kimi_reply("Type hello.", "pyautogui.write('hello')")
ENTER = kimi_reply("Send it.", "pyautogui.press('enter')")

# shape -> (reply for step N, what an action does to the screen)
SCENARIOS = {
    # the same click, the screen never changes
    "repeat": (lambda n: click(0.5, 0.5), None),
    # A opens something (the screen turns blue), B closes it (white again)
    "alternate": (lambda n: click(0.2, 0.2) if n % 2 else click(0.8, 0.8),
                  lambda d, a: setattr(d, "image", d.paint("blue" if a.at.x < 320 else "white"))),
    # a different click every step, none changes anything
    "no_change": (lambda n: click(round(0.1 * n, 2), 0.3), None),
    # type hello, send it, type hello again ... (every action changes the screen)
    "retype": (lambda n: WRITE if n % 2 else ENTER,
               lambda d, a: setattr(d, "image", d.paint(f"#{(len(d.executed) * 40) % 256:02x}80c0"))),
}


def run_shape(shape: str, tmp_path, max_steps: int = 12):
    reply, on_execute = SCENARIOS[shape]
    desktop = MemoryDesktop(640, 400, on_execute=on_execute)
    with LoopbackServer(lambda body: reply(step_of(body["messages"]))) as server:
        client = VLLMClient(server.base_url, retries=0)
        agent = Agent(desktop, client, AgentConfig(max_steps=max_steps, out_dir=tmp_path / shape, stream=False),
                      hooks=LoopGuard())
        result = agent.run("do the task")
        requests = list(server.requests)
    return result, desktop, read_trajectory(tmp_path / shape), requests


def prompt_text(request) -> str:
    return json.dumps(request["messages"][-1]["content"])


def check_tiers(shape, result, steps, requests, noted_at: int, counts: tuple[int, int, int]):
    """Note at step ``noted_at``, a stronger note at the next step of the loop, then the stop."""
    events = [(s.step, e.shape, e.tier, e.count) for s in steps for e in s.loop_guard]
    assert [(shape, tier) for _, shape_, tier, _ in events for _ in [0] if shape_ == shape] == \
        [(shape, 1), (shape, 2), (shape, 3)], events
    assert [c for _, s_, _, c in events if s_ == shape] == list(counts), events
    assert all(s_ == shape for _, s_, _, _ in events), events  # no other shape fired
    by_step = {s.step: s for s in steps}
    note, strong, stop = [e for s in steps for e in s.loop_guard]
    first = by_step[noted_at]
    assert first.retries and first.retries[0].hint == note.message and note.message.startswith("Loop detected")
    assert "SECOND LOOP WARNING" in strong.message and "will be stopped" in strong.message
    # the model was asked again with each note in its prompt
    assert sum(note.message in prompt_text(r) for r in requests) == 1
    assert sum(strong.message in prompt_text(r) for r in requests) == 1
    # the stop: nothing of that step ran, the run says why
    last = steps[-1]
    assert last.stopped == stop.message and last.result.skipped and not last.results
    assert result.status == "stopped" and result.error == stop.message
    assert stop.message.startswith(f"loop guard ({shape}): ") and stop.message.endswith("after two notes")
    info = read_info(result.out_dir)
    assert info.status == "stopped" and info.error.startswith(f"loop guard ({shape})")
    return note, strong, stop


def test_the_same_action_on_an_unchanged_screen(tmp_path):
    result, desktop, steps, requests = run_shape("repeat", tmp_path)
    note, strong, stop = check_tiers("repeat", result, steps, requests, noted_at=3, counts=(3, 4, 5))
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    assert desktop.executed == [Click(at=Point(x=320, y=200))] * 4  # steps 1-4 ran (after each note, the answer)
    assert "you have done 'click (320, 200)' 3 times in a row and the screen did not change" in note.message
    page = build_report(result.out_dir)
    assert "loop guard" in page and "SECOND LOOP WARNING" in page and "note 1" in page and "stop" in page


def test_alternating_between_two_actions(tmp_path):
    result, desktop, steps, requests = run_shape("alternate", tmp_path)
    note, strong, stop = check_tiers("alternate", result, steps, requests, noted_at=4, counts=(4, 5, 6))
    assert len(desktop.executed) == 5
    assert "alternating between 'click (128, 80)' and 'click (512, 320)' for 4 steps" in note.message


def test_actions_that_change_nothing(tmp_path):
    result, desktop, steps, requests = run_shape("no_change", tmp_path)
    note, strong, stop = check_tiers("no_change", result, steps, requests, noted_at=4, counts=(3, 4, 5))
    assert len(desktop.executed) == 5 and len({a.at.x for a in desktop.executed}) == 5  # all different
    assert note.message.startswith("Loop detected: your last 3 actions changed nothing on the screen")


def test_the_same_text_typed_again(tmp_path):
    result, desktop, steps, requests = run_shape("retype", tmp_path)
    note, strong, stop = check_tiers("retype", result, steps, requests, noted_at=3, counts=(2, 3, 4))
    assert [s.step for s in steps if s.loop_guard] == [3, 5, 7]  # the loop goes on every other step
    assert desktop.executed.count(TypeText(text="hello")) == 3 and Press(key="enter") in desktop.executed
    assert "you are typing 'hello' again (2 times now)" in note.message


def test_progress_is_never_a_loop(tmp_path):
    """Different actions that each change the screen: nothing to say."""
    replies = lambda n: click(round(0.05 * n, 2), 0.5)  # noqa: E731
    desktop = MemoryDesktop(640, 400, on_execute=lambda d, a: setattr(d, "image", d.paint(f"#{len(d.executed):02x}0000")))
    with LoopbackServer(lambda body: replies(step_of(body["messages"]))) as server:
        agent = Agent(desktop, VLLMClient(server.base_url, retries=0),
                      AgentConfig(max_steps=8, out_dir=tmp_path / "run", stream=False), hooks=LoopGuard())
        result = agent.run("do the task")
    assert result.status == "max_steps" and len(desktop.executed) == 8
    assert not any(s.loop_guard or s.retries for s in read_trajectory(tmp_path / "run"))


def _context(desktop, action, step):
    return StepContext(step=step, max_steps=20, observation=desktop.observe(), reply=None, actions=[action])


def _ran(guard, desktop, action, step, *, skipped=False):
    decision = guard.before_action(_context(desktop, action, step))
    if decision is None or decision.verdict == "execute":
        guard.on_step_end(StepRecord(step=step, screenshot="s.png", image_width=1, image_height=1, actions=[action],
                                     result=ActionResult(skipped=skipped)))
    return decision


def test_a_skipped_step_does_not_count_and_a_change_breaks_the_loop():
    guard = LoopGuard(LoopGuardConfig(repeat_after=3, no_change_after=5))
    desktop = MemoryDesktop()
    same = Click(at=Point(x=100, y=100))
    assert _ran(guard, desktop, same, 1) is None
    assert _ran(guard, desktop, same, 2, skipped=True) is None  # the user skipped it: not a repeat
    assert _ran(guard, desktop, same, 3) is None
    assert _ran(guard, desktop, same, 4).loop.tier == 1
    desktop.image = desktop.paint("red")  # the retried answer changed the screen
    assert _ran(guard, desktop, same, 5) is None


def test_the_cli_installs_the_loop_guard_and_stuck_after_sets_its_repeat_count():
    import argparse

    parser = argparse.ArgumentParser()
    add_guard_arguments(parser)
    _, hooks = guard_hooks(parser.parse_args(["--stuck-after", "4", "--no-safety"]))
    guard = hooks[-1]
    assert isinstance(guard, LoopGuard) and guard.config.repeat_after == 4
    _, hooks = guard_hooks(parser.parse_args(["--stuck-after", "0", "--no-safety"]))
    assert not any(isinstance(h, LoopGuard) for h in hooks)
