"""Literal arithmetic in model code, folded with ``ast`` and a whitelist, never evaluated.

Kimi-VL's ScreenSpot-Pro prompt asks the model to "convert the normalized coordinates to actual pixel positions",
so answers look like::

    screen_width, screen_height = pyautogui.size()
    x = int(0.879 * screen_width)
    y = round(screen_height * 0.149)
    pyautogui.click(x, y)

``screen_width``/``screen_height`` (and ``pyautogui.size()``) stand for the size of the image the model was shown.
They fold to :class:`ScreenFraction` values, so ``0.879 * screen_width`` is read as the fraction 0.879 of the width
and the one pixel conversion (``actions.coords``, rounding to the nearest pixel) happens later, at the real size;
``int()``/``round()`` of a fraction of the screen therefore keep the fraction. A value that adds pixels to a
fraction of the screen (``0.5 * screen_width + 10``) mixes two frames and is refused.

Allowed: numbers, unary ``+``/``-``, binary ``+ - * / //``, ``int()``, ``float()``, ``round(v[, n])``, tuples and
lists, names assigned earlier in the same code block, and ``pyautogui.size()``. Anything else is not a value.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any, Literal

MAX_MAGNITUDE = 10**9
MAX_ITEMS = 16
SCREEN_SIZE_CALLS = frozenset({("pyautogui", "size"), ("pg", "size"), ("", "size"), ("computer", "size")})


class NotAValue(Exception):
    """The expression is outside the whitelist; the message says what was found."""


@dataclass(frozen=True)
class ScreenFraction:
    """``fraction`` of the shown image's width (axis x) or height (axis y)."""

    fraction: float
    axis: Literal["x", "y"]


def screen_names() -> dict[str, Any]:
    """The names every code block starts with."""
    return {"screen_width": ScreenFraction(1.0, "x"), "screen_height": ScreenFraction(1.0, "y")}


def plain(value: Any) -> Any:
    """The value as the parser's literals: a fraction of the screen becomes its float fraction."""
    if isinstance(value, ScreenFraction):
        return float(value.fraction)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _finite(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise NotAValue("numbers must be finite")
    if abs(value) > MAX_MAGNITUDE:
        raise NotAValue(f"the number {str(value)[:12]}... is far too large")
    return value


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NotAValue(f"{what} must be a number, got {value!r}")
    return value


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    if isinstance(left, ScreenFraction) or isinstance(right, ScreenFraction):
        return _binary_fraction(op, left, right)
    a, b = _number(left, "arithmetic"), _number(right, "arithmetic")
    if isinstance(op, ast.Add):
        return _finite(a + b)
    if isinstance(op, ast.Sub):
        return _finite(a - b)
    if isinstance(op, ast.Mult):
        return _finite(a * b)
    if b == 0:
        raise NotAValue("division by zero")
    return _finite(a / b if isinstance(op, ast.Div) else a // b)


def _binary_fraction(op: ast.operator, left: Any, right: Any) -> ScreenFraction:
    mixed = "it adds pixels to a fraction of the screen; write the point as fractions (0..1) or as pixels"
    if isinstance(left, ScreenFraction) and isinstance(right, ScreenFraction):
        if left.axis != right.axis or not isinstance(op, (ast.Add, ast.Sub)):
            raise NotAValue("arithmetic between the screen's width and height is not a point")
        sign = 1 if isinstance(op, ast.Add) else -1
        return ScreenFraction(_finite(left.fraction + sign * right.fraction), left.axis)
    if isinstance(op, (ast.Add, ast.Sub)):
        raise NotAValue(mixed)
    if isinstance(left, ScreenFraction):
        factor = _number(right, "a factor of the screen size")
        if isinstance(op, ast.Mult):
            return ScreenFraction(_finite(left.fraction * factor), left.axis)
        if factor == 0:
            raise NotAValue("division by zero")
        return ScreenFraction(_finite(left.fraction / factor), left.axis)  # / and // alike: pixel rounding is later
    if not isinstance(op, ast.Mult):
        raise NotAValue("dividing by the screen size is not a point")
    return ScreenFraction(_finite(_number(left, "a factor of the screen size") * right.fraction), right.axis)


def _call_name(func: ast.expr) -> tuple[str, str] | None:
    if isinstance(func, ast.Name):
        return "", func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    return None


def _call(node: ast.Call, names: dict[str, Any], depth: int) -> Any:
    name = _call_name(node.func)
    if name in SCREEN_SIZE_CALLS and not node.args and not node.keywords:
        return [ScreenFraction(1.0, "x"), ScreenFraction(1.0, "y")]
    if name not in (("", "int"), ("", "float"), ("", "round")) or node.keywords:
        shown = ast.unparse(node.func)[:40]
        raise NotAValue(f"{shown}() is not allowed in a value (only int(), float() and round())")
    func = name[1]
    if len(node.args) != 1 and not (func == "round" and len(node.args) == 2):
        raise NotAValue(f"{func}() takes one number here")
    value = fold(node.args[0], names, depth + 1)
    if isinstance(value, ScreenFraction):
        return value  # the pixel rounding happens once, at the real size (actions.coords)
    value = _number(value, f"the argument of {func}()")
    if func == "int":
        return int(value)
    if func == "float":
        return float(value)
    if len(node.args) == 2:
        digits = fold(node.args[1], names, depth + 1)
        if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 12:
            raise NotAValue("round()'s second argument must be a small whole number")
        return round(value, digits)
    return round(value)


def fold(node: ast.AST, names: dict[str, Any], depth: int = 0) -> Any:
    """The value of a whitelisted expression: numbers, strings, bools, None, lists, fractions of the screen."""
    if depth > 12:
        raise NotAValue("the expression is nested too deeply")
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)):
            return _finite(value)
        raise NotAValue(f"{type(value).__name__} literals are not allowed")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = fold(node.operand, names, depth + 1)
        if isinstance(node.op, ast.UAdd):
            return value
        if isinstance(value, ScreenFraction):
            return ScreenFraction(-value.fraction, value.axis)
        return -_number(value, "a signed value")
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv)):
        return _binary(node.op, fold(node.left, names, depth + 1), fold(node.right, names, depth + 1))
    if isinstance(node, ast.Call):
        return _call(node, names, depth)
    if isinstance(node, (ast.List, ast.Tuple)):
        if len(node.elts) > MAX_ITEMS:
            raise NotAValue(f"lists may hold at most {MAX_ITEMS} items")
        return [fold(e, names, depth + 1) for e in node.elts]
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise NotAValue(f"the name {node.id!r} is not a value; write numbers and quoted strings")
    raise NotAValue(f"{type(node).__name__} expressions are not allowed; write numbers and quoted strings")


def assign(stmt: ast.Assign | ast.AnnAssign, names: dict[str, Any]) -> None:
    """Record ``x = <value>`` or ``w, h = <pair>`` in ``names``; raises NotAValue for anything else."""
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    if stmt.value is None or len(targets) != 1:
        raise NotAValue("only one plain assignment per line (x = 0.5 * screen_width) is understood")
    value = fold(stmt.value, names)
    target = targets[0]
    if isinstance(target, ast.Name):
        names[target.id] = value
        return
    if isinstance(target, (ast.Tuple, ast.List)) and all(isinstance(t, ast.Name) for t in target.elts):
        if not isinstance(value, list) or len(value) != len(target.elts):
            raise NotAValue(f"cannot unpack {value!r} into {len(target.elts)} names")
        for t, v in zip(target.elts, value):
            names[t.id] = v  # type: ignore[attr-defined]
        return
    raise NotAValue("only assignments to plain names are understood")
