"""Typed action (screen pixels) -> pyautogui code for harnesses that run code strings (OSWorld).

The code is generated from the typed values only: numbers are formatted from validated ints/floats, buttons and
key names come from closed sets. Text chosen by the model never appears in the code as a Python literal: it
travels base64-encoded (alphabet ``A-Za-z0-9+/=``) and the generated code decodes it. Quoting alone is not
enough: OSWorld's ``DesktopEnv.step`` rewrites every ``pyautogui.typewrite("...")`` / ``press('<')`` pattern it
finds anywhere in the code string, string literals included, and decodes it with ``unicode_escape``
(REFERENCE.md section 3); a base64 string contains no quote, backslash, parenthesis or dot it could match.

``computer.wait()`` becomes ``time.sleep(N)`` code run in the VM, so it waits N seconds in every runner (OSWorld
turns the word ``WAIT`` into a sleep of ``--sleep_after_execution``, 0 s by default).
"""
from __future__ import annotations

import base64
import math

from actions.keys import normalize_key
from actions.types import Action, Click, Done, Drag, Fail, Hotkey, Move, Point, Press, Scroll, TypeText, Wait

DRAG_DURATION = 0.5
_CLICK_FUNCTIONS = {(1, "left"): "click", (2, "left"): "doubleClick", (3, "left"): "tripleClick",
                    (1, "right"): "rightClick", (1, "middle"): "middleClick"}
_BUTTONS = ("left", "right", "middle")


def needs_clipboard(text: str) -> bool:
    """Text pyautogui.write cannot type right on X11: non-ASCII (dropped) and '<' (typed as '>')."""
    return any(not (" " <= ch <= "~" or ch in "\n\t") or ch == "<" for ch in text)


def _number(value: int | float) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite coordinate: {value!r}")
    return repr(int(value)) if isinstance(value, int) or value == int(value) else repr(float(value))


def _xy(point: Point | None) -> list[str]:
    return [] if point is None else [f"x={_number(point.x)}", f"y={_number(point.y)}"]


def _button(button: str) -> str:
    if button not in _BUTTONS:
        raise ValueError(f"unknown mouse button {button!r}")
    return repr(button)


def _call(name: str, args: list[str]) -> str:
    return f"pyautogui.{name}({', '.join(args)})"


def encode_text(text: str) -> str:
    """``text`` as base64 of its UTF-8 bytes (lone surrogates kept with ``surrogatepass``)."""
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


def _bytes_expr(text: str) -> str:
    return f"base64.b64decode('{encode_text(text)}')"


def _text_expr(text: str) -> str:
    return f"{_bytes_expr(text)}.decode('utf-8', 'surrogatepass')"


PASTE_WAIT_POLLS = 100  # x 20 ms: how long generated code waits for xclip to serve the text before pasting anyway


def _paste_code(text: str) -> str:
    # xclip keeps its inherited pipes open: its output goes to DEVNULL or run() never returns. xclip forks and only the
    # child takes the selection, after run() returns: a paste at once could find no owner yet (the text was lost under
    # load), so the code reads the clipboard back until it serves the text. Statements only, no indented block: some
    # runners join code lines.
    return (
        "import base64, subprocess, time\n"
        f"_kimi_cua_text = {_bytes_expr(text)}\n"
        "subprocess.run(['xclip', '-selection', 'clipboard'], input=_kimi_cua_text, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=10)\n"
        "next((True for _ in range(" + str(PASTE_WAIT_POLLS) + ") if subprocess.run(['xclip', '-selection', "
        "'clipboard', '-o', '-t', 'UTF8_STRING'], capture_output=True, timeout=5).stdout == _kimi_cua_text "
        "or time.sleep(0.02)), None)\n"
        "pyautogui.hotkey('ctrl', 'v')"
    )


def _write_code(text: str) -> str:
    return f"import base64\npyautogui.write({_text_expr(text)})"


def to_pyautogui_code(action: Action) -> str:
    """Python code (``import pyautogui`` assumed) performing ``action``, whose points are screen pixels."""
    if isinstance(action, Click):
        name = _CLICK_FUNCTIONS.get((action.count, action.button))
        if name is not None:
            return _call(name, _xy(action.at))
        return _call("click", [*_xy(action.at), f"clicks={int(action.count)}", f"button={_button(action.button)}"])
    if isinstance(action, Move):
        return _call("moveTo", _xy(action.at))
    if isinstance(action, Drag):
        lines = [_call("moveTo", _xy(action.start))] if action.start is not None else []
        button = [] if action.button == "left" else [f"button={_button(action.button)}"]
        lines.append(_call("dragTo", [*_xy(action.end), f"duration={DRAG_DURATION}", *button]))
        return "\n".join(lines)
    if isinstance(action, Scroll):
        lines = []
        if action.dy or not action.dx:
            lines.append(_call("scroll", [repr(int(action.dy)), *_xy(action.at)]))
        if action.dx:
            lines.append(_call("hscroll", [repr(int(action.dx)), *_xy(action.at)]))
        return "\n".join(lines)
    if isinstance(action, TypeText):
        lines = [_call("click", _xy(action.at))] if action.at is not None else []
        lines.append(_paste_code(action.text) if needs_clipboard(action.text) else _write_code(action.text))
        return "\n".join(lines)
    if isinstance(action, Press):
        key = normalize_key(action.key)
        if key == "<":  # pyautogui presses the pc105 LSGT key for '<', which types '>'
            return "\n".join([_call("hotkey", ["'shift'", "','"])] * int(action.count))
        count = [] if action.count == 1 else [f"presses={int(action.count)}"]
        return _call("press", [repr(key), *count])
    if isinstance(action, Hotkey):
        return _call("hotkey", [repr(normalize_key(k)) for k in action.keys])
    if isinstance(action, Wait):
        return f"time.sleep({_number(action.seconds)})"
    if isinstance(action, Done):
        return "DONE"
    if isinstance(action, Fail):
        return "FAIL"
    raise ValueError(f"no code for action type {type(action).__name__}")


def osworld_action(action: Action) -> str:
    """One OSWorld ``pyautogui``-space action: a code string, or DONE / FAIL. A wait is ``time.sleep(N)`` code,
    never the word WAIT (which sleeps ``--sleep_after_execution``, 0 s by default in OSWorld's runners)."""
    if isinstance(action, Done):
        return "DONE"
    if isinstance(action, Fail):
        return "FAIL"
    return to_pyautogui_code(action)
