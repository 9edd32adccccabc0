"""Checks of command-line values, made right after parsing: a bad value is one line and exit 2, found before any
server probe or Xvfb start.

``UsageError`` is the one exception ``agent.cli.main`` turns into ``kimi-cua: <message>`` and exit 2; the
``argparse`` types below raise ``ArgumentTypeError`` (argparse's own one-line error, also exit 2).
"""
from __future__ import annotations

import argparse
import errno
import os
import shlex
import shutil
import tempfile
from pathlib import Path

DEFAULT_SIZE = (1920, 1080)  # every command's screen size when none is given (run, replay, doctor, eval local)
MIN_SIDE, MAX_SIDE = 64, 8192  # Xvfb takes up to 32767, but 8192x8192 is already a 256 MiB framebuffer


class UsageError(Exception):
    """Bad usage or configuration found before anything started: ``kimi-cua: <message>``, exit 2."""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def zoom_rounds(text: str) -> int:
    """``--zoom N``: zoom-in rounds, 0 (off) to 10 (each round halves the window; more never helps)."""
    value = _int(text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be 0 (off) to 10 zoom rounds, not {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def port(text: str) -> int:
    value = _int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def screen_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` with both sides in MIN_SIDE..MAX_SIDE."""
    try:
        width, height = (int(v) for v in text.lower().strip().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT like 1920x1080") from None
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"{width}x{height}: width and height must be {MIN_SIDE} to {MAX_SIDE} "
                                         "pixels, e.g. 1920x1080")
    return width, height


def check_writable_dir(path: Path, flag: str) -> Path:
    """``path`` is a folder that exists and is writable, or can be made: checked by making (and removing) a
    temporary folder in its nearest existing ancestor. Nothing is left behind. Returns ``path``."""
    path = Path(path)
    fix = f"choose a writable {flag}" if flag else "choose a writable folder"
    existing = path
    while not existing.exists() and not existing.is_symlink():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "it is" if existing == path else f"{existing} is"
        raise UsageError(f"cannot write {path}: {what} a file, not a folder; {fix}")
    try:
        probe = tempfile.mkdtemp(prefix=".kimi-cua-probe-", dir=existing)
    except OSError as exc:
        reason = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc)).lower()
        where = "" if existing == path else f" in {existing}"
        raise UsageError(f"cannot write {path} ({reason}{where}); {fix}") from None
    os.rmdir(probe)
    return path


def check_launch(commands: list[str]) -> None:
    """Each ``--launch`` command parses as a shell line and names a program that exists."""
    for command in commands:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"--launch {command!r} is not a command line ({exc}); check its quotes") from None
        if not argv:
            raise UsageError("--launch '' names no program; give the command to start")
        program = argv[0]
        found = (os.path.isfile(program) and os.access(program, os.X_OK)) if "/" in program else shutil.which(program)
        if not found:
            raise UsageError(f"--launch {command!r}: program {program!r} not found; install it or give its full path")
