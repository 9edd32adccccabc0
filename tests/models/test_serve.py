"""`kimi-cua serve`: the vllm command per memory mode, and clear errors for what stops a launch."""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from agent.cli import serve as serve_cli
from agent.models import serve


def run_serve(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def flags(command_line: str) -> dict[str, str | None]:
    """``--flag value`` pairs of a shell command line (a flag without a value maps to None)."""
    words = shlex.split(command_line)
    assert words[:2] == ["vllm", "serve"]
    found: dict[str, str | None] = {"model": words[2]}
    i = 3
    while i < len(words):
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            found[words[i]] = words[i + 1]
            i += 2
        else:
            found[words[i]] = None
            i += 1
    return found


@pytest.mark.parametrize("gb, max_len, seqs, util, images", [
    (24, 65536, 4, "0.85", 32),
    (32, 131072, 8, "0.9", 64),
    (48, 131072, 16, "0.95", 64),
    (80, 131072, 16, "0.95", 64),
])
def test_dry_run_sizes_vllm_from_the_gpu_memory_mode(capsys, gb, max_len, seqs, util, images):
    code, out, err = run_serve(["--dry-run", "--gpu-memory-gb", str(gb), "--vllm-version", "0.9.1"], capsys)
    assert code == 0
    f = flags(out.strip())
    assert f["model"] == "moonshotai/Kimi-VL-A3B-Thinking-2506"
    assert f["--served-model-name"] == "kimi-vl-thinking-2506"
    assert "--trust-remote-code" in f and "--disable-mm-preprocessor-cache" in f
    assert f["--max-model-len"] == f["--max-num-batched-tokens"] == str(max_len)
    assert f["--max-num-seqs"] == str(seqs) and f["--gpu-memory-utilization"] == util
    assert json.loads(f["--limit-mm-per-prompt"]) == {"image": images}
    assert f"--max-context {max_len} --max-images {images}" in err


def test_explicit_flags_override_the_memory_mode(capsys):
    code, out, err = run_serve(["--dry-run", "--gpu-memory-gb", "24", "--max-model-len", "32768", "--max-images",
                                "256", "--max-num-seqs", "2", "--port", "8123", "--tensor-parallel-size", "2",
                                "--vllm-version", "0.9.1"], capsys)
    f = flags(out.strip())
    assert code == 0
    assert f["--max-model-len"] == "32768" and f["--max-num-seqs"] == "2" and f["--port"] == "8123"
    assert f["--tensor-parallel-size"] == "2" and json.loads(f["--limit-mm-per-prompt"]) == {"image": 256}
    assert "--base-url http://localhost:8123/v1" in err and "--max-context 32768 --max-images 256" in err


def test_explicit_sizing_needs_no_gpu_for_a_dry_run(capsys):
    code, out, _ = run_serve(["--dry-run", "--max-model-len", "16384", "--max-num-seqs", "1"], capsys)
    assert code == 0 and flags(out.strip())["--max-model-len"] == "16384"


@pytest.mark.parametrize("variant, repo, name", [
    ("thinking", "moonshotai/Kimi-VL-A3B-Thinking", "kimi-vl-thinking"),
    ("instruct", "moonshotai/Kimi-VL-A3B-Instruct", "kimi-vl-instruct"),
])
def test_each_variant_serves_its_repo_under_its_name(capsys, variant, repo, name):
    code, out, _ = run_serve(["--dry-run", "--variant", variant, "--gpu-memory-gb", "48"], capsys)
    f = flags(out.strip())
    assert code == 0 and f["model"] == repo and f["--served-model-name"] == name


@pytest.mark.parametrize("version, limit, cache", [
    ("0.8.4", "image=64", "--disable-mm-preprocessor-cache"),
    ("0.9.1", '{"image": 64}', "--disable-mm-preprocessor-cache"),
    ("0.11.0", '{"image": 64}', "--mm-processor-cache-gb"),
])
def test_flags_are_spelled_for_the_vllm_version(capsys, version, limit, cache):
    assert importlib.util.find_spec("vllm") is None, "with vLLM installed its own source decides the spelling"
    code, out, err = run_serve(["--dry-run", "--gpu-memory-gb", "48", "--vllm-version", version], capsys)
    f = flags(out.strip())
    assert code == 0 and f["--limit-mm-per-prompt"] == limit and cache in f
    if cache == "--mm-processor-cache-gb":
        assert f[cache] == "0"
    assert f"vLLM {version} (vLLM not installed" in err


def test_missing_flash_attn_is_reported_with_the_install_command(capsys):
    assert importlib.util.find_spec("flash_attn") is None, "this test proves the warning shown without flash-attn"
    _, _, err = run_serve(["--dry-run", "--gpu-memory-gb", "48"], capsys)
    assert "flash-attn is not installed" in err and serve.FLASH_ATTN_HINT in err


def test_missing_vllm_says_how_to_install_it(capsys, unused_port):
    assert importlib.util.find_spec("vllm") is None, "this test proves the message shown where vLLM is absent"
    code, _, err = run_serve(["--host", "127.0.0.1", "--port", str(unused_port), "--gpu-memory-gb", "48"], capsys)
    assert code == 1
    assert "vLLM is not installed" in err and "pip install 'kimi-cua[vllm]'" in err and "--baseline" in err


def test_dry_run_without_gpu_or_sizing_is_a_usage_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    code, out, err = run_serve(["--dry-run"], capsys)
    assert code == 2 and out == ""
    assert "no NVIDIA GPU found" in err and "--gpu-memory-gb" in err and "--baseline" in err


def fake_nvidia_smi(directory: Path, stdout: str, code: int = 0, stderr: str = "") -> None:
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{stdout}'\nprintf '{stderr}' >&2\nexit {code}\n")
    script.chmod(0o755)


def test_gpu_memory_is_read_from_nvidia_smi(monkeypatch, tmp_path):
    fake_nvidia_smi(tmp_path, "24564\\n24564\\n81920\\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert serve.detect_gpu_memory_gb(1) == pytest.approx(24564 / 1024)
    assert serve.detect_gpu_memory_gb(2) == pytest.approx(2 * 24564 / 1024)
    with pytest.raises(serve.NoGpu, match="needs 4 GPUs, nvidia-smi lists 3"):
        serve.detect_gpu_memory_gb(4)


def test_a_broken_driver_is_a_no_gpu_error_with_its_message(monkeypatch, tmp_path):
    fake_nvidia_smi(tmp_path, "", code=9, stderr="NVIDIA-SMI has failed because it could not communicate")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(serve.NoGpu, match="could not communicate"):
        serve.detect_gpu_memory_gb(1)


def test_a_gpu_below_24_gb_is_refused_with_alternatives():
    with pytest.raises(serve.NoGpu, match="below the 24 GB"):
        serve.pick_memory_mode(16)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use_is_refused_before_starting(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_serve(["--host", "127.0.0.1", "--port", str(port), "--gpu-memory-gb", "48"], capsys)
    assert code == 1
    assert f"port {port} is already in use" in err and "--port" in err


def test_baseline_refuses_a_port_in_use(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_serve(["--baseline", "--port", str(port)], capsys)
    assert code == 1 and f"port {port} is already in use" in err


def test_waiting_for_health_returns_once_a_real_server_answers(tmp_path, unused_port):
    script = tmp_path / "replies.json"
    script.write_text("[]")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.loopback", "--script", str(script), "--port",
                                 str(unused_port)], stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[2])
    seen: list[str] = []
    try:
        serve.wait_until_healthy(proc, f"http://127.0.0.1:{unused_port}/health", log, timeout=30, poll=0.1,
                                 progress=seen.append)
        assert proc.poll() is None
        assert all(line.startswith("waiting for vLLM") for line in seen)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_a_server_that_dies_while_starting_reports_its_log_and_a_hint(tmp_path, unused_port):
    log = tmp_path / "vllm.log"
    dying = textwrap.dedent("""
        import sys
        print("INFO loading weights")
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
        sys.exit(3)
    """)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", dying], stdout=out, stderr=subprocess.STDOUT)
    with pytest.raises(serve.ServeError) as info:
        serve.wait_until_healthy(proc, f"http://127.0.0.1:{unused_port}/health", log, timeout=30, poll=0.1)
    message = str(info.value)
    assert "exited with code 3" in message and "CUDA out of memory" in message
    assert "lower --max-num-seqs" in message


def test_waiting_gives_up_after_the_startup_timeout(tmp_path, unused_port):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(serve.ServeError, match="did not answer .* within 0 s"):
            serve.wait_until_healthy(proc, f"http://127.0.0.1:{unused_port}/health", tmp_path / "none.log",
                                     timeout=0.3, poll=0.1)
    finally:
        proc.kill()
        proc.wait()


SERVE_MAIN = ("import argparse, sys\nfrom agent.cli import serve\np = argparse.ArgumentParser()\n"
              "serve.register(p.add_subparsers())\na = p.parse_args(sys.argv[1:])\nsys.exit(a.handler(a))")


def test_serve_baseline_starts_an_http_grounder_and_prints_its_url(unused_port):
    import httpx

    proc = subprocess.Popen([sys.executable, "-c", SERVE_MAIN, "serve", "--baseline", "--port", str(unused_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    watchdog = threading.Timer(60, proc.kill)  # a hung start fails the test instead of hanging it
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the engine is loaded before this line is printed
        assert f"ready at http://127.0.0.1:{unused_port}/v1" in first, first + proc.stderr.read()
        models = httpx.get(f"http://127.0.0.1:{unused_port}/v1/models", timeout=10).json()
        assert models["data"][0]["id"] == "kimi-cua-baseline-ocr"
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=10)


SHORT_LIVED_SERVER = textwrap.dedent("""
    import sys, threading, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    time.sleep(0.5)  # a slow start, like loading weights
    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Health)
    threading.Timer(4.0, server.shutdown).start()  # outlives the launcher's 2 s health polling
    server.serve_forever()
    print("server stopped", flush=True)
""")


def test_launch_waits_for_health_then_prints_url_and_client_flags(tmp_path, unused_port, capsys):
    plan = serve.ServePlan(variant="instruct", model="m", served_name="kimi-vl-instruct", host="127.0.0.1",
                           port=unused_port, max_model_len=65536, max_num_seqs=4, gpu_memory_utilization=0.85,
                           max_images=32, mode="24 GB")
    log = tmp_path / "server.log"
    code = serve.launch(plan, [sys.executable, "-c", SHORT_LIVED_SERVER, str(unused_port)], log_path=log,
                        startup_timeout=30)
    out = capsys.readouterr().out
    assert code == 0
    assert "ready after" in out and f"at http://127.0.0.1:{unused_port}/v1 (model kimi-vl-instruct)" in out
    assert f"--base-url http://127.0.0.1:{unused_port}/v1 --model kimi-vl-instruct --max-context 65536 " \
           "--max-images 32" in out
    assert "server stopped" in log.read_text()


def test_launch_returns_1_and_shows_the_log_when_the_server_dies(tmp_path, unused_port, capsys):
    plan = serve.ServePlan(variant="thinking-2506", model="m", served_name="x", host="127.0.0.1",
                           port=unused_port, max_model_len=1024, max_num_seqs=1, gpu_memory_utilization=0.9,
                           max_images=1, mode="explicit")
    code = serve.launch(plan, [sys.executable, "-c", "print('ValueError: bad flag --limit-mm-per-prompt'); "
                               "raise SystemExit(2)"], log_path=tmp_path / "log", startup_timeout=30)
    err = capsys.readouterr().err
    assert code == 1 and "exited with code 2" in err and "bad flag" in err and "--vllm-version" in err
