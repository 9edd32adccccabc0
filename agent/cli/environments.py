"""Open the environment a command asked for (local display or a private Xvfb desktop), closed on every path."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from agent.cli.validate import DEFAULT_SIZE, nonnegative_float, positive_float, positive_int, screen_size
from envs.app_env import app_env
from envs.base import DisplayError, Environment


@dataclass
class EnvOptions:
    kind: str = "local"  # local | virtual | osworld
    osworld_url: str | None = None  # --env osworld: the guest's in-VM server (OSWorld VM or `kimi-cua guest`)
    display: str | None = None  # local: the display to act on; virtual: the number Xvfb takes (default: a free one)
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
    sandbox: bool = False  # launched programs and the window manager run under bubblewrap (agent.safety.sandbox)
    sandbox_network: bool = False
    sandbox_root: str | None = None  # where the sandbox's private HOME and /tmp go (default: a temporary folder)


def add_env_arguments(parser) -> None:  # argparse.ArgumentParser
    g = parser.add_argument_group("environment")
    g.add_argument("--env", choices=["local", "virtual", "osworld"], default="local",
                   help="local: the current DISPLAY; virtual: a private Xvfb desktop started for this run; osworld: "
                        "an OSWorld guest's HTTP server (--osworld-url: a VM's port 5000 or `kimi-cua guest`)")
    g.add_argument("--osworld-url", metavar="URL",
                   help="with --env osworld: the guest's server, e.g. http://192.168.56.10:5000")
    g.add_argument("--display", metavar=":N", help="X display: --env local acts on it (default: $DISPLAY); --env "
                   "virtual starts its Xvfb on it (default: the first free one)")
    g.add_argument("--monitor", type=positive_int, default=1, help="monitor to act on, mss numbering (1 = first)")
    g.add_argument("--size", type=screen_size, metavar="WxH",
                   help=f"screen size of --env virtual (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    g.add_argument("--no-wm", action="store_true", help="--env virtual without a window manager")
    g.add_argument("--launch", action="append", default=[], metavar="CMD",
                   help="start this program on the display before the run (repeatable)")
    g.add_argument("--settle", choices=["adaptive", "fixed"], default="adaptive",
                   help="after an action, wait until the screen stops changing (default) or a fixed time")
    g.add_argument("--settle-ms", type=nonnegative_float, default=2000.0, help="the wait of --settle fixed (default 2000)")
    g.add_argument("--max-settle-ms", type=positive_float, default=3000.0, help="longest adaptive wait (default 3000)")
    g.add_argument("--encoding", choices=["png", "webp"], default="png",
                   help="lossless screenshot encoding (default png; webp is half the bytes, slower here)")
    g.add_argument("--sandbox", action="store_true",
                   help="with --env virtual: run the launched programs and the window manager under bubblewrap "
                        "(system read-only, private HOME and /tmp in <out>/sandbox, no network, no access to your "
                        "files); see README 'Safety and stopping'")
    g.add_argument("--sandbox-network", action="store_true", help="let sandboxed programs use the network")


def check_env_arguments(args) -> None:
    """What can be checked before a server probe or an Xvfb start: the --launch programs, --display of --env
    virtual (UsageError: one line, exit 2)."""
    from agent.cli.validate import UsageError, check_launch

    if args.env == "osworld":
        return
    check_launch(args.launch)
    if args.env == "virtual" and args.display:
        from envs.xvfb import _display_number

        try:
            _display_number(args.display)
        except DisplayError as exc:
            raise UsageError(f"--display {args.display}: {exc}; with --env virtual give a free display like :5") \
                from None


def env_options_from(args) -> EnvOptions:
    width, height = args.size or DEFAULT_SIZE
    return EnvOptions(kind=args.env, display=args.display, monitor=args.monitor, width=width, height=height,
                      window_manager=None if args.no_wm else "openbox", launch=list(args.launch),
                      settle=args.settle, fixed_ms=args.settle_ms, max_settle_ms=args.max_settle_ms,
                      encoding=args.encoding, sandbox=getattr(args, "sandbox", False),
                      sandbox_network=getattr(args, "sandbox_network", False),
                      sandbox_root=str(args.out / "sandbox") if getattr(args, "out", None) else None,
                      osworld_url=getattr(args, "osworld_url", None))


@contextmanager
def open_environment(options: EnvOptions) -> Iterator[Environment]:
    """Yield a ready environment; stops the virtual display and launched programs on every exit path."""
    if options.kind == "osworld":
        yield from _osworld_environment(options)
        return
    from envs.desktop import LocalDesktop
    from envs.settle import SettleConfig
    from envs.xvfb import VirtualDisplay, die_with_parent

    virtual: VirtualDisplay | None = None
    launched: list[subprocess.Popen[bytes]] = []
    env: Environment | None = None
    sandbox = _sandbox(options)
    launch = sandbox.popen if sandbox is not None else subprocess.Popen
    try:
        if options.kind == "virtual":
            virtual = VirtualDisplay(options.width, options.height, window_manager=options.window_manager,
                                     launcher=launch if sandbox is not None else None,
                                     display=options.display).start()
            display = virtual.display
        else:
            display = options.display or os.environ.get("DISPLAY")
            if not display:
                raise DisplayError("no X display: set DISPLAY (or --display :N), or use --env virtual for a "
                                   "private Xvfb desktop")
        settle = SettleConfig(mode=options.settle, fixed_ms=options.fixed_ms, max_ms=options.max_settle_ms)
        env = LocalDesktop(display=display, monitor=options.monitor, settle=settle, encoding=options.encoding)
        for command in options.launch:
            child_env = app_env(DISPLAY=display)
            # die_with_parent: a SIGKILLed kimi-cua leaves no launched program behind
            try:
                launched.append(launch(shlex.split(command), env=child_env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=die_with_parent()))
            except OSError as exc:  # not found, not executable
                raise DisplayError(f"--launch {command!r} cannot start: {exc.strerror or exc}") from None
        if launched:
            _wait_for_change(env, options.launch_timeout, launched)
        yield env
    finally:
        if env is not None:
            env.close()
        for proc in launched:
            _stop_group(proc)
        if virtual is not None:
            virtual.stop()


def _sandbox(options: EnvOptions):
    """The bubblewrap sandbox of ``--sandbox`` (None without it); DisplayError when it cannot be had."""
    if not options.sandbox:
        return None
    if options.kind != "virtual":
        raise DisplayError("--sandbox needs --env virtual: programs already on your display run outside any "
                           "sandbox and could start anything for the agent")
    import tempfile
    from pathlib import Path

    from agent.safety.sandbox import Sandbox, SandboxUnavailable, check_bubblewrap

    try:
        check_bubblewrap()
    except SandboxUnavailable as exc:
        raise DisplayError(str(exc)) from None
    root = Path(options.sandbox_root) if options.sandbox_root else Path(tempfile.mkdtemp(prefix="kimi-cua-sandbox-"))
    return Sandbox(root, network=options.sandbox_network).prepare()


def _osworld_environment(options: EnvOptions) -> Iterator[Environment]:
    """An OSWorld guest over HTTP: screenshots from /screenshot, actions as generated pyautogui code via /execute."""
    from envs.osworld_client import OSWorldVMEnvironment

    if not options.osworld_url:
        raise DisplayError("--env osworld needs --osworld-url URL (the guest's server: an OSWorld VM's port 5000, or "
                           "`kimi-cua guest --display :N --port P`)")
    env = OSWorldVMEnvironment(options.osworld_url)
    try:
        env.geometry()  # reachable and answering now, or a readable error naming the URL
        yield env
    finally:
        env.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End a launched program and whatever it started in its process group (TERM, then KILL)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


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
