"""``kimi-cua eval local``: OSWorld-format tasks on private desktops, set up and scored by OSWorld's own code.

Per task, in a fresh process: a private Xvfb desktop; our guest (``kimi-cua guest``, OSWorld's in-VM API) on it,
under its own D-Bus session bus (``dbus-run-session``) with an absolute private HOME (``<out>/<domain>/<id>/home``,
OSWorld's ``/home/user`` mapped onto it); a worker in .venv-osworld whose ``DesktopEnv.reset`` runs the wheel's
``SetupController`` against the guest (placeholders substituted by upstream's code, downloads cached in
``--cache-dir``); our agent on the display; then ``DesktopEnv.evaluate`` - the wheel's metrics and getters.

Statuses: ``success`` / ``fail`` (scored: the agent ran and upstream's evaluator answered), ``agent_error`` (the
agent could not run: model server, crash), ``infra_error`` (setup, guest, worker or evaluation broke), ``timeout``
(the task's wall-clock budget ran out), ``unsupported`` (the preflight found it cannot run here; no model call).
A re-run keeps finished tasks and repeats only ``infra_error`` and ``timeout``.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from agent.evals.local_tasks import Inventory, LoadProblem, TaskFile, preflight, url_reachability
from agent.evals.osworld import (
    LocalRunOptions,
    LocalTaskResult,
    TaskRunner,
    agent_runner,
    last_action_of,
    read_local_results,
)
from agent.evals.osworld_code import PROJECT_ROOT, OSWorldWorker, WorkerError
from envs.app_env import app_env

SCORED = ("success", "fail")
UNSCORED = ("agent_error", "infra_error", "timeout", "unsupported")
RERUN = ("infra_error", "timeout")
HOME_ALIAS = "/home/user"  # the VM user's home that OSWorld's task files name


class GuestProcess:
    """``kimi-cua guest`` for one task, in its own session bus; stopped (and what it launched) on close."""

    def __init__(self, display: str, home: Path, port: int, *, popen: Callable[..., subprocess.Popen] | None = None,
                 log: Path | None = None, timeout: float = 60.0) -> None:
        argv = [sys.executable, "-m", "agent.cli.guest", "--display", display, "--port", str(port),
                "--home", str(home), "--home-alias", HOME_ALIAS]
        if log:
            argv.append("--app-output")  # what the task's apps print goes to the guest's log too
        if shutil.which("dbus-run-session"):
            argv = ["dbus-run-session", "--", *argv]  # setup steps (gsettings, ...) change this bus, never yours
        self.url = f"http://127.0.0.1:{port}"
        env = app_env(DISPLAY=display, HOME=str(home))
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            self.proc = (popen or subprocess.Popen)(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/platform", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the guest on {display} did not come up on port {port} "
                                   f"(exit {self.proc.returncode}; see {log})")
            time.sleep(0.2)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the guest ends what it launched, then the bus ends
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()


def _free_port(options: LocalRunOptions) -> int:
    import socket

    low, high = options.port_range or (0, 0)
    candidates = range(low, high + 1) if low else [0]
    reserved = {options.chromium_port, options.vlc_port}  # the tasks' apps listen there once started
    for port in candidates:
        if port in reserved:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free TCP port in {low}-{high}")


def _task_sandbox(options: LocalRunOptions, task_dir: Path, home: Path, **extra: Any):
    """The task's bubblewrap sandbox (agent.safety.sandbox): the task's HOME, the project read-only and importable,
    no network unless ``--sandbox-network``."""
    from agent.safety.sandbox import Sandbox

    return Sandbox(task_dir / "sandbox", home=home, network=options.sandbox_network, read_only=[PROJECT_ROOT],
                   env={"PYTHONPATH": str(PROJECT_ROOT)}, **extra).prepare()


def _sandboxed_popen(options: LocalRunOptions, task_dir: Path, home: Path) -> Callable[..., subprocess.Popen] | None:
    """Programs started inside the task's sandbox (the window manager), when the run uses one."""
    return _task_sandbox(options, task_dir, home).popen if options.sandbox else None


