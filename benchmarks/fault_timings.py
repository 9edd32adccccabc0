"""How long server faults take to surface, printed as JSON.

    python benchmarks/fault_timings.py [--repeats 5]

- refused_client_s: VLLMClient.complete against a closed port (default retries/backoff) until ServerUnreachable;
- refused_cli_s: `kimi-cua run` against a closed port until it exits (includes Python start-up and imports);
- gone_default_s: a server that went away mid-run, default retries=3/backoff=1 s, until ServerUnreachable;
- retry_after_s: one 429 with Retry-After: 1 followed by an answer.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.models.vllm import ServerError, VLLMClient  # noqa: E402
from tests.e2e_support import cli  # noqa: E402
from tests.fault_server import Fault, FaultServer  # noqa: E402
from tests.loopback import Reply  # noqa: E402

HELLO = [{"role": "user", "content": "hello"}]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def refused_client() -> None:
    try:
        VLLMClient(f"http://127.0.0.1:{closed_port()}/v1").complete(HELLO)
    except ServerError:
        return
    raise AssertionError("no error")


def refused_cli() -> None:
    proc = subprocess.run(cli() + ["run", "x", "--base-url", f"http://127.0.0.1:{closed_port()}/v1"],
                          capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "DISPLAY": ":0"})
    assert proc.returncode == 2, proc.stderr


def gone_default() -> float:
    script = Path(tempfile.mkstemp(suffix=".json")[1])
    script.write_text(json.dumps(["hi"]), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "tests.loopback", "--script", str(script)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        client = VLLMClient(proc.stdout.readline().split()[1])
        client.complete(HELLO)
    finally:
        proc.kill()
        proc.wait()
        script.unlink()
    start = time.perf_counter()
    try:
        client.complete(HELLO)
    except ServerError:
        return time.perf_counter() - start
    raise AssertionError("no error")


def retry_after() -> None:
    with FaultServer([Fault(Reply("busy", status=429), headers={"Retry-After": "1"}), "hi"]) as server:
        VLLMClient(server.base_url).complete(HELLO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = {
        "refused_client_s": [timed(refused_client) for _ in range(args.repeats)],
        "refused_cli_s": [timed(refused_cli) for _ in range(args.repeats)],
        "gone_default_s": [gone_default() for _ in range(min(args.repeats, 2))],
        "retry_after_s": [timed(retry_after) for _ in range(min(args.repeats, 2))],
    }
    print(json.dumps({k: {"median": round(statistics.median(v), 3), "max": round(max(v), 3), "n": len(v)}
                      for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
