"""The observe -> think -> act loop."""
from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import prompts
from actions.coords import CoordinateMode, to_screen
from actions.executor import FailSafeTriggered
from actions.parser import parse_summary
from actions.types import Action, ActionParseError, Done, Fail, Wait, describe
from agent.budget import BuiltRequest, ContextBudget
from agent.models.vllm import ContextLengthExceeded, ModelClient, TooManyImages, VARIANTS
from agent.history import CurrentView, Turn
from agent.hooks import AgentHooks, HookDecision, InterruptedStep, StepContext
from agent.safety.policy import DEFAULT_SAFETY, install_safety
from agent.reply import ModelReply, Usage
from agent.tokens import load_text_counter, read_in_token_limit
from agent.zoom import zoom_records, zoom_step
from agent.verify import check_done, overturned_note
from agent.trajectory import (
    DoneVerification,
    LoopGuardEvent,
    RetriedAnswer,
    RunInfo,
    RunStatus,
    StepIntent,
    StepRecord,
    TrajectoryWriter,
    clear_intent,
    default_run_dir,
    read_info,
    read_intent,
    read_trajectory,
    repair_trajectory,
)
from envs.base import ActionResult, Environment, Observation


class AgentConfig(BaseModel):
    max_steps: int = Field(30, ge=1)
    out_dir: Path | None = None  # default: runs/<timestamp>
    coordinate_mode: CoordinateMode = "auto"
    variant: Literal["thinking-2506", "thinking", "instruct"] | None = None  # default: from the model name
    temperature: float | None = None  # default: the variant's
    max_tokens: int | None = None  # default: the variant's
    stream: bool = True
    max_context: int | None = None  # default: the server's max_model_len
    max_images: int = Field(64, ge=1)  # match vLLM's --limit-mm-per-prompt
    reply_reserve: int | None = None  # default: max_tokens
    max_format_errors: int = Field(3, ge=1)  # consecutive unparseable answers before giving up
    system_prompt: str = "system"  # template name in prompts/
    model_dir: Path | None = None  # local model files: exact text tokenizer and in_token_limit (offline)
    zoom: int = Field(0, ge=0, le=10)  # zoom-in rounds for a step's click (agent/zoom.py); 0: off
    verify_done: bool = False  # a DONE stands only when a fresh check of the screen says yes (agent/verify.py)


class RunResult(BaseModel):
    status: RunStatus
    steps: int
    answer: str | None = None
    error: str | None = None
    out_dir: Path


