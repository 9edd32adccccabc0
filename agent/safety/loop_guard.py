"""A loop guard with tiers (a hook): the shapes agents loop in, a note, a stronger note, then a stop.

Shapes, judged on the actions that ran (a step skipped or replaced by the user, or refused by a rule, does not count;
waiting, done and fail are never a loop) and on the action the model proposes now:

- ``repeat``: the same action on an unchanged screen ``repeat_after`` times in a row (``--stuck-after``; points
  within ``point_tolerance`` pixels are the same point);
- ``alternate``: A, B, A, B: ``alternate_after`` steps alternating between two actions while the screen keeps coming
  back to where it was two steps before;
- ``no_change``: ``no_change_after`` actions in a row after which the screen did not change (whatever they were);
- ``retype``: the same text typed ``retype_after`` times within the last ``retype_window`` steps.

"Unchanged" is pixel-identical except a thin vertical strip (a blinking caret), as the stuck detector's.

Tiers: a loop of the threshold's length gets a note (tier 1): the proposed action does not run and the model is asked
again with the note naming the loop; one step longer, a stronger note (tier 2); one more, the run stops (tier 3,
``run.json`` status ``stopped``, the error ``loop guard (SHAPE): ...``). At most one note a step: the answer given
after a note runs (unless another guard objects), and the next step shows whether the loop went on. Each finding is
recorded in the step (``StepRecord.loop_guard``, and the asked-again answer in ``retries``).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from PIL import Image
from pydantic import BaseModel, Field

from actions.types import Action, Done, Fail, TypeText, Wait, describe
from agent.hooks import AgentHooks, HookDecision, StepContext
from agent.safety.guards import same_actions, screen_fingerprint, unchanged
from agent.trajectory import LoopGuardEvent

SHAPES = ("repeat", "alternate", "retype", "no_change")  # on a tie of tiers, the first named wins
KEEP = 32  # executed steps remembered (longer than any loop the tiers need to see)


class LoopGuardConfig(BaseModel):
    repeat_after: int = Field(3, ge=2)
    alternate_after: int = Field(4, ge=3)
    no_change_after: int = Field(3, ge=2)
    retype_after: int = Field(2, ge=2)
    retype_window: int = Field(10, ge=2)
    retype_min_chars: int = Field(2, ge=1)  # shorter texts (a "y" at a prompt) are not counted
    point_tolerance: int = Field(8, ge=0)
    caret_max_width: int = Field(4, ge=0)
    caret_max_height: int = Field(64, ge=0)


@dataclass
class _Ran:
    """An executed step as the guard remembers it."""

    actions: list[Action]
    back: bool  # the screen before it equals the screen before the step two earlier
    texts: list[str] = field(default_factory=list)
    changed: bool | None = None  # did the screen change after it (known at the next observation)


class LoopGuard(AgentHooks):
    def __init__(self, config: LoopGuardConfig | None = None) -> None:
        self.config = config or LoopGuardConfig()
        self._ran: deque[_Ran] = deque(maxlen=KEEP)
        self._screens: deque[Image.Image] = deque(maxlen=2)  # the screens before the last two executed steps
        self._pending: tuple[_Ran, Image.Image] | None = None
        self._noted_step: int | None = None  # the step that already got a note (one a step)

    # ---- the hook ----------------------------------------------------------------------------------------------
    def before_action(self, context: StepContext) -> HookDecision | None:
        self._pending = None
        actions = list(context.actions)
        if not actions or any(isinstance(a, (Done, Fail, Wait)) for a in actions):
            return None
        screen = screen_fingerprint(context.observation)
        if self._ran:  # the screen now, against the one before the last action that ran (waits in between count)
            self._ran[-1].changed = not unchanged(self._screens[-1], screen, self.config)
        back = len(self._screens) == 2 and unchanged(self._screens[0], screen, self.config)
        proposed = _Ran(actions, back, [a.text for a in actions if isinstance(a, TypeText)
                                        and len(a.text.strip()) >= self.config.retype_min_chars])
        self._pending = (proposed, screen)
        if self._noted_step == context.step:
            return None  # the answer given after this step's note runs; the next step shows if the loop goes on
        found = self.find(proposed)
        if found is None:
            return None
        shape, count, tier, what = found
        if tier >= 3:
            self._pending = None
            reason = f"loop guard ({shape}): {what}, after two notes"
            return HookDecision(verdict="stop", reason=reason,
                                loop=LoopGuardEvent(shape=shape, tier=3, count=count, message=reason))
        self._noted_step = context.step
        message = _note(shape, what, tier)
        return HookDecision(verdict="retry", hint=message, reason=f"loop guard ({shape}, note {tier}): {what}",
                            loop=LoopGuardEvent(shape=shape, tier=tier, count=count, message=message))

    def on_step_end(self, record: object) -> None:
        pending, self._pending = self._pending, None
        result = getattr(record, "result", None)
        if pending is None or result is None or result.skipped or getattr(record, "decided_by", "model") != "model":
            return
        ran, screen = pending
        if list(getattr(record, "actions", [])) != ran.actions:
            return  # another hook replaced the actions after this one approved them
        self._ran.append(ran)
        self._screens.append(screen)

    # ---- the shapes --------------------------------------------------------------------------------------------
    def find(self, proposed: _Ran) -> tuple[str, int, int, str] | None:
        """The loop ``proposed`` would continue, as (shape, length, tier, description), or None."""
        c = self.config
        found = []
        for shape, (count, what), after in (("repeat", self._repeat(proposed), c.repeat_after),
                                            ("alternate", self._alternate(proposed), c.alternate_after),
                                            ("retype", self._retype(proposed), c.retype_after),
                                            ("no_change", self._no_change(), c.no_change_after)):
            if count >= after:
                found.append((min(3, count - after + 1), -SHAPES.index(shape), shape, count, what))
        if not found:
            return None
        tier, _, shape, count, what = max(found)
        return shape, count, tier, what

    def _same(self, a: list[Action], b: list[Action]) -> bool:
        return same_actions(a, b, self.config.point_tolerance)

    def _repeat(self, proposed: _Ran) -> tuple[int, str]:
        count = 1
        for ran in reversed(self._ran):
            if ran.changed is not False or not self._same(ran.actions, proposed.actions):
                break
            count += 1
        return count, f"you have done '{_what(proposed.actions)}' {count} times in a row and the screen did not change"

    def _alternate(self, proposed: _Ran) -> tuple[int, str]:
        seq = [*self._ran, proposed]
        length = 1
        i = len(seq) - 2
        while i >= 0:
            if self._same(seq[i].actions, seq[i + 1].actions):
                break
            if length >= 2 and not (seq[i + 2].back and self._same(seq[i].actions, seq[i + 2].actions)):
                break
            length += 1
            i -= 1
        if length < 3:
            return 0, ""
        other = seq[-2].actions
        return length, (f"you are alternating between '{_what(other)}' and '{_what(proposed.actions)}' for {length} steps, "
                        "and the screen keeps coming back to where it was")

    def _no_change(self) -> tuple[int, str]:
        count = 0
        for ran in reversed(self._ran):
            if ran.changed is not False:
                break
            count += 1
        if not count:
            return 0, ""
        last = "; ".join(f"'{_what(r.actions)}'" for r in list(self._ran)[-count:][-4:])
        return count, f"your last {count} actions changed nothing on the screen ({last})"

    def _retype(self, proposed: _Ran) -> tuple[int, str]:
        recent = list(self._ran)[-(self.config.retype_window - 1):]
        best, text = 0, ""
        for typed in proposed.texts:
            count = 1 + sum(r.texts.count(typed) for r in recent)
            if count > best:
                best, text = count, typed
        return best, f"you are typing '{_short(text)}' again ({best} times now)"


def _what(actions: list[Action]) -> str:
    return "; ".join(describe(a) for a in actions)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


_ADVICE = {
    "repeat": "It is not working: do something different.",
    "alternate": "Going back and forth gets nowhere: do something different.",
    "no_change": "Look at the screenshot again: the actions are not reaching anything. Try another element or way.",
    "retype": "Check on the screenshot whether the text is already there before typing it again.",
}


def _note(shape: str, what: str, tier: int) -> str:
    """What the model is told: tier 1 names the loop, tier 2 says the run stops if it goes on."""
    if tier == 1:
        return f"Loop detected: {what}. {_ADVICE[shape]}"
    return (f"SECOND LOOP WARNING, the loop goes on after a note: {what}. Change your approach now (another element, "
            "another way, or check what the screen really shows), or answer computer.terminate(status='failure') if "
            "the task cannot be done. If the loop goes on, the run will be stopped.")
