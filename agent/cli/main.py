"""``kimi-cua``: one command line, each subcommand registered by the module that implements it.

Every mistake is one line on stderr: argparse errors (``kimi-cua: <problem>; see kimi-cua CMD --help``, exit 2),
``UsageError`` raised by a command (``kimi-cua: <problem>; <what to do>``, exit 2), and anything unexpected
(``kimi-cua: unexpected error ...``, exit 1, the traceback in a log file or, with ``--debug``, on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback
from typing import NoReturn

from agent.cli.validate import UsageError

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
DEBUG_ENV = "KIMI_CUA_DEBUG"  # set (or pass --debug): unexpected errors print their traceback


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors; an unknown flag also shows the usage of the command it was given to."""

    def error(self, message: str) -> NoReturn:
        if message.startswith(("unrecognized arguments", "the following arguments are required")):
            self.print_usage(sys.stderr)
        self.exit(2, f"kimi-cua: {message}; see {self.prog} --help\n")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kimi-cua")
    except Exception:  # not installed as a distribution (a bare checkout on sys.path)
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="kimi-cua",
        description="Let a locally served Kimi-VL-Thinking operate a desktop (OSWorld-style computer use).")
    parser.add_argument("--version", action="version", version=f"kimi-cua {_version()}")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an unexpected error (also accepted after the command)")
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
    _mark_parsers(parser)
    return parser


def _mark_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's parser in its namespace as ``_parser``: errors found later name the right command."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                _mark_parsers(child)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def command_argv(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """The arguments given to the (sub)command of ``args``: what follows its name in ``argv``."""
    words = args._parser.prog.split()[1:]  # e.g. ["eval", "local"]
    index = 0
    for word in words:
        index = argv.index(word, index) + 1 if word in argv[index:] else index
    return argv[index:]


def explicit(args: argparse.Namespace, argv: list[str]) -> set[str]:
    """The destinations of the options given on the command line (not left at their defaults)."""
    parser: argparse.ArgumentParser = args._parser
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_known_args(command_argv(args, argv), namespace)
    return {dest for dest, value in vars(namespace).items() if value is not unset}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get(DEBUG_ENV))
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = argv
    handler = getattr(args, "handler", None)
    if handler is None:
        return _usage(parser)
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        print("kimi-cua: interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line here, the traceback in a log (or on stderr with --debug)
        if debug:
            traceback.print_exc()
            return 1
        log = _write_traceback()
        where = f"the traceback is in {log}" if log else "run it again with --debug for the traceback"
        print(f"kimi-cua: unexpected error {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"({where}; run with --debug to print it)", file=sys.stderr)
        return 1


def _write_traceback() -> str | None:
    try:
        fd, path = tempfile.mkstemp(prefix="kimi-cua-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(traceback.format_exc())
        return path
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
