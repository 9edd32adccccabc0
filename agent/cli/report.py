"""``kimi-cua report DIR``: one self-contained HTML page for a run (``--gif``: an animated GIF too)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.debug.report import write_gif, write_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write an HTML report (and a GIF) of a run directory",
                       description="Write one self-contained HTML file for a run: a timeline, then every step's "
                       "screenshot with the action drawn, thinking, summary, action, result, timings and tokens.")
    p.add_argument("run_dir", type=Path, metavar="DIR", help="a run directory (holds trajectory.jsonl)")
    p.add_argument("--out", type=Path, help="HTML file to write (default DIR/report.html)")
    p.add_argument("--gif", nargs="?", const=True, default=None, metavar="FILE",
                   help="also write an animated GIF of the run (default DIR/run.gif)")
    p.add_argument("--gif-width", type=int, default=800, help="GIF width in pixels (default 800)")
    p.add_argument("--frame-ms", type=int, default=1200, help="time per GIF frame in ms (default 1200)")
    p.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    try:
        page = write_report(args.run_dir, args.out)
        print(f"kimi-cua: report written to {page}", file=sys.stderr)
        if args.gif is not None:
            target = None if args.gif is True else Path(args.gif)
            gif = write_gif(args.run_dir, target, width=args.gif_width, frame_ms=args.frame_ms)
            print(f"kimi-cua: GIF written to {gif}", file=sys.stderr)
    except (FileNotFoundError, ValueError) as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kimi-cua: cannot write the report: {exc}", file=sys.stderr)
        return 1
    return 0
