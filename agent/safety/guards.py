"""Guards that end or redirect a run between actions: a kill switch and a stuck-loop detector (both hooks; the
loop guard with tiers that the CLI installs is agent/safety/loop_guard.py).

The kill switch stops the run at the next decision point when a stop file appears or SIGINT/SIGTERM/SIGUSR1
arrives: the step in flight is recorded with nothing executed, ``run.json`` says "stopped". A second SIGINT
or SIGTERM does not wait: it raises KeyboardInterrupt / SystemExit at once. pyautogui's fail-safe corner is the
executor's (``actions.executor.FailSafeTriggered``).
"""
from __future__ import annotations

import argparse
import io
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from PIL import Image, ImageChops
from pydantic import BaseModel, Field

from actions.types import Action, Done, Fail, Point, Wait, action_points, describe
from agent.hooks import AgentHooks, HookDecision, StepContext
from envs.base import Observation

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
FAILSAFE_MARK = "fail-safe fired"  # in actions.executor.FailSafeTriggered's message


class KillSwitch(AgentHooks):
    """Stops the run between actions on a stop file or a signal (signals only once ``installed()``)."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self.stop_file = Path(stop_file) if stop_file else None
        self.requested: str | None = None  # why a stop was requested, once it was
        self._previous: dict[int, Any] = {}

    def request_stop(self, reason: str) -> None:
        if self.requested is None:
            self.requested = reason

    def check(self) -> str | None:
        if self.requested is None and self.stop_file is not None and self.stop_file.exists():
            self.requested = f"stop file {self.stop_file} appeared"
        return self.requested

    def before_action(self, context: StepContext) -> HookDecision | None:
        reason = self.check()
        return HookDecision(verdict="stop", reason=f"kill switch: {reason}") if reason else None

    def on_step_end(self, record: object) -> None:
        # The executor reports pyautogui's fail-safe as a failed action; it must end the run, not be retried.
        for result in getattr(record, "results", None) or []:
            if result.error and FAILSAFE_MARK in result.error:
                self.request_stop("pyautogui's fail-safe fired (pointer in a screen corner)")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum in (signal.SIGINT, signal.SIGTERM):
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.request_stop(f"{name} received")

    @contextmanager
    def installed(self) -> Iterator["KillSwitch"]:
        """Catch the stop signals while the block runs (main thread only), then restore the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread: the stop file still works
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()


class StuckConfig(BaseModel):
    after: int = Field(3, ge=2)  # the same action on an unchanged screen this many times in a row: nudge
    stop_after_nudge: int = Field(1, ge=1)  # repeats tolerated after the nudge before stopping
    point_tolerance: int = Field(8, ge=0)  # screen pixels: clicks this close count as the same click
    # "Unchanged" means pixel-identical except one thin vertical strip (a blinking text caret). Anything wider
    # counts as change: a counter going from 1 to 2 is progress, and stopping a working run costs more than
    # missing a stuck one (max_steps still bounds it).
    caret_max_width: int = Field(4, ge=0)
    caret_max_height: int = Field(64, ge=0)


class StuckDetector(AgentHooks):
    """The same action on an unchanged screen N times in a row: a nudge to the model, then a clean stop.

    The CLI installs ``agent.safety.loop_guard.LoopGuard`` instead (this shape and three more, with tiers); this
    one stays for the Python API.

    Only actions that were executed count: a step the user skipped or replaced in the debugger, or one a
    safety rule refused, leaves the streak as it was.
    """

    def __init__(self, config: StuckConfig | None = None) -> None:
        self.config = config or StuckConfig()
        self._last_actions: list[Action] | None = None
        self._last_screen: Image.Image | None = None
        self._streak = 0
        self._nudged_at: int | None = None  # streak length when the nudge was given
        self._pending: tuple[list[Action], Image.Image, int, bool] | None = None

    def before_action(self, context: StepContext) -> HookDecision | None:
        self._pending = None
        actions = context.actions
        if not actions or any(isinstance(a, (Done, Fail, Wait)) for a in actions):
            return None  # waiting on an unchanged screen is what waiting is for; max_steps bounds it
        screen = screen_fingerprint(context.observation)
        same = (self._last_actions is not None and self._last_screen is not None
                and same_actions(actions, self._last_actions, self.config.point_tolerance)
                and unchanged(self._last_screen, screen, self.config))
        streak = self._streak + 1 if same else 1
        what = "; ".join(describe(a) for a in actions)
        if self._nudged_at is not None and streak >= self._nudged_at + self.config.stop_after_nudge:
            return HookDecision(verdict="stop", reason=(
                f"stuck: '{what}' {streak} times in a row on an unchanged screen, even after a nudge"))
        if self._nudged_at is None and streak >= self.config.after:
            self._nudged_at = self._streak = streak  # the retried decision counts as one more repeat
            return HookDecision(verdict="retry", reason=f"stuck: '{what}' {streak} times on an unchanged screen",
                                hint=(f"You have done '{what}' {streak} times in a row and the screen did not "
                                      "change. It is not working: try a different action, or finish with "
                                      "computer.terminate(status='failure') if the task cannot be done."))
        self._pending = (list(actions), screen, streak, same)
        return None

    def on_step_end(self, record: object) -> None:
        pending, self._pending = self._pending, None
        result = getattr(record, "result", None)
        if pending is None or result is None or result.skipped or getattr(record, "decided_by", "model") != "model":
            return
        actions, screen, streak, same = pending
        if list(getattr(record, "actions", [])) != actions:
            return  # another hook replaced the actions after this one approved them
        if not same:
            self._nudged_at = None
        self._streak, self._last_actions, self._last_screen = streak, actions, screen


