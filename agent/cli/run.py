"""``kimi-cua run "TASK"``: run the agent on a desktop."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from actions.types import describe
from agent.models.vllm import (DEFAULT_BASE_URL, ModelClient, NotAnOpenAIServer, Notice, RetryEvent, ServerError,
                               ServerUnreachable, VLLMClient)
from agent.cli.environments import add_env_arguments, check_env_arguments, env_options_from, open_environment
from agent.cli.validate import (DEFAULT_SIZE, UsageError, check_writable_dir, nonnegative_float, nonnegative_int,
                                positive_float, positive_int, zoom_rounds)
from agent.debug.step_through import BREAK_TYPES, StepThrough
from agent.safety.guards import add_guard_arguments, guard_hooks
from agent.hooks import AgentHooks, HookChain
from agent.loop import Agent, AgentConfig
from agent.safety.policy import DEFAULT_SAFETY, SafetyConfigError
from agent.trajectory import RecordError, RunInfo, StepRecord, default_run_dir, read_info, read_trajectory
from envs.base import DisplayError


class ConfigError(ValueError):
    """Flags that do not fit together."""


class StepPrinter(AgentHooks):
    """The live display: one line per step, optionally the thinking as it streams.

    On a terminal a counter (``thinking... N chars``) is rewritten in place while the reply streams, and erased
    once the reply is complete, before anything else is printed (the debugger, a safety question, the step
    line); elsewhere (a pipe, a file) nothing is printed while the reply streams. Put it first in a HookChain:
    its ``before_action`` always approves, and ends the live line before the hooks after it print.
    """

    def __init__(self, max_steps: int, stream: TextIO | None = None, show_thinking: bool = False) -> None:
        # sys.stderr is read now, not when the module was imported (it may have been replaced since).
        self.max_steps, self.out, self.show_thinking = max_steps, stream or sys.stderr, show_thinking
        self._chars = 0
        self._open = False  # the counter or streamed thinking left a line unfinished

    def on_step_start(self, step: int, observation: object) -> None:
        self._end_line()
        self._chars = 0
        if self.show_thinking:
            self.out.write(f"--- step {step} ---\n")

    def on_delta(self, text: str) -> None:
        self._chars += len(text)
        if self.show_thinking:
            if text:
                self.out.write(text)
                self.out.flush()
                self._open = not text.endswith("\n")
        elif self.out.isatty():
            self.out.write(f"\r  thinking... {self._chars:,} chars")
            self.out.flush()
            self._open = True

    def before_action(self, context: object) -> None:  # type: ignore[override]
        """The reply is complete: end the live line before any other hook prints."""
        self._end_line()
        self._chars = 0
        return None

    def _end_line(self) -> None:
        if not self._open:
            return
        self._open = False
        # streamed thinking ends with a newline; the counter is erased (the step line takes its place)
        self.out.write("\n" if self.show_thinking else "\r\033[K")
        self.out.flush()

    def on_step_end(self, record: StepRecord) -> None:  # type: ignore[override]
        self._end_line()
        what = "; ".join(describe(a) for a in record.actions) or "no action"
        if record.parse_error:
            what = f"unparseable answer: {record.parse_error[:80]}"
        state = _step_state(record)
        model_s = record.timings.get("model_ms", 0) / 1000
        budget = record.budget or {}
        tokens = record.usage.prompt_tokens or budget.get("estimated_prompt_tokens", 0)
        line = (f"step {record.step}/{self.max_steps} | {what} | {state} | "
                f"model {model_s:.1f}s | {tokens:,} prompt tokens, {budget.get('images_sent', '?')} images")
        if record.result.settle_ms is not None:
            line += f" | settle {record.result.settle_ms:.0f} ms"
        self.out.write(line + "\n")
        self.out.flush()


def _step_state(record: StepRecord) -> str:
    """What became of a step's actions, in a word or two: ok, FAILED (why), skipped, stopped (why), done, fail."""
    stopped = getattr(record, "stopped", None)
    if record.parse_error or not record.result.ok:
        state = "FAILED"
        if record.result.error:
            state += f" ({record.result.error[:60]})"
        return state + (f", stopped ({stopped[:60]})" if stopped else "")
    if stopped and record.result.skipped:
        return f"stopped, not run ({stopped[:60]})"
    if record.result.skipped:
        return "skipped, not run"
    if stopped:
        return f"ok, then stopped ({stopped[:60]})"
    terminal = next((a for a in record.actions if a.type in ("done", "fail")), None)
    verification = getattr(record, "verification", None)
    if verification is not None and not verification.accepted:
        return f"done overturned by the check ({verification.verdict}: {verification.reason[:60]})"
    if terminal is not None:
        return "done" if terminal.type == "done" else "fail (the agent gave up)"
    return "ok"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model server")
    g.add_argument("--backend", choices=["vllm", "transformers"], default="vllm",
                   help="vllm: an OpenAI-compatible server (default); transformers: load --model DIR in process")
    g.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"OpenAI-compatible server (default {DEFAULT_BASE_URL})")
    g.add_argument("--model", help="served model name (default: discovered from /v1/models)")
    g.add_argument("--api-key", help="bearer token, if the server wants one")
    g.add_argument("--variant", choices=["thinking-2506", "thinking", "instruct"],
                   help="sampling defaults and image rule (default: guessed from the model name)")
    g.add_argument("--temperature", type=nonnegative_float,
                   help="default: 0.8 thinking-2506, 0.6 thinking, 0.2 instruct")
    g.add_argument("--max-tokens", type=positive_int, help="reply limit per step (default 8192 thinking, 1024 instruct)")
    g.add_argument("--model-dir", type=Path, help="local copy of the model files (tokenizer, preprocessor_config.json) "
                   "for exact token counts; nothing is downloaded")
    g.add_argument("--timeout", type=positive_float, default=300.0, help="seconds a whole reply may take, then it is retried "
                   "(default 300)")
    g.add_argument("--retries", type=nonnegative_int, default=3, help="retries of transient server faults (default 3)")
    g.add_argument("--resend-images", choices=["auto", "always"], default="auto",
                   help="auto: each screenshot's bytes go to a vLLM once, later requests name it by uuid (default); "
                   "always: every request carries every image")


