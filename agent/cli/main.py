"""``kimi-cua``: one command line, each subcommand registered by the module that implements it."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules exposing register(subparsers) and/or register_eval(eval_subparsers).
COMMAND_MODULES = [
    "agent.cli.run",
    "agent.cli.parse",
    "agent.cli.eval_osworld",
    "agent.cli.eval_screenspot",
    "agent.cli.report",
    "agent.cli.replay",
    "agent.cli.serve",
    "agent.cli.doctor",
    "agent.cli.guest",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kimi-cua",
        description="Let a locally served Kimi-VL-Thinking operate a desktop (OSWorld-style computer use).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    eval_parser = sub.add_parser("eval", help="evaluate a model (screenspot, osworld, local)")
    eval_sub = eval_parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    eval_parser.set_defaults(handler=lambda args: _usage(eval_parser))
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(sub)
        if hasattr(module, "register_eval"):
            module.register_eval(eval_sub)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        return _usage(parser)
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        print("kimi-cua: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
