"""Open the environment a command asked for (local display or a private Xvfb desktop), closed on every path."""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from envs.base import DisplayError, Environment


@dataclass
class EnvOptions:
    kind: str = "local"  # local | virtual
    display: str | None = None
    monitor: int = 1
    width: int = 1920
    height: int = 1080
    window_manager: str | None = "openbox"
    launch: list[str] = field(default_factory=list)  # programs to start on the display first
    launch_timeout: float = 15.0
    settle: str = "adaptive"  # adaptive | fixed
    fixed_ms: float = 2000.0
    max_settle_ms: float = 3000.0
    encoding: str = "png"


def add_env_arguments(parser) -> None:  # argparse.ArgumentParser
    g = parser.add_argument_group("environment")
    g.add_argument("--env", choices=["local", "virtual"], default="local",
                   help="local: the current DISPLAY; virtual: a private Xvfb desktop started for this run")
    g.add_argument("--display", help="X display to use with --env local (default: $DISPLAY)")
    g.add_argument("--monitor", type=int, default=1, help="monitor to act on, mss numbering (1 = first)")
    g.add_argument("--size", default="1920x1080", help="screen size of --env virtual, WxH (default 1920x1080)")
    g.add_argument("--no-wm", action="store_true", help="--env virtual without a window manager")
    g.add_argument("--launch", action="append", default=[], metavar="CMD",
                   help="start this program on the display before the run (repeatable)")
    g.add_argument("--settle", choices=["adaptive", "fixed"], default="adaptive",
                   help="after an action, wait until the screen stops changing (default) or a fixed time")
    g.add_argument("--settle-ms", type=float, default=2000.0, help="the wait of --settle fixed (default 2000)")
    g.add_argument("--max-settle-ms", type=float, default=3000.0, help="longest adaptive wait (default 3000)")
    g.add_argument("--encoding", choices=["png", "webp"], default="png",
                   help="lossless screenshot encoding (default png; webp is half the bytes, slower here)")


def env_options_from(args) -> EnvOptions:
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"kimi-cua: --size must look like 1920x1080, not {args.size!r}") from None
    return EnvOptions(kind=args.env, display=args.display, monitor=args.monitor, width=width, height=height,
                      window_manager=None if args.no_wm else "openbox", launch=list(args.launch),
                      settle=args.settle, fixed_ms=args.settle_ms, max_settle_ms=args.max_settle_ms,
                      encoding=args.encoding)


@contextmanager
def open_environment(options: EnvOptions) -> Iterator[Environment]:
    """Yield a ready environment; stops the virtual display and launched programs on every exit path."""
    from envs.desktop import LocalDesktop
    from envs.settle import SettleConfig
    from envs.xvfb import VirtualDisplay

    virtual: VirtualDisplay | None = None
    launched: list[subprocess.Popen[bytes]] = []
    env: Environment | None = None
    try:
        if options.kind == "virtual":
            virtual = VirtualDisplay(options.width, options.height, window_manager=options.window_manager).start()
            display = virtual.display
        else:
            display = options.display or os.environ.get("DISPLAY")
            if not display:
                raise DisplayError("no X display: set DISPLAY (or --display :N), or use --env virtual for a "
                                   "private Xvfb desktop")
        settle = SettleConfig(mode=options.settle, fixed_ms=options.fixed_ms, max_ms=options.max_settle_ms)
        env = LocalDesktop(display=display, monitor=options.monitor, settle=settle, encoding=options.encoding)
        for command in options.launch:
            child_env = dict(os.environ, DISPLAY=display)
            launched.append(subprocess.Popen(shlex.split(command), env=child_env, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, start_new_session=True))
        if launched:
            _wait_for_change(env, options.launch_timeout, launched)
        yield env
    finally:
        if env is not None:
            env.close()
        for proc in launched:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if virtual is not None:
            virtual.stop()


def _wait_for_change(env: Environment, timeout: float, launched: list[subprocess.Popen[bytes]]) -> None:
    """Wait until launched programs have drawn something and the screen stopped changing."""
    first = env.observe().image
    deadline = time.monotonic() + timeout
    previous = first
    changed = False
    while time.monotonic() < deadline:
        time.sleep(0.1)
        for proc in launched:
            if proc.poll() is not None and proc.returncode != 0:
                raise DisplayError(f"--launch {shlex.join(proc.args)} exited with code {proc.returncode}")
        current = env.observe().image
        if current != first:
            changed = True
        if changed and current == previous:
            return
        previous = current
    if not changed:
        raise DisplayError(f"launched programs drew nothing within {timeout:g} s: check the --launch commands")