def client_from(args: argparse.Namespace) -> ModelClient:
    if getattr(args, "backend", "vllm") == "transformers":
        if not args.model:
            raise ConfigError("--backend transformers needs --model DIR (a local Kimi-VL checkpoint)")
        from agent.models.transformers import TransformersClient

        return TransformersClient(args.model, variant=args.variant or "thinking-2506")
    return VLLMClient(args.base_url, model=args.model, api_key=args.api_key, timeout=args.timeout,
                      retries=args.retries, variant=args.variant, on_retry=_print_retry, on_notice=_print_notice,
                      resend_images=getattr(args, "resend_images", "auto"))


def _print_retry(event: RetryEvent) -> None:
    print(f"kimi-cua: server fault, retry {event.attempt}/{event.of} in {event.wait_s:.1f}s: {event.error}",
          file=sys.stderr)


def _print_notice(notice: Notice) -> None:
    print(f"kimi-cua: {notice.message}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent on a task", description="Run the agent on a desktop until it "
                       "finishes (exit 0), fails or runs out of steps (exit 1). Exit 2: bad usage or configuration.")
    p.add_argument("task", nargs="?", help="what the agent should do, in words (omit with --resume)")
    add_model_arguments(p)
    add_env_arguments(p)
    add_guard_arguments(p)
    g = p.add_argument_group("run")
    g.add_argument("--max-steps", type=positive_int, default=30, help="give up after this many steps (default 30)")
    g.add_argument("--out", type=Path, help="run directory (default: runs/<timestamp>)")
    g.add_argument("--resume", type=Path, metavar="DIR", help="continue the run recorded in DIR (task and "
                   "history come from it; so do the server, model, --max-steps and the environment, unless given again)")
    g.add_argument("--coords", choices=["auto", "normalized", "pixels"], default="auto",
                   help="how to read model coordinates (default auto: all <= 1 means normalized)")
    g.add_argument("--zoom", type=zoom_rounds, default=0, metavar="N",
                   help="zoom-in grounding for clicks: after the model's point, show it a crop around the point "
                   "(from the native screenshot, sent at full detail) and ask again, up to N rounds (default 0: off)")
    g.add_argument("--max-images", type=positive_int, default=64, help="screenshots per request; match vLLM's "
                   "--limit-mm-per-prompt (default 64)")
    g.add_argument("--max-context", type=positive_int, help="context tokens (default: the server's max_model_len)")
    g.add_argument("--reply-reserve", type=positive_int, help="tokens kept free for the reply (default: --max-tokens)")
    g.add_argument("--no-stream", action="store_true", help="do not stream replies")
    g.add_argument("--show-thinking", action="store_true", help="print the model's output live as it streams")
    g.add_argument("--step", action="store_true", help="step through: before every action show the step and an "
                   "annotated screenshot, then execute, edit, skip, retry, continue N, break TYPE or stop (type help)")
    g.add_argument("--verify-done", action=argparse.BooleanOptionalAction, default=None,
                   help="when the model answers done, take a fresh screenshot and ask it in a short fresh context "
                   "whether the task is complete; done stands only on a clear yes, else the reason goes back to the "
                   "model and the run goes on (default off for run, on for eval local)")
    g.add_argument("--break-on", action="append", default=[], metavar="TYPE", choices=BREAK_TYPES,
                   help="step through, but pause only before actions of TYPE (repeatable; 'error' = unparseable)")
    p.set_defaults(handler=run_command)


