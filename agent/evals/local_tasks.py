"""OSWorld-format tasks on our own virtual desktop: the task-JSON schema, setup steps and evaluators.

A task file has OSWorld's shape: ``{id, instruction, config: [{type, parameters}], evaluator: {func, result,
expected, options, conj, postconfig}, ...}``. Supported here are the setup types that need no VM (launch,
execute, command, open, sleep, activate_window) and evaluators computed from command output and files.
Each task gets a private HOME (``~/`` in commands and paths points there) on a private X display.

Two additions for tasks shipped with kimi-cua (ignored by nothing in OSWorld, which never sees them):
``{python}`` and ``{apps}`` in command arguments expand to this interpreter and ``envs/apps``, and
``launch`` accepts ``wait_for_window: "<title>"`` to wait until that window is mapped instead of sleeping.
"""
from __future__ import annotations

import difflib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

APPS_DIR = Path(__file__).resolve().parents[2] / "envs" / "apps"
BUILTIN_TASKS_DIR = Path(__file__).parent / "tasks"
SUPPORTED_SETUP = ("launch", "execute", "command", "open", "sleep", "activate_window")


class TaskError(RuntimeError):
    """A task that cannot be loaded, set up or evaluated; the message names the task and the step."""


class SetupStep(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class Getter(BaseModel):
    """Where a value for a metric comes from: ``vm_command_line``, ``vm_command_error``, ``vm_file``, ``rule``."""

    model_config = ConfigDict(extra="allow")
    type: str


class Evaluator(BaseModel):
    model_config = ConfigDict(extra="allow")
    func: str | list[str]
    result: Getter | list[Getter] | None = None
    expected: Getter | list[Getter | None] | None = None
    options: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    conj: Literal["and", "or"] = "and"
    postconfig: list[SetupStep] = Field(default_factory=list)


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    instruction: str
    snapshot: str = ""
    source: str = ""
    config: list[SetupStep] = Field(default_factory=list)
    related_apps: list[str] = Field(default_factory=list)
    evaluator: Evaluator


class TaskFile(BaseModel):
    path: Path
    domain: str  # the parent folder's name, as in OSWorld's examples/<domain>/<id>.json
    task: TaskConfig


class MetricScore(BaseModel):
    func: str
    score: float
    result: Any = None
    expected: Any = None
    error: str | None = None


class Evaluation(BaseModel):
    score: float
    metrics: list[MetricScore] = Field(default_factory=list)
    note: str | None = None


def load_task(path: Path) -> TaskFile:
    try:
        task = TaskConfig.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise TaskError(f"{path}: not a valid OSWorld task file: {exc}") from exc
    return TaskFile(path=Path(path), domain=Path(path).parent.name, task=task)


def load_tasks(target: Path | str) -> list[TaskFile]:
    """A task file, a folder of them (searched recursively, sorted), or ``builtin`` for the shipped suite."""
    path = BUILTIN_TASKS_DIR if str(target) == "builtin" else Path(target)
    if path.is_file():
        return [load_task(path)]
    if path.is_dir():
        files = sorted(path.rglob("*.json"))
        if not files:
            raise TaskError(f"{path}: no task files (*.json) found")
        return [load_task(f) for f in files]
    raise TaskError(f"{path}: no such task file or folder (use 'builtin' for the shipped suite)")


# ---- metrics (OSWorld's names and signatures: metric(result, expected, **options) -> float) -------------
def exact_match(result: Any, rules: dict[str, Any]) -> float:
    return float(result == rules["expected"])


def check_include_exclude(result: str | None, rules: dict[str, list[str]]) -> float:
    if result is None:
        return 0.0
    include, exclude = rules.get("include", []), rules.get("exclude", [])
    return float(all(s in result for s in include) and not any(s in result for s in exclude))


def match_in_list(result: Any, rules: dict[str, Any]) -> float:
    return float(result in rules["expected"])


def is_in_list(result: Any, rules: dict[str, Any]) -> float:
    return float(result is not None and rules["expected"] in result)


def literal_match(result: Any, expected: Any, **options: Any) -> float:
    kind = options.get("type", "str")
    if kind == "str":
        a, b = str(result), str(expected)
        if options.get("ignore_case", False):
            a, b = a.lower(), b.lower()
        return float(a == b)
    if kind == "list":
        return float(list(result or []) == list(expected or []))
    raise TaskError(f"literal_match: unsupported type {kind!r} (str or list)")


def fuzzy_match(result: str | None, rules: dict[str, Any]) -> float:
    """Similarity in [0, 1] (difflib's ratio; OSWorld uses rapidfuzz's, close but not identical)."""
    if result is None:
        return 0.0
    return difflib.SequenceMatcher(None, str(result), str(rules["expected"])).ratio()


def check_direct_json_object(result: Any, rules: dict[str, Any]) -> float:
    """Every key of ``rules["expected"]`` has the same value in the JSON object ``result``."""
    if isinstance(result, str):
        try:
            result = json.loads(result.strip())
        except json.JSONDecodeError:
            return 0.0
    if not isinstance(result, dict):
        return 0.0
    return float(all(result.get(k) == v for k, v in rules["expected"].items()))


def compare_text_file(result_path: str | None, expected_path: str | None, **options: Any) -> float:
    if not result_path or not expected_path:
        return 0.0
    a = Path(result_path).read_text(encoding="utf-8", errors="replace")
    b = Path(expected_path).read_text(encoding="utf-8", errors="replace")
    if options.get("ignore_blanks", False):
        a, b = " ".join(a.split()), " ".join(b.split())
    if options.get("ignore_case", False):
        a, b = a.lower(), b.lower()
    return float(a == b)


METRICS: dict[str, Callable[..., float]] = {
    f.__name__: f for f in (exact_match, check_include_exclude, match_in_list, is_in_list, literal_match,
                            fuzzy_match, check_direct_json_object, compare_text_file)
}


# ---- the sandbox: setup, getters, evaluation -------------------------------------------------------------
class TaskSandbox:
    """Runs one task's setup and evaluation on a display, with a private HOME; ``close()`` ends what it launched."""

    def __init__(self, display_env: dict[str, str], home: Path, *, command_timeout: float = 120.0) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = dict(display_env, HOME=str(self.home))
        self.command_timeout = command_timeout
        self._launched: list[subprocess.Popen[bytes]] = []

    # -- argument handling
    def _expand(self, value: str) -> str:
        value = value.replace("{python}", sys.executable).replace("{apps}", str(APPS_DIR))
        return str(self.home / value[2:]) if value.startswith("~/") else value

    def _command(self, params: dict[str, Any]) -> tuple[list[str] | str, bool]:
        shell = bool(params.get("shell", False))
        command = params.get("command", "" if shell else [])
        if isinstance(command, str) and not shell:
            command = shlex.split(command)
        if isinstance(command, list):
            command = [self._expand(str(a)) for a in command]
        else:
            command = command.replace("{python}", shlex.quote(sys.executable)).replace(
                "{apps}", shlex.quote(str(APPS_DIR)))
        return command, shell

    def run_command(self, params: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        command, shell = self._command(params)
        try:
            return subprocess.run(command, shell=shell, env=self.env, cwd=self.home, capture_output=True,
                                  text=True, timeout=self.command_timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TaskError(f"command {command!r} could not run: {exc}") from exc

    # -- setup
    def setup(self, task: TaskConfig) -> None:
        for index, step in enumerate(task.config):
            try:
                self.run_step(step)
            except TaskError as exc:
                raise TaskError(f"task {task.id}: setup step {index + 1} ({step.type}) failed: {exc}") from exc

    def run_step(self, step: SetupStep) -> None:
        params = step.parameters
        if step.type == "launch":
            command, shell = self._command(params)
            try:
                self._launched.append(subprocess.Popen(command, shell=shell, env=self.env, cwd=self.home,
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                       start_new_session=True))
            except OSError as exc:
                raise TaskError(f"cannot launch {command!r}: {exc}") from exc
            if params.get("wait_for_window"):
                self.wait_for_window(str(params["wait_for_window"]), float(params.get("timeout", 20)))
        elif step.type in ("execute", "command"):
            result = self.run_command(params)
            if result.returncode != 0 and not params.get("ignore_errors", False):
                raise TaskError(f"exit {result.returncode}: {result.stderr.strip()[-300:]}")
        elif step.type == "open":
            opener = shutil.which("xdg-open")
            if opener is None:
                raise TaskError("'open' needs xdg-open: apt-get install -y xdg-utils (or use a 'launch' step)")
            self.run_step(SetupStep(type="launch", parameters={"command": [opener, str(params["path"])]}))
        elif step.type == "sleep":
            time.sleep(float(params.get("seconds", 1)))
        elif step.type == "activate_window":
            flags = "-" + ("x" if params.get("by_class") else "") + ("F" if params.get("strict") else "") + "a"
            self.run_command({"command": ["wmctrl", flags, str(params["window_name"])]})
        else:
            raise TaskError(f"setup type {step.type!r} is not supported on a local desktop "
                            f"(supported: {', '.join(SUPPORTED_SETUP)}); run this task in OSWorld")

    def wait_for_window(self, title: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listing = subprocess.run(["wmctrl", "-l"], env=self.env, capture_output=True, text=True)
            if title in listing.stdout:
                time.sleep(0.3)  # mapped; give it a moment to draw
                return
            for proc in self._launched:
                if proc.poll() not in (None, 0):
                    raise TaskError(f"{proc.args!r} exited with code {proc.returncode} before showing {title!r}")
            time.sleep(0.1)
        raise TaskError(f"no window titled {title!r} appeared within {timeout:g} s")

    # -- getters
    def get(self, getter: Getter | None) -> Any:
        if getter is None:
            return None
        params = getter.model_dump(exclude={"type"})
        if getter.type == "rule":
            return params.get("rules")
        if getter.type in ("vm_command_line", "vm_command_error"):
            result = self.run_command(params)
            return result.stdout if getter.type == "vm_command_line" else result.stderr
        if getter.type == "vm_file":
            path = Path(self._expand(str(params["path"])))
            return str(path) if path.is_file() else None
        raise TaskError(f"getter type {getter.type!r} is not supported locally "
                        "(vm_command_line, vm_command_error, vm_file, rule)")

    # -- evaluation
    def evaluate(self, task: TaskConfig, last_action: str | None) -> Evaluation:
        """Score in [0, 1]. ``last_action``: "done", "fail" or None (ran out of steps, error)."""
        evaluator = task.evaluator
        for step in evaluator.postconfig:
            self.run_step(step)
        if evaluator.func == "infeasible":
            return Evaluation(score=float(last_action == "fail"), metrics=[],
                              note="infeasible task: scores 1 only when the agent answered fail")
        if last_action == "fail":
            return Evaluation(score=0.0, note="the agent declared the task infeasible, but it is feasible")
        funcs = evaluator.func if isinstance(evaluator.func, list) else [evaluator.func]
        results = _per_metric(evaluator.result, len(funcs))
        expecteds = _per_metric(evaluator.expected, len(funcs))
        options = _per_metric(evaluator.options, len(funcs))
        scores: list[MetricScore] = []
        for func, result_getter, expected_getter, opts in zip(funcs, results, expecteds, options):
            metric = METRICS.get(func)
            if metric is None:
                raise TaskError(f"task {task.id}: metric {func!r} is not available locally "
                                f"({', '.join(sorted(METRICS))})")
            result_value = self.get(result_getter)
            expected_value = self.get(expected_getter)
            try:
                args = (result_value,) if expected_getter is None else (result_value, expected_value)
                score = float(metric(*args, **(opts or {})))
                scores.append(MetricScore(func=func, score=score, result=result_value, expected=expected_value))
            except Exception as exc:  # a metric that cannot read its inputs scores 0, with the reason kept
                scores.append(MetricScore(func=func, score=0.0, result=result_value, expected=expected_value,
                                          error=f"{type(exc).__name__}: {exc}"))
            if evaluator.conj == "and" and scores[-1].score == 0.0:
                return Evaluation(score=0.0, metrics=scores)
        values = [s.score for s in scores]
        total = max(values) if evaluator.conj == "or" else sum(values) / len(values)
        return Evaluation(score=total, metrics=scores)

    def close(self) -> None:
        for proc in self._launched:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 15)
                    proc.wait(timeout=3)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, 9)
                    except ProcessLookupError:
                        pass
        self._launched = []


def _per_metric(value: Any, count: int) -> list[Any]:
    if isinstance(value, list):
        if len(value) != count:
            raise TaskError(f"evaluator lists {len(value)} entries for {count} metrics")
        return value
    return [value] * count
