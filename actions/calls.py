"""Whitelisted calls -> typed actions: literal arguments, pyautogui-style parameter binding, folding.

The table of calls the parser understands lives here; ``actions.parser`` finds the calls in model text.
Arguments must be literals (``ast``), never evaluated.
"""
from __future__ import annotations

import ast
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from actions import arith
from actions.arith import plain
from actions.keys import normalize_key
from actions.types import (
    Action,
    ActionParseError,
    Click,
    Done,
    Drag,
    Fail,
    Hotkey,
    Move,
    Point,
    Press,
    Scroll,
    TypeText,
    Wait,
)

MAX_CODE_STATEMENTS = 50
MAX_ACTIONS = 50
MAX_COORDINATE = 100_000
MAX_SCROLL = 1_000
MAX_LITERAL_ITEMS = 16
MAX_LITERAL_DEPTH = 3
MAX_HOTKEY_KEYS = 6  # keys held at once in one combination

FORMAT_HINT = (
    "Answer with a ## Code: block of pyautogui calls using normalized coordinates, e.g. "
    "pyautogui.click(x=0.5, y=0.5), or computer.wait() / computer.terminate(status=\"success\")."
)

ALLOWED_MODULES = frozenset({"", "pyautogui", "pg", "computer", "time"})
_IGNORED_KEYWORDS = frozenset({"duration", "interval", "tween", "logScreenshot", "_pause", "pause"})
_IMPORTABLE = frozenset({"pyautogui", "time"})


def fail(reason: str) -> ActionParseError:
    return ActionParseError(f"{reason}. {FORMAT_HINT}")


# --------------------------------------------------------------------------------------------------
# Literal arguments


class NotLiteral(Exception):
    pass


def _literal(node: ast.AST, depth: int = 0, names: dict[str, Any] | None = None) -> Any:
    """Value of an argument: numbers, strings, bools, None, small lists of those, and literal arithmetic over
    ``screen_width``/``screen_height`` and names assigned earlier in the block (``actions.arith``)."""
    if isinstance(node, (ast.List, ast.Tuple)):
        if depth >= MAX_LITERAL_DEPTH:
            raise NotLiteral("lists are nested too deeply")
        if len(node.elts) > MAX_LITERAL_ITEMS:
            raise NotLiteral(f"lists may hold at most {MAX_LITERAL_ITEMS} items")
        return [_literal(e, depth + 1, names) for e in node.elts]
    try:
        return plain(arith.fold(node, arith.screen_names() if names is None else names))
    except arith.NotAValue as exc:
        raise NotLiteral(str(exc)) from None


def finite(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise NotLiteral("numbers must be finite")
    if abs(value) > 10**9:
        raise NotLiteral(f"the number {str(value)[:12]}... is far too large")
    return value


# --------------------------------------------------------------------------------------------------
# Argument binding


@dataclass
class Args:
    call: str
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, *names: str, default: Any = None) -> Any:
        for name in names:
            if name in self.values:
                return self.values[name]
        return default

    def has(self, *names: str) -> bool:
        return any(name in self.values for name in names)


def _bind(call: str, node: ast.Call, params: Sequence[str], aliases: dict[str, str] | None = None,
          names: dict[str, Any] | None = None) -> Args:
    """Bind positional and keyword arguments to ``params`` (pyautogui's order); all must be literals."""
    aliases = aliases or {}
    values: dict[str, Any] = {}
    if len(node.args) > len(params):
        raise fail(f"{call}() takes at most {len(params)} positional arguments ({', '.join(params)})")
    try:
        for name, arg in zip(params, node.args):
            if isinstance(arg, ast.Starred):
                raise NotLiteral("*arguments are not allowed")
            values[name] = _literal(arg, names=names)
        for kw in node.keywords:
            if kw.arg is None:
                raise NotLiteral("**arguments are not allowed")
            name = kw.arg if kw.arg in params else aliases.get(kw.arg, kw.arg)
            if kw.arg in _IGNORED_KEYWORDS:
                _literal(kw.value, names=names)
                continue
            if name not in params:
                raise fail(f"{call}() has no argument {kw.arg!r} (it takes {', '.join(params)})")
            if name in values:
                raise fail(f"{call}() got {name!r} twice")
            values[name] = _literal(kw.value, names=names)
    except NotLiteral as exc:
        raise fail(f"in {call}(): {exc}") from None
    return Args(call, values)


def _number(args: Args, value: Any, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"{args.call}(): {what} must be a number, got {value!r}")
    return value