# What `run --resume DIR` takes from the recorded run unless the flag is given again (run.json "settings").
RESUMED_SETTINGS = ("base_url", "model", "variant", "backend", "temperature", "max_tokens", "timeout", "retries",
                    "max_steps", "coords", "zoom", "max_images", "max_context", "reply_reserve", "no_stream", "env",
                    "osworld_url", "display", "monitor", "size", "no_wm", "launch", "settle", "settle_ms",
                    "max_settle_ms", "encoding", "sandbox", "sandbox_network", "verify_done")


def run_settings(args: argparse.Namespace) -> dict:
    """The flags a resume reuses, as recorded in run.json (``settings``)."""
    settings = {name: getattr(args, name, None) for name in RESUMED_SETTINGS}
    if settings["size"] is None and settings["env"] == "virtual":
        settings["size"] = DEFAULT_SIZE
    if settings["size"] is not None:
        settings["size"] = list(settings["size"])
    return settings


def _read_resumed(run_dir: Path) -> RunInfo:
    """The recorded run to continue, checked before anything starts (UsageError: one line, exit 2)."""
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such folder; give the run directory to continue")
    try:
        info = read_info(run_dir)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{run_dir / 'run.json'} is not a readable run record ({first}); restore it, or start a "
                         "new run with --out") from None
    if info is None:
        raise UsageError(f"{run_dir} has no run.json: not a kimi-cua run directory; give the folder of a "
                         "recorded run")
    try:
        read_trajectory(run_dir)
    except FileNotFoundError:
        pass  # killed before the first step was recorded: resuming starts at step 1
    except (OSError, ValueError) as exc:
        raise UsageError(f"{exc}; fix or remove that line to resume") from None
    return info


def _apply_recorded(args: argparse.Namespace, info: RunInfo) -> None:
    """Flags not given again take the recorded run's values (older runs: server, model and max_steps)."""
    from agent.cli.main import explicit

    given = explicit(args, args.argv) if hasattr(args, "argv") and hasattr(args, "_parser") else set()
    recorded = dict(info.settings)
    recorded.setdefault("base_url", info.base_url or None)
    recorded.setdefault("model", info.model or None)
    recorded.setdefault("max_steps", info.config.get("max_steps"))
    for name, value in recorded.items():
        if name in RESUMED_SETTINGS and name not in given and value is not None:
            setattr(args, name, tuple(value) if name == "size" else value)
    if args.env != "virtual" and "launch" not in given:
        args.launch = []  # the programs of a run on your own display are still there: not started twice


