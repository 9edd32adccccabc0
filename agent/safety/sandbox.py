"""The wall: programs the agent can drive run under bubblewrap (Debian package ``bubblewrap``).

``--sandbox`` (default for ``eval local``, available for ``run --env virtual``) starts the launched programs,
the window manager and task commands as::

    bwrap ... -- setpriv (when root: an unprivileged uid, no capabilities) prlimit (process cap) PROGRAM

What it protects:
- the system is read-only (/usr, /etc and the library folders are bound read-only; nothing else of the host is
  there): ``rm -rf /``, writes into /etc or /boot, ``chmod -R`` on system paths fail;
- the user's files are not there at all: HOME and /tmp are private folders of the run (``<out>/sandbox/home`` and
  ``<out>/sandbox/tmp``, or the task's own HOME for ``eval local``); other folders of the host do not exist inside;
- no network unless asked (``--sandbox-network``): a loopback of its own, so downloads fail and nothing listening
  on the host's 127.0.0.1 can be reached (``eval local``'s worker reaches its guest inside through
  ``agent.safety.bridge``, host to sandbox only);
- its own process tree (pid namespace): ``kill -9 -1`` or ``pkill`` reach only the sandbox; the process count is
  capped (a fork bomb stops at the cap), and everything inside dies with the program that was launched;
- not root: as root, programs inside run as an unprivileged uid with no capabilities; ``sudo`` cannot work;
- a new session (no TIOCSTI keystroke injection into the terminal kimi-cua runs in); a clean environment (no
  API keys or tokens from kimi-cua's environment).

What it does not protect:
- the X display is shared: programs inside can read the screen and send keystrokes to every window on that
  display (that is why it needs a private ``--env virtual`` desktop, where only sandboxed programs live);
- the private HOME and /tmp themselves: the task's own files can be destroyed, by design;
- CPU and memory: a busy loop or a memory hog slows the machine until the run ends (only the process count is
  capped); the kernel is shared (bubblewrap uses namespaces, it is not a virtual machine);
- the clipboard is shared with kimi-cua's own paste helper (xclip runs outside).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "install it with: apt-get install -y bubblewrap"
_SYSTEM_RO = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/var/cache/fontconfig")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; the message says what to do."""


def check_bubblewrap() -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"--sandbox needs bubblewrap (bwrap), which is not installed; {INSTALL_HINT}")
    return bwrap


