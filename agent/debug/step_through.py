"""Step-through debugging: a hook that pauses before each action and takes commands from a text stream.

Built only on ``AgentHooks``: it shows what the model saw, thought and wants to do (with an annotated
screenshot saved next to the run), then answers ``before_action`` with the user's verdict. It reads lines
from any text stream, so it works in a plain terminal, through a pseudo-terminal and from a piped script.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from actions.coords import CoordinateMode, to_screen
from actions.parser import parse_summary
from actions.types import Action, ActionParseError, describe
from agent.debug.annotate import annotate_file
from agent.hooks import AgentHooks, HookDecision, InterruptedChoice, InterruptedStep, StepContext
from envs.base import Observation

ACTION_TYPES = ("click", "move", "drag", "scroll", "type", "press", "hotkey", "wait", "done", "fail")
BREAK_TYPES = ACTION_TYPES + ("error",)  # "error": an answer that could not be parsed

HELP = """commands (shortcuts: e execute, ed edit, s skip, r retry, c continue, b break, t think, q stop):
  execute              run the action(s) shown (also: an empty line)
  edit ACTION          replace the action, written like the model writes it, e.g.
                       edit pyautogui.click(x=0.5, y=0.25)   (normalized, or pixels of the screenshot)
  skip                 do not run the action; the model is asked again at the next step
  retry [HINT]         ask the model again for this screenshot, HINT added to its prompt
  continue [N]         run this step and the next N-1 without pausing (no N: until a breakpoint)
  break [TYPE]         pause before every TYPE action ({types}); -TYPE removes; no TYPE lists
  think                show the full thinking
  stop                 end the run here; the trajectory so far is kept (also: quit, Ctrl-C twice)
  help                 this text"""

CTRL_C_HINT = "^C - press Ctrl-C again or type stop to end the run here (the trajectory so far is kept)"


class _PromptInterrupt(Exception):
    """Ctrl-C while the debugger waits for a command."""


if TYPE_CHECKING:
    from agent.safety.policy import ConfirmRequest

class StepThrough(AgentHooks):
    """Pause before every step's actions and ask what to do.

    ``input``/``output``: text streams for commands and display (default stdin/stderr).
    ``annotate_dir``: where annotated screenshots go (default ``<run dir>/debug``).
    ``allow_retry``: False where there is no model to ask again (replay).
    ``run_until_break``: start as if ``continue`` had been typed (pause only at ``break_on`` types).
    ``resumable``: on stop, print the ``kimi-cua run --resume`` command (False for a replay).
    """

    def __init__(self, input: TextIO | None = None, output: TextIO | None = None, *,
                 annotate_dir: Path | None = None, thinking_chars: int = 320, break_on: Iterable[str] = (),
                 coordinate_mode: CoordinateMode = "auto", allow_retry: bool = True,
                 run_until_break: bool = False, resumable: bool = True) -> None:
        self.input = input if input is not None else sys.stdin
        self.out = output if output is not None else sys.stderr
        self.annotate_dir = annotate_dir
        self.thinking_chars = thinking_chars
        self.coordinate_mode: CoordinateMode = coordinate_mode
        self.allow_retry = allow_retry
        self.resumable = resumable
        unknown = set(break_on) - set(BREAK_TYPES)
        if unknown:
            raise ValueError(f"cannot break on {sorted(unknown)}: choose from {', '.join(BREAK_TYPES)}")
        self.break_on: set[str] = set(break_on)
        # steps to run without pausing (math.inf: until a breakpoint)
        self._free_steps: float = math.inf if run_until_break else 0
        self._renders = 0
        self._interrupts = 0  # Ctrl-C presses at the current prompt

    # ---- hooks -----------------------------------------------------------------------------------
    def on_step_start(self, step: int, observation: Observation) -> None:
        self._say(f"step {step}: asking the model...")

    def before_action(self, context: StepContext) -> HookDecision | None:
        hit = self._breakpoint(context)
        if self._free_steps > 0 and hit is None:
            self._free_steps -= 1
            self._say(f"step {context.step}: {self._actions_line(context.actions, context.parse_error)} (continuing)")
            return None
        self._free_steps = 0
        if hit:
            self._say(f"breakpoint: {hit}")
        pending = list(context.actions)
        edited = False
        self._show(context, pending)
        while True:
            try:
                line = self._ask(context.step)
            except _PromptInterrupt:
                self._interrupts += 1
                if self._interrupts < 2:
                    self._say(CTRL_C_HINT)
                    continue
                self._interrupts = 0
                self._say(f"Ctrl-C again: stopping the run. {self._kept(context)}")
                return HookDecision(verdict="stop", reason="Ctrl-C twice in the step-through debugger")
            self._interrupts = 0
            if line is None:
                self._say(f"input closed: stopping the run. {self._kept(context)}")
                return HookDecision(verdict="stop", reason="input closed in the step-through debugger")
            command, _, rest = line.strip().partition(" ")
            rest = rest.strip()
            name = _command(command)
            if name == "execute":
                return self._go(pending, edited)
            if name == "edit":
                replaced = self._edit(rest, context.observation)
                if replaced is not None:
                    pending, edited = replaced, True
                    self._show_actions(context, pending)
            elif name == "skip":
                return HookDecision(verdict="skip", reason="skipped in the step-through debugger")
            elif name == "retry":
                if not self.allow_retry:
                    self._say("retry is not available here (there is no model to ask)")
                    continue
                return HookDecision(verdict="retry", hint=rest or None,
                                    reason="asked again in the step-through debugger")
            elif name == "continue":
                steps = self._count(rest)
                if steps is None:
                    continue
                self._free_steps = steps - 1
                return self._go(pending, edited)
            elif name == "break":
                self._set_break(rest)
            elif name == "think":
                thinking = context.reply.thinking if context.reply else ""
                self._say(f"--- thinking ({len(thinking)} chars) ---\n{thinking or '(none)'}\n--- end ---")
            elif name == "stop":
                self._say(f"stopping. {self._kept(context)}")
                return HookDecision(verdict="stop", reason="stopped in the step-through debugger")
            elif name == "help":
                self._say(HELP.format(types=", ".join(BREAK_TYPES)))
            else:
                self._say(f"unknown command {command!r}; type help for the list")

    def on_step_end(self, record: object) -> None:
        result = getattr(record, "result", None)
        step = getattr(record, "step", "?")
        if result is None:
            return
        stopped = getattr(record, "stopped", None)
        if stopped and result.skipped:
            self._say(f"step {step} stopped: not run ({stopped})")
            return
        if result.skipped:
            state = "skipped / not run"
        elif result.ok:
            state = "ok"
        else:
            state = f"FAILED: {result.error}"
        by = " (your action)" if getattr(record, "decided_by", "model") == "user" else ""
        self._say(f"step {step} done{by}: {state}")

    # ---- display ---------------------------------------------------------------------------------
    def _show(self, context: StepContext, pending: list[Action]) -> None:
        self._say(f"=== step {context.step}/{context.max_steps} ===")
        reply = context.reply
        if reply is not None:
            if reply.thinking:
                self._say(f"thinking: {self._shorten(reply.thinking)}")
            self._say(f"summary: {reply.summary or '(empty)'}")
        if context.parse_error:
            self._say(f"could not parse the answer: {context.parse_error}")
        self._say(f"budget: {_budget_line(context)}")
        self._show_actions(context, pending)

    def _show_actions(self, context: StepContext, pending: list[Action]) -> None:
        if pending:
            for index, action in enumerate(pending, 1):
                self._say(f"action {index}: {describe(action)}  [screen pixels]")
        else:
            self._say("action: none")
        path = self._annotate(context, pending)
        if path is not None:
            self._say(f"screenshot: {path}")

    def _annotate(self, context: StepContext, pending: list[Action]) -> Path | None:
        if not context.screenshot_path:
            return None
        source = Path(context.screenshot_path)
        folder = self.annotate_dir or source.parent / "debug"
        self._renders += 1
        dest = folder / f"step_{context.step:04d}_{self._renders}.png"
        try:
            return annotate_file(source, pending, context.observation.geometry.monitor, dest)
        except OSError as exc:
            self._say(f"(could not save the annotated screenshot: {exc})")
            return None

    def _kept(self, context: StepContext) -> str:
        if not context.screenshot_path:
            return "The trajectory so far is kept."
        run_dir = Path(context.screenshot_path).parent
        text = f"The trajectory so far is kept in {run_dir}"
        return text + (f"; continue it with: kimi-cua run --resume {run_dir}" if self.resumable else ".")

    def _shorten(self, thinking: str) -> str:
        flat = " ".join(thinking.split())
        if len(flat) <= self.thinking_chars:
            return flat
        half = self.thinking_chars // 2
        return f"{flat[:half]} [...{len(flat) - 2 * half} chars, type think for all...] {flat[-half:]}"

    @staticmethod
    def _actions_line(actions: list[Action], parse_error: str | None) -> str:
        if parse_error:
            return f"unparseable answer ({parse_error[:60]})"
        return "; ".join(describe(a) for a in actions) or "no action"

    def on_interrupted_step(self, interrupted: InterruptedStep) -> InterruptedChoice | None:
        """A resumed run's step was killed while its actions ran: ask whether they ran (default: the model looks)."""
        uncertain = interrupted.uncertain()
        if uncertain is None:
            return None
        self._say(f"=== step {interrupted.step} was interrupted: the run was killed while its actions ran ===")
        for index, action in enumerate(interrupted.actions, 1):
            state = ("finished" if index <= interrupted.finished else
                     "MAY HAVE RUN (completely, partly or not at all)" if index == interrupted.finished + 1 else
                     "did not run")
            self._say(f"action {index}: {describe(action)}  [{state}]")
        while True:
            self.out.write("did it run? y = it ran, n = run it again now, empty = let the model look at the screen> ")
            self.out.flush()
            line = self.input.readline()
            answer = line.strip().lower()
            if line == "" or answer in ("", "m", "model", "?"):
                return "model"
            if answer in ("y", "yes"):
                return "ran"
            if answer in ("n", "no", "rerun", "r"):
                return "rerun"
            self._say(f"unknown answer {answer!r}: y, n, or an empty line")

    def confirm(self, request: "ConfirmRequest") -> bool:
        """The safety policy's question, asked on the debugger's own input (default no)."""
        self._say(f"safety: step {request.step} wants to {request.description}\n  rule: {request.rule} - "
                  f"{request.reason}")
        try:
            answer = self._read_line("allow it? [y/N] ")
        except _PromptInterrupt:
            self._say("^C - not allowed")
            return False
        return answer.strip().lower() in ("y", "yes")

    # ---- commands --------------------------------------------------------------------------------
    def _ask(self, step: int) -> str | None:
        """One command line, None at end of input; raises _PromptInterrupt on Ctrl-C (SIGINT) at the prompt."""
        line = self._read_line(f"[step {step}] command (help)> ")
        return None if line == "" else line

    def _read_line(self, prompt: str) -> str:
        """Show ``prompt`` and read a line. Meanwhile (main thread only) SIGINT raises _PromptInterrupt instead of
        going to the run's handler (the kill switch would only note it for later, so nothing would show)."""

        def read() -> str:
            self.out.write(prompt)
            self.out.flush()
            return self.input.readline()

        if threading.current_thread() is not threading.main_thread():
            return read()

        def interrupted(signum: int, frame: object) -> None:
            raise _PromptInterrupt

        try:
            previous = signal.signal(signal.SIGINT, interrupted)
        except ValueError:  # not the main interpreter
            return read()
        try:
            return read()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _go(self, pending: list[Action], edited: bool) -> HookDecision | None:
        if edited:
            return HookDecision(verdict="replace", actions=pending, reason="action edited in the step-through debugger")
        return None

    def _edit(self, text: str, observation: Observation) -> list[Action] | None:
        if not text:
            self.out.write("action> ")
            self.out.flush()
            text = self.input.readline().strip()
            if not text:
                self._say("no action given; nothing changed")
                return None
        try:
            parsed = parse_summary(text)
            return [to_screen(a, shown_width=observation.width, shown_height=observation.height,
                              monitor=observation.geometry.monitor, mode=self.coordinate_mode) for a in parsed]
        except ActionParseError as exc:
            self._say(f"cannot use that action: {exc}")
            return None

    def _count(self, text: str) -> float | None:
        if not text:
            return math.inf
        try:
            steps = int(text)
        except ValueError:
            steps = 0
        if steps < 1:
            self._say(f"continue takes a whole number of steps >= 1, not {text!r}")
            return None
        return steps

    def _set_break(self, text: str) -> None:
        if text:
            remove = text.startswith("-")
            kind = text.lstrip("-").lower()
            if kind not in BREAK_TYPES:
                self._say(f"cannot break on {kind!r}: choose from {', '.join(BREAK_TYPES)}")
                return
            (self.break_on.discard if remove else self.break_on.add)(kind)
        self._say("breakpoints: " + (", ".join(sorted(self.break_on)) or "none"))

    def _breakpoint(self, context: StepContext) -> str | None:
        if context.parse_error or not context.actions:
            return "error" if "error" in self.break_on else None
        for action in context.actions:
            if action.type in self.break_on:
                return action.type
        return None

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


