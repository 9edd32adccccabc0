"""Evaluation runners for OSWorld-format tasks.

- Local (``kimi-cua eval local``): the options and result records here; the runner is ``agent.evals.local_run``
  (each task on its own private Xvfb desktop and guest, set up and scored by OSWorld's own code).
- OSWorld (``kimi-cua eval osworld``): examples through ``desktop_env.DesktopEnv`` (imported lazily: it lives
  in OSWorld's environment, never ours), written in OSWorld's result layout
  ``<result_dir>/pyautogui/screenshot/<model>/<domain>/<id>/{traj.jsonl, step_<n>_<ts>.png, result.txt}``;
  examples that already have ``result.txt`` are skipped.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from agent.evals.local_tasks import PLAIN_NAME, TaskError
from agent.trajectory import repair_tail


class DomainScore(BaseModel):
    domain: str
    tasks: int
    success: int  # score == 1
    mean_score: float


def domain_table(rows: Iterable[tuple[str, float]]) -> list[DomainScore]:
    by_domain: dict[str, list[float]] = defaultdict(list)
    for domain, score in rows:
        by_domain[domain].append(score)
    table = [DomainScore(domain=d, tasks=len(s), success=sum(1 for v in s if v >= 1.0), mean_score=sum(s) / len(s))
             for d, s in sorted(by_domain.items())]
    every = [v for s in by_domain.values() for v in s]
    if every:
        table.append(DomainScore(domain="all", tasks=len(every), success=sum(1 for v in every if v >= 1.0),
                                 mean_score=sum(every) / len(every)))
    return table


def format_table(table: list[DomainScore]) -> str:
    lines = [f"{'domain':<24} {'tasks':>5} {'success':>7} {'rate':>7} {'score':>7}"]
    for row in table:
        rate = row.success / row.tasks if row.tasks else 0.0
        lines.append(f"{row.domain:<24} {row.tasks:>5} {row.success:>7} {rate:>6.1%} {row.mean_score:>7.3f}")
    return "\n".join(lines)


# ---- local tasks ---------------------------------------------------------------------------------------
class LocalRunOptions(BaseModel):
    out_dir: Path
    base_url: str = "http://localhost:8000/v1"
    model: str | None = None
    api_key: str | None = None
    max_steps: int = 15
    width: int = 1280
    height: int = 720
    agent: dict[str, Any] = Field(default_factory=dict)  # extra AgentConfig fields
    sandbox: bool = True  # task programs, commands and the window manager under bubblewrap (agent.safety.sandbox)
    sandbox_network: bool = False
    cache_dir: Path | None = None  # downloads of `download` setups (default <out>/cache), kept across runs
    task_timeout: float = 1800.0  # wall-clock budget of one task (setup, agent, evaluation), seconds
    port_range: tuple[int, int] | None = None  # TCP ports for the tasks' guests (default: any free port)
    chromium_port: int = 9222  # where the tasks' Chrome listens for CDP (OSWorld's tasks: socat 9222 -> 1337)
    vlc_port: int = 8080  # VLC's HTTP interface
    client_password: str = "password"  # {CLIENT_PASSWORD}, as DesktopEnv's default for local providers
    verify_done: bool = True  # a DONE stands only when a fresh check says the task is complete (agent/verify.py)


class LocalTaskResult(BaseModel):
    task_id: str
    domain: str
    path: str
    score: float | None = None  # upstream's evaluator's answer; None when the task was not scored
    status: str = "infra_error"  # success / fail (scored) / agent_error / infra_error / timeout / unsupported
    agent_status: str | None = None  # how the agent's run ended: done / fail / max_steps / stopped / error
    steps: int = 0
    max_steps: int | None = None  # the step budget
    time_budget: float | None = None  # the wall-clock budget, seconds
    error: str | None = None
    reason: str | None = None  # why an unsupported task cannot run here
    seconds: float = 0.0
    out_dir: str = ""
    done_checked: int = 0  # DONE answers checked by --verify-done
    done_overturned: int = 0  # ... of which the check did not confirm (the run went on)


class TaskRunner(Protocol):
    """Runs an instruction on a display and says how it ended: (status, steps, error)."""

    def __call__(self, instruction: str, display: str, out_dir: Path) -> tuple[str, int, str | None]: ...


def agent_runner(options: LocalRunOptions) -> TaskRunner:
    """Our agent loop on the given display (the real thing, used by the CLI)."""

    def run(instruction: str, display: str, out_dir: Path) -> tuple[str, int, str | None]:
        from agent.models.vllm import VLLMClient
        from agent.loop import Agent, AgentConfig
        from agent.safety.loop_guard import LoopGuard
        from envs.desktop import LocalDesktop

        client = VLLMClient(options.base_url, model=options.model, api_key=options.api_key)
        config = AgentConfig(max_steps=options.max_steps, out_dir=out_dir, stream=False,
                             **{"verify_done": options.verify_done, **options.agent})
        env = LocalDesktop(display=display)
        try:
            # Agent installs the default safety policy: unattended, so what needs confirmation is refused.
            result = Agent(env, client, config, hooks=LoopGuard()).run(instruction)
        finally:
            env.close()
        return result.status, result.steps, result.error

    return run


def last_action_of(status: str, error: str | None) -> str | None:
    """"done"/"fail" only when the agent said so itself (a loop giving up after bad answers is not a FAIL)."""
    if status == "done":
        return "done"
    if status == "fail" and error is None:
        return "fail"
    return None


def _valid_result(line: bytes) -> bool:
    try:
        LocalTaskResult.model_validate_json(line)
        return True
    except ValueError:
        return False


def read_local_results(path: Path) -> dict[tuple[str, str], LocalTaskResult]:
    """Results already recorded in ``results.jsonl`` by (domain, task id); a torn last line (a killed run) is cut."""
    if not path.is_file():
        return {}
    repair_tail(path, _valid_result)  # in place (os.truncate): a kill during the repair loses no result
    data = path.read_bytes()
    found: dict[tuple[str, str], LocalTaskResult] = {}
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                result = LocalTaskResult.model_validate_json(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number} is not a task result ({exc}); move the file away to start "
                                 "over") from None
            found[(result.domain, result.task_id)] = result
    return found


# ---- OSWorld -------------------------------------------------------------------------------------------
class OSWorldUnavailable(RuntimeError):
    pass


def import_desktop_env() -> type:
    try:
        from desktop_env.desktop_env import DesktopEnv  # type: ignore[import-not-found]
    except ImportError as exc:
        raise OSWorldUnavailable(
            f"desktop_env is not importable ({exc}). `kimi-cua eval osworld` runs inside OSWorld's own "
            "environment: activate the venv/conda env where OSWorld's requirements are installed (git clone "
            "xlang-ai/OSWorld; pip install -r requirements.txt), install kimi-cua there with `pip install "
            "--no-deps -e /path/to/kimi-cua` plus its small deps (pydantic httpx pillow mss tqdm), and run "
            "it again. Never install desktop-env into kimi-cua's own environment (it pins old packages)."
        ) from exc
    return DesktopEnv


class ExampleRef(BaseModel):
    domain: str
    example_id: str


class OSWorldOptions(BaseModel):
    osworld_dir: Path
    test_meta: Path = Path("evaluation_examples/test_all.json")
    result_dir: Path = Path("results")
    domain: str = "all"
    model_name: str = "kimi-vl"
    max_steps: int = 15
    sleep_after_execution: float = 2.0
    settle_after_reset: float = 60.0  # OSWorld waits this long for the VM after reset
    num_envs: int = 1
    env_kwargs: dict[str, Any] = Field(default_factory=dict)  # DesktopEnv(**env_kwargs)
    agent_kwargs: dict[str, Any] = Field(default_factory=dict)  # KimiCuaOSWorldAgent(**agent_kwargs)

    def meta_path(self) -> Path:
        return self.test_meta if self.test_meta.is_absolute() else self.osworld_dir / self.test_meta

    def example_path(self, ref: ExampleRef) -> Path:
        return self.osworld_dir / "evaluation_examples" / "examples" / ref.domain / f"{ref.example_id}.json"

    def example_dir(self, ref: ExampleRef) -> Path:
        return self.result_dir / "pyautogui" / "screenshot" / self.model_name / ref.domain / ref.example_id


def load_meta(options: OSWorldOptions) -> list[ExampleRef]:
    path = options.meta_path()
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskError(f"cannot read the test meta file {path}: {exc}; pass --osworld-dir (the OSWorld "
                        "checkout) and --test-meta (relative to it, default evaluation_examples/test_all.json)") from exc
    if options.domain != "all":
        if options.domain not in meta:
            raise TaskError(f"domain {options.domain!r} is not in {path} (domains: {', '.join(sorted(meta))})")
        meta = {options.domain: meta[options.domain]}
    if not isinstance(meta, dict) or not all(isinstance(ids, list) for ids in meta.values()):
        raise TaskError(f"{path}: the test meta file must map each domain to a list of example ids")
    # Domains and ids name folders under the results (and stale files there are deleted): plain names only.
    bad = [f"{d}/{i}" for d, ids in meta.items() for i in ids
           if not (isinstance(d, str) and PLAIN_NAME.match(d) and isinstance(i, str) and PLAIN_NAME.match(i))]
    if bad:
        raise TaskError(f"{path}: domains and example ids must be plain names (letters, digits, . _ -) that stay "
                        f"inside the results folder; refused: {', '.join(map(repr, bad[:5]))}"
                        f"{' ...' if len(bad) > 5 else ''}")
    return [ExampleRef(domain=d, example_id=i) for d, ids in meta.items() for i in ids]


def pending(refs: list[ExampleRef], options: OSWorldOptions) -> list[ExampleRef]:
    """Examples without ``result.txt``; a half-written example directory is cleared and run again."""
    todo = []
    for ref in refs:
        folder = options.example_dir(ref)
        if (folder / "result.txt").exists():
            continue
        if folder.exists():
            for stale in folder.iterdir():
                if stale.is_file():
                    stale.unlink()
        todo.append(ref)
    return todo


def run_example(env: Any, agent: Any, ref: ExampleRef, options: OSWorldOptions) -> float:
    """One example, OSWorld's way: reset, predict/step until done or max steps, evaluate, write result.txt."""
    config = json.loads(options.example_path(ref).read_text(encoding="utf-8"))
    folder = options.example_dir(ref)
    folder.mkdir(parents=True, exist_ok=True)
    agent.reset()
    obs = env.reset(task_config=config)
    if options.settle_after_reset:
        time.sleep(options.settle_after_reset)
        obs = env._get_obs() if hasattr(env, "_get_obs") else obs
    instruction = config["instruction"]
    done = False
    step = 0
    with open(folder / "traj.jsonl", "a", encoding="utf-8") as traj:
        while not done and step < options.max_steps:
            response, actions = agent.predict(instruction, obs)
            for action in actions:
                stamp = datetime.datetime.now().strftime("%Y%m%d@%H%M%S")
                obs, reward, done, info = env.step(action, options.sleep_after_execution)
                shot = f"step_{step + 1}_{stamp}.png"
                (folder / shot).write_bytes(obs["screenshot"])
                traj.write(json.dumps({"step_num": step + 1, "action_timestamp": stamp, "action": action,
                                       "response": response, "reward": reward, "done": done, "info": info,
                                       "screenshot_file": shot}, default=str) + "\n")
                traj.flush()
                if done:
                    break
            step += 1
    score = float(env.evaluate())
    (folder / "result.txt").write_text(f"{score}\n", encoding="utf-8")
    return score


