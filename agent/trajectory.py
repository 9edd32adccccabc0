"""The run directory: ``trajectory.jsonl`` (one StepRecord per line, flushed every step) + screenshots.

A killed run loses at most the step in flight: each line is written whole, flushed and fsynced before the
next step starts, and readers ignore a torn last line. Before a step's actions run, the step is written to
``intent.jsonl`` (atomically, fsynced; one progress line after each action), and removed once the step's
record is in the trajectory: a resume that finds an intent without a record knows those actions may have run.

Every write failure (a full disk, a read-only folder) raises ``RecordError``, which names the path and the fix.
"""
from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_serializer, model_validator

from actions.coords import Monitor
from actions.types import Action
from agent.reply import Usage, split_thinking
from envs.base import ActionResult

RunStatus = Literal["done", "fail", "max_steps", "stopped", "error", "running"]
INTENT_FILE = "intent.jsonl"


class RecordError(OSError):
    """The run directory could not be written: the message names the path, the cause and the fix."""

    def __init__(self, path: Path, exc: OSError) -> None:
        cause = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            fix = "free some space on that disk (or choose another --out)"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            fix = "choose a writable --out folder"
        else:
            fix = "check the folder, or choose another --out"
        super().__init__(exc.errno, f"cannot write {path}: {cause}; {fix}", str(path))
        self.path = Path(path)


class RetriedAnswer(BaseModel):
    """An answer of a step that was not used: a hook (the debugger's ``retry [HINT]``, the stuck detector) asked
    the model again, with ``hint`` added to its next prompt."""

    hint: str | None = None
    reason: str | None = None
    summary: str = ""
    actions: list[Action] = Field(default_factory=list)  # screen pixels, as parsed (never run)
    parse_error: str | None = None


class DoneVerification(BaseModel):
    """``--verify-done``: the model answered DONE, and was asked again in a short fresh context (the task and a fresh
    screenshot) whether the task is complete. DONE stands only on a clear yes."""

    asked: bool = True
    verdict: Literal["yes", "no", "unclear"] = "unclear"
    reason: str = ""
    accepted: bool = False  # a clear yes: the run ended with done; otherwise the reason went back to the model
    screenshot: str = ""  # the fresh screenshot (file name inside the run directory)
    response: str = ""  # the checker's raw reply
    usage: Usage = Field(default_factory=Usage)
    model_ms: float = 0.0


class LoopGuardEvent(BaseModel):
    """The loop guard (agent.safety.loop_guard) saw the agent loop: tier 1 a note, tier 2 a stronger note (both ask
    the model again with the note), tier 3 the run stopped."""

    shape: Literal["repeat", "alternate", "no_change", "retype"]
    tier: int = Field(ge=1, le=3)
    count: int  # how long the loop is: repeats, alternating steps, steps without change, times typed
    message: str  # what the model was told (tiers 1-2), or why the run stopped (tier 3)


class StepRecord(BaseModel):
    step: int
    screenshot: str  # file name inside the run directory
    image_width: int
    image_height: int
    monitor: Monitor | None = None  # the monitor acted on (screen pixels), to map actions onto the screenshot
    response: str = ""  # raw model text
    thinking: str = ""  # in the file: null when it is the thinking in ``response`` (stored once)
    summary: str = ""
    action: Action | None = None  # the first action, screen pixels
    actions: list[Action] = Field(default_factory=list)  # every action of the step, screen pixels
    result: ActionResult = Field(default_factory=ActionResult)
    results: list[ActionResult] = Field(default_factory=list)
    parse_error: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    budget: dict[str, Any] | None = None
    timings: dict[str, float] = Field(default_factory=dict)  # milliseconds per phase
    user_text: str = ""
    decided_by: Literal["model", "user", "replay"] = "model"
    notes: list[str] = Field(default_factory=list)
    retries: list[RetriedAnswer] = Field(default_factory=list)  # answers asked again before this one
    zoom: list[dict[str, Any]] | None = None  # zoom-in rounds of the step's click: crop box and point each (agent/zoom.py)
    stopped: str | None = None  # the run stopped at this step, and why (its actions did not run, or not all)
    resumed: bool = False  # the first step recorded after the run was stopped (or killed) and resumed
    verification: DoneVerification | None = None  # --verify-done: the check of this step's DONE
    loop_guard: list[LoopGuardEvent] = Field(default_factory=list)  # loops the guard saw at this step
    timestamp: float = Field(default_factory=time.time)

    # The thinking is most of a reply (up to the reply cap): it is written once, inside ``response``, and
    # ``thinking`` is null in the file whenever it can be read back from there.
    @field_serializer("thinking", when_used="json")
    def _thinking_once(self, thinking: str) -> str | None:
        return None if thinking and split_thinking(self.response)[0] == thinking else thinking

    @model_validator(mode="before")
    @classmethod
    def _thinking_from_response(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("thinking", "") is None:
            data = {**data, "thinking": split_thinking(str(data.get("response") or ""))[0]}
        return data


class RunInfo(BaseModel):
    task: str
    model: str = ""
    base_url: str = ""
    started: float = Field(default_factory=time.time)
    config: dict[str, Any] = Field(default_factory=dict)
    status: RunStatus = "running"
    answer: str | None = None
    error: str | None = None
    steps: int = 0
    finished: float | None = None
    resumed_at_step: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)  # the command's settings a resume reuses (CLI flags)