_COMMANDS = {"": "execute", "e": "execute", "x": "execute", "execute": "execute", "ed": "edit", "edit": "edit",
             "s": "skip", "skip": "skip", "r": "retry", "retry": "retry", "c": "continue", "continue": "continue",
             "b": "break", "break": "break", "t": "think", "think": "think", "full": "think", "q": "stop",
             "stop": "stop", "quit": "stop", "exit": "stop", "h": "help", "help": "help", "?": "help"}


def _command(word: str) -> str | None:
    return _COMMANDS.get(word.lower())


def _budget_line(context: StepContext) -> str:
    budget = context.budget or {}
    usage = context.reply.usage if context.reply else None
    prompt = (usage.prompt_tokens if usage and usage.prompt_tokens else None) or budget.get("actual_prompt_tokens")
    estimate = budget.get("estimated_prompt_tokens")
    limit = budget.get("max_model_len") or 0
    used = prompt or estimate
    parts: list[str] = []
    if used:
        source = "server" if prompt else "estimated"
        share = f" of {limit:,} ({100 * used / limit:.1f}%)" if limit else ""
        parts.append(f"{used:,} prompt tokens{share} [{source}]")
    if usage and usage.completion_tokens:
        parts.append(f"{usage.completion_tokens:,} reply tokens")
    if "images_sent" in budget:
        cap = budget.get("max_images")
        parts.append(f"{budget['images_sent']}{f'/{cap}' if cap else ''} images")
    if budget.get("turns_condensed"):
        parts.append(f"{budget['turns_condensed']} earlier steps condensed")
    parts.append(f"step {context.step} of {context.max_steps}")
    return ", ".join(parts)