def unchanged(before: Image.Image, after: Image.Image, config: StuckConfig) -> bool:
    """Identical screens, or ones that differ only where a blinking caret could be."""
    if before.size != after.size:
        return False
    box = ImageChops.difference(before, after).getbbox()
    return box is None or (box[2] - box[0] <= config.caret_max_width and box[3] - box[1] <= config.caret_max_height)


def screen_fingerprint(observation: Observation) -> Image.Image:
    """The decoded screenshot (only the previous one is kept)."""
    with Image.open(io.BytesIO(observation.image)) as im:
        return im.convert("RGB")


def same_actions(a: list[Action], b: list[Action], tolerance: int) -> bool:
    """Equal action lists, allowing points to differ by ``tolerance`` screen pixels."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if type(x) is not type(y):
            return False
        px, py = action_points(x), action_points(y)
        if len(px) != len(py) or not all(_near(p, q, tolerance) for p, q in zip(px, py)):
            return False
        if _without_points(x) != _without_points(y):
            return False
    return True


def _near(p: Point, q: Point, tolerance: int) -> bool:
    return abs(p.x - q.x) <= tolerance and abs(p.y - q.y) <= tolerance


def _without_points(action: Action) -> dict[str, Any]:
    return action.model_dump(exclude={"at", "start", "end"})


def add_guard_arguments(parser: argparse.ArgumentParser) -> None:
    """The safety and kill-switch flags of ``kimi-cua run``."""
    g = parser.add_argument_group("safety")
    g.add_argument("--safety", action="append", default=[], metavar="strict|FILE",
                   help="'strict': confirm every command typed into a terminal; FILE: safety rules (.json or "
                   ".toml) on top of the defaults (shell commands judged at Enter, risky hotkeys, points off "
                   "the monitor). Repeatable")
    g.add_argument("--unattended", action="store_true", help="nobody watches: actions that need confirmation "
                   "are refused (default when stdin is not a terminal)")
    g.add_argument("--no-safety", action="store_true", help="turn the safety policy off (not recommended)")
    g.add_argument("--stop-file", type=Path, metavar="PATH", help="stop cleanly between actions once this "
                   "file exists (SIGINT/SIGTERM/SIGUSR1 do the same; a second Ctrl-C stops at once)")
    g.add_argument("--stuck-after", type=_stuck_count, default=3, metavar="N", help="loop guard: the same action on an "
                   "unchanged screen N times (default 3), alternating A,B,A,B, 3 actions in a row that change nothing, "
                   "the same text typed again: a note to the model, a stronger note, then stop (0 turns it off)")


def _stuck_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value != 0 and value < 2:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or a whole number >= 2, not {text!r}")
    return value


def guard_hooks(args: argparse.Namespace, *, confirm: Any = None) -> tuple[KillSwitch, list[AgentHooks]]:
    """The kill switch (install its signals with ``with switch.installed():``) and the hooks, in chain order.

    ``confirm``: the step-through debugger's callback; otherwise a terminal prompt when attended.
    Raises SafetyConfigError for a broken ``--safety`` file (exit 2).
    """
    from agent.safety.policy import SafetyPolicy, ask_on_terminal, load_safety_config

    switch = KillSwitch(stop_file=args.stop_file)
    hooks: list[AgentHooks] = [switch]
    if not args.no_safety:
        values = args.safety if isinstance(args.safety, list) else ([args.safety] if args.safety else [])
        files = [Path(v) for v in values if str(v) != "strict"]
        config = load_safety_config(files[-1]) if files else None
        strict = True if any(str(v) == "strict" for v in values) else None
        unattended = args.unattended or not sys.stdin.isatty()
        hooks.append(SafetyPolicy(config, unattended=unattended, confirm=confirm or ask_on_terminal, strict=strict))
    if args.stuck_after:
        from agent.safety.loop_guard import LoopGuard, LoopGuardConfig

        hooks.append(LoopGuard(LoopGuardConfig(repeat_after=args.stuck_after)))
    return switch, hooks