def default_run_dir(root: Path = Path("runs")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / stamp
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


class StepIntent(BaseModel):
    """A step whose actions were about to run: the record as decided, and the results of those that finished."""

    record: StepRecord  # result/results empty: nothing had run when it was written
    results: list[ActionResult] = Field(default_factory=list)  # one per action known to have finished

    @property
    def finished(self) -> int:
        return len(self.results)


class _Progress(BaseModel):
    done: int
    result: ActionResult


class TrajectoryWriter:
    """Appends steps to ``trajectory.jsonl``; writes ``run.json`` at start and end; keeps the intent of a step."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "trajectory.jsonl"
        self.intent_path = self.out_dir / INTENT_FILE
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordError(self.out_dir, exc) from None
        # Unbuffered (os-level) appends: a failed write leaves nothing queued that a later flush could add.
        self._fd = _open_append(self.path)
        self._intent: int | None = None  # the open intent file while a step's actions run
        self.last_step: int | None = None  # the step of the last record this writer appended

    def save_screenshot(self, step: int, data: bytes, extension: str, suffix: str = "") -> str:
        name = f"step_{step:04d}{suffix}.{extension}"
        _write_atomic(self.out_dir / name, data, durable=False)
        return name

    def append(self, record: StepRecord) -> None:
        """One whole line, fsynced; a failed write is cut back so no torn line stays behind."""
        line = (record.model_dump_json() + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass  # the next resume cuts the torn line
            raise RecordError(self.path, exc) from None
        self.last_step = record.step

    def write_info(self, info: RunInfo) -> None:
        data = info.model_dump_json(indent=2).encode("utf-8")
        path = self.out_dir / "run.json"
        try:
            _write_atomic(path, data, durable=False)
        except RecordError as failed:
            # A full disk still lets a small file be rewritten inside the blocks it already has: the run is
            # marked (status error, the cause) even when no new file can be made.
            if not _rewrite_in_place(path, data):
                raise failed from None

    # ---- the intent of the step in flight --------------------------------------------------------
    def begin_intent(self, record: StepRecord) -> None:
        """Record durably that ``record``'s actions are about to run (before any of them does)."""
        data = StepIntent(record=record).model_dump_json().encode("utf-8") + b"\n"
        _write_atomic(self.intent_path, data, durable=True)
        self._intent = _open_append(self.intent_path)

    def resume_intent(self) -> None:
        """Go on recording progress in the intent left by a killed run (its unfinished actions run again)."""
        repair_tail(self.intent_path, _valid_progress)
        self._intent = _open_append(self.intent_path)

    def intent_progress(self, done: int, result: ActionResult) -> None:
        """``done`` actions of the step have finished, the last with ``result``."""
        if self._intent is None:
            return
        try:
            _write_all(self._intent, _Progress(done=done, result=result).model_dump_json().encode("utf-8") + b"\n")
            os.fsync(self._intent)
        except OSError as exc:
            raise RecordError(self.intent_path, exc) from None

    def end_intent(self) -> None:
        """The step's record is in the trajectory: its intent is no longer needed."""
        if self._intent is not None:
            os.close(self._intent)
            self._intent = None
        clear_intent(self.out_dir)

    def close(self) -> None:
        if self._intent is not None:
            os.close(self._intent)
            self._intent = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _open_append(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RecordError(path, exc) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, *, durable: bool) -> None:
    """Write a temporary file and rename it over ``path``; on failure nothing is left behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise RecordError(path, exc) from None


def _rewrite_in_place(path: Path, data: bytes) -> bool:
    """Overwrite a small existing file without allocating (its blocks hold ``data``); False when it cannot."""
    try:
        st = path.stat()
        if len(data) > max(st.st_size, st.st_blocks * 512):
            return False
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate(len(data))
        return True
    except OSError:
        return False


def repair_tail(path: Path, is_valid: Callable[[bytes], bool]) -> None:
    """Make a JSON-lines file end on a whole line, in place (a run killed mid-write leaves a torn last line).

    A last line that is complete but lacks its newline gets the newline; a torn one is cut off with
    ``os.truncate``, so a kill during the repair leaves either the old or the repaired file, never less.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        start = size
        chunk = 1 << 16
        while start > 0:  # find the start of the last line, reading backwards
            begin = max(0, start - chunk)
            f.seek(begin)
            block = f.read(start - begin)
            cut = block.rfind(b"\n")
            if cut >= 0:
                start = begin + cut + 1
                break
            start = begin
        f.seek(start)
        last = f.read()
    if last.strip() and is_valid(last):
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
    else:
        os.truncate(path, start)


def _valid_record(line: bytes) -> bool:
    try:
        StepRecord.model_validate_json(line)
        return True
    except (ValidationError, ValueError):
        return False


def _valid_progress(line: bytes) -> bool:
    try:
        _Progress.model_validate_json(line)
        return True
    except (ValidationError, ValueError):
        return False


def repair_trajectory(out_dir: Path) -> None:
    """Cut a torn last line of ``trajectory.jsonl`` in place (before appending to a resumed run)."""
    repair_tail(Path(out_dir) / "trajectory.jsonl", _valid_record)


def read_intent(out_dir: Path) -> StepIntent | None:
    """The intent left by a step whose actions were running when the run stopped, or None."""
    path = Path(out_dir) / INTENT_FILE
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return None
    try:
        intent = StepIntent.model_validate_json(lines[0])
    except (ValidationError, ValueError):
        return None  # never happens for a renamed file; an unreadable one cannot be acted on
    for line in lines[1:]:
        try:
            progress = _Progress.model_validate_json(line)
        except (ValidationError, ValueError):
            break  # a torn progress line: that action's result is unknown
        if progress.done == intent.finished + 1:
            intent.results.append(progress.result)
    return intent


def clear_intent(out_dir: Path) -> None:
    try:
        (Path(out_dir) / INTENT_FILE).unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass  # a stale intent is recognised on resume: its step is already in the trajectory


def read_trajectory(out_dir: Path) -> list[StepRecord]:
    """All complete steps of a run; a torn last line (killed mid-write) is ignored."""
    path = Path(out_dir) / "trajectory.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {out_dir} a kimi-cua run directory?")
    records: list[StepRecord] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(StepRecord.model_validate_json(line))
        except (ValidationError, json.JSONDecodeError) as exc:
            if number == len(lines):
                break  # the step in flight when the run was killed
            raise ValueError(f"{path}:{number} is not a valid step record ({_first_problem(exc)})") from None
    return records


def _first_problem(exc: ValueError) -> str:
    """One line for a bad record: the first field pydantic rejected, or where the JSON breaks."""
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "the record"
        more = f", and {len(errors) - 1} more" if len(errors) > 1 else ""
        return f"{where}: {first.get('msg', 'invalid')}{more}"
    return str(exc).splitlines()[0]


def read_info(out_dir: Path) -> RunInfo | None:
    path = Path(out_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        return RunInfo.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise ValueError(f"{path} is not a valid run record ({_first_problem(exc)})") from None
