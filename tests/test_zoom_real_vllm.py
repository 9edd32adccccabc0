"""Zoom-in grounding against the REAL vLLM (the session server, tests/real_vllm.py: tiny Kimi-VL, in_token_limit 4096,
max_model_len 4096) with scripted answers, at 1080p, 1440p and 4K with monitor offsets, through both entry points:
the agent's step (``Agent.decide`` with ``AgentConfig(zoom=2)``, what ``kimi-cua run --zoom 2`` does) and the
grounding evaluation (``evaluate_sample(..., zoom=2)``, what ``kimi-cua eval screenspot --zoom 2`` does).

Every reply is scripted through vLLM's own structured outputs (``structured_outputs: {"choice": [TEXT]}``, as in
tests/agent_real_vllm_driver.py), so requests, images, replies and usage all go through the real server. The
screenshot is gray with a 9x9 red marker on the intended pixel. The scripted model:

- round 0 (the whole screenshot): answers 25 px right of and 20 px above the marker (a coarse answer that misses);
- a zoom round: reads the region the prompt names, checks that the image it was sent shows that region (the red
  marker's centroid in the crop, mapped through the named region, is the marker's centre within 1 px, and the crop
  is sent at full detail), then answers the intended pixel inside the crop: round 1 as a 4-decimal fraction, round 2
  as integer pixels of the crop as sent.

The click lands on the intended screen pixel (monitor offset included), every zoom round's exact point is within
0.5 px of it, and the trajectory step / results line records every round's crop box and point.
"""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
import numpy as np
from PIL import Image

from actions.coords import Monitor
from actions.parser import parse_reply
from actions.types import Click
from agent.evals.screenspot import load_prompt, evaluate_sample
from agent.evals.screenspot_data import Sample, Target
from agent.loop import Agent, AgentConfig
from agent.models.vllm import VLLMClient
from agent.reply import ModelReply
from agent.trajectory import StepRecord
from agent.zoom import full_detail
from envs.base import Observation, ScreenGeometry
from tests.e2e_support import kimi_reply

IN_TOKEN_LIMIT = 4096  # the session server's (tests/real_vllm.py); the client is told so (variant instruct)
ROUNDS = 2
OFF = (25, -20)  # round 0's miss, screenshot pixels
_REGION = re.compile(r"from x=(\d+) to x=(\d+) and from y=(\d+) to y=(\d+) \(pixels\) of the (\d+) x (\d+) screenshot")

# (screen size, the monitor's place in the virtual screen, the intended pixel on the screen)
CASES = [
    ((1920, 1080), (2560, 360), (2560 + 1337, 360 + 611)),  # second monitor, right of a 1440p one, lowered
    ((2560, 1440), (0, 1080), (0 + 203, 1080 + 1391)),  # below a 1080p one; near the bottom edge
    ((3840, 2160), (1920, 0), (1920 + 3811, 0 + 47)),  # right of a 1080p one; near the top-right corner
]


def screenshot(size: tuple[int, int], marker: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size, (128, 128, 128))
    x, y = marker
    image.paste((255, 0, 0), (x - 4, y - 4, x + 5, y + 5))  # pixels x-4..x+4: centred on pixel x
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _text_and_image(messages: list[dict[str, Any]]) -> tuple[str, bytes | None]:
    content = messages[-1]["content"]
    text = " ".join(p.get("text", "") for p in content if p.get("type") == "text") if isinstance(content, list) \
        else str(content)
    image = next((p["image_url"]["url"] for p in content if p.get("type") == "image_url"), None) \
        if isinstance(content, list) else None
    return text, base64.b64decode(image.split(",", 1)[1]) if image else None