def _guest_popen(options: LocalRunOptions, task_dir: Path, home: Path,
                 port: int) -> tuple[Callable[..., subprocess.Popen] | None, Any]:
    """How the guest starts, and the port bridge it needs (to close after it), when the run uses a sandbox.

    The guest and everything it launches (task apps, task commands) run inside the task's sandbox. Without
    ``--sandbox-network`` that sandbox has no network (``--unshare-net``: a loopback of its own), so OSWorld's worker
    reaches the guest's port, and Chrome's and VLC's, through ``agent.safety.bridge``: a listener on the host's
    127.0.0.1 joined to a unix socket served inside. Nothing inside can connect out."""
    if not options.sandbox:
        return None, None
    if options.sandbox_network:
        return _task_sandbox(options, task_dir, home).popen, None
    from agent.safety.bridge import PortBridge
    from agent.safety.sandbox import Sandbox

    uid = Sandbox(task_dir / "sandbox").uid
    bridge = PortBridge([port], optional=[options.chromium_port, options.vlc_port], uid=uid).start()
    try:
        walls = _task_sandbox(options, task_dir, home, writable=[bridge.folder])
    except BaseException:
        bridge.close()
        raise

    def popen(argv, **kwargs) -> subprocess.Popen:
        return walls.popen(bridge.wrap(argv), **kwargs)

    return popen, bridge


def status_of(agent_status: str, agent_error: str | None, score: float | None) -> str:
    if agent_status == "error":
        return "agent_error"
    if score is None:
        return "infra_error"
    return "success" if score >= 1.0 else "fail"


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.5, self.deadline - time.monotonic())

    def over(self) -> bool:
        return time.monotonic() >= self.deadline


class TaskTimeout(Exception):
    pass


class WorkerPool:
    """One OSWorld worker for a whole suite (importing every metric takes ~15-20 s); replaced when it breaks."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._worker: OSWorldWorker | None = None

    def get(self) -> OSWorldWorker:
        if self._worker is None:
            self._worker = OSWorldWorker(log_path=self.log_dir / "osworld-worker.log").start()
        return self._worker

    def discard(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def close(self) -> None:
        self.discard()


def run_local_task(item: TaskFile, options: LocalRunOptions, runner: TaskRunner | None = None,
                   workers: WorkerPool | None = None) -> LocalTaskResult:
    """Set up (upstream's SetupController), run our agent, score (upstream's evaluator) one task. The agent runs in
    a fresh process (pyautogui binds to one display per process) unless ``runner`` is given."""
    from envs.xvfb import VirtualDisplay

    task_dir = (options.out_dir / item.domain / item.task_id).absolute()
    task_dir.mkdir(parents=True, exist_ok=True)
    home = task_dir / "home"
    home.mkdir(exist_ok=True)
    cache = (options.cache_dir or options.out_dir / "cache").absolute()
    cache.mkdir(parents=True, exist_ok=True)
    result = LocalTaskResult(task_id=item.task_id, domain=item.domain, path=str(item.path), out_dir=str(task_dir),
                             max_steps=options.max_steps, time_budget=options.task_timeout)
    start = time.monotonic()
    own_pool = workers is None
    pool = workers or WorkerPool(options.out_dir)
    guest: GuestProcess | None = None
    bridge = None
    stage = "starting OSWorld's worker"
    budget = _Budget(options.task_timeout)
    try:
        pool.get()  # importing every metric (~15-20 s, once per suite) is not the task's time
        budget = _Budget(options.task_timeout)
        stage = "starting the desktop"
        # The window manager too: its menu starts a terminal, which must not be outside the sandbox.
        with VirtualDisplay(options.width, options.height,
                            launcher=_sandboxed_popen(options, task_dir, home)) as vd:
            stage = "starting the guest"
            port = _free_port(options)
            popen, bridge = _guest_popen(options, task_dir, home, port)
            guest = GuestProcess(vd.display, home, port, popen=popen, log=task_dir / "guest.log")
            worker = pool.get()
            worker.connect(guest.url, cache_dir=cache, screen_size=(options.width, options.height),
                           chromium_port=options.chromium_port, vlc_port=options.vlc_port,
                           client_password=options.client_password)
            stage = "setup (OSWorld's SetupController)"
            _with_budget(pool, budget, lambda: worker.reset(item.raw, timeout=budget.left()))
            stage = "the agent run"
            result.agent_status, result.steps, result.error = _run_agent(item, options, runner, vd.display,
                                                                         task_dir / "run", budget)
            result.done_checked, result.done_overturned = done_checks(task_dir / "run")
            if result.agent_status == "error":
                result.status = "agent_error"
            else:
                stage = "evaluation (OSWorld's metrics and getters)"
                last = last_action_of(result.agent_status, result.error)
                actions = {"done": ["DONE"], "fail": ["FAIL"]}.get(last or "", [])
                result.score = _with_budget(pool, budget, lambda: worker.evaluate(actions, timeout=budget.left()))
                result.status = status_of(result.agent_status, result.error, result.score)
    except TaskTimeout:
        result.status, result.score = "timeout", None
        result.error = f"{stage}: the task ran out of its {options.task_timeout:g} s budget"
    except WorkerError as exc:
        result.status = "infra_error"
        result.error = f"{stage} failed: {exc}"
        (task_dir / "infra_error.txt").write_text(f"{exc}\n{exc.traceback}", encoding="utf-8")
    except Exception as exc:  # one task's breakage must not end the suite; the reason is kept
        result.status = "infra_error"
        result.error = f"{stage} failed: {type(exc).__name__}: {exc}"
    finally:
        if guest is not None:
            guest.close()
        if bridge is not None:
            bridge.close()
        if own_pool:
            pool.close()
    result.seconds = round(time.monotonic() - start, 2)
    (task_dir / "result.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
    return result


def done_checks(run_dir: Path) -> tuple[int, int]:
    """(DONE answers checked by --verify-done, of which overturned) in a run's trajectory; (0, 0) without one."""
    from agent.trajectory import read_trajectory

    try:
        checks = [r.verification for r in read_trajectory(run_dir) if r.verification is not None]
    except (OSError, ValueError):
        return 0, 0
    return len(checks), sum(1 for v in checks if not v.accepted)