def run_examples(refs: list[ExampleRef], options: OSWorldOptions, make_env: Callable[[], Any],
                 make_agent: Callable[[], Any], on_done: Callable[[ExampleRef, float | None, str | None], None]) -> None:
    """One environment and one agent, examples in turn; an example that raises is reported and left without
    result.txt (so a re-run tries it again)."""
    env = make_env()
    agent = make_agent()
    try:
        for ref in refs:
            try:
                on_done(ref, run_example(env, agent, ref, options), None)
            except Exception as exc:
                on_done(ref, None, f"{type(exc).__name__}: {exc}")
    finally:
        close = getattr(env, "close", None)
        if close:
            close()


def _osworld_worker(refs_json: str, options_json: str, queue: Any) -> None:
    from agent.evals.osworld_agent import KimiCuaOSWorldAgent

    options = OSWorldOptions.model_validate_json(options_json)
    refs = [ExampleRef.model_validate(r) for r in json.loads(refs_json)]
    DesktopEnv = import_desktop_env()
    run_examples(refs, options, lambda: DesktopEnv(**options.env_kwargs),
                 lambda: KimiCuaOSWorldAgent(**options.agent_kwargs),
                 lambda ref, score, error: queue.put((ref.model_dump(), score, error)))


def run_osworld(options: OSWorldOptions, on_done: Callable[[ExampleRef, float | None, str | None], None]) -> int:
    """Pending examples over ``num_envs`` worker processes, each with its own DesktopEnv. Returns how many ran."""
    import_desktop_env()  # fail early, in this process, with the readable message
    todo = pending(load_meta(options), options)
    if not todo:
        return 0
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shards = [todo[i::options.num_envs] for i in range(max(1, min(options.num_envs, len(todo))))]
    workers = [ctx.Process(target=_osworld_worker, args=(json.dumps([r.model_dump() for r in shard]),
                                                          options.model_dump_json(), queue)) for shard in shards]
    for w in workers:
        w.start()
    received = 0
    while received < len(todo):
        try:
            ref, score, error = queue.get(timeout=5)
        except Exception:
            if not any(w.is_alive() for w in workers):
                break
            continue
        received += 1
        on_done(ExampleRef.model_validate(ref), score, error)
    for w in workers:
        w.join()
    return received


def collect_results(options: OSWorldOptions) -> list[tuple[str, float]]:
    """(domain, score) of every finished example under the result folder (earlier runs included)."""
    root = options.result_dir / "pyautogui" / "screenshot" / options.model_name
    rows = []
    for result in sorted(root.glob("*/*/result.txt")):
        try:
            rows.append((result.parent.parent.name, float(result.read_text().strip())))
        except ValueError:
            continue
    return rows
