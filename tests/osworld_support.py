"""Helpers for the tests that run OSWorld's own code (desktop-env in .venv-osworld) against our guest."""
from __future__ import annotations

import functools
import os
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
import sys
import textwrap
from pathlib import Path

import pytest

from agent.evals.osworld_code import OSWorldCodeUnavailable, osworld_python

REQUIRE_ENV = "KIMI_CUA_REQUIRE_OSWORLD"  # 1: a missing .venv-osworld fails the tests instead of skipping them
PORTS = range(int(os.environ.get("KIMI_CUA_TEST_PORT_LOW", 8220)), int(os.environ.get("KIMI_CUA_TEST_PORT_HIGH", 8239)) + 1)


def require_osworld() -> Path:
    try:
        return osworld_python()
    except OSWorldCodeUnavailable as exc:
        if os.environ.get(REQUIRE_ENV) == "1" or os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free TCP port from the test range (8220-8239 unless $KIMI_CUA_TEST_PORT_LOW/HIGH say otherwise); a port
    is handed out once per test session while others remain, so a port not yet bound is not given twice."""
    candidates = [p for p in PORTS if p not in _HANDED_OUT] or list(PORTS)
    if len(candidates) == len(PORTS):
        _HANDED_OUT.clear()
    # the ports not handed out yet first; then the others (one whose test is over may be free again) before failing
    order = candidates + [p for p in PORTS if p not in candidates]
    # First a port free even for a listener without SO_REUSEADDR (no connection of it lingers in TIME_WAIT); then,
    # as the listeners that set it do (http.server, Chrome, VLC), one whose last connection is in TIME_WAIT.
    for reuse in (False, True):
        for port in order:
            with socket.socket() as s:
                if reuse:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                _HANDED_OUT.add(port)
                return port
    pytest.fail(f"no free TCP port in {PORTS.start}-{PORTS.stop - 1}")


def use_test_displays() -> None:
    """Xvfb displays of these tests come from :90-:99 unless $KIMI_CUA_DISPLAYS says otherwise."""
    os.environ.setdefault("KIMI_CUA_DISPLAYS", "90-99")


def recording_pyautogui(root: Path, record: Path) -> dict[str, str]:
    """A fake pyautogui package and xclip that record every call into ``record`` (JSON lines); returns the
    environment that puts them first for the guest's commands."""
    package = root / "fake_py" / "pyautogui"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent('''
        import json, os
        FAILSAFE = True
        PAUSE = 0.1
        def _rec(name, *args, **kwargs):
            with open(os.environ["KIMI_CUA_RECORD"], "a", encoding="utf-8") as f:
                f.write(json.dumps([name, list(args), kwargs]) + "\\n")
        def __getattr__(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return lambda *args, **kwargs: _rec(name, *args, **kwargs)
    '''))
    bin_dir = root / "fake_bin"
    bin_dir.mkdir()
    xclip = bin_dir / "xclip"
    xclip.write_text(textwrap.dedent(f'''\
        #!{sys.executable}
        import base64, json, os, sys
        board = os.environ["KIMI_CUA_RECORD"] + ".clipboard"
        if "-o" in sys.argv:  # reading the clipboard back (the paste code waits for it): not an action, not recorded
            sys.stdout.buffer.write(open(board, "rb").read() if os.path.exists(board) else b"")
            sys.exit(0)
        data = sys.stdin.buffer.read()
        open(board, "wb").write(data)
        with open(os.environ["KIMI_CUA_RECORD"], "a", encoding="utf-8") as f:
            f.write(json.dumps(["xclip", sys.argv[1:], base64.b64encode(data).decode()]) + "\\n")
    '''))
    xclip.chmod(0o755)
    return {"PYTHONPATH": str(root / "fake_py"), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "KIMI_CUA_RECORD": str(record)}


class FileServer:
    """Serves a folder over HTTP on 127.0.0.1 (the tests' stand-in for the model hub / Google Drive)."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.requests: list[str] = []
        self._httpd.requests = self.requests  # type: ignore[attr-defined]

    def __enter__(self) -> "FileServer":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def osworld_workers(tmp_path_factory):
    """One OSWorld worker (desktop-env in .venv-osworld) for the whole session: importing it takes ~15-20 s."""
    from agent.evals.local_run import WorkerPool

    require_osworld()
    use_test_displays()
    pool = WorkerPool(tmp_path_factory.mktemp("osworld-workers"))
    yield pool
    pool.close()
