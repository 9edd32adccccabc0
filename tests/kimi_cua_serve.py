"""`kimi-cua serve` itself as a session server of the test suite (fixture ``kimi_cua_serve``, registered in
tests/conftest.py): started once, exactly as a user runs it plus the flags a weightless test model needs, in the
background ahead of its first test (the server pool of tests/real_vllm.py), and stopped by SIGINT in its last test
(tests/models/test_serve_real_vllm.py), as Ctrl-C would.

``SERVE``: the tiny Kimi-VL with Thinking-2506's image rule (in_token_limit 16384), ``--max-model-len 4352`` and
``--max-images 2``, ``--reasoning`` (kimi-cua's reasoning parser plugin). Two suites use it: serve's own tests
(flags, loopback binding, prefix caching, the plugin, SIGINT) and the agent loop (tests/test_agent_real_vllm.py),
which needs one 4K screenshot (4,214 tokens) to fit with its text and a context small enough for a run to overflow.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.real_vllm import POOL, PROJECT_ROOT, _shared_server, free_port, require_vllm_python, tiny_model

START_TIMEOUT = 900.0  # a cold start on a busy 2-core machine has taken 7 minutes
SERVED_MODEL = "kimi-vl-thinking-2506"  # the name `kimi-cua serve` gives the model it serves
SERVE = {"max_model_len": 4352, "max_images": 2, "in_token_limit": 16384}


@dataclass
class Served:
    proc: subprocess.Popen
    port: int
    out: Path  # kimi-cua serve's stdout
    err: Path  # its stderr
    log: Path  # vLLM's own output (--log-file)
    start_seconds: float
    model_dir: Path  # the tiny model served
    model: str = SERVED_MODEL

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # the launcher failed to stop: do not leave 3.5 GB behind
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            raise


def vllm_processes(serve_pid: int) -> list[psutil.Process]:
    """The processes `kimi-cua serve` started (vLLM's API server and its engine core, worker)."""
    try:
        return psutil.Process(serve_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def start_served(work: Path, cancel: threading.Event) -> Served:
    """`kimi-cua serve` as a user runs it, until it says vLLM is ready (``cancel`` gives up)."""
    python = require_vllm_python()
    model = tiny_model(SERVE["in_token_limit"], python)  # Thinking-2506's image rule: 1080p is 2,691 tokens
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_KVCACHE_SPACE", "PYTHONPATH")}
    command = [sys.executable, "-m", "agent.cli.main", "serve", "--model", str(model.path),
               "--vllm-python", str(python), "--port", str(port), "--max-model-len", str(SERVE["max_model_len"]),
               "--max-images", str(SERVE["max_images"]), "--reasoning",
               "--log-file", str(work / "vllm.log"), "--startup-timeout", str(START_TIMEOUT),
               # what a weightless test model needs; --enforce-eager skips a 60-90 s torch.compile warm-up
               "--vllm-arg=--load-format=dummy", "--vllm-arg=--enforce-eager",
               # structured outputs script the replies: let the constraint cover the thinking too
               '--vllm-arg=--structured-outputs-config={"enable_in_reasoning": true}']
    started = time.monotonic()
    with (work / "out").open("wb") as out, (work / "err").open("wb") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=PROJECT_ROOT, env=env)
    server = Served(proc, port, work / "out", work / "err", work / "vllm.log", 0.0, model.path)
    try:
        while "vLLM is ready" not in server.out.read_text():
            if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT + 30 or cancel.is_set():
                pytest.fail(f"kimi-cua serve did not get vLLM ready (exit {proc.poll()}):\n"
                            f"{server.err.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.5)
    except BaseException:
        if proc.poll() is None:
            server.stop(signal.SIGTERM)
        raise
    server.start_seconds = time.monotonic() - started
    return server


POOL.register("kimi_cua_serve", start_served)


@pytest.fixture(scope="session")
def kimi_cua_serve(tmp_path_factory) -> Iterator[Served]:
    """`kimi-cua serve` (``SERVE``), shared by the session like the servers of tests/real_vllm.py; its start time is
    in the run's "real vLLM servers" summary. tests/conftest.py runs the test that stops it with SIGINT last of all
    its tests."""
    yield from _shared_server("kimi_cua_serve", tmp_path_factory)
