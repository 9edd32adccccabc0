"""The kill switch (stop file, signals, fail-safe) and the stuck-loop detector, alone and inside a run."""
from __future__ import annotations

import argparse
import json
import os
import signal

import pytest

from actions.types import Click, Point, TypeText, Wait
from agent.models.vllm import VLLMClient
from agent.safety.guards import KillSwitch, StuckConfig, StuckDetector, add_guard_arguments, guard_hooks
from agent.hooks import HookChain, StepContext
from agent.loop import Agent, AgentConfig
from agent.safety.policy import SafetyConfigError, SafetyPolicy
from agent.trajectory import StepRecord, read_info, read_trajectory
from envs.base import ActionResult
from tests.e2e_support import kimi_reply
from tests.fault_server import MemoryDesktop
from tests.loopback import LoopbackServer

WAIT = kimi_reply("Wait.", "computer.wait(seconds=0)")
CLICK = kimi_reply("Click the button.", "pyautogui.click(x=0.5, y=0.5)")


def run(desktop, server, tmp_path, hooks, max_steps=6):
    client = VLLMClient(server.base_url, retries=0)
    return Agent(desktop, client, AgentConfig(max_steps=max_steps, out_dir=tmp_path / "run", stream=False),
                 hooks=hooks).run("anything")


def context(desktop: MemoryDesktop, *actions, step: int = 1) -> StepContext:
    return StepContext(step=step, max_steps=10, observation=desktop.observe(), reply=None, actions=list(actions))


# ---- kill switch ------------------------------------------------------------------------------------------
def test_the_stop_file_stops_before_the_next_action(tmp_path):
    stop = tmp_path / "STOP"
    switch = KillSwitch(stop_file=stop)
    desktop = MemoryDesktop()
    assert switch.before_action(context(desktop, Click(at=Point(x=1, y=1)))) is None
    stop.touch()
    decision = switch.before_action(context(desktop, Click(at=Point(x=1, y=1))))
    assert decision.verdict == "stop" and str(stop) in decision.reason


def test_a_run_stops_cleanly_when_the_stop_file_appears(tmp_path):
    stop = tmp_path / "STOP"
    desktop = MemoryDesktop(on_execute=lambda d, a: stop.touch() if len(d.executed) == 2 else None)
    with LoopbackServer([WAIT] * 10) as server:
        result = run(desktop, server, tmp_path, KillSwitch(stop_file=stop))
    assert result.status == "stopped" and "stop file" in result.error
    steps = read_trajectory(tmp_path / "run")
    assert [s.step for s in steps] == [1, 2, 3]
    assert steps[2].results == [] and any("kill switch" in n for n in steps[2].notes)
    assert len(desktop.executed) == 2
    assert read_info(tmp_path / "run").status == "stopped"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_ends_the_run_between_actions(tmp_path, sig):
    desktop = MemoryDesktop(on_execute=lambda d, a: os.kill(os.getpid(), sig) if len(d.executed) == 1 else None)
    switch = KillSwitch()
    with LoopbackServer([WAIT] * 10) as server, switch.installed():
        result = run(desktop, server, tmp_path, switch)
    assert result.status == "stopped" and signal.Signals(sig).name in result.error
    assert len(read_trajectory(tmp_path / "run")) == 2 and len(desktop.executed) == 1


def test_a_second_interrupt_does_not_wait_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    switch = KillSwitch()
    with switch.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert switch.requested == "SIGINT received"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_the_pyautogui_fail_safe_stops_the_run_at_the_next_decision():
    switch = KillSwitch()
    failed = ActionResult(ok=False, error="pyautogui's fail-safe fired because the pointer is in a screen corner")
    switch.on_step_end(StepRecord(step=1, screenshot="s.png", image_width=1, image_height=1, results=[failed]))
    decision = switch.before_action(context(MemoryDesktop(), Wait(seconds=0)))
    assert decision.verdict == "stop" and "fail-safe" in decision.reason


def test_an_ordinary_failed_action_does_not_stop_the_run():
    switch = KillSwitch()
    failed = ActionResult(ok=False, error="unknown key 'hyper'")
    switch.on_step_end(StepRecord(step=1, screenshot="s.png", image_width=1, image_height=1, results=[failed]))
    assert switch.before_action(context(MemoryDesktop(), Wait(seconds=0))) is None


# ---- stuck loops ------------------------------------------------------------------------------------------
def decide(stuck: StuckDetector, desktop: MemoryDesktop, action, step: int, executed: bool = True):
    """One decision as the loop makes it: before_action, then (when approved) the step's record."""
    decision = stuck.before_action(context(desktop, action, step=step))
    if decision is None:
        stuck.on_step_end(StepRecord(step=step, screenshot="s.png", image_width=1, image_height=1,
                                     actions=[action], result=ActionResult(skipped=not executed)))
    return decision


def test_the_same_action_on_an_unchanged_screen_is_nudged_then_stopped():
    desktop = MemoryDesktop()
    stuck = StuckDetector(StuckConfig(after=3))
    click = Click(at=Point(x=100, y=100))
    assert decide(stuck, desktop, click, 1) is None
    assert decide(stuck, desktop, Click(at=Point(x=103, y=98)), 2) is None  # jitter
    nudge = decide(stuck, desktop, click, 3)
    assert nudge.verdict == "retry" and "3 times" in nudge.hint and "did not change" in nudge.hint
    stop = decide(stuck, desktop, click, 3)
    assert stop.verdict == "stop" and "even after a nudge" in stop.reason