def coordinate(args: Args, value: Any, axis: str) -> int | float:
    number = _number(args, value, axis)
    if number < 0 or number > MAX_COORDINATE:
        raise fail(f"{args.call}(): {axis}={number:g} is not a point on the screenshot (use 0..1, normalized)")
    return number


def point_from(args: Args, value: Any) -> Point:
    """A point from [x, y] or the centre of a box [x1, y1, x2, y2]."""
    if isinstance(value, list) and len(value) == 2:
        return Point(x=coordinate(args, value[0], "x"), y=coordinate(args, value[1], "y"))
    if isinstance(value, list) and len(value) == 4:
        x1, y1, x2, y2 = (coordinate(args, v, a) for v, a in zip(value, ("x1", "y1", "x2", "y2")))
        return _centre(x1, y1, x2, y2)
    raise fail(f"{args.call}(): a point is [x, y] or a box [x1, y1, x2, y2], got {value!r}")


def _centre(x1: float, y1: float, x2: float, y2: float) -> Point:
    def mid(a: float, b: float) -> int | float:
        m = (a + b) / 2
        return int(m) if isinstance(a, int) and isinstance(b, int) and m == int(m) else round(m, 6)

    return Point(x=mid(x1, x2), y=mid(y1, y2))


def _optional_point(args: Args, xname: str = "x", yname: str = "y") -> Point | None:
    x, y = args.get(xname), args.get(yname)
    if isinstance(x, list) and y is None:  # click((x, y)) / click([x1, y1, x2, y2])
        return point_from(args, x)
    if x is None and y is None:
        for name in ("point", "position", "coordinate", "start_box", "box", "bbox"):
            if args.has(name):
                return point_from(args, args.get(name))
        return None
    if x is None or y is None:
        raise fail(f"{args.call}(): give both x and y")
    return Point(x=coordinate(args, x, "x"), y=coordinate(args, y, "y"))


def _required_point(args: Args) -> Point:
    point = _optional_point(args)
    if point is None:
        raise fail(f"{args.call}() needs a point: x and y")
    return point


def _button(args: Args, default: str = "left") -> str:
    button = args.get("button", default=default)
    aliases = {"primary": "left", "secondary": "right", "l": "left", "r": "right", "m": "middle"}
    button = aliases.get(button, button) if isinstance(button, str) else button
    if button not in ("left", "right", "middle"):
        raise fail(f"{args.call}(): button must be 'left', 'right' or 'middle', got {button!r}")
    return button


def _whole(args: Args, value: Any, what: str, low: int, high: int) -> int:
    number = _number(args, value, what)
    if number != int(number) and isinstance(number, float):
        number = round(number)
    number = int(number)
    if not low <= number <= high:
        raise fail(f"{args.call}(): {what}={number} must be between {low} and {high}")
    return number


def _text(args: Args, value: Any, what: str = "text") -> str:
    if not isinstance(value, str):
        raise fail(f"{args.call}(): {what} must be a quoted string, got {value!r}")
    return value


