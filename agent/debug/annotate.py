"""Draw actions (screen pixels) on the screenshot they were decided on.

Shared by the step-through debugger, the HTML report and the GIF. Actions are recorded in screen pixels;
the screenshot holds the monitor acted on (physical pixels), so a point is mapped back into the image
through the monitor's offset and size - the inverse of ``actions.coords.to_screen``.

Marks: a ringed cross-hair where a click/move/scroll/type lands (numbered when a step has several actions),
an arrow from start to end for a drag, a dashed-looking frame around the monitor acted on, and a caption
strip describing the actions.
"""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from actions.coords import Monitor
from actions.types import Action, Click, Drag, Move, Point, Scroll, TypeText, describe

MARK = (255, 0, 80)  # clicks, typed-at points
DRAG = (0, 140, 255)
MOVE = (255, 160, 0)
FRAME = (0, 200, 90)
CAPTION_BG = (20, 20, 20)
CAPTION_FG = (255, 255, 255)


def image_point(point: Point, monitor: Monitor, image_size: tuple[int, int]) -> tuple[float, float]:
    """Where a screen-pixel point lies in a screenshot of ``monitor`` that is ``image_size`` big."""
    width, height = image_size
    x = (float(point.x) - monitor.left + 0.5) * width / monitor.width
    y = (float(point.y) - monitor.top + 0.5) * height / monitor.height
    return x, y


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _scale(image: Image.Image) -> float:
    """Line widths and marker sizes grow with the screenshot so they stay visible when scaled down."""
    return max(1.0, max(image.size) / 1280)


def _crosshair(draw: ImageDraw.ImageDraw, xy: tuple[float, float], colour: tuple[int, int, int], s: float,
               label: str | None) -> None:
    x, y = xy
    r = 14 * s
    w = max(2, round(3 * s))
    draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=w)
    draw.ellipse((x - r - w, y - r - w, x + r + w, y + r + w), outline=(255, 255, 255), width=max(1, w // 2))
    draw.line((x - 2 * r, y, x - r / 3, y), fill=colour, width=w)
    draw.line((x + r / 3, y, x + 2 * r, y), fill=colour, width=w)
    draw.line((x, y - 2 * r, x, y - r / 3), fill=colour, width=w)
    draw.line((x, y + r / 3, x, y + 2 * r), fill=colour, width=w)
    draw.ellipse((x - w, y - w, x + w, y + w), fill=colour)
    if label:
        font = _font(round(14 * s))
        tx, ty = x + 1.2 * r, y - 2.2 * r
        box = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=colour)
        draw.text((tx, ty), label, fill=(255, 255, 255), font=font)


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float],
           colour: tuple[int, int, int], s: float) -> None:
    w = max(2, round(4 * s))
    draw.line((*start, *end), fill=colour, width=w)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    head = 18 * s
    left = (end[0] - head * math.cos(angle - 0.45), end[1] - head * math.sin(angle - 0.45))
    right = (end[0] - head * math.cos(angle + 0.45), end[1] - head * math.sin(angle + 0.45))
    draw.polygon([end, left, right], fill=colour)
    r = 6 * s
    draw.ellipse((start[0] - r, start[1] - r, start[0] + r, start[1] + r), outline=colour, width=w)


def _scroll_sign(draw: ImageDraw.ImageDraw, xy: tuple[float, float], action: Scroll, s: float) -> None:
    length = 40 * s
    x, y = xy
    if action.dy:
        end = (x, y - length if action.dy > 0 else y + length)
        _arrow(draw, (x, y), end, MOVE, s)
    if action.dx:
        end = (x + length if action.dx > 0 else x - length, y)
        _arrow(draw, (x, y), end, MOVE, s)