@dataclass
class Sandbox:
    """Where sandboxed programs keep their files and what they may reach.

    ``root``: a host folder for the private ``home`` and ``tmp`` (created); ``home``: put HOME somewhere else
    (``eval local`` uses the task's HOME, at the same path inside and out, so evaluators read it directly).
    ``display``: the X display to let through (its socket only). ``read_only``: more host paths visible read-only
    (the Python interpreter, the task apps). ``writable``: host folders visible read-write at the same path (the
    unix sockets of ``agent.safety.bridge``). ``env``: more variables inside (``PYTHONPATH`` of the project). ``uid``:
    the unprivileged uid used when kimi-cua runs as root.
    """

    root: Path
    display: str | None = None
    network: bool = False
    home: Path | None = None
    read_only: list[Path] = field(default_factory=list)
    writable: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    max_processes: int = 512
    uid: int = field(default_factory=lambda: int(os.environ.get("KIMI_CUA_SANDBOX_UID", "65534")))

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.home = Path(self.home).resolve() if self.home else self.root / "home"
        self.tmp = self.root / "tmp"

    def prepare(self) -> "Sandbox":
        for folder in (self.home, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                for path in (folder, *folder.rglob("*")):
                    try:
                        os.lchown(path, self.uid, self.uid)
                    except OSError:
                        pass
        self.tmp.chmod(0o1777)
        return self

    def environment(self) -> dict[str, str]:
        """The environment inside (kimi-cua's own is not passed on: it may hold keys and tokens)."""
        env = {"HOME": str(self.home), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "TMPDIR": "/tmp",
               "SHELL": "/bin/bash", "USER": "sandbox", "LOGNAME": "sandbox", "LANG": os.environ.get("LANG", "C.UTF-8")}
        if self.display:
            env["DISPLAY"] = self.display
        env.update(self.env)
        return env

    def command(self, argv: Sequence[str] | str, *, as_shell: bool = False) -> list[str]:
        """The command line that runs ``argv`` (a shell command when ``as_shell`` or a string) in the sandbox."""
        bwrap = check_bubblewrap()
        command = ["/bin/sh", "-c", argv] if as_shell or isinstance(argv, str) else list(argv)
        as_root = os.geteuid() == 0
        args = [bwrap, "--die-with-parent", "--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "kimi-cua-sandbox", "--clearenv"]
        if not self.network:
            args.append("--unshare-net")
        if not as_root:  # an unprivileged user namespace; as root, setpriv below drops to a plain uid instead
            args += ["--unshare-user", "--cap-drop", "ALL"]
        for path in _SYSTEM_RO:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        made: set[str] = {"/", "/tmp"}

        def parents(path: str) -> list[str]:
            # bwrap makes missing mount points 0700: make them 0755 so the sandbox uid can walk to its binds.
            out = []
            for parent in reversed(Path(path).parents):
                text = str(parent)
                if text not in made:
                    made.add(text)
                    out += ["--perms", "0755", "--dir", text]
            return out

        args += ["--bind", str(self.tmp), "/tmp", *parents(str(self.home)), "--bind", str(self.home), str(self.home)]
        for path in self._read_only_paths():
            args += [*parents(path), "--ro-bind", path, path]
        for folder in self.writable:
            text = str(Path(folder).resolve())
            args += [*parents(text), "--bind", text, text]
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/run", "--tmpfs", "/var/tmp"]
        if self.display:
            socket = f"/tmp/.X11-unix/X{self.display.lstrip(':').split('.')[0]}"
            if os.path.exists(socket):
                args += ["--dir", "/tmp/.X11-unix", "--bind", socket, socket]
        for key, value in self.environment().items():
            args += ["--setenv", key, value]
        args += ["--chdir", str(self.home), "--"]
        inner: list[str] = []
        if as_root:
            inner = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--inh-caps=-all",
                     "--bounding-set=-all", "--no-new-privs"]
        inner += ["prlimit", f"--nproc={self.max_processes}:{self.max_processes}", "--"]
        return args + inner + command

    def popen(self, argv: Sequence[str] | str, *, shell: bool = False, **kwargs) -> subprocess.Popen:
        """``subprocess.Popen`` inside the sandbox (``env`` is the sandbox's; other keyword arguments pass on)."""
        env = kwargs.pop("env", None) or {}
        kwargs.pop("cwd", None)
        if self.display is None and env.get("DISPLAY"):
            self.display = env["DISPLAY"]
        return subprocess.Popen(self.command(argv, as_shell=shell), env=self.environment(), **kwargs)

    def run(self, argv: Sequence[str] | str, *, shell: bool = False, **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` inside the sandbox."""
        env = kwargs.pop("env", None) or {}
        kwargs.pop("cwd", None)
        if self.display is None and env.get("DISPLAY"):
            self.display = env["DISPLAY"]
        return subprocess.run(self.command(argv, as_shell=shell), env=self.environment(), **kwargs)

    def _read_only_paths(self) -> list[str]:
        paths: list[str] = []
        for path in [Path(sys.prefix), Path(sys.base_prefix), *self.read_only]:
            text = str(Path(path).resolve())
            if not Path(text).exists() or any(text == p or text.startswith(p.rstrip("/") + "/")
                                               for p in ("/usr", "/etc", *paths)):
                continue
            paths.append(text)
        return paths


def sandbox_for_run(out_dir: Path, display: str | None, *, network: bool = False,
                    read_only: Sequence[Path] = ()) -> Sandbox:
    """The sandbox of ``kimi-cua run --sandbox``: private HOME and /tmp under ``<out>/sandbox``."""
    check_bubblewrap()
    return Sandbox(Path(out_dir) / "sandbox", display=display, network=network, read_only=list(read_only)).prepare()
