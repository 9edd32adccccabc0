"""``kimi-cua replay DIR``: re-run a recorded run's actions, stopping where the screen no longer matches."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actions.types import describe
from agent.cli.environments import add_env_arguments, check_env_arguments, env_options_from, open_environment
from agent.cli.validate import check_writable_dir, fraction
from agent.hooks import AgentHooks
from agent.debug.replay import DEFAULT_TOLERANCE, METRIC, Replayer
from agent.trajectory import StepRecord, read_info, read_trajectory
from envs.base import DisplayError


class ReplayPrinter(AgentHooks):
    def on_step_end(self, record: StepRecord) -> None:  # type: ignore[override]
        what = "; ".join(describe(a) for a in record.actions) or "no action"
        state = "ok" if record.result.ok else f"FAILED ({record.result.error})"
        if record.result.skipped:
            state = "skipped"
        print(f"replay step {record.step} | {what} | {state} | {record.notes[0] if record.notes else ''}",
              file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-run a recorded run's actions on a desktop",
                       description="Re-run the actions of a run directory (screen pixels) on a desktop. Before "
                       f"each step the live screen is compared with the recorded screenshot ({METRIC}); the "
                       "replay stops when the difference exceeds --tolerance. Exit 0: every step replayed; "
                       "1: diverged, an action failed or stopped; 2: bad run directory or display.")
    p.add_argument("run_dir", type=Path, metavar="DIR", help="a run directory (holds trajectory.jsonl)")
    p.add_argument("--tolerance", type=fraction, default=DEFAULT_TOLERANCE, metavar="T",
                   help=f"share of the screen (0..1) allowed to differ before a step (default {DEFAULT_TOLERANCE})")
    p.add_argument("--step", action="store_true", help="pause before each step (execute/edit/skip/continue/stop)")
    p.add_argument("--out", type=Path, help="where the replay's own trajectory goes (default DIR/replay-<time>)")
    add_env_arguments(p)
    p.set_defaults(handler=replay_command)


def recorded_size(run_dir: Path) -> tuple[int, int] | None:
    """The screen size a run was recorded at: run.json's settings (``--size`` of `run`), else the first step's
    monitor, else its screenshot; None when nothing says."""
    try:
        info = read_info(run_dir)
    except (OSError, ValueError):
        info = None
    size = info.settings.get("size") if info is not None else None
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    try:
        records = read_trajectory(run_dir)
    except (OSError, ValueError):
        return None
    if not records:
        return None
    first = records[0]
    if first.monitor is not None and first.monitor.left == 0 and first.monitor.top == 0:
        return first.monitor.width, first.monitor.height
    return (first.image_width, first.image_height) if first.image_width and first.image_height else None


def replay_command(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_writable_dir(args.out, "--out")
    if args.env == "virtual" and args.size is None:
        args.size = recorded_size(args.run_dir)  # the desktop the run was recorded on (None: the default)
    check_env_arguments(args)
    hooks: AgentHooks = ReplayPrinter()
    if args.step:
        from agent.debug.step_through import StepThrough
        from agent.hooks import HookChain

        hooks = HookChain([StepThrough(sys.stdin, sys.stderr, allow_retry=False, resumable=False), hooks])
    try:
        with open_environment(env_options_from(args)) as env:
            replayer = Replayer(env, args.run_dir, tolerance=args.tolerance, hooks=hooks, out_dir=args.out)
            result = replayer.run()
    except (FileNotFoundError, ValueError, DisplayError) as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    if result.divergence is not None:
        print(f"kimi-cua: {result.divergence.message}", file=sys.stderr)
        return 1
    if result.status != "replayed":
        print(f"kimi-cua: replay {result.status} after {result.steps_replayed} steps: {result.error}",
              file=sys.stderr)
        return 1
    print(f"kimi-cua: replayed {result.steps_replayed} steps; trajectory in {result.out_dir}", file=sys.stderr)
    return 0