def red_centroid(data: bytes) -> tuple[float, float, tuple[int, int]]:
    """Centroid of the red marker in continuous image coordinates (pixel j spans [j, j+1)), and the image size."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    h, w = rgb.shape[:2]
    weight = np.maximum(0.0, rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) / 2 - 64)
    n = float(weight.sum())
    ys, xs = np.mgrid[0:h, 0:w]
    sx, sy = float((weight * (xs + 0.5)).sum()), float((weight * (ys + 0.5)).sum())
    assert n, "the crop does not show the marker"
    return sx / n, sy / n, (w, h)


class ScriptedModel:
    """A VLLMClient whose replies are constrained (vLLM structured outputs) to the script above."""

    def __init__(self, inner: VLLMClient, target: tuple[int, int], grounding: bool = False) -> None:
        self.inner = inner
        self.target = target  # the intended pixel in the screenshot's frame
        self.grounding = grounding
        self.seen: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> ModelReply:
        text, image = _text_and_image(messages)
        tx, ty = self.target
        found = _REGION.search(text)
        if found is None:  # round 0: the whole screenshot; a coarse answer
            with Image.open(io.BytesIO(image)) as im:
                width, height = im.size
            code = f"pyautogui.click(x={(tx + OFF[0]) / width:.4f}, y={(ty + OFF[1]) / height:.4f})"
            self.seen.append({"round": 0})
        else:
            assert "zoomed-in view" in text and "<instruction>" in text
            x1, x2, y1, y2, width, height = (int(v) for v in found.groups())
            cw, ch = x2 - x1, y2 - y1
            cx, cy, (sw, sh) = red_centroid(image)
            # the image sent shows the region the prompt names, unshrunk and at full detail
            assert sw >= cw and sh >= ch and full_detail(sw, sh, IN_TOKEN_LIMIT), (sw, sh, cw, ch)
            shown = (x1 + cx * cw / sw, y1 + cy * ch / sh)  # where the marker's centre is, by the named region
            assert abs(shown[0] - (tx + 0.5)) <= 1.0 and abs(shown[1] - (ty + 0.5)) <= 1.0, (shown, self.target)
            number = sum(1 for s in self.seen if s["round"] > 0) + 1
            if number == 1:  # a fraction of the crop, 4 decimals (as the model writes them)
                code = f"pyautogui.click(x={(tx - x1) / cw:.4f}, y={(ty - y1) / ch:.4f})"
            else:  # integer pixels of the crop as sent
                code = f"pyautogui.click({round((tx - x1) * sw / cw)}, {round((ty - y1) * sh / ch)})"
            self.seen.append({"round": number, "region": (x1, y1, x2, y2), "sent": (sw, sh)})
        answer = kimi_reply("Click the red square.", code, decoy=False)  # short: decoding is the cost
        extra = {**(kwargs.pop("extra", None) or {}), "structured_outputs": {"choice": [answer]}}
        reply = self.inner.complete(messages, extra=extra, **kwargs)
        assert reply.text == answer, (reply.text, answer)  # the real server answered exactly the script
        return reply


@pytest.fixture(scope="module")
def client(real_vllm):
    inner = VLLMClient(real_vllm.base_url, variant="instruct", retries=3, backoff=0.2, timeout=300)
    assert inner.defaults.in_token_limit == real_vllm.in_token_limit == IN_TOKEN_LIMIT
    yield inner
    inner.close()


def _check_rounds(rounds: list[dict[str, Any]], seen: list[dict[str, Any]], target: tuple[int, int],
                  size: tuple[int, int]) -> None:
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    assert rounds[0]["crop"] == [0, 0, *size] and rounds[0]["point"] == pytest.approx(
        [target[0] + OFF[0], target[1] + OFF[1]], abs=0.5)  # a 4-decimal answer
    zoomed = [s for s in seen if s["round"] > 0]
    for rec, asked in zip(rounds[1:], zoomed):
        assert rec["error"] is None
        assert tuple(rec["crop"]) == asked["region"] and tuple(rec["sent"]) == asked["sent"]
        assert abs(rec["point"][0] - target[0]) <= 0.5 and abs(rec["point"][1] - target[1]) <= 0.5, rec
        assert rec["prompt_tokens"] and rec["completion_tokens"]


@pytest.mark.parametrize("size, offset, intended", CASES, ids=["1080p", "1440p", "4k"])
def test_run_zoom_click_lands_on_the_intended_screen_pixel(client, real_vllm, size, offset, intended):
    monitor = Monitor(left=offset[0], top=offset[1], width=size[0], height=size[1])
    target = (intended[0] - offset[0], intended[1] - offset[1])  # the screenshot's frame (physical = logical here)
    observation = Observation(image=screenshot(size, target), width=size[0], height=size[1],
                              geometry=ScreenGeometry(monitor=monitor, screen_width=offset[0] + size[0] + 1920,
                                                      screen_height=offset[1] + size[1], monitors=[monitor]))
    model = ScriptedModel(client, target)
    agent = Agent(None, model, AgentConfig(zoom=ROUNDS, variant="instruct", max_tokens=300, max_images=2),
                  safety=None)
    assert agent.budget.in_token_limit == IN_TOKEN_LIMIT
    decision = agent.decide("Click the red square.", observation, step=1)
    assert decision.parse_error is None, decision.parse_error
    (action,) = decision.actions
    assert isinstance(action, Click) and (action.at.x, action.at.y) == intended  # the screen pixel, monitor offset
    rounds = decision.zoom
    _check_rounds(rounds, model.seen, target, size)
    assert [tuple(r["screen_point"]) for r in rounds[1:]] == [intended] * ROUNDS
    x1, y1, x2, y2 = rounds[-1]["crop"]
    assert rounds[-1]["screen_crop"] == [offset[0] + x1, offset[1] + y1, offset[0] + x2, offset[1] + y2]
    assert "zoom_ms" in decision.timings
    # what the trajectory step holds: every round's crop and point, read back
    record = StepRecord(step=1, screenshot="step_001.png", image_width=size[0], image_height=size[1],
                        monitor=monitor, action=action, actions=[action], zoom=decision.zoom)
    again = StepRecord.model_validate_json(record.model_dump_json())
    assert again.zoom == rounds and again.actions[0].at == action.at


@pytest.mark.parametrize("size, offset, intended", CASES, ids=["1080p", "1440p", "4k"])
def test_eval_zoom_turns_a_miss_into_a_hit_and_records_every_round(client, tmp_path, size, offset, intended):
    target = (intended[0] - offset[0], intended[1] - offset[1])
    image = tmp_path / "shot.png"
    image.write_bytes(screenshot(size, target))
    sample = Sample(id="s1", image=image, instruction="the red square", benchmark="screenspot-pro", layout="pro",
                    source_file="synthetic", img_size=size, ui_type="icon",
                    target=Target(kind="bbox", box=(target[0] - 3, target[1] - 3, target[0] + 3, target[1] + 3)))
    model = ScriptedModel(client, target, grounding=True)
    result = evaluate_sample(sample, model, load_prompt("kimi"), temperature=0.0, max_tokens=300, language="en",
                             parse=parse_reply, zoom=ROUNDS, in_token_limit=IN_TOKEN_LIMIT)
    assert result.correctness_before_zoom == "wrong" and result.correctness == "correct" and result.correct
    assert abs(result.point[0] - target[0]) <= 0.5 and abs(result.point[1] - target[1]) <= 0.5
    _check_rounds(result.zoom, model.seen, target, size)
    assert result.zoom[0]["screen_point"] is None  # a dataset image is not a screen
    line = type(result).model_validate_json(result.model_dump_json())  # the results.jsonl line, read back
    assert line.zoom == result.zoom and line.point == result.point
