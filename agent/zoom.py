"""Zoom-in grounding (``--zoom N``): after the model points, look closer and ask again, up to N rounds.

Round 0 is the model's own answer on the whole screenshot. Each further round crops a window around the latest
point from the native-resolution screenshot, sends it with ``prompts/zoom.txt`` (which says it is a zoomed view,
of which region, at what scale), reads the answer in the frame of the crop and maps it back exactly. A round whose
answer cannot be used (unparseable, no point, outside the crop, refused by the server) ends the zooming and the
previous point stands; every round, used or not, is recorded (:class:`ZoomRound`).

**Crop choice** (:func:`choose_crop`). The window keeps the screenshot's aspect and is ``ZOOM_FACTOR`` (2) times
smaller per side than the view before it (round 1: the whole screenshot), but never below ``MIN_CROP_SIDE`` pixels
on its short side and never larger than the model sees at full detail: Kimi-VL's image rule (agent/tokens.py)
shrinks an image whose ``(W // 14) * (H // 14)`` patches exceed ``in_token_limit`` (16384 for Thinking-2506: ~3.2
MP; 4096 for Instruct), so the window is cut to fit that. It is centred on the point and shifted to stay inside the
screenshot. It is then enlarged by up to ``MAX_UPSCALE`` (2) as long as the rule still leaves it as is, so the crop
always reaches the model unshrunk (``sent`` >= the window, and within the limit). When the window cannot get
smaller than the view before it, zooming stops.

**Exact mapping** (:meth:`CropPlan.to_image`). The image sent is the window resized edge to edge, so a fraction
``f`` of it is the same fraction of the window: ``x = left + f * width`` in screenshot pixels, a float, never
rounded between rounds. Only the final point is converted to the screen, once, by the one coordinate boundary
(``actions.coords.fractions_to_screen``: the monitor's offset plus the nearest logical pixel of ``x / W``), so the
error of the whole chain is the final rounding (at most half a pixel) plus what the model's answer itself misses.
The model's answer in the crop is read by ``actions.coords`` too (``reading_of``, ``point_fractions``: fractions or
pixels of the crop as sent, validated inside it).
"""
from __future__ import annotations

import io
import math
import re
import time
from collections.abc import Callable
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict

import prompts
from actions.coords import (
    CoordinateMode,
    Monitor,
    check_one_frame,
    fractions_to_screen,
    fractions_to_screen_exact,
    point_fractions,
    reading_of,
)
from actions.types import Action, ActionParseError, Click, Point, action_points, describe
from agent.models.vllm import ModelClient, RequestRefused, image_part
from agent.reply import ModelReply
from agent.tokens import PATCH_SIZE

ZOOM_FACTOR = 2.0  # each window is this many times smaller, per side, than the view before it
MAX_UPSCALE = 2.0  # a window is enlarged up to this much when the image rule still sends it unshrunk
MIN_CROP_SIDE = 112  # screenshot pixels on the window's short side, at least
PROMPT = "zoom"  # prompts/zoom.txt


