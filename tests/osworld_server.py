"""Run OSWorld's real in-VM HTTP server (Flask, ``desktop_env/server/main.py``) on an Xvfb desktop.

The server gets its own virtual environment holding only what it imports, outside the repository
(``desktop-env`` pins old heavy packages and must never enter ours). Where the server code comes from,
first match wins:

1. ``$OSWORLD_SERVER_DIR``: a folder holding ``main.py`` (and ``pyxcursor.py``);
2. ``$OSWORLD_DIR``: an OSWorld checkout (``<dir>/desktop_env/server``);
3. the ``desktop-env`` distribution on PyPI (wheel, then sdist), downloaded with pip into the cache.

As of desktop-env 1.0.2 no published wheel or sdist contains ``desktop_env/server/`` (checked: 0.1.1 to
1.0.2), so on a machine without an OSWorld checkout step 3 ends in ``ServerSourceUnavailable`` naming
what was tried. AT-SPI (``pyatspi``) is a Debian package, not a PyPI one: the venv gets a stub module
whose calls raise, so ``/accessibility`` answers 500 here exactly as it does on a desktop without AT-SPI.

Usage: ``with OSWorldServer.start_on(display) as server: server.base_url``;
``python -m tests.osworld_server`` prepares the venv and prints where it is.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path

import httpx

DESKTOP_ENV_VERSION = "1.0.2"
# Third-party modules imported by desktop_env/server/main.py and pyxcursor.py on Linux (pyatspi is stubbed).
SERVER_REQUIREMENTS = ["flask", "pyautogui", "python-xlib", "pillow", "lxml", "requests", "numpy"]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kimi-cua" / "osworld-server"

_PYATSPI_STUB = '''"""Stand-in for Debian's python3-pyatspi (not on PyPI): importable, every call raises."""
class _Unavailable:
    def __getattr__(self, name):
        raise RuntimeError("AT-SPI is not available on this desktop (pyatspi stub)")
    def __call__(self, *a, **k):
        raise RuntimeError("AT-SPI is not available on this desktop (pyatspi stub)")
Registry = _Unavailable()
Accessible = StateType = Action = Component = Text = Value = _Unavailable
STATE_SHOWING = STATE_ACTIVE = XY_SCREEN = 0
'''


class ServerSourceUnavailable(RuntimeError):
    """No copy of OSWorld's server code could be found; the message lists what was tried."""


def _pip(args: list[str], *, python: str = sys.executable, timeout: float = 600) -> None:
    result = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{result.stderr[-2000:]}")


def _extract_server(archive: Path, dest: Path) -> bool:
    """Copy ``desktop_env/server/*`` out of a wheel or sdist into ``dest``; False when it holds none."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            members = [n for n in zf.namelist() if "desktop_env/server/" in n and not n.endswith("/")]
            for name in members:
                target = dest / name.split("desktop_env/server/", 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
            return bool(members) and (dest / "main.py").exists()
    with tarfile.open(archive) as tf:
        members = [m for m in tf.getmembers() if "desktop_env/server/" in m.name and m.isfile()]
        for member in members:
            target = dest / member.name.split("desktop_env/server/", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tf.extractfile(member)
            if source is not None:
                target.write_bytes(source.read())
    return bool(members) and (dest / "main.py").exists()


def find_server_source(cache: Path = DEFAULT_CACHE, version: str = DESKTOP_ENV_VERSION) -> Path:
    """Return a folder holding OSWorld's ``main.py``, or raise ServerSourceUnavailable."""
    tried: list[str] = []
    for variable, suffix in (("OSWORLD_SERVER_DIR", ""), ("OSWORLD_DIR", "desktop_env/server")):
        value = os.environ.get(variable)
        if value:
            folder = Path(value) / suffix
            if (folder / "main.py").is_file():
                return folder
            tried.append(f"${variable}={value} (no {folder / 'main.py'})")
        else:
            tried.append(f"${variable} (not set)")
    extracted = cache / f"server-{version}"
    if (extracted / "main.py").is_file():
        return extracted
    # Tests never reach the network: the desktop-env wheel and sdist hold no server code (checked when this was
    # written), so there is nothing to download; an OSWorld checkout is the only source.
    tried.append(f"desktop-env=={version} from PyPI (its wheel and sdist hold no desktop_env/server/main.py)")
    raise ServerSourceUnavailable(
        "OSWorld's in-VM server code was not found. Tried: " + "; ".join(tried)
        + ". Point OSWORLD_DIR at an OSWorld checkout (git clone of xlang-ai/OSWorld) to test against it."
    )


def ensure_server_venv(cache: Path = DEFAULT_CACHE) -> Path:
    """Create (once) a venv with only the server's imports; return its python executable."""
    root = cache / "venv"
    python = root / "bin" / "python"
    marker = root / ".kimi-cua-ready"
    if marker.exists() and python.exists():
        return python
    shutil.rmtree(root, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    _pip(["install", "-q", "--disable-pip-version-check", *SERVER_REQUIREMENTS], python=str(python))
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stub = Path(site) / "pyatspi"
    stub.mkdir(exist_ok=True)
    (stub / "__init__.py").write_text(_PYATSPI_STUB)
    marker.write_text(" ".join(SERVER_REQUIREMENTS))
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OSWorldServer:
    """The real server app, served by Flask on 127.0.0.1:<free port> on the given X display."""

    def __init__(self, server_dir: Path, python: Path, display_env: dict[str, str], port: int | None = None,
                 start_timeout: float = 30.0) -> None:
        self.server_dir, self.python, self.display_env = server_dir, python, display_env
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = server_dir.parent / f"server-{self.port}.log"

    @classmethod
    def start_on(cls, display_env: dict[str, str], cache: Path = DEFAULT_CACHE) -> "OSWorldServer":
        return cls(find_server_source(cache), ensure_server_venv(cache), display_env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "OSWorldServer":
        launcher = (f"import sys; sys.path.insert(0, {str(self.server_dir)!r}); import main; "
                    f"main.app.run(host='127.0.0.1', port={self.port}, threaded=True)")
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen([str(self.python), "-c", launcher], cwd=self.server_dir,
                                          env=self.display_env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.base_url}/platform", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"OSWorld server did not answer on {self.base_url} within {self.start_timeout:g} s; "
                           f"log:\n{self._log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> "OSWorldServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    print("venv python:", ensure_server_venv())
    try:
        print("server source:", find_server_source())
    except ServerSourceUnavailable as exc:
        print(exc)
        sys.exit(1)
