"""The live step line of ``kimi-cua run`` (agent/cli/run.py StepPrinter): the streaming counter ends before
anything else is printed, nothing repeats when stderr is not a terminal, and a step's line says what became of
its actions (skipped, stopped, done, fail: not "ok")."""
from __future__ import annotations

import io
import re

from actions.types import Click, Done, Fail, Point
from agent.cli.run import StepPrinter
from agent.hooks import HookChain
from agent.trajectory import StepRecord
from envs.base import ActionResult


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(raw: str) -> list[str]:
    """What a terminal shows: carriage returns go back to the line's start, ESC[K erases to its end."""
    lines, current, col = [], [], 0
    for token in re.findall(r"\x1b\[K|\r|\n|[^\r\n\x1b]+", raw):
        if token == "\n":
            lines.append("".join(current))
            current, col = [], 0
        elif token == "\r":
            col = 0
        elif token == "\x1b[K":
            del current[col:]
        else:
            current[col:col + len(token)] = list(token)
            col += len(token)
    if current:
        lines.append("".join(current))
    return lines


def step(number: int = 1, actions=None, results=None, **extra) -> StepRecord:
    actions = actions if actions is not None else [Click(at=Point(x=10, y=20))]
    results = results if results is not None else [ActionResult(settle_ms=120.0)]
    overall = next((r for r in results if not r.ok), results[-1] if results else ActionResult(skipped=True))
    return StepRecord(step=number, screenshot="s.png", image_width=10, image_height=10, action=actions[0] if actions
                      else None, actions=actions, result=overall, results=results, timings={"model_ms": 2100.0},
                      budget={"images_sent": 1}, **extra)


class Debugger(HookChain):
    """Stands in for the step-through debugger: prints when asked about the actions."""

    def __init__(self, out: io.StringIO) -> None:
        super().__init__([])
        self.out = out

    def before_action(self, context):
        self.out.write("=== step 1/10 ===\n")
        return None


def stream_a_step(out: io.StringIO, record: StepRecord, *, show_thinking: bool = False) -> None:
    printer = StepPrinter(10, out, show_thinking=show_thinking)
    chain = HookChain([printer, Debugger(out)])  # as kimi-cua run builds it: the printer first
    chain.on_step_start(1, None)
    for piece in ["◁think▷Let me ", "look at the ", "screen.◁/think▷", "click"]:
        chain.on_delta(piece)
    chain.before_action(None)
    chain.on_step_end(record)


def test_on_a_terminal_the_counter_is_erased_before_the_debugger_and_the_step_line():
    out = Terminal()
    stream_a_step(out, step())
    assert "thinking... 46 chars" in out.getvalue()  # it was shown while the reply streamed
    assert shown(out.getvalue()) == [
        "=== step 1/10 ===",
        "step 1/10 | click (10, 20) | ok | model 2.1s | 0 prompt tokens, 1 images | settle 120 ms"]


def test_streamed_thinking_ends_with_a_newline_before_the_next_line():
    out = Terminal()
    stream_a_step(out, step(), show_thinking=True)
    lines = shown(out.getvalue())
    assert lines[:3] == ["--- step 1 ---", "◁think▷Let me look at the screen.◁/think▷click", "=== step 1/10 ==="]
    assert lines[3].startswith("step 1/10 | click (10, 20) | ok |")


def test_when_stderr_is_not_a_terminal_nothing_is_repeated():
    out = io.StringIO()
    stream_a_step(out, step())
    assert "\r" not in out.getvalue() and "thinking..." not in out.getvalue()
    assert out.getvalue().splitlines() == [
        "=== step 1/10 ===",
        "step 1/10 | click (10, 20) | ok | model 2.1s | 0 prompt tokens, 1 images | settle 120 ms"]


def line_of(record: StepRecord) -> str:
    out = io.StringIO()
    StepPrinter(10, out).on_step_end(record)
    return out.getvalue().split(" | ")[2]


def test_the_step_line_says_skipped_stopped_done_and_fail():
    assert line_of(step(results=[ActionResult(skipped=True)])) == "skipped, not run"
    assert line_of(step(results=[], stopped="stopped in the step-through debugger")) == (
        "stopped, not run (stopped in the step-through debugger)")
    assert line_of(step(actions=[Done()], results=[ActionResult()])) == "done"
    assert line_of(step(actions=[Fail(reason="no")], results=[ActionResult()])) == "fail (the agent gave up)"
    assert line_of(step(results=[ActionResult(ok=False, error="boom")])) == "FAILED (boom)"
    assert line_of(step(results=[ActionResult(ok=False, error="pyautogui fail-safe")],
                        stopped="pyautogui fail-safe: corner")) == (
        "FAILED (pyautogui fail-safe), stopped (pyautogui fail-safe: corner)")
    assert line_of(step()) == "ok"
