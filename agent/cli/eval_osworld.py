"""``kimi-cua eval local TASKS`` and ``kimi-cua eval osworld --osworld-dir DIR``."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from agent.models.vllm import DEFAULT_BASE_URL
from agent.evals.osworld import (
    ExampleRef,
    LocalRunOptions,
    LocalTaskResult,
    OSWorldOptions,
    OSWorldUnavailable,
    collect_results,
    domain_table,
    format_table,
    import_desktop_env,
    load_meta,
    pending,
    run_osworld,
)
from agent.evals.local_tasks import LoadProblem, TaskError, load_tasks
from agent.cli.validate import (DEFAULT_SIZE, UsageError, check_writable_dir, nonnegative_float, port, positive_float,
                                positive_int, screen_size)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model server")
    g.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"OpenAI-compatible server (default {DEFAULT_BASE_URL})")
    g.add_argument("--model", help="served model name (default: discovered from /v1/models)")
    g.add_argument("--api-key", help="bearer token, if the server wants one")


def _ports(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port range like 8220-8239, not {text!r}") from None
    if not 0 < low <= high < 65536:
        raise argparse.ArgumentTypeError(f"not a port range: {text!r}")
    return low, high


def register_eval(sub: argparse._SubParsersAction) -> None:
    local = sub.add_parser("local", help="OSWorld-format tasks on private Xvfb desktops (no VM), OSWorld's own "
                                         "setup and scoring code",
                           description="Run OSWorld-format task files, each on its own Xvfb desktop with our guest "
                                       "(OSWorld's in-VM API), its own session bus and a private HOME; set up by "
                                       "OSWorld's SetupController and scored by OSWorld's metrics and getters (the "
                                       "desktop-env wheel, in .venv-osworld). Task files are trusted code: their setup "
                                       "steps run shell commands. TASKS: a task file, a folder of them, or 'builtin'.")
    local.add_argument("tasks", metavar="TASKS", help="task .json, folder, or 'builtin'")
    local.add_argument("--out", type=Path, help="results folder (default: runs/local-<timestamp>)")
    local.add_argument("--max-steps", type=positive_int, default=15, help="steps per task (default 15)")
    local.add_argument("--size", type=screen_size, default=DEFAULT_SIZE, metavar="WxH",
                       help=f"desktop size (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}, as run)")
    local.add_argument("--no-sandbox", action="store_true", help="run task programs and commands without bubblewrap "
                       "(by default they see a read-only system, the task's private HOME and /tmp, no network)")
    local.add_argument("--sandbox-network", action="store_true", help="let sandboxed task programs use the network")
    local.add_argument("--cache-dir", type=Path, help="where `download` setups keep their files (default <out>/cache)")
    local.add_argument("--task-timeout", type=positive_float, default=1800.0,
                       help="wall-clock budget of one task, seconds (default 1800); then it is `timeout`")
    local.add_argument("--ports", type=_ports, help="TCP ports for the tasks' guests, LOW-HIGH (default: any free)")
    local.add_argument("--chromium-port", type=port, default=9222, help="Chrome's CDP port in the tasks (default 9222)")
    local.add_argument("--vlc-port", type=port, default=8080, help="VLC's HTTP port in the tasks (default 8080)")
    local.add_argument("--client-password", default="password", help="{CLIENT_PASSWORD} (default 'password')")
    local.add_argument("--verify-done", action=argparse.BooleanOptionalAction, default=True,
                       help="check every DONE: a fresh screenshot and the model asked in a short fresh context whether "
                       "the task is complete; done stands only on a clear yes (default on; --no-verify-done: off)")
    local.add_argument("--install-osworld", action="store_true",
                       help="first install OSWorld's code in .venv-osworld (scripts/install_osworld.sh)")
    _model_arguments(local)
    local.set_defaults(handler=run_local_command)

    osw = sub.add_parser("osworld", help="OSWorld examples through desktop_env (inside OSWorld's environment)",
                         description="Run OSWorld examples with our agent through desktop_env.DesktopEnv. Must run in "
                                     "OSWorld's Python environment. Writes OSWorld's result layout; finished examples "
                                     "(with result.txt) are skipped on re-run.")
    osw.add_argument("--osworld-dir", type=Path, required=True, help="the OSWorld checkout")
    osw.add_argument("--test-meta", type=Path, default=Path("evaluation_examples/test_all.json"),
                     help="domain -> example ids, relative to --osworld-dir (default evaluation_examples/test_all.json)")
    osw.add_argument("--domain", default="all", help="only this domain (default all)")
    osw.add_argument("--result-dir", type=Path, default=Path("results"), help="results root (default ./results)")
    osw.add_argument("--num-envs", type=positive_int, default=1, help="parallel environments, one process each (default 1)")
    osw.add_argument("--provider", default="vmware", help="DesktopEnv provider: vmware, virtualbox, docker, aws, ...")
    osw.add_argument("--path-to-vm", help="VM image path (vmware/virtualbox)")
    osw.add_argument("--region", help="cloud region (aws, ...)")
    osw.add_argument("--screen-size", type=screen_size, default=(1920, 1080), help="VM screen WxH (default 1920x1080)")
    osw.add_argument("--headless", action="store_true", help="run VMs without a window")
    osw.add_argument("--max-steps", type=positive_int, default=15, help="steps per example (default 15, as OSWorld)")
    osw.add_argument("--sleep-after-execution", type=nonnegative_float, default=2.0, help="seconds after each action (default 2)")
    osw.add_argument("--settle-after-reset", type=nonnegative_float, default=60.0, help="seconds after reset (default 60)")
    osw.add_argument("--model-name", default="kimi-vl", help="folder name under the results root (default kimi-vl)")
    _model_arguments(osw)
    osw.set_defaults(handler=run_osworld_command)


def run_local_command(args: argparse.Namespace) -> int:
    from agent.evals.local_run import RERUN, format_status_table, run_local_suite, status_table
    from agent.evals.osworld_code import OSWorldCodeUnavailable, install_osworld, osworld_python

    problems: list[LoadProblem] = []
    try:
        items = load_tasks(args.tasks, problems)
    except TaskError as exc:
        print(f"kimi-cua eval local: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"kimi-cua eval local: skipped {problem.error}", file=sys.stderr)
    if not items:
        print("kimi-cua eval local: no loadable task files", file=sys.stderr)
        return 2
    out = (args.out or Path("runs") / f"local-{datetime.now():%Y%m%d-%H%M%S}").absolute()  # each task's HOME is in it
    check_writable_dir(out, "--out")
    _probe_server(args)
    if args.install_osworld and install_osworld() != 0:
        print("kimi-cua eval local: scripts/install_osworld.sh failed", file=sys.stderr)
        return 2
    try:
        osworld_python()
    except OSWorldCodeUnavailable as exc:
        print(f"kimi-cua eval local: {exc}", file=sys.stderr)
        return 2
    options = LocalRunOptions(out_dir=out, base_url=args.base_url, model=args.model, api_key=args.api_key,
                              max_steps=args.max_steps, width=args.size[0], height=args.size[1],
                              sandbox=not args.no_sandbox, sandbox_network=args.sandbox_network,
                              cache_dir=args.cache_dir, task_timeout=args.task_timeout, port_range=args.ports,
                              chromium_port=args.chromium_port, vlc_port=args.vlc_port,
                              client_password=args.client_password, verify_done=args.verify_done)
    if options.sandbox:
        from agent.safety.sandbox import SandboxUnavailable, check_bubblewrap

        try:
            check_bubblewrap()
        except SandboxUnavailable as exc:
            print(f"kimi-cua eval local: {exc} (or pass --no-sandbox)", file=sys.stderr)
            return 2

    def show(result: LocalTaskResult) -> None:
        score = "-" if result.score is None else f"{result.score:g}"
        note = f"  ({result.reason or result.error})" if result.reason or result.error else ""
        if result.done_overturned:
            note += f"  ({result.done_overturned} of {result.done_checked} DONE overturned by the check)"
        print(f"{result.domain}/{result.task_id}: {result.status}, score {score}, {result.steps}/{result.max_steps} "
              f"steps, {result.seconds:.0f} s{note}", flush=True)

    print(f"{len(items)} tasks -> {out} (preflight first: unsupported tasks never reach the model)", flush=True)
    results = run_local_suite(items, options, on_result=show, problems=problems)
    print(format_status_table(status_table(results)))
    print(f"per task: {out / 'results.jsonl'}; summary: {out / 'summary.json'}")
    if any(r.status in RERUN for r in results):
        print("run the same command again to repeat the infra_error and timeout tasks", file=sys.stderr)
    return 0 if all(r.status in ("success", "fail", "unsupported") for r in results) else 1


def _probe_server(args: argparse.Namespace) -> None:
    """The model server answers and serves the model, before any desktop starts (UsageError: exit 2, as `run`)."""
    from agent.models.vllm import ServerError, VLLMClient

    client = VLLMClient(args.base_url, model=args.model, api_key=args.api_key, timeout=30.0, retries=1)
    try:
        served = [m.id for m in client.models()]
        if args.model is None and len(served) != 1:
            raise UsageError(f"{client.base_url} serves {len(served)} models ({', '.join(served) or 'none'}); "
                             "choose one with --model")
        if args.model is not None and args.model not in served:
            raise UsageError(f"{client.base_url} does not serve {args.model!r} (it serves {', '.join(served)}); "
                             "check --model")
    except ServerError as exc:
        raise UsageError(str(exc)) from None
    finally:
        client.close()


def run_osworld_command(args: argparse.Namespace) -> int:
    if args.num_envs < 1:
        print("kimi-cua eval osworld: --num-envs must be at least 1", file=sys.stderr)
        return 2
    env_kwargs = {"provider_name": args.provider, "action_space": "pyautogui", "screen_size": args.screen_size,
                  "headless": args.headless, "os_type": "Ubuntu", "require_a11y_tree": False}
    if args.path_to_vm:
        env_kwargs["path_to_vm"] = args.path_to_vm
    if args.region:
        env_kwargs["region"] = args.region
    options = OSWorldOptions(
        osworld_dir=args.osworld_dir, test_meta=args.test_meta, result_dir=args.result_dir, domain=args.domain,
        model_name=args.model_name, max_steps=args.max_steps, sleep_after_execution=args.sleep_after_execution,
        settle_after_reset=args.settle_after_reset, num_envs=args.num_envs, env_kwargs=env_kwargs,
        agent_kwargs={"base_url": args.base_url, "model": args.model, "api_key": args.api_key})
    try:
        refs = load_meta(options)
    except TaskError as exc:
        print(f"kimi-cua eval osworld: {exc}", file=sys.stderr)
        return 2
    try:
        import_desktop_env()
    except OSWorldUnavailable as exc:
        print(f"kimi-cua eval osworld: {exc}", file=sys.stderr)
        return 2
    todo = len(pending(refs, options))
    print(f"{len(refs)} examples, {len(refs) - todo} already finished, {todo} to run on {args.num_envs} env(s)")
    from tqdm import tqdm

    failures: list[str] = []
    with tqdm(total=todo, unit="example") as bar:
        def done(ref: ExampleRef, score: float | None, error: str | None) -> None:
            if error:
                failures.append(f"{ref.domain}/{ref.example_id}: {error}")
            bar.set_postfix_str(f"{ref.domain} {'error' if error else score}")
            bar.update(1)

        try:
            reported = run_osworld(options, done)
        except OSWorldUnavailable as exc:
            print(f"kimi-cua eval osworld: {exc}", file=sys.stderr)
            return 2
    if reported < todo:  # a worker died (crash, OOM, kill) before reporting these
        failures.append(f"{todo - reported} of {todo} examples never reported back (a worker process died); "
                        "run again to retry them")
    print(format_table(domain_table(collect_results(options))))
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 1 if failures else 0
