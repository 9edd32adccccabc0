"""A long episode against the enforcing loopback server: refusals, budget use, build time, memory. Prints JSON.

    python benchmarks/long_episode.py                      # 300 steps at 1920x1080, max_model_len 131072 and 32768
    python benchmarks/long_episode.py --steps 50 --max-model-len 32768

The server runs in a child process (so its memory and CPU are not counted), enforcing max_model_len and the
images-per-prompt limit with its own stand-in tokenizer. The agent side is the real request path: ContextBudget
builds each request from screenshots on disk, VLLMClient sends it over HTTP, usage calibrates the budget.
Screenshots are varied synthetic desktops (windows, text, an image area), PNG-encoded like real captures.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from agent.budget import ContextBudget  # noqa: E402
from agent.models.vllm import ContextLengthExceeded, TooManyImages, VLLMClient  # noqa: E402
from agent.history import CurrentView, Turn  # noqa: E402

SYSTEM = ("You are a GUI agent operating a Linux desktop. For each screenshot, think, then answer with "
          "## Action: (one line) and ## Code: (one pyautogui call with normalized coordinates).")
TASK = "Open the spreadsheet in ~/Documents/budget.ods, add a column 'Total' summing B:D and save it as PDF."
WORDS = ("file edit view insert format tools window help save open close cancel apply settings search "
         "document sheet column row total sum budget report export print preview zoom").split()


def screenshot(step: int, width: int, height: int) -> bytes:
    """A desktop-like frame: panels, windows with text lines, buttons, and a photo-like area; varies per step."""
    rng = random.Random(step)
    image = Image.new("RGB", (width, height), (rng.randrange(40, 90), rng.randrange(60, 110), rng.randrange(90, 140)))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width, 32], fill=(30, 30, 36))
    for _ in range(rng.randrange(2, 5)):
        x0, y0 = rng.randrange(0, width // 2), rng.randrange(40, height // 2)
        x1, y1 = x0 + rng.randrange(width // 4, width // 2), y0 + rng.randrange(height // 4, height // 2)
        draw.rectangle([x0, y0, x1, y1], fill=(245, 245, 245), outline=(120, 120, 120))
        draw.rectangle([x0, y0, x1, y0 + 28], fill=(rng.randrange(200, 230),) * 3)
        for line_y in range(y0 + 40, y1 - 16, 18):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12)))
            draw.text((x0 + 10, line_y), text, fill=(20, 20, 20))
        draw.rectangle([x1 - 90, y1 - 34, x1 - 12, y1 - 10], fill=(60, 120, 220))
    px, py = rng.randrange(0, width - 320), rng.randrange(40, height - 200)
    image.paste(Image.effect_noise((320, 200), 40).convert("RGB"), (px, py))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def reply_for(body: dict[str, Any]) -> str:
    n = len(body.get("messages", []))
    x, y = (n * 37 % 1000) / 1000, (n * 61 % 1000) / 1000
    thinking = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(120))
    target = WORDS[n % len(WORDS)]
    return (f"◁think▷The screen shows the spreadsheet. {thinking}◁/think▷## Action: click the '{target}' control\n"
            f"## Code:\n```python\npyautogui.click(x={x:.3f}, y={y:.3f})\n```")


def serve(max_model_len: int, max_images: int) -> None:
    from tests.loopback import LoopbackServer

    server: LoopbackServer

    def policy(body: dict[str, Any]) -> str:
        server.requests.clear()  # bodies hold every screenshot: keep none
        return reply_for(body)

    server = LoopbackServer(policy, max_model_len=max_model_len, max_images=max_images)
    print(f"READY {server.base_url}", flush=True)
    server._httpd.serve_forever()


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def episode(base_url: str, *, steps: int, width: int, height: int, max_images: int, reply_reserve: int,
            run_dir: Path, collect: bool = False) -> dict[str, Any]:
    client = VLLMClient(base_url, retries=0)
    max_model_len = client.max_model_len() or 131072
    budget = ContextBudget(max_model_len=max_model_len, max_images=max_images, reply_reserve=reply_reserve)
    turns: list[Turn] = []
    build_ms: list[float] = []
    fills: list[float] = []
    over_estimate: list[int] = []
    refusals, retries, trims, first_trim = 0, 0, 0, None
    rss_start = rss_peak = 0.0
    for step in range(1, steps + 1):
        image = screenshot(step, width, height)
        user_text = (f"Step {step} of {steps}. The screenshot is {width}x{height}. Give the next action; "
                     "use normalized coordinates.")
        view = CurrentView(image=image, mime="image/png", width=width, height=height, user_text=user_text)
        started = time.perf_counter()
        built = budget.build(system=SYSTEM, task_text=TASK, turns=turns, current=view)
        build_ms.append((time.perf_counter() - started) * 1000)
        try:
            reply = client.complete(built.messages, max_tokens=reply_reserve)
        except (ContextLengthExceeded, TooManyImages) as refusal:
            refusals += 1
            budget.tighten(refusal)
            built = budget.build(system=SYSTEM, task_text=TASK, turns=turns, current=view)
            reply = client.complete(built.messages, max_tokens=reply_reserve)
            retries += 1
        budget.observe_usage(built.record, reply.usage.prompt_tokens)
        record = built.record
        if record.trimmed:
            trims += 1
            first_trim = first_trim or step
        if first_trim is not None:  # the history is long: it no longer fits whole
            fills.append(reply.usage.prompt_tokens / record.budget_tokens)
        over_estimate.append(record.estimated_prompt_tokens - reply.usage.prompt_tokens)
        path = run_dir / f"step_{step:04d}.png"
        path.write_bytes(image)
        turns.append(Turn(step=step, screenshot=path, mime="image/png", image_width=width, image_height=height,
                          user_text=user_text, summary=reply.summary, action_text=f"click step {step}"))
        del image, view, built
        if collect:  # httpx keeps each sent body in a reference cycle until the cyclic GC runs
            gc.collect()
        if step == 1:
            rss_start = rss_peak = rss_mb()
        else:
            rss_peak = max(rss_peak, rss_mb())
    client.close()
    last = record
    ordered = sorted(build_ms)
    return {
        "max_model_len": max_model_len, "max_images": max_images, "reply_reserve": reply_reserve,
        "budget_tokens": last.budget_tokens, "steps": steps, "screen": f"{width}x{height}",
        "requests_refused": refusals, "retried": retries,
        "history_long_from_step": first_trim,
        "budget_use_when_long": {"min": round(min(fills), 4), "median": round(statistics.median(fills), 4),
                                 "mean": round(statistics.fmean(fills), 4)} if fills else None,
        "build_ms": {"median": round(statistics.median(build_ms), 3),
                     "p95": round(ordered[int(0.95 * len(ordered))], 3), "max": round(ordered[-1], 3)},
        "estimate_minus_actual_tokens": {"median": statistics.median(over_estimate), "min": min(over_estimate),
                                         "max": max(over_estimate)},
        "steps_that_moved_the_cut": trims,
        "final": {"images_sent": last.images_sent, "turns_with_image": last.turns_with_image,
                  "turns_condensed": last.turns_condensed, "condensed_omitted": last.condensed_omitted,
                  "text_scale": last.text_scale},
        "gc_collect_every_step": collect,
        "rss_mb": {"after_step_1": round(rss_start, 1), "peak": round(rss_peak, 1),
                   "growth_peak": round(rss_peak - rss_start, 1)},
        "png_kb_last": round(path.stat().st_size / 1024, 1),
    }


def run_config(max_model_len: int, args: argparse.Namespace) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--max-model-len", str(max_model_len),
                               "--max-images", str(args.max_images)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line.startswith("READY "):
            raise SystemExit(f"the loopback server did not start (got {line!r})")
        with tempfile.TemporaryDirectory(prefix="long_episode_") as run_dir:
            return episode(line.split()[1], steps=args.steps, width=args.width, height=args.height,
                           max_images=args.max_images, reply_reserve=args.reply_reserve, run_dir=Path(run_dir),
                           collect=args.gc_every_step)
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--max-model-len", type=int, nargs="+", default=[131072, 32768])
    parser.add_argument("--max-images", type=int, default=64)
    parser.add_argument("--reply-reserve", type=int, default=8192)
    parser.add_argument("--no-gc-every-step", dest="gc_every_step", action="store_false",
                        help="skip the gc.collect() that agent.loop.Agent runs after each step (it frees the request "
                             "bodies httpx holds in reference cycles)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.max_model_len[0], args.max_images)
        return 0
    results = [run_config(n, args) for n in args.max_model_len]
    print(json.dumps({"benchmark": "long_episode", "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