def _keys(args: Args, value: Any) -> list[str]:
    """Key names from 'ctrl', 'ctrl+c' or ['ctrl', 'c'], normalized."""
    if isinstance(value, str):
        if len(value) > 1 and "+" in value:  # 'ctrl+c', 'ctrl++'
            head, plus_key = (value[:-2], ["+"]) if value.endswith("++") else (value, [])
            parts = [p.strip() for p in head.split("+")] + plus_key
            if any(not p for p in parts):
                raise fail(f"{args.call}(): {value!r} is not a key combination like 'ctrl+c'")
            return [normalize_key(p) for p in parts]
        return [normalize_key(value)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [k for v in value for k in _keys(args, v)]
    raise fail(f"{args.call}(): keys must be quoted key names like 'enter' or ['ctrl', 'c'], got {value!r}")


# --------------------------------------------------------------------------------------------------
# Calls -> actions (pyautogui parameter order)

_Handler = Callable[[Args], list[Action]]


def _click(count: int = 1, button: str | None = None) -> tuple[Sequence[str], _Handler]:
    params = ("x", "y", "clicks", "interval", "button", "duration", "point", "start_box", "position", "coordinate")
    if count != 1 or button is not None:
        params = ("x", "y", "interval", "button", "duration", "point", "start_box", "position", "coordinate")

    def handler(args: Args) -> list[Action]:
        clicks = _whole(args, args.get("clicks", default=count), "clicks", 1, 3)
        return [Click(at=_optional_point(args), button=button or _button(args), count=clicks)]

    return params, handler


def _move(args: Args) -> list[Action]:
    return [Move(at=_required_point(args))]


def _drag_to(args: Args) -> list[Action]:
    return [Drag(end=_required_point(args), button=_button(args))]


def _drag_between(args: Args) -> list[Action]:
    start, end = args.get("start", "start_box", "from_"), args.get("end", "end_box", "to")
    if start is None or end is None:
        raise fail(f"{args.call}() needs start=[x, y] and end=[x, y] (absolute points, not offsets)")
    return [Drag(start=point_from(args, start), end=point_from(args, end), button=_button(args))]


def _scroll(vertical: bool) -> _Handler:
    def handler(args: Args) -> list[Action]:
        amount = args.get("clicks", "amount")
        direction = args.get("direction")
        if amount is None and direction is None:
            raise fail(f"{args.call}() needs the number of clicks, e.g. {args.call}(-5) (negative = down)")
        clicks = _whole(args, amount if amount is not None else 5, "clicks", -MAX_SCROLL, MAX_SCROLL)
        horizontal = not vertical
        if direction is not None:
            signs = {"up": (1, False), "down": (-1, False), "left": (-1, True), "right": (1, True)}
            if not isinstance(direction, str) or direction not in signs:
                raise fail(f"{args.call}(): direction must be up, down, left or right, got {direction!r}")
            sign, horizontal = signs[direction]
            clicks = sign * abs(clicks)
        at = _optional_point(args)
        return [Scroll(dx=clicks, at=at) if horizontal else Scroll(dy=clicks, at=at)]

    return handler


def _write(args: Args) -> list[Action]:
    message = args.get("message")
    if isinstance(message, list):  # typewrite(['a', 'enter']): a list of key presses
        return [Press(key=k) for k in _keys(args, message)]
    return [TypeText(text=_text(args, message, "message"), at=_optional_point(args))]


def _press(args: Args) -> list[Action]:
    if not args.has("keys"):
        raise fail(f"{args.call}() needs a key, e.g. {args.call}('enter')")
    keys = _keys(args, args.get("keys"))
    presses = _whole(args, args.get("presses", default=1), "presses", 1, 100)
    if isinstance(args.get("keys"), str) and len(keys) > 1:  # press('ctrl+c')
        if len(keys) > MAX_HOTKEY_KEYS:
            raise fail(f"{args.call}({args.get('keys')[:40]!r}) holds {len(keys)} keys at once; at most "
                       f"{MAX_HOTKEY_KEYS}, e.g. press('ctrl+shift+t')")
        return [Hotkey(keys=keys) for _ in range(presses)]
    return [Press(key=k, count=presses) for k in keys]


def _hotkey_node(call: str, node: ast.Call) -> list[Action]:
    if node.keywords and any(kw.arg not in _IGNORED_KEYWORDS and kw.arg != "keys" for kw in node.keywords):
        raise fail(f"{call}() takes key names only, e.g. {call}('ctrl', 'c')")
    args = Args(call)
    if len(node.args) > MAX_HOTKEY_KEYS:
        raise fail(f"{call}(): at most {MAX_HOTKEY_KEYS} keys at once")
    try:
        values = [_literal(a) for a in node.args] + [_literal(k.value) for k in node.keywords if k.arg == "keys"]
    except NotLiteral as exc:
        raise fail(f"in {call}(): {exc}") from None
    keys = [k for v in values for k in _keys(args, v)]
    if not keys:
        raise fail(f"{call}() needs at least one key, e.g. {call}('ctrl', 'c')")
    if len(keys) > MAX_HOTKEY_KEYS:
        raise fail(f"{call}(): at most {MAX_HOTKEY_KEYS} keys at once")
    return [Hotkey(keys=keys)]


def _wait(args: Args) -> list[Action]:
    seconds = args.get("seconds", "secs", "time")
    if seconds is None:
        return [Wait()]
    seconds = _number(args, seconds, "seconds")
    if not 0 <= seconds <= 60:
        raise fail(f"{args.call}(): wait between 0 and 60 seconds, not {seconds:g}")
    return [Wait(seconds=seconds)]


def _terminate(args: Args) -> list[Action]:
    status = args.get("status", default="success")
    answer = args.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    if status in ("success", "succeeded", "done", "completed"):
        return [Done(answer=answer)]
    if status in ("failure", "fail", "failed", "infeasible"):
        return [Fail(reason=answer)]
    raise fail(f"{args.call}(): status must be 'success' or 'failure', got {status!r}")


def _done(args: Args) -> list[Action]:
    answer = args.get("answer", "content")
    return [Done(answer=None if answer is None else str(answer))]


def _fail_call(args: Args) -> list[Action]:
    reason = args.get("reason", "content")
    return [Fail(reason=None if reason is None else str(reason))]


_POINT_PARAMS = ("x", "y", "duration", "point", "position", "coordinate")
_CALLS: dict[str, tuple[Sequence[str], _Handler]] = {
    "click": _click(),
    "leftClick": _click(),
    "left_click": _click(),
    "doubleClick": _click(count=2),
    "double_click": _click(count=2),
    "tripleClick": _click(count=3),
    "triple_click": _click(count=3),
    "rightClick": _click(button="right"),
    "right_click": _click(button="right"),
    "middleClick": _click(button="middle"),
    "middle_click": _click(button="middle"),
    "moveTo": (_POINT_PARAMS, _move),
    "move": (_POINT_PARAMS, _move),
    "move_to": (_POINT_PARAMS, _move),
    "hover": (_POINT_PARAMS, _move),
    "dragTo": (("x", "y", "duration", "button", "point", "position", "coordinate"), _drag_to),
    "drag_to": (("x", "y", "duration", "button", "point", "position", "coordinate"), _drag_to),
    "drag": (("start", "end", "button", "start_box", "end_box"), _drag_between),
    "scroll": (("clicks", "x", "y", "amount", "direction", "point", "position", "coordinate"), _scroll(True)),
    "vscroll": (("clicks", "x", "y", "amount", "direction", "point", "position"), _scroll(True)),
    "hscroll": (("clicks", "x", "y", "amount", "direction", "point", "position"), _scroll(False)),
    "write": (("message", "interval", "x", "y", "point"), _write),
    "typewrite": (("message", "interval", "x", "y", "point"), _write),
    "type": (("message", "x", "y", "point"), _write),
    "type_text": (("message", "x", "y", "point"), _write),
    "press": (("keys", "presses", "interval"), _press),
    "key": (("keys", "presses", "interval"), _press),
    "wait": (("seconds",), _wait),
    "sleep": (("seconds",), _wait),
    "terminate": (("status", "answer"), _terminate),
    "done": (("answer", "content"), _done),
    "finished": (("content", "answer"), _done),
    "fail": (("reason", "content"), _fail_call),
    "infeasible": (("reason", "content"), _fail_call),
}
_KEYWORD_ALIASES = {
    "text": "message", "content": "message", "string": "message", "msg": "message",
    "key": "keys", "secs": "seconds", "time": "seconds", "from": "start", "to": "end",
}
_HOLD_CALLS = frozenset({"keyDown", "keyUp", "key_down", "key_up"})
_UNSUPPORTED = {
    "moveRel": "relative moves are not supported; use pyautogui.moveTo(x, y) with a point on the screenshot",
    "move_rel": "relative moves are not supported; use pyautogui.moveTo(x, y)",
    "dragRel": "relative drags are not supported; use pyautogui.dragTo(x, y) with a point on the screenshot",
    "mouseDown": "mouseDown/mouseUp are not supported; use pyautogui.moveTo(x1, y1) then pyautogui.dragTo(x2, y2)",
    "mouseUp": "mouseDown/mouseUp are not supported; use pyautogui.moveTo(x1, y1) then pyautogui.dragTo(x2, y2)",
    "screenshot": "screenshots are taken for you after every action; choose an action instead",
}
KNOWN_CALL_NAMES = frozenset(_CALLS) | _HOLD_CALLS | frozenset(_UNSUPPORTED) | {"hotkey"}


@dataclass
class Step:
    """One parsed call: actions, or a key held/released (folded into hotkeys afterwards)."""

    actions: list[Action] = field(default_factory=list)
    key_down: str | None = None
    key_up: str | None = None


def _call_name(func: ast.expr) -> tuple[str, str]:
    """('module', 'name') of the called function; only plain names and module.name are accepted."""
    if isinstance(func, ast.Name):
        return "", func.id
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    raise fail("only plain calls like pyautogui.click(...) are allowed, not chained attributes or calls")


def convert_call(node: ast.Call, names: dict[str, Any] | None = None) -> Step:
    module, name = _call_name(node.func)
    shown = f"{module}.{name}" if module else name
    if module not in ALLOWED_MODULES:
        raise fail(f"{shown}() is not an allowed action (only pyautogui.* and computer.* calls are)")
    if module == "time" and name != "sleep":
        raise fail(f"{shown}() is not an allowed action")
    if name in _UNSUPPORTED:
        raise fail(_UNSUPPORTED[name])
    if name == "hotkey":
        return Step(actions=_hotkey_node(shown, node))
    if name in _HOLD_CALLS:
        args = _bind(shown, node, ("keys",), {"key": "keys"})
        if not args.has("keys"):
            raise fail(f"{shown}() needs a key name")
        key = normalize_key(_text(args, args.get("keys"), "key"))
        return Step(key_down=key) if name in ("keyDown", "key_down") else Step(key_up=key)
    if name not in _CALLS:
        raise fail(f"{shown}() is not an allowed action")
    params, handler = _CALLS[name]
    args = _bind(shown, node, params, _KEYWORD_ALIASES, names)
    try:
        return Step(actions=handler(args))
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise fail(f"{shown}(): {problem.get('loc', ('',))[-1]} {problem.get('msg', 'is invalid')}") from None


WORDS: dict[str, Callable[[], Action]] = {"WAIT": Wait, "DONE": Done, "FAIL": Fail}


def convert_statement(stmt: ast.stmt, names: dict[str, Any] | None = None) -> Step | None:
    """A statement of a code block: a call, an import of pyautogui/time (ignored), WAIT/DONE/FAIL, or an
    assignment of literal arithmetic (``x = int(0.3 * screen_width)``), recorded in ``names`` for later calls."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module or ""]
        if all(n in _IMPORTABLE for n in names):
            return None
        raise fail(f"importing {', '.join(names)} is not allowed")
    if isinstance(stmt, ast.Pass):
        return None
    if isinstance(stmt, ast.AnnAssign) and stmt.value is None and isinstance(stmt.annotation, ast.Call):
        return convert_call(stmt.annotation, names)  # "Toolcall: click(x=0.3, y=0.5)" parses as an annotation
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and names is not None:
        try:
            arith.assign(stmt, names)
        except arith.NotAValue as exc:
            raise fail(f"in an assignment: {exc}") from None
        return None
    if isinstance(stmt, ast.Expr):
        value = stmt.value
        if isinstance(value, ast.Call):
            return convert_call(value, names)
        if isinstance(value, ast.Name) and value.id.upper() in WORDS:
            return Step(actions=[WORDS[value.id.upper()]()])
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return None  # a docstring-like comment
    kind = type(stmt).__name__
    raise fail(f"{kind} statements are not actions; the code may only hold calls like pyautogui.click(x, y)")


def fold(steps: list[Step]) -> list[Action]:
    """Fold keyDown/keyUp into hotkeys and moveTo + dragTo into one drag."""
    actions: list[Action] = []
    held: list[str] = []
    pending = False  # keys held and not yet used in a combination
    for step in steps:
        if step.key_down is not None:
            if step.key_down not in held:
                held.append(step.key_down)
            if len(held) > MAX_HOTKEY_KEYS:
                raise fail(f"{len(held)} keys are held down at once; at most {MAX_HOTKEY_KEYS}")
            pending = True
            continue
        if step.key_up is not None:
            if step.key_up not in held:
                raise fail(f"keyUp({step.key_up!r}) without a keyDown({step.key_up!r}) before it")
            if pending:
                actions.append(Press(key=held[0]) if len(held) == 1 else Hotkey(keys=list(held)))
                pending = False
            held.remove(step.key_up)
            continue
        for action in step.actions:
            if held:
                if isinstance(action, Press):
                    if len(held) + 1 > MAX_HOTKEY_KEYS:
                        raise fail(f"keys {held} are held while pressing {action.key!r}: at most {MAX_HOTKEY_KEYS} "
                                   "keys at once")
                    actions.extend(Hotkey(keys=[*held, action.key]) for _ in range(action.count))
                    pending = False
                    continue
                raise fail(f"keys {held} are held down during a {action.type}; "
                            "use pyautogui.hotkey(...) for key combinations")
            if isinstance(action, Drag) and action.start is None and actions and isinstance(actions[-1], Move):
                action = action.model_copy(update={"start": actions.pop().at})
            actions.append(action)
    if held and pending:
        actions.append(Press(key=held[0]) if len(held) == 1 else Hotkey(keys=list(held)))
    return actions