class Decision(BaseModel):
    """What the model wants done for one observation (nothing executed yet)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    reply: ModelReply | None = None
    actions: list[Action] = Field(default_factory=list)  # screen pixels
    parse_error: str | None = None
    user_text: str = ""
    budget: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    zoom: list[dict[str, Any]] | None = None  # the click's zoom-in rounds (agent/zoom.py ZoomRound)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


class Agent:
    """``Agent(env, client, config).run(task)``; ``decide(task, observation)`` for harnesses that act themselves."""

    def __init__(self, env: Environment | None, client: ModelClient, config: AgentConfig | None = None,
                 hooks: AgentHooks | None = None, *, safety: Any = DEFAULT_SAFETY) -> None:
        """``safety``: the action policy; the default one (unattended: what needs confirmation is refused)
        unless ``hooks`` already hold one; ``safety=None`` turns it off."""
        self.env = env
        self.client = client
        self.config = config or AgentConfig()
        self.hooks, self.safety = install_safety(hooks, env, safety)
        variant = self.config.variant or getattr(client, "variant", "thinking-2506")
        self.defaults = VARIANTS[variant]
        max_tokens = self.config.max_tokens or self.defaults.max_tokens
        self.max_tokens = max_tokens
        max_len = self.config.max_context or _server_max_len(client) or 131072
        in_token_limit = self.defaults.in_token_limit
        if self.config.model_dir is not None and (Path(self.config.model_dir) / "preprocessor_config.json").is_file():
            in_token_limit = read_in_token_limit(self.config.model_dir)
        self.budget = ContextBudget(
            max_model_len=max_len, max_images=self.config.max_images,
            reply_reserve=self.config.reply_reserve or max_tokens, in_token_limit=in_token_limit,
            counter=load_text_counter(self.config.model_dir))
        self.turns: list[Turn] = []
        self._notes: list[str] = []  # added to the next prompt (format errors, hints)
        self._format_errors = 0
        self._resume_pending = False  # the next record is the first one after a resume (marked ``resumed``)

    def reset(self) -> None:
        """Forget the episode (OSWorld calls this between tasks)."""
        self.budget.reset()
        self.turns = []
        self._notes = []
        self._format_errors = 0

    # ---- one decision ----------------------------------------------------------------------------
    def decide(self, task: str, observation: Observation, step: int | None = None) -> Decision:
        step = step if step is not None else len(self.turns) + 1
        note = "".join(f"\n{n}" for n in self._notes)
        user_text = prompts.render("step", step=step, max_steps=self.config.max_steps,
                                   width=observation.width, height=observation.height, note=note)
        decision = Decision(user_text=user_text)
        current = CurrentView(image=observation.image, mime=observation.mime, width=observation.width,
                              height=observation.height, user_text=user_text)
        system = prompts.load(self.config.system_prompt)
        task_text = prompts.render("task", task=task)
        t = time.perf_counter()
        built = self.budget.build(system=system, task_text=task_text, turns=self.turns, current=current)
        decision.timings["build_ms"] = _ms(t)
        t = time.perf_counter()
        built, reply = self._ask(built, decision, lambda: self.budget.build(
            system=system, task_text=task_text, turns=self.turns, current=current))
        decision.timings["model_ms"] = _ms(t)
        self.budget.observe_usage(built.record, reply.usage.prompt_tokens)
        decision.reply = reply
        decision.budget = built.record.model_dump()
        t = time.perf_counter()
        try:
            if reply.truncated:
                raise ActionParseError("the reply was cut off inside the thinking (max_tokens reached) and has no "
                                       "answer; think more briefly")
            parsed = parse_summary(reply.summary)
            geometry = observation.geometry
            decision.actions = [to_screen(a, shown_width=observation.width, shown_height=observation.height,
                                          monitor=geometry.monitor, mode=self.config.coordinate_mode)
                                for a in parsed]
            if self.config.zoom:  # look closer at the click's point, ask again, map back (agent/zoom.py)
                t_zoom = time.perf_counter()
                decision.actions, zoomed = zoom_step(
                    self.client, image=observation.image, image_size=(observation.width, observation.height),
                    monitor=geometry.monitor, parsed=parsed, converted=decision.actions, summary=reply.summary,
                    rounds=self.config.zoom, in_token_limit=self.budget.in_token_limit,
                    mode=self.config.coordinate_mode, temperature=self.config.temperature, max_tokens=self.max_tokens)
                decision.zoom = zoom_records(zoomed)
                decision.timings["zoom_ms"] = _ms(t_zoom)
            self._format_errors = 0
        except ActionParseError as exc:
            decision.parse_error = str(exc)
            self._format_errors += 1
        decision.timings["parse_ms"] = _ms(t)
        self._notes = []
        if decision.parse_error:
            self._notes.append(f"Your previous answer could not be used: {decision.parse_error}. "
                               "Answer again in the required format.")
        return decision

    def _ask(self, built: BuiltRequest, decision: Decision,
             rebuild: Callable[[], BuiltRequest]) -> tuple[BuiltRequest, ModelReply]:
        """The model's reply to ``built``; returns it with the request it answered.

        A refusal for size (any of vLLM's overflow wordings, or the image limit) is learned, the request rebuilt
        smaller and sent once more. A reply the server clamped (cut short of max_tokens for lack of room: the
        reply reserve was not there) is learned the same way and recorded. A reply cut off inside its thinking
        is asked again once, after trimming when it was clamped.
        """
        try:
            reply = self._complete(built.messages)
        except (ContextLengthExceeded, TooManyImages) as refusal:
            self.budget.tighten(refusal)
            built = rebuild()
            built.record.retried_after_refusal = True
            decision.notes.append(f"server refused for length; trimmed harder and retried: {refusal}")
            reply = self._complete(built.messages)
        decision.notes.extend(reply.notices)
        clamped = self._learn_clamp(reply, built, decision)
        if reply.truncated:
            decision.notes.append("reply cut off inside the thinking (max_tokens); asked again once")
            if clamped is not None:  # make room for the reply before asking again
                built = rebuild()
                built.record.reply_clamped = clamped
            retry_messages = built.messages + [{"role": "user", "content": (
                "Your previous reply was cut off before the answer. Think briefly, then give the ## Action: "
                "and ## Code: sections.")}]
            try:
                again = self._complete(retry_messages)
            except (ContextLengthExceeded, TooManyImages) as refusal:
                self.budget.tighten(refusal)
                decision.notes.append(f"asking again was refused for length; the next request is trimmed: {refusal}")
            else:
                decision.notes.extend(again.notices)
                self._learn_clamp(again, built, decision)
                reply = again
        return built, reply

    def _learn_clamp(self, reply: ModelReply, built: BuiltRequest, decision: Decision) -> str | None:
        """Tighten the budget after a clamped reply and note it in the step's record; returns the note or None."""
        if not reply.clamped:
            return None
        what = (f"{reply.usage.completion_tokens} of max_tokens={reply.max_tokens} tokens after a "
                f"{reply.usage.prompt_tokens}-token prompt")
        self.budget.tighten(reply)
        built.record.reply_clamped = what
        decision.notes.append(f"the server clamped the reply ({what}): the reply reserve was not there; the "
                              "budget was tightened")
        return what

    def _complete(self, messages: list[dict[str, Any]]) -> ModelReply:
        return self.client.complete(messages, temperature=self.config.temperature, max_tokens=self.max_tokens,
                                    stream=self.config.stream,
                                    on_delta=self.hooks.on_delta if self.config.stream else None)

    def remember(self, step: int, screenshot: Path, observation: Observation, decision: Decision,
                 executed: list[Action]) -> None:
        """Add a finished step to the history the next prompts are built from."""
        summary = decision.reply.summary if decision.reply else ""
        action_text = "; ".join(describe(a) for a in executed) or (
            f"no action ({decision.parse_error})" if decision.parse_error else "no action")
        self.turns.append(Turn(step=step, screenshot=screenshot, mime=observation.mime,
                               image_width=observation.width, image_height=observation.height,
                               user_text=decision.user_text, summary=summary, action_text=action_text))

    def add_hint(self, hint: str) -> None:
        self._notes.append(f"Hint from the user: {hint}")

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, task: str, *, resume: bool = False, settings: dict[str, Any] | None = None) -> RunResult:
        """Run until done/fail/max_steps. ``resume=True`` continues the run recorded in ``config.out_dir`` (its
        start time kept). ``settings``: what the caller wants recorded in run.json for a later resume (CLI flags)."""
        if self.env is None:
            raise ValueError("Agent.run needs an environment; use decide() for harnesses that act themselves")
        out_dir = Path(self.config.out_dir) if self.config.out_dir else default_run_dir()
        first_step = 1
        interrupted: StepIntent | None = None
        if resume:
            first_step, interrupted = self._restore(out_dir)
        elif (out_dir / "trajectory.jsonl").exists() and (out_dir / "trajectory.jsonl").stat().st_size:
            raise FileExistsError(f"{out_dir} already holds a trajectory: resume it with --resume {out_dir}, "
                                  "or choose another --out")
        recorded_before = first_step - 1  # steps already in the trajectory
        self._resume_pending = resume
        writer = TrajectoryWriter(out_dir)
        info = RunInfo(task=task, model=getattr(self.client, "model", ""),
                       base_url=getattr(self.client, "base_url", ""),
                       config=self.config.model_dump(mode="json"), resumed_at_step=first_step if resume else None,
                       settings=dict(settings or {}))
        if resume:
            try:
                earlier = read_info(out_dir)
            except (OSError, ValueError):
                earlier = None
            if earlier is not None:
                info.started = earlier.started
                info.settings = info.settings or earlier.settings
        writer.write_info(info)
        status: RunStatus = "max_steps"
        answer: str | None = None
        error: str | None = None
        step = first_step - 1
        propagating = False  # an exception is on its way out: a failing run.json must not replace it
        try:
            if interrupted is not None:
                step = self._settle_interrupted(interrupted, writer)
                first_step = step + 1
            for step in range(first_step, self.config.max_steps + 1):
                record, terminal = self._step(task, step, writer)
                if terminal is not None:
                    status, answer = terminal
                    break
                if self._format_errors >= self.config.max_format_errors:
                    status = "fail"
                    error = (f"{self._format_errors} answers in a row could not be parsed; last: "
                             f"{record.parse_error}")
                    break
            else:
                error = f"no done/fail within --max-steps={self.config.max_steps}"
        except _StopRun as stop:
            status, error = "stopped", stop.reason
        except (KeyboardInterrupt, SystemExit):
            status, error, propagating = "stopped", "interrupted", True
            raise
        except Exception as exc:
            status, error, propagating = "error", str(exc), True
            raise
        finally:
            # The steps in the trajectory: a step in flight when the run was interrupted is not one of them.
            step = writer.last_step if writer.last_step is not None else recorded_before
            info.status, info.answer, info.error = status, answer, error
            info.steps, info.finished = step, time.time()
            try:
                writer.write_info(info)
            except OSError:
                if not propagating:
                    raise
            finally:
                writer.close()
        return RunResult(status=status, steps=step, answer=answer, error=error, out_dir=out_dir)

    def _restore(self, out_dir: Path) -> tuple[int, StepIntent | None]:
        """Rebuild the history from a recorded run: (next step number, the intent of a step killed while its
        actions ran, or None)."""
        repair_trajectory(out_dir)  # in place, before reading: a kill during the repair loses no step
        records = read_trajectory(out_dir)
        self.reset()
        for record in records:
            shot = out_dir / record.screenshot
            executed = [] if record.result.skipped else record.actions
            action_text = "; ".join(describe(a) for a in executed) or (
                f"no action ({record.parse_error})" if record.parse_error else "no action")
            mime = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}.get(shot.suffix.lstrip("."),
                                                                                      "image/png")
            self.turns.append(Turn(step=record.step, screenshot=shot, mime=mime, image_width=record.image_width,
                                   image_height=record.image_height, user_text=record.user_text,
                                   summary=record.summary, action_text=action_text))
            overturned = record.verification is not None and not record.verification.accepted
            if any(a.type in ("done", "fail") for a in executed) and not overturned:
                raise ValueError(f"the run in {out_dir} already finished at step {record.step}; nothing to resume")
        if records and records[-1].verification is not None and not records[-1].verification.accepted:
            self._notes.append(overturned_note(records[-1].verification))  # the check's reason, as before the stop
        next_step = (records[-1].step + 1) if records else 1
        intent = read_intent(out_dir)
        if intent is not None and intent.record.step < next_step:
            clear_intent(out_dir)  # killed after the step was recorded: nothing is unknown
            intent = None
        elif intent is not None and intent.record.step > next_step:
            raise ValueError(f"{out_dir}/intent.jsonl is for step {intent.record.step}, but the trajectory ends at "
                             f"step {next_step - 1}: the run directory was changed by hand; remove intent.jsonl to "
                             "resume without it")
        if intent is None and records:
            # the last step was settled as interrupted by a resume that was itself killed before its next prompt:
            # the model was maybe never told, so it is told now (telling it twice is harmless)
            told = _settled_interrupted_note(records[-1])
            if told:
                self._notes.append(told)
        return next_step, intent

    def _settle_interrupted(self, intent: StepIntent, writer: TrajectoryWriter) -> int:
        """Record a step that was killed while its actions ran, without running them again blindly.

        Actions known to have finished keep their results; the one in flight may have run, so by default the
        model is told so and looks at the screen; ``--step`` asks the user (hook ``on_interrupted_step``).
        Returns the step number.
        """
        record, results = intent.record, list(intent.results)
        actions = list(record.actions)
        view = InterruptedStep(step=record.step, actions=actions, finished=len(results))
        choice = self.hooks.on_interrupted_step(view) or "model"
        unfinished = actions[len(results):]
        notes = [*record.notes, "interrupted: the run was killed while this step's actions ran"]
        stop_reason: str | None = None
        if not unfinished:
            notes.append("every action had finished before the kill")
        elif results and not results[-1].ok:  # an action had failed: the loop had stopped, the rest never ran
            notes.append("an action had failed before the kill; the later ones never ran")
        elif choice == "ran":
            results += [ActionResult(ok=True) for _ in unfinished]
            notes.append("resume: the user said the unfinished actions had run")
        elif choice == "rerun":
            notes.append("resume: the user had the unfinished actions run again")
            writer.resume_intent()
            runnable = [a for a in itertools.takewhile(lambda a: not isinstance(a, (Done, Fail)), unfinished)]
            stop_reason = self._execute(runnable, writer, results)
        else:
            results.append(ActionResult(ok=False, error=_INTERRUPTED))
            results += [ActionResult(ok=False, skipped=True, error="not run: the run was killed before it")
                        for _ in unfinished[1:]]
            self._notes.append(_interrupted_note(record.step, actions, len(intent.results)))
        overall = next((r for r in results if not r.ok), results[-1] if results else ActionResult(skipped=True))
        record = record.model_copy(update={"result": overall, "results": results, "notes": notes,
                                           "stopped": stop_reason, **self._resume_mark()})
        writer.append(record)
        writer.end_intent()
        shot = writer.out_dir / record.screenshot
        mime = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}.get(shot.suffix.lstrip("."), "image/png")
        action_text = "; ".join(describe(a) for a in actions)
        if choice == "model" and unfinished:
            action_text += " (interrupted: may not have run, or only partly)"
        self.turns.append(Turn(step=record.step, screenshot=shot, mime=mime, image_width=record.image_width,
                               image_height=record.image_height, user_text=record.user_text,
                               summary=record.summary, action_text=action_text))
        self.hooks.on_step_end(record)
        if stop_reason is not None:
            raise _StopRun(stop_reason)
        return record.step

    def _execute(self, actions: list[Action], writer: TrajectoryWriter, results: list[ActionResult]) -> str | None:
        """Run ``actions`` in order (results appended, progress recorded); returns a reason to stop the run."""
        assert self.env is not None
        for action in actions:
            try:
                result = self.env.execute(action)
            except FailSafeTriggered as exc:  # the pointer went to a screen corner: the person stops the run
                results.append(ActionResult(ok=False, error=str(exc)))
                writer.intent_progress(len(results), results[-1])
                return f"pyautogui fail-safe: {exc}"
            results.append(result)
            writer.intent_progress(len(results), result)
            if not result.ok:
                self._notes.append(f"The action '{describe(action)}' failed: {result.error}")
                break
        return None

    def _step(self, task: str, step: int, writer: TrajectoryWriter) -> tuple[StepRecord, tuple[RunStatus, str | None] | None]:
        assert self.env is not None
        t = time.perf_counter()
        observation = self.env.observe()
        observe_ms = _ms(t)
        t = time.perf_counter()
        shot = writer.save_screenshot(step, observation.image, observation.extension)
        save_ms = _ms(t)
        self.hooks.on_step_start(step, observation)
        decided_by: Literal["model", "user"] = "model"
        retries: list[RetriedAnswer] = []  # answers a hook had asked again (the debugger's retry [HINT])
        loops: list[LoopGuardEvent] = []  # what the loop guard saw (agent/safety/loop_guard.py)
        while True:
            decision = self.decide(task, observation, step)
            context = StepContext(step=step, max_steps=self.config.max_steps, observation=observation,
                                  reply=decision.reply, actions=decision.actions,
                                  parse_error=decision.parse_error, budget=decision.budget,
                                  screenshot_path=str(writer.out_dir / shot))
            verdict = self.hooks.before_action(context) or HookDecision()
            if verdict.loop is not None:
                loops.append(verdict.loop)
            if verdict.verdict == "retry":
                retries.append(RetriedAnswer(hint=verdict.hint, reason=verdict.reason,
                                             summary=decision.reply.summary if decision.reply else "",
                                             actions=decision.actions, parse_error=decision.parse_error))
                if verdict.hint:
                    self.add_hint(verdict.hint)
                continue
            break
        notes = list(decision.notes)
        if verdict.reason:
            notes.append(f"{verdict.verdict}: {verdict.reason}")
        actions = decision.actions
        if verdict.verdict == "replace" and verdict.actions is not None:
            actions, decided_by = verdict.actions, "user"
        results: list[ActionResult] = []
        terminal: tuple[RunStatus, str | None] | None = None
        verification: DoneVerification | None = None
        stop_reason = (verdict.reason or "stopped by a hook") if verdict.verdict == "stop" else None
        # The step as decided, before anything runs: written as the intent when actions touch the desktop.
        draft = StepRecord(
            step=step, screenshot=shot, image_width=observation.width, image_height=observation.height,
            monitor=observation.geometry.monitor, response=decision.reply.text if decision.reply else "",
            thinking=decision.reply.thinking if decision.reply else "",
            summary=decision.reply.summary if decision.reply else "",
            action=actions[0] if actions else None, actions=actions,
            parse_error=decision.parse_error, usage=decision.reply.usage if decision.reply else Usage(),
            budget=decision.budget, user_text=decision.user_text, decided_by=decided_by, notes=notes,
            retries=retries, loop_guard=loops, zoom=decision.zoom,
            # The observation's "settle" is the wait after the previous step's actions (recorded there).
            timings={"observe_ms": observe_ms, "save_ms": save_ms, **decision.timings,
                     **{k: v for k, v in observation.timings_ms.items() if k != "settle"}},
        )
        t = time.perf_counter()
        if verdict.verdict == "skip":
            results = [ActionResult(ok=True, skipped=True) for _ in actions]
            if actions:
                self._notes.append(f"Your previous action ({'; '.join(describe(a) for a in actions)}) was skipped "
                                   "by the user and did not run.")
        elif verdict.verdict != "stop":
            if any(not isinstance(a, (Done, Fail, Wait)) for a in actions):
                writer.begin_intent(draft)  # durable before the first action runs: a resume never redoes blindly
            runnable: list[Action] = []
            for action in actions:
                if isinstance(action, (Done, Fail)):
                    terminal = ("done", action.answer) if isinstance(action, Done) else ("fail", action.reason)
                    break
                runnable.append(action)
            stop_reason = self._execute(runnable, writer, results)
            if stop_reason is not None or len(results) < len(runnable) or not all(r.ok for r in results):
                terminal = None  # a failed action before done/fail: the model sees the failure first
            elif terminal is not None:
                results.append(ActionResult())
                if terminal[0] == "done" and self.config.verify_done:
                    verification = self._verify_done(task, step, writer, terminal[1])
                    terminal = terminal if verification.accepted else None
        execute_ms = _ms(t)
        overall = next((r for r in results if not r.ok), results[-1] if results else ActionResult(skipped=True))
        timings = {**draft.timings, "execute_ms": execute_ms}
        settled = [r.settle_ms for r in results if r.settle_ms is not None]
        if settled:  # this step's own waits for the screen to settle (part of execute_ms)
            timings["settle_ms"] = round(sum(settled), 3)
        if verification is not None:
            timings["verify_ms"] = verification.model_ms
        record = draft.model_copy(update={"result": overall, "results": results, "timings": timings,
                                          "stopped": stop_reason, "verification": verification,
                                          **self._resume_mark()})
        writer.append(record)
        writer.end_intent()
        self.remember(step, writer.out_dir / shot, observation, decision, actions if verdict.verdict != "skip" else [])
        self.hooks.on_step_end(record)
        # httpx keeps each sent request body (megabytes of base64 screenshots) in reference cycles until a full
        # collection; one per step keeps memory flat over long episodes (benchmarks/long_episode.py).
        gc.collect()
        if stop_reason is not None:
            raise _StopRun(stop_reason)
        return record, terminal

    def _verify_done(self, task: str, step: int, writer: TrajectoryWriter, answer: str | None) -> DoneVerification:
        """--verify-done: a fresh screenshot, and the model asked in a fresh context whether the task is complete.
        Not a clear yes: the reason goes into the next prompt and the run goes on."""
        assert self.env is not None
        observation = self.env.observe()
        shot = writer.save_screenshot(step, observation.image, observation.extension, suffix="_verify")
        verification = check_done(self.client, task, observation, answer=answer, max_tokens=self.max_tokens,
                                  temperature=self.config.temperature)
        verification.screenshot = shot
        if not verification.accepted:
            self._notes.append(overturned_note(verification))
        return verification

    def _resume_mark(self) -> dict[str, bool]:
        """``{"resumed": True}`` for the first record written after a resume, else nothing."""
        if not self._resume_pending:
            return {}
        self._resume_pending = False
        return {"resumed": True}


class _StopRun(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _server_max_len(client: ModelClient) -> int | None:
    getter = getattr(client, "max_model_len", None)
    try:
        return getter() if callable(getter) else None
    except Exception:
        return None


_INTERRUPTED = ("interrupted: the run was killed while this action ran; it may have run completely, partly or "
                "not at all")


def _settled_interrupted_note(record: StepRecord) -> str | None:
    """The note of a recorded step whose in-flight action was marked interrupted (``_settle_interrupted``)."""
    for index, result in enumerate(record.results or []):
        if result.error == _INTERRUPTED:
            return _interrupted_note(record.step, list(record.actions), index)
    return None


def _interrupted_note(step: int, actions: list[Action], finished: int) -> str:
    """What the model is told about a step killed while its actions ran (so it looks before redoing)."""
    text = f"Step {step} was interrupted (the run was killed, then resumed) while its actions ran. "
    if finished:
        text += f"These finished: {'; '.join(describe(a) for a in actions[:finished])}. "
    text += f"This may have run completely, partly or not at all: {describe(actions[finished])}. "
    if actions[finished + 1:]:
        text += f"These did not run: {'; '.join(describe(a) for a in actions[finished + 1:])}. "
    return text + "Look at the screenshot to see what happened before doing any of it again."