def patches(width: int, height: int) -> int:
    """MoonViT's 14-pixel patches of a ``width`` x ``height`` image: what the image rule compares to the limit."""
    return (int(width) // PATCH_SIZE) * (int(height) // PATCH_SIZE)


def full_detail(width: int, height: int, in_token_limit: int) -> bool:
    """True when Kimi-VL's image rule sends the image as is (not shrunk to the limit)."""
    return patches(width, height) <= in_token_limit


class CropPlan(BaseModel):
    """One zoom window: its box in screenshot pixels and the size it is sent at (never shrunk by the image rule)."""

    model_config = ConfigDict(frozen=True)
    left: int
    top: int
    width: int
    height: int
    sent_width: int
    sent_height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x1, y1, x2, y2)`` in screenshot pixels, x2/y2 exclusive (PIL's crop box)."""
        return self.left, self.top, self.left + self.width, self.top + self.height

    @property
    def scale(self) -> float:
        """How much the window is enlarged when sent (>= 1)."""
        return self.sent_width / self.width

    def to_image(self, fx: float, fy: float) -> tuple[float, float]:
        """Exact: a fraction of the crop as sent -> screenshot pixels (the resize maps edges to edges)."""
        return self.left + fx * self.width, self.top + fy * self.height


def _nearest(value: float) -> int:
    return math.floor(value + 0.5)


def choose_crop(center: tuple[float, float], *, image_size: tuple[int, int], view_size: tuple[int, int],
                in_token_limit: int, factor: float = ZOOM_FACTOR, max_upscale: float = MAX_UPSCALE,
                min_side: int = MIN_CROP_SIDE) -> CropPlan | None:
    """The window for the next round around ``center`` (screenshot pixels), or None when it cannot get smaller
    than ``view_size`` (the view the point was found on)."""
    image_w, image_h = image_size
    view_w, view_h = view_size
    if factor <= 1 or in_token_limit <= 0 or image_w <= 0 or image_h <= 0:
        raise ValueError(f"bad zoom settings: factor {factor}, in_token_limit {in_token_limit}, image {image_size}")
    w, h = view_w / factor, view_h / factor
    if min(w, h) < min_side:  # grow to the minimum, keeping the aspect
        grow = min_side / max(min(w, h), 1e-9)
        w, h = w * grow, h * grow
    w, h = min(w, image_w), min(h, image_h)
    if w * h > in_token_limit * PATCH_SIZE * PATCH_SIZE:  # more than the model sees unshrunk: cut to fit
        cut = math.sqrt(in_token_limit * PATCH_SIZE * PATCH_SIZE / (w * h))
        w, h = w * cut, h * cut
    crop_w, crop_h = max(1, int(w)), max(1, int(h))
    while patches(crop_w, crop_h) > in_token_limit:  # floor effects: trim the longer side (relative to aspect)
        if crop_w * image_h >= crop_h * image_w:
            crop_w -= 1
        else:
            crop_h -= 1
    if crop_w >= view_w and crop_h >= view_h:
        return None  # no closer look than the view already gave
    cx, cy = center
    left = min(max(0, _nearest(cx - crop_w / 2)), image_w - crop_w)
    top = min(max(0, _nearest(cy - crop_h / 2)), image_h - crop_h)
    # Enlarge as far as the rule still sends it as is (and at most max_upscale).
    scale = max(1.0, min(max_upscale, math.sqrt(in_token_limit * PATCH_SIZE * PATCH_SIZE / (crop_w * crop_h))))
    while True:
        sent_w, sent_h = max(crop_w, int(crop_w * scale)), max(crop_h, int(crop_h * scale))
        if full_detail(sent_w, sent_h, in_token_limit) or scale <= 1.0:
            break
        scale = max(1.0, scale * 0.995)
    return CropPlan(left=left, top=top, width=crop_w, height=crop_h, sent_width=sent_w, sent_height=sent_h)


def crop_png(image: Image.Image, plan: CropPlan) -> bytes:
    """The window of ``image`` at its sent size, as lossless PNG."""
    region = image.crop(plan.box)
    if region.mode not in ("RGB", "RGBA", "L"):
        region = region.convert("RGB")
    if (plan.sent_width, plan.sent_height) != (plan.width, plan.height):
        region = region.resize((plan.sent_width, plan.sent_height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    region.save(out, format="PNG", compress_level=1)
    return out.getvalue()


# ---- records -----------------------------------------------------------------------------------------------------
class ZoomRound(BaseModel):
    """One round: where the model looked and what it answered (round 0: its first answer, on the whole screenshot)."""

    round: int
    crop: tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive) in screenshot pixels: the region the model saw
    sent: tuple[int, int]  # the image sent for it (width, height)
    point: tuple[float, float] | None = None  # the answer in screenshot pixels, exact (not rounded)
    screen_crop: tuple[float, float, float, float] | None = None  # the region in screen pixels (monitor offset)
    screen_point: tuple[int, int] | None = None  # the answer on the screen (nearest pixel, monitor offset)
    answer: str = ""  # this round's answer text (the post-think summary); round 0: the step's own
    error: str | None = None  # why this answer was not used: the previous round's point stands
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ZoomResult(BaseModel):
    rounds: list[ZoomRound]
    point: tuple[float, float]  # the final point in screenshot pixels (exact)
    image_size: tuple[int, int]
    stopped: str | None = None  # why fewer rounds than asked ran (an unusable answer, nothing left to zoom)

    @property
    def fractions(self) -> tuple[float, float]:
        return self.point[0] / self.image_size[0], self.point[1] / self.image_size[1]


# ---- asking ------------------------------------------------------------------------------------------------------
Ask = Callable[[dict[str, Any], CropPlan, int], ModelReply]  # (image part, window, round) -> reply
Parse = Callable[[str], list[Action]]


def zoom_text(instruction: str, plan: CropPlan, *, round_number: int, rounds: int,
              image_size: tuple[int, int]) -> str:
    """The user text of a zoom request (prompts/zoom.txt)."""
    x1, y1, x2, y2 = plan.box
    return prompts.render(PROMPT, instruction=instruction, left=x1, top=y1, right=x2, bottom=y2,
                          width=image_size[0], height=image_size[1], scale=f"{plan.scale:.2f}",
                          round=round_number, rounds=rounds)


def zoom_messages(image: dict[str, Any], text: str, system: str | None = None) -> list[dict[str, Any]]:
    """A fresh, short context: [system], the crop and the zoom text."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": [image, {"type": "text", "text": text}]})
    return messages


def read_point(summary: str, parse: Parse, width: int, height: int,
               mode: CoordinateMode = "auto") -> tuple[float, float]:
    """The first point of an answer as exact fractions of the ``width`` x ``height`` image it was given on.

    Read as the coordinate boundary reads everything (fractions, or pixels of that image); ActionParseError (and its
    OutOfScreenError, MixedFramesError) when there is none, or it is outside the image.
    """
    action = next((a for a in parse(summary) if action_points(a)), None)
    if action is None:
        raise ActionParseError("the answer has no point")
    reading = reading_of(action, mode)
    if mode == "auto":
        check_one_frame(action, reading)
    return point_fractions(action_points(action)[0], shown_width=width, shown_height=height, reading=reading)


def _open(image: bytes | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    with Image.open(io.BytesIO(image)) as im:
        im.load()
        return im.copy()


def zoom_in(image: bytes | Image.Image, start: tuple[float, float], *, rounds: int, ask: Ask, parse: Parse,
            in_token_limit: int, monitor: Monitor | None = None, mode: CoordinateMode = "auto",
            first_answer: str = "", factor: float = ZOOM_FACTOR, max_upscale: float = MAX_UPSCALE,
            min_side: int = MIN_CROP_SIDE) -> ZoomResult:
    """Up to ``rounds`` zoom rounds from ``start`` (the model's point, screenshot pixels, exact).

    ``ask(image_part, plan, round)`` sends one zoom request and returns the reply; a refusal by the server
    (RequestRefused) ends the zooming like an unusable answer, other server errors propagate. With ``monitor``
    the rounds also carry their region and point on the screen.
    """
    picture = _open(image)
    size = picture.size
    width, height = size

    def on_screen(rec: ZoomRound) -> ZoomRound:
        if monitor is None:
            return rec
        x1, y1, x2, y2 = rec.crop
        sx1, sy1 = fractions_to_screen_exact(x1 / width, y1 / height, monitor)
        sx2, sy2 = fractions_to_screen_exact(x2 / width, y2 / height, monitor)
        update: dict[str, Any] = {"screen_crop": (round(sx1, 3), round(sy1, 3), round(sx2, 3), round(sy2, 3))}
        if rec.point is not None:
            p = fractions_to_screen(rec.point[0] / width, rec.point[1] / height, monitor)
            update["screen_point"] = (int(p.x), int(p.y))
        return rec.model_copy(update=update)

    trace = [on_screen(ZoomRound(round=0, crop=(0, 0, width, height), sent=size, point=start, answer=first_answer))]
    point, view, stopped = start, size, None
    for number in range(1, rounds + 1):
        plan = choose_crop(point, image_size=size, view_size=view, in_token_limit=in_token_limit, factor=factor,
                           max_upscale=max_upscale, min_side=min_side)
        if plan is None:
            stopped = f"round {number}: the window cannot get smaller than the last view ({view[0]}x{view[1]})"
            break
        record = ZoomRound(round=number, crop=plan.box, sent=(plan.sent_width, plan.sent_height))
        started = time.perf_counter()
        try:
            reply = ask(image_part(crop_png(picture, plan)), plan, number)
        except RequestRefused as exc:
            trace.append(on_screen(record.model_copy(update={"error": f"the server refused the zoom request: {exc}"})))
            stopped = f"round {number}: refused by the server"
            break
        record = record.model_copy(update={
            "answer": reply.summary, "latency_ms": round(reply.latency_ms or (time.perf_counter() - started) * 1000, 1),
            "prompt_tokens": reply.usage.prompt_tokens, "completion_tokens": reply.usage.completion_tokens})
        try:
            if reply.truncated:
                raise ActionParseError("the reply was cut off inside its thinking")
            fx, fy = read_point(reply.summary, parse, plan.sent_width, plan.sent_height, mode)
        except ActionParseError as exc:
            trace.append(on_screen(record.model_copy(update={"error": str(exc)})))
            stopped = f"round {number}: the answer could not be used"
            break
        point = plan.to_image(fx, fy)
        view = (plan.width, plan.height)
        trace.append(on_screen(record.model_copy(update={"point": point})))
    return ZoomResult(rounds=trace, point=point, image_size=size, stopped=stopped)


# ---- the agent's clicks ------------------------------------------------------------------------------------------
_ACTION_LINE = re.compile(r"##\s*Action\s*:?\s*(.+?)(?=\n\s*##|\Z)", re.S | re.I)
_CODE = re.compile(r"```.*?(```|\Z)|##\s*Code.*", re.S | re.I)


def action_description(summary: str, action: Action) -> str:
    """What the model meant to click, in its own words: its ``## Action:`` text, else its prose, else the action."""
    found = _ACTION_LINE.search(summary or "")
    text = found.group(1) if found else _CODE.sub(" ", summary or "")
    text = " ".join(text.split())
    return text[:500] if text else describe(action)


def zoom_click(client: ModelClient, *, image: bytes, image_size: tuple[int, int], monitor: Monitor,
               parsed: Action, converted: Action, rounds: int, instruction: str, in_token_limit: int,
               mode: CoordinateMode = "auto", temperature: float | None = None, max_tokens: int | None = None,
               parse: Parse | None = None) -> tuple[Action, ZoomResult | None]:
    """The agent's hook: refine a click's point with zoom rounds.

    ``parsed`` is the action as the model wrote it (frame of the screenshot), ``converted`` the same in screen
    pixels. Returns ``converted`` with the final point and the record; actions other than a click with a point
    come back unchanged with None.
    """
    if rounds <= 0 or not isinstance(parsed, Click) or parsed.at is None:
        return converted, None
    if parse is None:
        from actions.parser import parse_summary as parse
    width, height = image_size
    reading = reading_of(parsed, mode)
    fx, fy = point_fractions(parsed.at, shown_width=width, shown_height=height, reading=reading)

    def ask(part: dict[str, Any], plan: CropPlan, number: int) -> ModelReply:
        text = zoom_text(instruction, plan, round_number=number, rounds=rounds, image_size=image_size)
        return client.complete(zoom_messages(part, text), temperature=temperature, max_tokens=max_tokens)

    result = zoom_in(image, (fx * width, fy * height), rounds=rounds, ask=ask, parse=parse,
                     in_token_limit=in_token_limit, monitor=monitor, mode=mode)
    final = fractions_to_screen(*result.fractions, monitor)
    return converted.model_copy(update={"at": Point(x=final.x, y=final.y)}), result


def zoom_records(result: ZoomResult | None) -> list[dict[str, Any]] | None:
    """The rounds as JSON-ready dicts (a trajectory step's ``zoom``)."""
    return None if result is None else [r.model_dump(mode="json") for r in result.rounds]



def zoom_step(client: ModelClient, *, image: bytes, image_size: tuple[int, int], monitor: Monitor,
              parsed: list[Action], converted: list[Action], summary: str, rounds: int, in_token_limit: int,
              mode: CoordinateMode = "auto", temperature: float | None = None,
              max_tokens: int | None = None) -> tuple[list[Action], ZoomResult | None]:
    """The agent loop's hook: zoom the step's first click with a point (the others are left as they are)."""
    index = next((i for i, a in enumerate(parsed) if isinstance(a, Click) and a.at is not None), None)
    if rounds <= 0 or index is None:
        return converted, None
    action, result = zoom_click(client, image=image, image_size=image_size, monitor=monitor, parsed=parsed[index],
                                converted=converted[index], rounds=rounds,
                                instruction=action_description(summary, parsed[index]),
                                in_token_limit=in_token_limit, mode=mode, temperature=temperature,
                                max_tokens=max_tokens)
    return [*converted[:index], action, *converted[index + 1:]], result


def zoom_grounding(client: ModelClient, *, image: bytes, start: tuple[float, float], instruction: str, rounds: int,
                   in_token_limit: int, parse: Parse, system: str | None = None, temperature: float | None = None,
                   max_tokens: int | None = None) -> ZoomResult:
    """The grounding evaluation's hook: zoom rounds for one sample's point (image pixels; the image is the screen).

    Each zoom request is the evaluation prompt's system message (when it has one), the crop and prompts/zoom.txt
    with the sample's instruction.
    """
    picture = _open(image)

    def ask(part: dict[str, Any], plan: CropPlan, number: int) -> ModelReply:
        text = zoom_text(instruction, plan, round_number=number, rounds=rounds, image_size=picture.size)
        return client.complete(zoom_messages(part, text, system), temperature=temperature, max_tokens=max_tokens)

    return zoom_in(picture, start, rounds=rounds, ask=ask, parse=parse, in_token_limit=in_token_limit)


def client_in_token_limit(client: Any) -> int:
    """The image rule's limit for a client's variant (Thinking-2506's 16384 when it does not say)."""
    defaults = getattr(client, "defaults", None)
    return int(getattr(defaults, "in_token_limit", 16384) or 16384)
