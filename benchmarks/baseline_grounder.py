"""Latency of the CPU baseline grounder (`kimi-cua serve --baseline`) over real HTTP.

For each screen size: the median time of a grounding request on a screenshot it has not seen (OCR runs)
and on the same screenshot again (OCR result cached). Prints JSON.
Usage: python benchmarks/baseline_grounder.py [--runs 5]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.models.baseline import BaselineServer  # noqa: E402
from agent.models.vllm import VLLMClient, image_part  # noqa: E402

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def screen(width: int, height: int, salt: int) -> bytes:
    image = Image.new("RGB", (width, height), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 18)
    for i in range(12):
        draw.text((40 + (i % 3) * width // 3, 40 + (i // 3) * height // 5), f"Item {i} label {salt}", fill="black",
                  font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    report: dict[str, object] = {"runs": args.runs, "cores": os.cpu_count()}
    with BaselineServer(port=0) as server:
        client = VLLMClient(server.base_url, retries=0)
        client.complete([{"role": "user", "content": [image_part(screen(320, 200, -1)),
                                                      {"type": "text", "text": "click Item"}]}])  # load the OCR
        for width, height in ((1280, 720), (1920, 1080)):
            new, same = [], []
            for k in range(args.runs):
                messages = [{"role": "user", "content": [image_part(screen(width, height, k)),
                                                         {"type": "text", "text": 'Click "Item 7 label"'}]}]
                for bucket in (new, same):
                    started = time.perf_counter()
                    client.complete(messages)
                    bucket.append((time.perf_counter() - started) * 1000)
            report[f"{width}x{height}"] = {"new_screenshot_ms_median": round(statistics.median(new), 1),
                                           "same_screenshot_ms_median": round(statistics.median(same), 1)}
        client.close()
    report["load_avg_1m"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
