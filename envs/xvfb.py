"""A private virtual desktop: Xvfb on a free display, optionally a window manager, always cleaned up.

Cleaned up even when this process is killed with SIGKILL: every program started here gets a parent-death
signal (``die_with_parent``), so Xvfb, the window manager and launched programs never outlive kimi-cua.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from envs.app_env import app_env
from envs.base import DisplayError

INSTALL_HINT = "install it with: apt-get install -y xvfb xauth openbox xdotool xclip x11-utils"
DISPLAYS_ENV = "KIMI_CUA_DISPLAYS"  # e.g. "80-89": the display numbers this process may take (default: any free)
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child ``sig`` when this process dies, SIGKILL included (Linux prctl
    PR_SET_PDEATHSIG). None where that cannot hold: off Linux, or off the main thread (the kernel sends the
    signal when the *thread* that started the child ends, and a worker thread may end before the process)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def _display_numbers() -> list[int] | None:
    """The display numbers allowed by $KIMI_CUA_DISPLAYS ("80-89" or "80,81"), or None for any free one."""
    spec = os.environ.get(DISPLAYS_ENV, "").strip()
    if not spec:
        return None
    numbers: list[int] = []
    try:
        for part in spec.split(","):
            low, _, high = part.strip().lstrip(":").partition("-")
            numbers.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        raise DisplayError(f"${DISPLAYS_ENV}={spec!r} is not a display range like 80-89") from None
    return numbers


def _display_number(display: str | int) -> int:
    text = str(display).strip()
    try:
        number = int(text[1:] if text.startswith(":") else text)
    except ValueError:
        raise DisplayError(f"{display!r} is not an X display like :5") from None
    if not 0 <= number < 65536:
        raise DisplayError(f"{display!r} is not an X display number")
    return number


class VirtualDisplay:
    """``with VirtualDisplay(1920, 1080) as vd: ...`` sets nothing globally; use ``vd.env`` for children.

    ``vd.display`` is the DISPLAY string (":N"). Xvfb picks a free display number itself (-displayfd),
    so parallel test runs never collide. The server and window manager are stopped on every exit path.
    """

    def __init__(
        self,
        width: int = 1920,
        height: int = 1080,
        depth: int = 24,
        window_manager: str | None = "openbox",
        start_timeout: float = 10.0,
        launcher: Callable[..., subprocess.Popen] | None = None,
        display: str | int | None = None,
    ) -> None:
        """``launcher``: starts the window manager instead of ``subprocess.Popen`` (same arguments), e.g. inside
        a sandbox: its menus can start programs. ``display``: the number to take (":N" or N; default: the first
        free one, within $KIMI_CUA_DISPLAYS when set)."""
        self.width, self.height, self.depth = width, height, depth
        self.window_manager = window_manager
        self.launcher = launcher
        self.wanted = _display_number(display) if display is not None else None
        self.start_timeout = start_timeout
        self.display: str = ""
        self._xvfb: subprocess.Popen[bytes] | None = None
        self._wm: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        env = app_env()
        env["DISPLAY"] = self.display
        env.pop("XAUTHORITY", None)
        return env

    def start(self) -> "VirtualDisplay":
        if shutil.which("Xvfb") is None:
            raise DisplayError(f"--env virtual needs Xvfb, which is not installed; {INSTALL_HINT}")
        allowed = _display_numbers()
        if self.wanted is not None:
            if x_socket(f":{self.wanted}").exists() or Path(f"/tmp/.X{self.wanted}-lock").exists():
                raise DisplayError(f"display :{self.wanted} is taken (an X server runs there); choose another "
                                   "--display or leave it out to take a free one")
            allowed = None
        candidates: list[int | None] = [self.wanted] if self.wanted is not None else list(allowed) if allowed else [None]
        for index, wanted in enumerate(candidates):
            try:
                number = self._start_xvfb(wanted)
                break
            except DisplayError:
                if index == len(candidates) - 1:
                    if allowed:
                        raise DisplayError(f"no free X display among ${DISPLAYS_ENV}={os.environ[DISPLAYS_ENV]}; "
                                           "stop the Xvfb servers using them or widen the range") from None
                    raise
        self.display = f":{number}"
        if self.window_manager:
            if shutil.which(self.window_manager) is None:
                self.stop()
                raise DisplayError(f"window manager {self.window_manager!r} is not installed; {INSTALL_HINT}, "
                                   "or pass window_manager=None")
            launch = self.launcher or subprocess.Popen
            self._wm = launch([self.window_manager], env=self.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent())
            time.sleep(0.2)  # let the WM take over the root window before clients map
        return self

    def _start_xvfb(self, wanted: int | None) -> int:
        """Start Xvfb on display ``wanted`` (None: the first free one); returns the display number."""
        read_fd, write_fd = os.pipe()
        where = [f":{wanted}"] if wanted is not None else []
        self._xvfb = subprocess.Popen(
            ["Xvfb", *where, "-displayfd", str(write_fd), "-screen", "0", f"{self.width}x{self.height}x{self.depth}",
             "-nolisten", "tcp", "-noreset", "+extension", "RANDR"],
            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent(),
        )
        os.close(write_fd)
        return self._read_display_number(read_fd)

    def _read_display_number(self, read_fd: int) -> int:
        deadline = time.monotonic() + self.start_timeout
        data = b""
        try:
            os.set_blocking(read_fd, False)
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(read_fd, 64)
                except BlockingIOError:
                    chunk = None
                if chunk:
                    data += chunk
                    if data.endswith(b"\n"):
                        return int(data.strip())
                elif chunk == b"" or (self._xvfb and self._xvfb.poll() is not None):
                    break
                time.sleep(0.01)
        finally:
            os.close(read_fd)
        self.stop()
        raise DisplayError(f"Xvfb did not start within {self.start_timeout:g} s ({self.width}x{self.height}); "
                           "check that /tmp/.X11-unix is writable and that Xvfb runs by hand")

    def stop(self) -> None:
        for proc in (self._wm, self._xvfb):
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=3)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._wm = self._xvfb = None

    def __enter__(self) -> "VirtualDisplay":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; normal paths call stop()
        try:
            self.stop()
        except Exception:
            pass


def x_socket(display: str) -> Path:
    return Path("/tmp/.X11-unix") / f"X{display.lstrip(':').split('.')[0]}"
