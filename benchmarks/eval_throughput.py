"""Throughput of `kimi-cua eval screenspot`: N samples against a loopback server answering in a fixed latency.

efficiency = ideal time (n x latency / concurrency) / measured time. Upstream ScreenSpot-Pro's script sends
one request at a time (efficiency at concurrency 1 by construction). The server runs in its own process,
as vLLM would. Prints one JSON object.

    python benchmarks/eval_throughput.py [--samples 1000] [--concurrency 64] [--latency 0.25]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.models.vllm import VLLMClient
from agent.evals.screenspot import RunSettings, load_prompt, run_eval
from agent.evals.screenspot_data import load_dataset

SERVER_BOOT = "from tests.loopback import main; main()"  # a separate process, like a real server


def make_dataset(root: Path, n: int) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "bench_linux").mkdir(parents=True)
    Image.new("RGB", (640, 360), (210, 210, 210)).save(root / "images" / "bench_linux" / "shot.png")
    rows = [{"id": f"s{i}", "img_filename": "bench_linux/shot.png", "bbox": [100, 100, 200, 200],
             "img_size": [640, 360], "instruction": f"target {i}", "group": "Bench", "platform": "linux",
             "application": "bench", "ui_type": "text" if i % 2 else "icon"} for i in range(n)]
    (root / "annotations" / "bench_linux.json").write_text(json.dumps(rows))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval-throughput-") as tmp:
        work = Path(tmp)
        data = make_dataset(work / "data", args.samples)
        script = work / "replies.json"
        script.write_text(json.dumps(["pyautogui.click(x=0.234, y=0.417)"] * args.samples))
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER_BOOT,
             "--script", str(script), "--latency", str(args.latency)],
            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True)
        try:
            line = server.stdout.readline() if server.stdout else ""
            if not line.startswith("READY "):
                raise SystemExit(f"the loopback server did not start: {line!r}")
            base_url = line.split()[1]
            dataset = load_dataset(data)
            client = VLLMClient(base_url, retries=0)
            settings = RunSettings(benchmark=dataset.benchmark, data=str(data), prompt="kimi", model=client.model,
                                   temperature=0.0, max_tokens=64)
            started = time.perf_counter()
            outcome = run_eval(dataset, dataset.samples, work / "run", [client], settings,
                               prompt=load_prompt("kimi"), concurrency=args.concurrency, progress=False)
            measured = time.perf_counter() - started
            client.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    ideal = args.samples * args.latency / args.concurrency
    print(json.dumps({
        "samples": args.samples, "concurrency": args.concurrency, "latency_s": args.latency,
        "finished": outcome.summary.finished, "errors": len(outcome.errors),
        "accuracy": outcome.summary.metrics["overall"]["action_acc"],
        "ideal_s": round(ideal, 3), "measured_s": round(measured, 3), "efficiency": round(ideal / measured, 3),
        "samples_per_s": round(args.samples / measured, 1),
        "upstream_sequential_s": round(args.samples * args.latency, 1),
        "first_errors": outcome.errors[:2],
    }))


if __name__ == "__main__":
    main()
