"""The one coordinate boundary: from the frame of the image the model was shown to screen pixels.

The model answers in the frame of the image it saw: normalized fractions in [0, 1] (the default of this
model family) or pixels of that image when values exceed 1. The image may have been downscaled before
sending, the monitor may sit at an offset in a multi-monitor virtual screen, and on HiDPI systems the
screenshot holds physical pixels while input takes logical ones. Going through fractions of the monitor's
logical size handles all three at once.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from actions.types import Action, ActionParseError, Drag, Point, action_points

CoordinateMode = Literal["auto", "normalized", "pixels"]


class Monitor(BaseModel):
    """One monitor in the virtual screen, in logical (input) pixels; ``scale`` = physical / logical."""

    model_config = ConfigDict(frozen=True)
    left: int = 0
    top: int = 0
    width: int
    height: int
    scale: float = 1.0


class OutOfScreenError(ActionParseError):
    """A point that falls outside the image the model was shown (and so outside the monitor)."""


class MixedFramesError(ActionParseError):
    """One action whose numbers are partly fractions and partly pixels (``drag(start=[0.2, 0.3], end=[640, 360])``)."""


def reading_of(action: Action, mode: CoordinateMode = "auto") -> Literal["normalized", "pixels"]:
    """How an action's numbers are read, all of them the same way (one call, one frame).

    Any value above 1 means image pixels; values all within [0, 1] mean fractions when at least one is written
    as a decimal (``click(0.5, 1)``), and pixels when every one is an integer (``click(1, 1)`` is pixel (1, 1),
    not the bottom-right corner).
    """
    if mode != "auto":
        return mode
    values = [v for p in action_points(action) for v in (p.x, p.y)]
    if any(abs(v) > 1.0 for v in values):
        return "pixels"
    if values and all(isinstance(v, int) for v in values):
        return "pixels"
    return "normalized"


def check_one_frame(action: Action, reading: str) -> None:
    """Refuse an action read as pixels that also holds a fraction (0 < v < 1): its points mix two frames."""
    if reading != "pixels":
        return
    points = action_points(action)
    fractions = [p for p in points if any(isinstance(v, float) and 0.0 < v < 1.0 for v in (p.x, p.y))]
    if fractions:
        shown = ", ".join(f"({p.x:g}, {p.y:g})" for p in points)
        raise MixedFramesError(
            f"the {action.type} mixes normalized and pixel coordinates ({shown}); write every number of an action "
            "the same way: normalized 0..1 (e.g. 0.5) or pixels of the screenshot"
        )


def _fraction(value: float, size: int, reading: str, axis: str) -> float:
    fraction = value if reading == "normalized" else value / size
    if not (0.0 <= fraction <= 1.0):
        shown = f"{value:g}" if reading == "pixels" else f"{value:g} (normalized)"
        raise OutOfScreenError(
            f"{axis}={shown} is outside the screenshot ({'0..1' if reading == 'normalized' else f'0..{size}'}); "
            "answer with a point inside the image"
        )
    return fraction


def _nearest(value: float) -> int:
    """The nearest whole pixel, halves up (0.365 x 1920 = 700.8 -> 701; never Python's banker's rounding)."""
    return math.floor(value + 0.5)


def point_fractions(point: Point, *, shown_width: int, shown_height: int, reading: str) -> tuple[float, float]:
    """The point as exact fractions (0..1) of the image it was given in; OutOfScreenError when outside it."""
    return (_fraction(float(point.x), shown_width, reading, "x"),
            _fraction(float(point.y), shown_height, reading, "y"))


def fractions_to_screen(fx: float, fy: float, monitor: Monitor) -> Point:
    """Fractions of the monitor's screenshot -> screen pixels: the monitor's offset plus the nearest logical pixel."""
    x = monitor.left + min(_nearest(fx * monitor.width), monitor.width - 1)
    y = monitor.top + min(_nearest(fy * monitor.height), monitor.height - 1)
    return Point(x=x, y=y)


def fractions_to_screen_exact(fx: float, fy: float, monitor: Monitor) -> tuple[float, float]:
    """The same point before rounding (for records and error bounds): ``monitor.left + fx * monitor.width``."""
    return monitor.left + fx * monitor.width, monitor.top + fy * monitor.height


def point_to_screen(
    point: Point, *, shown_width: int, shown_height: int, monitor: Monitor, reading: str
) -> Point:
    fx, fy = point_fractions(point, shown_width=shown_width, shown_height=shown_height, reading=reading)
    return fractions_to_screen(fx, fy, monitor)


def to_screen(
    action: Action,
    *,
    shown_width: int,
    shown_height: int,
    monitor: Monitor,
    mode: CoordinateMode = "auto",
) -> Action:
    """Return ``action`` with every point in screen pixels (ints). Raises OutOfScreenError, MixedFramesError."""
    reading = reading_of(action, mode)
    if mode == "auto":
        check_one_frame(action, reading)

    def conv(p: Point | None) -> Point | None:
        if p is None:
            return None
        return point_to_screen(
            p, shown_width=shown_width, shown_height=shown_height, monitor=monitor, reading=reading
        )

    if isinstance(action, Drag):
        return action.model_copy(update={"start": conv(action.start), "end": conv(action.end)})
    if getattr(action, "at", None) is not None:
        return action.model_copy(update={"at": conv(action.at)})
    return action
