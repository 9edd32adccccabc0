"""Hooks: the only coupling between the loop and a UI, a debugger or a safety guard.

Override what you need. ``before_action`` may approve (return None), replace the actions, skip them, ask the
model again (optionally with a hint for the next prompt) or stop the run.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from actions.types import Action
from agent.reply import ModelReply
from agent.trajectory import LoopGuardEvent
from envs.base import Observation

Verdict = Literal["execute", "replace", "skip", "retry", "stop"]
# What to do with a step a resumed run found interrupted while its actions ran (see on_interrupted_step).
InterruptedChoice = Literal["model", "ran", "rerun"]


class HookDecision(BaseModel):
    verdict: Verdict = "execute"
    actions: list[Action] | None = None  # for "replace": screen pixels
    hint: str | None = None  # for "retry": added to the next prompt
    reason: str | None = None  # recorded in the step's notes
    loop: LoopGuardEvent | None = None  # the loop guard's finding, recorded in the step's ``loop_guard``


class StepContext(BaseModel):
    """What a hook sees before the actions of a step run."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    step: int
    max_steps: int
    observation: Observation
    reply: ModelReply | None
    actions: list[Action]  # screen pixels
    parse_error: str | None = None
    budget: dict | None = None
    screenshot_path: str | None = None


class InterruptedStep(BaseModel):
    """A step of a resumed run whose actions were running when the run was killed (no result recorded)."""

    step: int
    actions: list[Action]  # screen pixels
    finished: int  # actions known to have finished; actions[finished] may have run; later ones did not

    def uncertain(self) -> Action | None:
        return self.actions[self.finished] if self.finished < len(self.actions) else None


class AgentHooks:
    def on_step_start(self, step: int, observation: Observation) -> None:
        """Called after the observation, before the model is asked."""

    def on_delta(self, text: str) -> None:
        """Streamed model output, as it arrives."""

    def before_action(self, context: StepContext) -> HookDecision | None:
        """Return None (or verdict execute) to run the actions as parsed."""
        return None

    def on_step_end(self, record: "object") -> None:
        """Called with the StepRecord after it was written to the trajectory."""

    def on_interrupted_step(self, interrupted: InterruptedStep) -> InterruptedChoice | None:
        """On resume, for a step killed while its actions ran. None or "model": tell the model they may have
        run and let it look at the screen; "ran": they ran; "rerun": run the unfinished ones again now."""
        return None


class HookChain(AgentHooks):
    """Several hooks as one: the first non-execute decision of ``before_action`` wins (guards go first)."""

    def __init__(self, hooks: list[AgentHooks]) -> None:
        self.hooks = hooks

    def on_step_start(self, step: int, observation: Observation) -> None:
        for h in self.hooks:
            h.on_step_start(step, observation)

    def on_delta(self, text: str) -> None:
        for h in self.hooks:
            h.on_delta(text)

    def before_action(self, context: StepContext) -> HookDecision | None:
        approved: HookDecision | None = None  # an "execute" that carries a reason is kept for the record
        for h in self.hooks:
            decision = h.before_action(context)
            if decision is None:
                continue
            if decision.verdict != "execute":
                return decision
            if decision.reason and approved is None:
                approved = decision
        return approved

    def on_step_end(self, record: object) -> None:
        for h in self.hooks:
            h.on_step_end(record)

    def on_interrupted_step(self, interrupted: InterruptedStep) -> InterruptedChoice | None:
        for h in self.hooks:
            choice = h.on_interrupted_step(interrupted)
            if choice is not None:
                return choice
        return None
