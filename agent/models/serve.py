"""``kimi-cua serve``: start vLLM for a Kimi-VL variant with flags that work, or the CPU baseline grounder.

The vLLM command follows the Kimi-VL README and the Thinking-2506 model card: trust-remote-code, a served
model name, max model length / images per prompt / concurrent sequences sized from GPU memory (upstream's
24 / 32 / 48 GB modes), and the multimodal-preprocessor-cache workaround for a CPU-memory leak.
"""
from __future__ import annotations

import argparse
import errno
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict

VLLM_INSTALL_HINT = "pip install 'kimi-cua[vllm]'"
FLASH_ATTN_HINT = "pip install flash-attn --no-build-isolation"
ASSUMED_VLLM = "0.9.1"  # the version the Thinking-2506 model card pins; flags are spelled for it when vLLM is absent


class Variant(BaseModel):
    model_config = ConfigDict(frozen=True)
    repo: str
    served_name: str


VARIANTS: dict[str, Variant] = {
    "thinking-2506": Variant(repo="moonshotai/Kimi-VL-A3B-Thinking-2506", served_name="kimi-vl-thinking-2506"),
    "thinking": Variant(repo="moonshotai/Kimi-VL-A3B-Thinking", served_name="kimi-vl-thinking"),
    "instruct": Variant(repo="moonshotai/Kimi-VL-A3B-Instruct", served_name="kimi-vl-instruct"),
}


class MemoryMode(BaseModel):
    """Upstream's sizing for a GPU memory class (the vision encoder's profiling OOMs 24 GB with many seqs)."""

    model_config = ConfigDict(frozen=True)
    min_gb: int
    max_num_seqs: int
    gpu_memory_utilization: float
    max_model_len: int
    max_images: int


MEMORY_MODES: tuple[MemoryMode, ...] = (
    MemoryMode(min_gb=48, max_num_seqs=16, gpu_memory_utilization=0.95, max_model_len=131072, max_images=64),
    MemoryMode(min_gb=32, max_num_seqs=8, gpu_memory_utilization=0.9, max_model_len=131072, max_images=64),
    MemoryMode(min_gb=24, max_num_seqs=4, gpu_memory_utilization=0.85, max_model_len=65536, max_images=32),
)


class ServeError(RuntimeError):
    """serve cannot go on; the message says what is wrong and what to do."""


class VllmMissing(ServeError):
    pass


class NoGpu(ServeError):
    pass


class PortInUse(ServeError):
    pass


class VllmFlavour(BaseModel):
    """Which spelling of the version-dependent flags the installed (or assumed) vLLM takes."""

    model_config = ConfigDict(frozen=True)
    version: str
    installed: bool
    json_mm_limit: bool  # --limit-mm-per-prompt '{"image": N}' (>= 0.8.5) versus image=N (older; gone in 0.10)
    cache_gb_flag: bool  # --mm-processor-cache-gb 0 (newer) versus --disable-mm-preprocessor-cache


class ServePlan(BaseModel):
    """Everything that goes into the vllm command line, and what the client should be told."""

    variant: str
    model: str
    served_name: str
    host: str = "0.0.0.0"
    port: int = 8000
    tensor_parallel_size: int = 1
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    max_images: int
    mode: str  # "24 GB", "48 GB+", "explicit"
    extra_args: list[str] = []

    @property
    def base_url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"

    def client_flags(self) -> str:
        return (f"--base-url {self.base_url} --model {self.served_name} "
                f"--max-context {self.max_model_len} --max-images {self.max_images}")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


def vllm_flavour(assume_version: str | None = None) -> VllmFlavour:
    """Inspect the installed vLLM (its version and its argument parser source), else assume ``assume_version``."""
    try:
        version = importlib.metadata.version("vllm")
        installed = True
    except importlib.metadata.PackageNotFoundError:
        version, installed = assume_version or ASSUMED_VLLM, False
    v = _version_tuple(version)
    json_limit = v >= (0, 8, 5)
    cache_gb = v >= (0, 10, 2)  # fallback only: the installed parser's source decides below
    if installed:
        spec = importlib.util.find_spec("vllm")
        source = Path(spec.origin).parent / "engine" / "arg_utils.py" if spec and spec.origin else None
        if source is not None and source.exists():
            text = source.read_text(errors="replace")
            cache_gb = "mm_processor_cache_gb" in text
    return VllmFlavour(version=version, installed=installed, json_mm_limit=json_limit, cache_gb_flag=cache_gb)