def _monitor_frame(draw: ImageDraw.ImageDraw, image: Image.Image, monitor: Monitor, s: float) -> None:
    w = max(2, round(3 * s))
    draw.rectangle((0, 0, image.width - 1, image.height - 1), outline=FRAME, width=w)
    font = _font(round(12 * s))
    text = f"monitor {monitor.width}x{monitor.height}+{monitor.left}+{monitor.top}"
    if monitor.scale != 1.0:
        text += f" scale {monitor.scale:g}"
    box = draw.textbbox((w + 4, w + 2), text, font=font)
    draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=FRAME)
    draw.text((w + 4, w + 2), text, fill=(0, 0, 0), font=font)


def _caption(image: Image.Image, text: str) -> Image.Image:
    s = _scale(image)
    font = _font(round(16 * s))
    probe = ImageDraw.Draw(image)
    height = round((probe.textbbox((0, 0), "Ag", font=font)[3] + 12) * 1)
    out = Image.new("RGB", (image.width, image.height + height), CAPTION_BG)
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    limit = max(20, int(image.width / (9 * s)))
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    draw.text((8, image.height + 6), shown, fill=CAPTION_FG, font=font)
    return out


def annotate(image: Image.Image | bytes, actions: Sequence[Action], monitor: Monitor | None = None, *,
             caption: str | None = None, frame: bool = True) -> Image.Image:
    """Return an RGB copy of ``image`` with ``actions`` (screen pixels) drawn on it.

    ``monitor`` is the monitor the screenshot shows; without it the screenshot is taken to be a monitor at
    the origin with the image's size (one monitor, no HiDPI scaling). ``caption`` (default: the actions
    described) is written on a strip under the image; pass "" for none.
    """
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as opened:
            base = opened.convert("RGB")
    else:
        base = image.convert("RGB")
    monitor = monitor or Monitor(width=base.width, height=base.height)
    s = _scale(base)
    draw = ImageDraw.Draw(base)
    if frame:
        _monitor_frame(draw, base, monitor, s)

    def _at(point: Point) -> tuple[float, float]:
        return image_point(point, monitor, base.size)

    numbered = len([a for a in actions if _has_point(a)]) > 1
    for index, action in enumerate(actions, 1):
        label = str(index) if numbered else None
        if isinstance(action, Drag):
            start = _at(action.start) if action.start is not None else None
            end = _at(action.end)
            if start is None:
                _crosshair(draw, end, DRAG, s, label or "drag to")
            else:
                _arrow(draw, start, end, DRAG, s)
                if label:
                    _crosshair(draw, start, DRAG, s * 0.6, label)
        elif isinstance(action, Scroll) and action.at is not None:
            xy = _at(action.at)
            _crosshair(draw, xy, MOVE, s, label)
            _scroll_sign(draw, xy, action, s)
        elif isinstance(action, Move):
            _crosshair(draw, _at(action.at), MOVE, s, label)
        elif isinstance(action, (Click, TypeText)) and action.at is not None:
            _crosshair(draw, _at(action.at), MARK, s, label)
    if caption is None:
        caption = "; ".join(describe(a) for a in actions) or "no action"
    return _caption(base, caption) if caption else base


def _has_point(action: Action) -> bool:
    return isinstance(action, Drag) or getattr(action, "at", None) is not None


def encode(image: Image.Image, fmt: str = "PNG", *, max_width: int | None = None, quality: int = 85) -> bytes:
    """Encode for saving or embedding; ``max_width`` scales the image down (never up)."""
    if max_width and image.width > max_width:
        height = round(image.height * max_width / image.width)
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True)
    else:
        image.save(buffer, fmt.upper(), **({"compress_level": 6} if fmt.upper() == "PNG" else {}))
    return buffer.getvalue()


def annotate_file(screenshot: Path, actions: Sequence[Action], monitor: Monitor | None, dest: Path, *,
                  caption: str | None = None) -> Path:
    """Annotate a screenshot file and save the result as PNG at ``dest`` (parents created)."""
    with Image.open(screenshot) as opened:
        drawn = annotate(opened, actions, monitor, caption=caption)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(encode(drawn, "PNG"))
    return dest
