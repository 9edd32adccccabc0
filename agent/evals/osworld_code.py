"""OSWorld's own code (the ``desktop-env`` wheel) from kimi-cua: a worker process in its own venv.

``desktop-env`` pins old numpy, Pillow, torch and transformers, so it never enters kimi-cua's environment. It lives in
``<project>/.venv-osworld`` (``scripts/install_osworld.sh``; another interpreter with ``$KIMI_CUA_OSWORLD_PYTHON``),
and ``OSWorldWorker`` talks JSON lines to ``agent/evals/osworld_worker.py`` running there.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKER_FILE = Path(__file__).with_name("osworld_worker.py")
VENV_DIR = PROJECT_ROOT / ".venv-osworld"
PYTHON_ENV = "KIMI_CUA_OSWORLD_PYTHON"
INSTALL_HINT = ("install OSWorld's code in its own venv with `bash scripts/install_osworld.sh` (or `kimi-cua eval "
                f"local --install-osworld`), or point ${PYTHON_ENV} at a Python where desktop-env 1.0.2 imports")


class OSWorldCodeUnavailable(RuntimeError):
    """No interpreter with desktop-env; the message says how to get one."""


class WorkerError(RuntimeError):
    """The worker answered with an error (the wheel raised) or died; ``traceback`` has the details."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


def osworld_python() -> Path:
    """The interpreter that has desktop-env: $KIMI_CUA_OSWORLD_PYTHON, else <project>/.venv-osworld/bin/python."""
    configured = os.environ.get(PYTHON_ENV)
    python = Path(configured) if configured else VENV_DIR / "bin" / "python"
    if not python.exists():
        raise OSWorldCodeUnavailable(f"no OSWorld Python at {python}: {INSTALL_HINT}")
    return python


def install_osworld(quiet: bool = False) -> int:
    """Run scripts/install_osworld.sh (idempotent); returns its exit code."""
    script = PROJECT_ROOT / "scripts" / "install_osworld.sh"
    return subprocess.run(["bash", str(script)], stdout=subprocess.DEVNULL if quiet else None).returncode


class OSWorldWorker:
    """``with OSWorldWorker() as w: w.connect(guest_url=...); w.reset(task); w.evaluate(actions=["DONE"])``."""

    def __init__(self, python: Path | None = None, *, start_timeout: float = 120.0, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.python = python or osworld_python()
        self.start_timeout = start_timeout
        self._env = env
        self._log_path = log_path
        self._proc: subprocess.Popen[str] | None = None
        self._stderr_tail: deque[str] = deque(maxlen=60)
        self._log_file: Any = None

    def start(self) -> "OSWorldWorker":
        env = dict(self._env or os.environ)
        env.pop("PYTHONPATH", None)  # kimi-cua's paths must not leak into the wheel's interpreter
        env["PYTHONUNBUFFERED"] = "1"
        self._log_file = open(self._log_path, "a", encoding="utf-8") if self._log_path else None
        self._proc = subprocess.Popen([str(self.python), str(WORKER_FILE)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=str(PROJECT_ROOT), bufsize=1)
        threading.Thread(target=self._drain, daemon=True).start()
        hello = self._read(self.start_timeout)
        if not hello.get("ready"):
            self.close()
            raise OSWorldCodeUnavailable(f"OSWorld's code does not load in {self.python}: {hello.get('error')}; "
                                         f"{INSTALL_HINT}")
        return self

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr_tail.append(line)
            if self._log_file is not None:
                self._log_file.write(line)
                self._log_file.flush()

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"the OSWorld worker did not answer within {timeout:g} s", self.stderr_tail())
            ready, _, _ = select.select([self._proc.stdout], [], [], min(left, 1.0))
            if ready:
                line = self._proc.stdout.readline()
                if not line:
                    code = self._proc.wait(timeout=5)
                    raise WorkerError(f"the OSWorld worker exited (code {code})", self.stderr_tail())
                return json.loads(line)

    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail)

    def request(self, op: str, timeout: float = 600.0, **fields: Any) -> dict[str, Any]:
        if self._proc is None:
            self.start()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError("the OSWorld worker is gone", self.stderr_tail()) from None
        answer = self._read(timeout)
        if "error" in answer:
            raise WorkerError(answer["error"], answer.get("traceback", ""))
        return answer

    # ---- the operations
    def connect(self, guest_url: str, *, cache_dir: Path | str, screen_size: tuple[int, int],
                chromium_port: int = 9222, vlc_port: int = 8080, client_password: str = "password") -> None:
        self.request("connect", guest_url=guest_url, cache_dir=str(cache_dir), screen_size=list(screen_size),
                     chromium_port=chromium_port, vlc_port=vlc_port, client_password=client_password)

    def reset(self, task: dict[str, Any], timeout: float = 1800.0) -> None:
        self.request("reset", timeout=timeout, task=task)

    def step(self, actions: list[str], pause: float = 0.0, timeout: float = 600.0) -> list[dict[str, Any]]:
        return self.request("step", timeout=timeout, actions=actions, pause=pause)["results"]

    def evaluate(self, actions: list[str], task: dict[str, Any] | None = None, timeout: float = 900.0) -> float:
        return float(self.request("evaluate", timeout=timeout, actions=actions, task=task)["score"])

    def inventory(self) -> dict[str, Any]:
        return self.request("inventory", timeout=120)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                proc.stdin.flush()
            proc.wait(timeout=10)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "OSWorldWorker":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


def available() -> str | None:
    """None when OSWorld's code is usable here, else the reason."""
    try:
        python = osworld_python()
    except OSWorldCodeUnavailable as exc:
        return str(exc)
    if not python.is_file():
        return f"{python} is not a file"
    return None


if __name__ == "__main__":  # python -m agent.evals.osworld_code: print the inventory of the installed wheel
    with OSWorldWorker() as worker:
        json.dump(worker.inventory(), sys.stdout, indent=1)
        print()