def run_command(args: argparse.Namespace) -> int:
    info: RunInfo | None = None
    if args.resume is not None:
        info = _read_resumed(args.resume)
        if args.task and args.task != info.task:
            raise UsageError(f"--resume continues the recorded task ({info.task!r}), not {args.task!r}; drop the "
                             "task to resume, or start a new run without --resume")
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise UsageError("--resume DIR continues in DIR; drop --out")
        _apply_recorded(args, info)
        args.task = info.task
        args.out = args.resume
    if not args.task:
        raise UsageError("run needs a TASK (or --resume DIR); e.g. kimi-cua run \"open the terminal\"")
    args.out = args.out or default_run_dir()
    check_writable_dir(args.out, "--resume" if args.resume is not None else "--out")
    check_env_arguments(args)
    try:
        client = client_from(args)
        try:
            client.models()  # fail fast (within the connect timeout) when no server answers
        except (ServerUnreachable, NotAnOpenAIServer):
            raise
        except ServerError:
            if not args.model:
                raise
            # A server without /v1/models still works when the model is named.
        model = client.model
    except (ServerUnreachable, ServerError, ConfigError) as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    config = AgentConfig(max_steps=args.max_steps, out_dir=args.out, coordinate_mode=args.coords,
                         variant=args.variant, temperature=args.temperature, max_tokens=args.max_tokens,
                         stream=not args.no_stream, max_context=args.max_context, max_images=args.max_images,
                         reply_reserve=args.reply_reserve, verify_done=bool(args.verify_done), zoom=args.zoom,
                         model_dir=args.model_dir or (Path(args.model) if args.backend == "transformers" else None))
    stepper = None
    if args.step or args.break_on:
        stepper = StepThrough(sys.stdin, sys.stderr, break_on=args.break_on, coordinate_mode=args.coords,
                              run_until_break=bool(args.break_on) and not args.step)
    try:
        switch, guards = guard_hooks(args, confirm=stepper.confirm if stepper else None)
    except SafetyConfigError as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    # Guards before the debugger: a refused or stopped action never reaches its "execute". The printer (which
    # always approves) first: it ends its live line before a guard or the debugger prints.
    hooks: list[AgentHooks] = [StepPrinter(args.max_steps, show_thinking=args.show_thinking), *guards,
                               *([stepper] if stepper else [])]
    print(f"kimi-cua: {model} at {client.base_url}, task: {args.task}", file=sys.stderr)
    started = False
    resume_hint = f"kimi-cua: the trajectory is saved; continue with: kimi-cua run --resume {args.out}"
    try:
        with switch.installed(), open_environment(env_options_from(args)) as env:
            agent = Agent(env, client, config, hooks=HookChain(hooks),
                          safety=None if args.no_safety else DEFAULT_SAFETY)
            started = True
            result = agent.run(args.task, resume=args.resume is not None, settings=run_settings(args))
    except DisplayError as exc:
        print(f"kimi-cua: {exc}" + (f"\n{resume_hint}" if started else ""), file=sys.stderr)
        return 1 if started else 2
    except (FileExistsError, ValueError) as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"kimi-cua: {exc}\n{resume_hint}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a read-only --out: the message names the path and the fix
        return _recording_failed(exc, args.out)
    finally:
        client.close()
    print(f"kimi-cua: {result.status} after {result.steps} steps"
          + (f", answer: {result.answer}" if result.answer else "")
          + (f" ({result.error})" if result.error else "") + f"; trajectory in {result.out_dir}", file=sys.stderr)
    return 0 if result.status == "done" else 1


def _recording_failed(exc: OSError, out: Path) -> int:
    """Exit 1 with the resume hint when steps were recorded, 2 when nothing started."""
    if isinstance(exc, RecordError):
        message = str(exc)
    else:
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
    print(f"kimi-cua: {message}", file=sys.stderr)
    try:
        steps = len(read_trajectory(out))
        info = read_info(out)
    except (OSError, ValueError):
        steps, info = 0, None
    if not steps:
        print("kimi-cua: no step was recorded, so nothing needs resuming", file=sys.stderr)
        return 2
    marked = (f"the run is marked '{info.status}' in {out / 'run.json'}" if info is not None and info.status != "running"
              else f"{out / 'run.json'} could not be updated")
    print(f"kimi-cua: {steps} recorded step(s) are kept; {marked}. Once fixed, continue with: "
          f"kimi-cua run --resume {out}", file=sys.stderr)
    return 1
