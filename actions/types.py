"""The closed, typed action set.

Points are in one of two frames, never mixed in one object:
- as parsed: the frame of the image the model was shown (normalized floats or image pixels);
- as executed/recorded: screen pixels (ints), produced by ``actions.coords.to_screen``.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Point(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    x: int | float
    y: int | float


class _Base(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


MouseButton = Literal["left", "right", "middle"]


class Click(_Base):
    type: Literal["click"] = "click"
    at: Point | None = None  # None: where the pointer is
    button: MouseButton = "left"
    count: int = Field(1, ge=1, le=3)


class Move(_Base):
    type: Literal["move"] = "move"
    at: Point


class Drag(_Base):
    type: Literal["drag"] = "drag"
    start: Point | None = None  # None: from where the pointer is
    end: Point
    button: MouseButton = "left"


class Scroll(_Base):
    type: Literal["scroll"] = "scroll"
    dy: int = 0  # clicks; positive = up (pyautogui convention)
    dx: int = 0  # clicks; positive = right
    at: Point | None = None


class TypeText(_Base):
    type: Literal["type"] = "type"
    text: str
    at: Point | None = None  # clicked first when given


class Press(_Base):
    type: Literal["press"] = "press"
    key: str
    count: int = Field(1, ge=1, le=100)


class Hotkey(_Base):
    type: Literal["hotkey"] = "hotkey"
    keys: list[str] = Field(min_length=1, max_length=6)  # keys held at once: more is never a real combination


class Wait(_Base):
    type: Literal["wait"] = "wait"
    seconds: float = Field(1.0, ge=0, le=60)


class Done(_Base):
    type: Literal["done"] = "done"
    answer: str | None = None


class Fail(_Base):
    type: Literal["fail"] = "fail"
    reason: str | None = None


Action = Annotated[
    Union[Click, Move, Drag, Scroll, TypeText, Press, Hotkey, Wait, Done, Fail],
    Field(discriminator="type"),
]
ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)
ACTION_LIST_ADAPTER: TypeAdapter[list[Action]] = TypeAdapter(list[Action])

TERMINAL_TYPES = frozenset({"done", "fail"})


def action_points(action: Action) -> list[Point]:
    """Every point an action carries, in a fixed order."""
    if isinstance(action, Drag):
        return [p for p in (action.start, action.end) if p is not None]
    at = getattr(action, "at", None)
    return [at] if at is not None else []


class ActionParseError(ValueError):
    """Model text that is not a valid action. The message is written to be fed back to the model."""


def describe(action: Action) -> str:
    """One short line for logs, history condensation and the step display."""

    def pt(p: Point | None) -> str:
        if p is None:
            return "here"
        fmt = (lambda v: f"{v:.3f}") if isinstance(p.x, float) and abs(p.x) <= 1 and abs(p.y) <= 1 else (
            lambda v: f"{v:g}")
        return f"({fmt(p.x)}, {fmt(p.y)})"

    if isinstance(action, Click):
        kind = {1: "", 2: "double ", 3: "triple "}[action.count]
        button = "" if action.button == "left" else f"{action.button} "
        return f"{kind}{button}click {pt(action.at)}"
    if isinstance(action, Move):
        return f"move {pt(action.at)}"
    if isinstance(action, Drag):
        return f"drag {pt(action.start)} -> {pt(action.end)}"
    if isinstance(action, Scroll):
        parts = [f"dy={action.dy}"] + ([f"dx={action.dx}"] if action.dx else [])
        return f"scroll {' '.join(parts)}" + (f" at {pt(action.at)}" if action.at else "")
    if isinstance(action, TypeText):
        shown = action.text if len(action.text) <= 40 else action.text[:37] + "..."
        return f"type {shown!r}" + (f" at {pt(action.at)}" if action.at else "")
    if isinstance(action, Press):
        return f"press {action.key}" + (f" x{action.count}" if action.count > 1 else "")
    if isinstance(action, Hotkey):
        return "hotkey " + "+".join(action.keys)
    if isinstance(action, Wait):
        return f"wait {action.seconds:g}s"
    if isinstance(action, Done):
        return "done" + (f": {action.answer}" if action.answer else "")
    return "fail" + (f": {action.reason}" if action.reason else "")