def pick_memory_mode(gpu_gb: float) -> MemoryMode:
    for mode in MEMORY_MODES:
        if gpu_gb >= mode.min_gb - 1:  # a "24 GB" card reports ~23.6 GiB
            return mode
    raise NoGpu(f"{gpu_gb:.0f} GB of GPU memory is below the 24 GB Kimi-VL-A3B needs with vLLM; use more GPUs "
                "(--tensor-parallel-size N), or set --max-model-len, --max-num-seqs and --max-images yourself")


def detect_gpu_memory_gb(tensor_parallel_size: int = 1) -> float:
    """Total memory of the GPUs vLLM will use (the smallest card times the tensor-parallel size), via nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        raise NoGpu("no NVIDIA GPU found (nvidia-smi is not installed): vLLM serves Kimi-VL on CUDA GPUs only. "
                    "On a CPU machine run `kimi-cua serve --baseline` (OCR grounder) or use "
                    "`--backend transformers`; to just print the command pass --gpu-memory-gb N --dry-run")
    result = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                 capture_output=True, text=True, timeout=20)
    sizes = [float(line) for line in result.stdout.split() if re.fullmatch(r"[\d.]+", line)]
    if result.returncode != 0 or not sizes:
        raise NoGpu(f"nvidia-smi found no usable GPU (exit {result.returncode}: {result.stderr.strip()[:200]}); "
                    "check the driver with `nvidia-smi`, or pass --gpu-memory-gb N")
    if len(sizes) < tensor_parallel_size:
        raise NoGpu(f"--tensor-parallel-size {tensor_parallel_size} needs {tensor_parallel_size} GPUs, "
                    f"nvidia-smi lists {len(sizes)}")
    return min(sizes[:tensor_parallel_size]) / 1024 * tensor_parallel_size


def make_plan(args: argparse.Namespace, gpu_gb: float | None) -> ServePlan:
    """Combine the memory mode with explicit flags (explicit flags win)."""
    variant = VARIANTS[args.variant]
    explicit = args.max_model_len is not None and args.max_num_seqs is not None
    if gpu_gb is not None:
        mode = pick_memory_mode(gpu_gb)
        mode_name = f"{mode.min_gb} GB" + ("+" if mode is MEMORY_MODES[0] else "")
    elif explicit:
        mode = MemoryMode(min_gb=0, max_num_seqs=args.max_num_seqs, gpu_memory_utilization=0.9,
                          max_model_len=args.max_model_len, max_images=64)
        mode_name = "explicit"
    else:
        raise NoGpu("cannot size vLLM without the GPU memory: pass --gpu-memory-gb N, or --max-model-len and "
                    "--max-num-seqs")
    return ServePlan(
        variant=args.variant, model=args.model or variant.repo,
        served_name=args.served_model_name or variant.served_name,
        host=args.host, port=args.port, tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len or mode.max_model_len, max_num_seqs=args.max_num_seqs or mode.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization or mode.gpu_memory_utilization,
        max_images=args.max_images or mode.max_images, mode=mode_name, extra_args=list(args.vllm_arg or []))


def vllm_command(plan: ServePlan, flavour: VllmFlavour) -> list[str]:
    limit = json.dumps({"image": plan.max_images}) if flavour.json_mm_limit else f"image={plan.max_images}"
    cache = ["--mm-processor-cache-gb", "0"] if flavour.cache_gb_flag else ["--disable-mm-preprocessor-cache"]
    return [
        "vllm", "serve", plan.model,
        "--served-model-name", plan.served_name,
        "--trust-remote-code",
        "--host", plan.host, "--port", str(plan.port),
        "--tensor-parallel-size", str(plan.tensor_parallel_size),
        "--max-model-len", str(plan.max_model_len),
        "--max-num-batched-tokens", str(plan.max_model_len),
        "--max-num-seqs", str(plan.max_num_seqs),
        "--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}",
        "--limit-mm-per-prompt", limit,
        *cache,  # works around the multimodal preprocessor cache's CPU-memory leak
        *plan.extra_args,
    ]


def flash_attn_warning() -> str | None:
    if importlib.util.find_spec("flash_attn") is not None:
        return None
    return ("warning: flash-attn is not installed. MoonViT's head size (72) then falls back to a memory-hungry "
            f"attention path that can run out of memory on large screenshots; install it: {FLASH_ATTN_HINT}")


def ensure_port_free(host: str, port: int) -> None:
    bind_host = "" if host in ("0.0.0.0", "") else host
    with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((bind_host, port))
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise ServeError(f"cannot use {host}:{port}: {exc}") from None
            raise PortInUse(f"port {port} is already in use on {host or 'all interfaces'}: another server (maybe "
                            f"vLLM) runs there. Check it with `curl http://localhost:{port}/v1/models`, stop it, "
                            "or pick another --port") from None


def ensure_vllm_installed() -> None:
    if importlib.util.find_spec("vllm") is None or shutil.which("vllm") is None:
        raise VllmMissing(f"vLLM is not installed in this environment; install it with: {VLLM_INSTALL_HINT} "
                          "(needs a CUDA GPU). Without a GPU, `kimi-cua serve --baseline` starts the CPU "
                          "OCR grounder instead")


def wait_until_healthy(proc: subprocess.Popen[bytes], health_url: str, log_path: Path, *, timeout: float,
                       poll: float = 2.0, progress: Callable[[str], None] | None = None) -> float:
    """Poll ``health_url`` until it answers 200; raise ServeError if the process dies or time runs out."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        code = proc.poll()
        if code is not None:
            raise ServeError(f"vLLM exited with code {code} after {elapsed:.0f} s before it was ready.\n"
                             f"Last lines of {log_path}:\n{tail(log_path)}\n{failure_hint(log_path)}")
        try:
            if httpx.get(health_url, timeout=2.0).status_code == 200:
                return elapsed
        except httpx.HTTPError:
            pass
        if elapsed > timeout:
            raise ServeError(f"vLLM did not answer {health_url} within {timeout:.0f} s; see {log_path} "
                             "(weights may still be downloading: raise --startup-timeout)")
        if progress:
            last = tail(log_path, 1).strip()
            progress(f"waiting for vLLM ({elapsed:.0f} s) {last[-90:]}")
        time.sleep(poll)


def tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


def failure_hint(log_path: Path) -> str:
    text = tail(log_path, 200)
    if "out of memory" in text.lower() or "OutOfMemory" in text:
        return ("Hint: the GPU ran out of memory: lower --max-num-seqs / --max-model-len / --max-images, or "
                f"install flash-attn ({FLASH_ATTN_HINT})")
    if "limit-mm-per-prompt" in text or "limit_mm_per_prompt" in text:
        return "Hint: this vLLM spells --limit-mm-per-prompt differently; pass --vllm-version to match it"
    return "Hint: run the printed command by hand to see the full error"


def launch(plan: ServePlan, command: list[str], *, log_path: Path, startup_timeout: float) -> int:
    """Start ``command``, wait for its /health, print the base URL and client flags, then wait for it to exit.

    The server runs in its own process group and is stopped (SIGINT, then SIGTERM, then SIGKILL) on every exit
    path, Ctrl-C included. Returns the server's exit code, or 1 when it never became healthy.
    """
    print(f"starting: {shlex.join(command)}\nlog: {log_path}", file=sys.stderr)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    tty = sys.stderr.isatty()
    last_note = [0.0]

    def progress(line: str) -> None:
        if tty:
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
        elif time.monotonic() - last_note[0] >= 30:  # logs and CI: a line every 30 s, not a spinner
            last_note[0] = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    try:
        health = f"http://127.0.0.1:{plan.port}/health" if plan.host in ("0.0.0.0", "") else \
            f"{plan.base_url.removesuffix('/v1')}/health"
        took = wait_until_healthy(proc, health, log_path, timeout=startup_timeout, progress=progress)
        if tty:
            print("\r\033[K", end="", file=sys.stderr)
        print(f"vLLM is ready after {took:.0f} s at {plan.base_url} (model {plan.served_name})")
        print(f"client flags: {plan.client_flags()}")
        print(f"e.g. kimi-cua run {plan.client_flags()} \"open the file manager\"", flush=True)
        return proc.wait()
    except ServeError as exc:
        print(f"\nkimi-cua serve: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