def _with_budget(pool: WorkerPool, budget: _Budget, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except WorkerError as exc:
        if "did not answer within" in str(exc) or "exited" in str(exc) or "gone" in str(exc):
            pool.discard()  # stuck or dead: the next task gets a fresh worker
        if budget.over():
            raise TaskTimeout() from exc
        raise


def _run_agent(item: TaskFile, options: LocalRunOptions, runner: TaskRunner | None, display: str, out_dir: Path,
               budget: _Budget) -> tuple[str, int, str | None]:
    if runner is not None:
        try:
            return runner(item.instruction, display, out_dir)
        except Exception as exc:  # the agent crashed: recorded, and the task is not scored
            return "error", 0, f"{type(exc).__name__}: {exc}"
    ctx = multiprocessing.get_context("spawn")
    answer = out_dir.parent / "agent_result.json"
    answer.unlink(missing_ok=True)
    proc = ctx.Process(target=_agent_process, args=(item.instruction, display, str(out_dir), str(answer),
                                                    options.model_dump_json()))
    proc.start()
    proc.join(budget.left())
    if proc.is_alive():
        proc.terminate()
        proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join()
        raise TaskTimeout()
    if not answer.exists():
        return "error", 0, f"the agent process died (exit code {proc.exitcode})"
    status, steps, error = json.loads(answer.read_text(encoding="utf-8"))
    return status, steps, error


def _agent_process(instruction: str, display: str, out_dir: str, answer: str, options_json: str) -> None:
    options = LocalRunOptions.model_validate_json(options_json)
    try:
        outcome = list(agent_runner(options)(instruction, display, Path(out_dir)))
    except Exception as exc:  # the agent crashed: the parent records agent_error
        outcome = ["error", 0, f"{type(exc).__name__}: {exc}"]
    Path(answer).write_text(json.dumps(outcome), encoding="utf-8")


def inventory_cache_path() -> Path:
    from agent.evals.osworld_code import osworld_python

    return osworld_python().parent.parent / "kimi-cua-inventory.json"


def load_inventory(workers: WorkerPool | None = None) -> Inventory:
    """The installed wheel's metric, getter and setup names, cached beside its venv (they change only with it)."""
    cache = inventory_cache_path()
    if cache.is_file():
        try:
            return Inventory.model_validate_json(cache.read_text(encoding="utf-8"))
        except ValueError:
            pass
    if workers is not None:
        inventory = Inventory.model_validate(workers.get().inventory())
    else:
        with OSWorldWorker() as worker:
            inventory = Inventory.model_validate(worker.inventory())
    try:
        cache.write_text(inventory.model_dump_json(), encoding="utf-8")
    except OSError:
        pass
    return inventory


def run_preflight(items: list[TaskFile], options: LocalRunOptions, inventory: Inventory,
                  reachable: Callable[[str], str | None] | None = None) -> dict[tuple[str, str], str]:
    """(domain, id) -> why the task cannot run here, for every unsupported task; before any model call."""
    check = reachable or url_reachability()
    cache = options.cache_dir or options.out_dir / "cache"
    found = {}
    for item in items:
        reason = preflight(item, inventory, cache_dir=cache, reachable=check)
        if reason:
            found[(item.domain, item.task_id)] = reason
    return found


def run_local_suite(items: list[TaskFile], options: LocalRunOptions, runner: TaskRunner | None = None,
                    on_result: Callable[[LocalTaskResult], None] | None = None,
                    inventory: Inventory | None = None, reachable: Callable[[str], str | None] | None = None,
                    problems: list[LoadProblem] | None = None,
                    workers: WorkerPool | None = None) -> list[LocalTaskResult]:
    """Every task in turn: preflight first (unsupported tasks never reach the model), then each supported task.
    Writes ``results.jsonl`` and ``summary.json`` in ``options.out_dir``."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    results_path = options.out_dir / "results.jsonl"
    recorded = read_local_results(results_path)
    finished = {key: r for key, r in recorded.items() if r.status not in RERUN}
    wanted = {(item.domain, item.task_id) for item in items}
    results: list[LocalTaskResult] = [r for key, r in finished.items() if key in wanted]
    todo = [item for item in items if (item.domain, item.task_id) not in finished]
    own_pool = workers is None
    workers = workers or WorkerPool(options.out_dir)
    try:
        unsupported = run_preflight(todo, options, inventory or load_inventory(workers), reachable) if todo else {}
        with open(results_path, "a", encoding="utf-8") as sink:
            for item in todo:
                key = (item.domain, item.task_id)
                if key in unsupported:
                    result = LocalTaskResult(task_id=item.task_id, domain=item.domain, path=str(item.path),
                                             status="unsupported", reason=unsupported[key],
                                             max_steps=options.max_steps, time_budget=options.task_timeout)
                else:
                    result = run_local_task(item, options, runner, workers)
                results.append(result)
                sink.write(result.model_dump_json() + "\n")
                sink.flush()
                if on_result:
                    on_result(result)
    finally:
        if own_pool:
            workers.close()
    summary = {"tasks": len(results), "statuses": dict(Counter(r.status for r in results)),
               "table": [row.model_dump() for row in status_table(results)],
               "errors": {f"{r.domain}/{r.task_id}": r.error for r in results if r.error},
               "unsupported": {f"{r.domain}/{r.task_id}": r.reason for r in results if r.status == "unsupported"},
               "bad_files": [p.model_dump() for p in problems or []],
               "verify_done": {"enabled": options.verify_done, "checked": sum(r.done_checked for r in results),
                               "overturned": sum(r.done_overturned for r in results),
                               "tasks_with_overturned": sum(1 for r in results if r.done_overturned)}}
    (options.out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return results


class StatusRow(BaseModel):
    domain: str
    scored: int
    success: int
    mean_score: float | None  # over scored tasks
    agent_error: int = 0
    infra_error: int = 0
    timeout: int = 0
    unsupported: int = 0
    done_checked: int = 0  # DONE answers checked by --verify-done
    overturned: int = 0  # ... that the check overturned


def status_table(results: Iterable[LocalTaskResult]) -> list[StatusRow]:
    """Per domain (and ``all``): scored tasks (success + fail) apart from unscored ones, counted by status."""
    by_domain: dict[str, list[LocalTaskResult]] = defaultdict(list)
    for r in results:
        by_domain[r.domain].append(r)
    rows = []
    every = [r for rs in by_domain.values() for r in rs]
    for domain, rs in [*sorted(by_domain.items()), ("all", every)] if every else []:
        scored = [r for r in rs if r.status in SCORED]
        counts = Counter(r.status for r in rs)
        rows.append(StatusRow(domain=domain, scored=len(scored), success=counts["success"],
                              mean_score=sum(r.score or 0.0 for r in scored) / len(scored) if scored else None,
                              **{s: counts[s] for s in UNSCORED},
                              done_checked=sum(r.done_checked for r in rs),
                              overturned=sum(r.done_overturned for r in rs)))
    return rows


def format_status_table(rows: list[StatusRow]) -> str:
    lines = [f"{'domain':<22} {'scored':>6} {'success':>7} {'rate':>7} {'score':>6} | {'agent_err':>9} "
             f"{'infra_err':>9} {'timeout':>7} {'unsupported':>11} | {'done_checked':>12} {'overturned':>10}"]
    for row in rows:
        rate = f"{row.success / row.scored:.1%}" if row.scored else "-"
        score = f"{row.mean_score:.3f}" if row.mean_score is not None else "-"
        lines.append(f"{row.domain:<22} {row.scored:>6} {row.success:>7} {rate:>7} {score:>6} | {row.agent_error:>9} "
                     f"{row.infra_error:>9} {row.timeout:>7} {row.unsupported:>11} | {row.done_checked:>12} "
                     f"{row.overturned:>10}")
    lines.append("scored = success + fail (rate and score over these); the rest never got a score; done_checked: DONE "
                 "answers checked by --verify-done, overturned: those the check did not confirm (the run went on)")
    return "\n".join(lines)