def test_skipped_steps_and_waits_do_not_count_as_repeats():
    desktop = MemoryDesktop()
    stuck = StuckDetector(StuckConfig(after=2))
    click = Click(at=Point(x=100, y=100))
    assert decide(stuck, desktop, click, 1, executed=False) is None  # the user skipped it in the debugger
    assert decide(stuck, desktop, click, 2) is None
    assert decide(stuck, desktop, Wait(seconds=1), 3) is None
    assert decide(stuck, desktop, Wait(seconds=1), 4) is None
    assert decide(stuck, desktop, click, 5).verdict == "retry"


def test_a_different_action_after_the_nudge_resets_the_count():
    desktop = MemoryDesktop()
    stuck = StuckDetector(StuckConfig(after=2))
    click = Click(at=Point(x=100, y=100))
    decide(stuck, desktop, click, 1)
    assert decide(stuck, desktop, click, 2).verdict == "retry"
    assert decide(stuck, desktop, TypeText(text="x"), 2) is None
    assert decide(stuck, desktop, click, 3) is None
    assert decide(stuck, desktop, click, 4).verdict == "retry"


def test_a_changing_screen_or_a_different_target_is_not_stuck():
    desktop = MemoryDesktop()
    stuck = StuckDetector(StuckConfig(after=2))
    click = Click(at=Point(x=100, y=100))
    decide(stuck, desktop, click, 1)
    desktop.image = desktop.paint("black")
    assert decide(stuck, desktop, click, 2) is None
    assert decide(stuck, desktop, Click(at=Point(x=300, y=100)), 3) is None
    assert decide(stuck, desktop, Click(at=Point(x=300, y=100), button="right"), 4) is None


def test_a_run_that_repeats_itself_is_nudged_once_then_stopped(tmp_path):
    desktop = MemoryDesktop()
    with LoopbackServer([CLICK] * 10) as server:
        result = run(desktop, server, tmp_path, HookChain([KillSwitch(), StuckDetector(StuckConfig(after=3))]))
        requests = server.requests
    assert result.status == "stopped" and "stuck" in result.error
    assert len(requests) == 4  # three steps and the nudged retry of the third
    assert "did not change" in json.dumps(requests[3]["messages"][-1])
    assert len(desktop.executed) == 2
    assert len(read_trajectory(tmp_path / "run")) == 3


def test_a_run_that_takes_the_nudge_goes_on(tmp_path):
    desktop = MemoryDesktop()
    done = kimi_reply("Done.", "computer.terminate(status='success')")

    def policy(request):
        return done if "did not change" in json.dumps(request["messages"][-1]) else CLICK

    with LoopbackServer(policy) as server:
        result = run(desktop, server, tmp_path, StuckDetector(StuckConfig(after=2)))
    assert result.status == "done" and len(desktop.executed) == 1


# ---- command-line wiring ----------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_guard_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_flags_build_kill_switch_safety_and_loop_guard_in_order(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "no drags"\neffect = "deny"\nactions = ["drag"]\n')
    switch, hooks = guard_hooks(parse("--safety", str(rules), "--unattended", "--stop-file", str(tmp_path / "S"),
                                      "--stuck-after", "5"))
    assert [type(h).__name__ for h in hooks] == ["KillSwitch", "SafetyPolicy", "LoopGuard"]
    assert hooks[0] is switch and switch.stop_file == tmp_path / "S"
    assert hooks[1].unattended and hooks[1].config.rules[0].name == "no drags"
    assert hooks[2].config.repeat_after == 5  # the loop guard's "same action on an unchanged screen"
    _, bare = guard_hooks(parse("--no-safety", "--stuck-after", "0"))
    assert [type(h).__name__ for h in bare] == ["KillSwitch"]


def test_without_a_terminal_the_run_counts_as_unattended(monkeypatch):
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    _, hooks = guard_hooks(parse())
    assert isinstance(hooks[1], SafetyPolicy) and hooks[1].unattended


def test_bad_guard_flags_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        parse("--stuck-after", "1")
    assert info.value.code == 2 and ">= 2" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SafetyConfigError, match="bad.json"):
        guard_hooks(parse("--safety", str(tmp_path / "bad.json")))


def test_a_small_visible_change_like_a_counter_is_progress_but_a_caret_blink_is_not():
    from PIL import Image, ImageDraw
    import io as _io

    def png(draw_counter: str | None = None, caret: bool = False) -> bytes:
        image = Image.new("RGB", (640, 400), "white")
        pen = ImageDraw.Draw(image)
        if draw_counter:
            pen.text((300, 200), draw_counter, fill="black")
        if caret:
            pen.line([(100, 50), (100, 66)], fill="black", width=2)
        out = _io.BytesIO()
        image.save(out, "PNG")
        return out.getvalue()

    click = Click(at=Point(x=100, y=100))
    counting, blinking = MemoryDesktop(), MemoryDesktop()
    counter_stuck, caret_stuck = StuckDetector(StuckConfig(after=2)), StuckDetector(StuckConfig(after=2))
    verdicts = []
    for step, (count, caret) in enumerate([("1", False), ("2", True), ("3", False)], 1):
        counting.image = png(count)
        blinking.image = png("1", caret)
        assert decide(counter_stuck, counting, click, step) is None  # the counter moves: never stuck
        decision = decide(caret_stuck, blinking, click, step)
        verdicts.append(decision.verdict if decision else None)
    assert verdicts == [None, "retry", "stop"]  # only the caret moved: stuck, nudged, then stopped
