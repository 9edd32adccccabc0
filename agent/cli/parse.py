"""`kimi-cua parse`: model output on stdin -> the actions it means, as JSON in pixels of the shown image."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from actions.coords import Monitor, to_screen
from actions.parser import parse_reply
from actions.types import ACTION_LIST_ADAPTER, ActionParseError
from agent.cli.validate import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "parse",
        help="parse model output from stdin and print the actions as JSON",
        description="Read model output (a full reply with ◁think▷...◁/think▷, or a bare answer) on stdin and "
                    "print the parsed actions as JSON, with points in pixels of a WIDTHxHEIGHT image. "
                    "Exit 2 with the reason on stderr when it does not parse.",
    )
    parser.add_argument("--width", type=positive_int, default=1920, help="width of the image the model was shown")
    parser.add_argument("--height", type=positive_int, default=1080, help="height of the image the model was shown")
    parser.add_argument("--coords", choices=("auto", "normalized", "pixels"), default="auto",
                        help="how to read the numbers, as `run --coords`: auto = all <= 1 are fractions, else "
                        "image pixels")
    parser.add_argument("--mode", dest="coords", choices=("auto", "normalized", "pixels"),
                        help=argparse.SUPPRESS)  # the old name of --coords
    parser.set_defaults(handler=run_parse)


def run_parse(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None,
              stderr: TextIO | None = None) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    if args.width <= 0 or args.height <= 0:
        print(f"error: --width and --height must be positive, got {args.width}x{args.height}", file=stderr)
        return 2
    text = stdin.read()
    monitor = Monitor(left=0, top=0, width=args.width, height=args.height)
    try:
        actions = [to_screen(a, shown_width=args.width, shown_height=args.height, monitor=monitor, mode=args.coords)
                   for a in parse_reply(text)]
    except ActionParseError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    print(json.dumps(ACTION_LIST_ADAPTER.dump_python(actions, mode="json"), ensure_ascii=False), file=stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `parse` on its own (``python -m agent.cli.parse``), e.g. before the CLI wires it in."""
    parser = argparse.ArgumentParser(prog="kimi-cua")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["parse", *(argv if argv is not None else sys.argv[1:])])
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
