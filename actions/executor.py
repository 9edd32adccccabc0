"""Perform typed actions (already in screen pixels) with pyautogui on the current X display.

pyautogui is imported on first use (importing it without a DISPLAY crashes). ``PAUSE`` is 0: callers wait on
real screen state, not on fixed sleeps. The fail-safe stays on: a pointer in a screen corner stops execution
with ``FailSafeTriggered``. Text that ``pyautogui.write`` gets wrong on X11 (non-ASCII is dropped, '<' comes
out as '>') is pasted instead: this process owns the selection (``actions.clipboard``, confirmed before the
paste), pastes with the keys the focused program honours (terminals: shift+insert, which takes PRIMARY;
others: ctrl+v), and reports the action as failed when no program took the text.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from actions.clipboard import ClipboardError, SelectionOwner, is_terminal, window_class
from actions.codegen import needs_clipboard
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
    action_points,
)


class ExecutionError(RuntimeError):
    """An action that could not be performed; the message says why and what to do."""


class FailSafeTriggered(ExecutionError):
    """pyautogui's fail-safe fired: the pointer was moved into a screen corner."""


class PyAutoGUIExecutor:
    """``PyAutoGUIExecutor().execute(action)`` for actions whose points are screen pixels (ints)."""

    def __init__(
        self,
        *,
        paste_keys: Sequence[str] | None = None,
        paste_timeout: float = 3.0,
        drag_duration: float = 0.3,
        drag_steps: int = 10,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``paste_keys`` None: shift+insert for terminals, ctrl+v elsewhere. ``paste_timeout``: how long a
        program may take to ask for pasted text before the typed action is reported as not done."""
        self.paste_keys = tuple(paste_keys) if paste_keys else None
        self.paste_timeout = paste_timeout
        self.drag_duration = drag_duration
        self.drag_steps = max(1, drag_steps)
        self._sleep = sleep
        self._pg: ModuleType | None = None
        self._selection: SelectionOwner | None = None
        self._xq: Any = None  # an X connection for questions about windows (this thread only)

    def _pyautogui(self) -> ModuleType:
        if self._pg is None:
            try:
                import pyautogui
            except KeyError as exc:  # mouseinfo reads os.environ['DISPLAY'] at import
                raise ExecutionError(f"no X display to act on ({exc} is not set): set DISPLAY or use --env virtual") from None
            except Exception as exc:
                raise ExecutionError(f"pyautogui could not start ({type(exc).__name__}: {exc}); "
                                     "check DISPLAY and that python-xlib is installed") from None
            pyautogui.PAUSE = 0
            pyautogui.FAILSAFE = True
            self._pg = pyautogui
            _release_held_inputs(pyautogui)
        return self._pg

    def execute(self, action: Action) -> None:
        """Perform ``action``. Raises ExecutionError (FailSafeTriggered for the corner fail-safe)."""
        if isinstance(action, Wait):
            self._sleep(action.seconds)
            return
        if isinstance(action, (Done, Fail)):
            return
        pg = self._pyautogui()
        self._check_points(pg, action)
        try:
            self._perform(pg, action)
        except pg.FailSafeException:
            raise FailSafeTriggered(
                "pyautogui's fail-safe fired because the pointer is in a screen corner; "
                "move the pointer away from the corner to go on (the fail-safe stays on on purpose)"
            ) from None
        except (ExecutionError, ActionParseError):
            raise
        except Exception as exc:
            raise ExecutionError(f"{action.type} failed: {type(exc).__name__}: {exc}") from None

    def _check_points(self, pg: ModuleType, action: Action) -> None:
        for point in action_points(action):
            if not (isinstance(point.x, int) and isinstance(point.y, int)):
                raise ExecutionError(
                    f"{action.type} at ({point.x}, {point.y}) is not in screen pixels; "
                    "convert it with actions.coords.to_screen before executing"
                )
            if not pg.onScreen(point.x, point.y):
                width, height = pg.size()
                raise ExecutionError(f"{action.type} at ({point.x}, {point.y}) is outside the screen "
                                     f"(0..{width - 1}, 0..{height - 1})")

    def _perform(self, pg: ModuleType, action: Action) -> None:
        if isinstance(action, Click):
            xy = (action.at.x, action.at.y) if action.at else (None, None)
            pg.click(*xy, clicks=action.count, interval=0.0, button=action.button)
        elif isinstance(action, Move):
            pg.moveTo(action.at.x, action.at.y)
        elif isinstance(action, Drag):
            self._drag(pg, action)
        elif isinstance(action, Scroll):
            if action.at is not None:
                pg.moveTo(action.at.x, action.at.y)
            if action.dy:
                pg.scroll(action.dy)
            if action.dx:
                pg.hscroll(action.dx)
        elif isinstance(action, TypeText):
            if action.at is not None:
                pg.click(action.at.x, action.at.y)
            self._type(pg, action.text, at_pointer=action.at is not None)
        elif isinstance(action, Press):
            key = self._key(pg, action.key)
            for _ in range(action.count):
                if key == "<":  # pyautogui maps '<' to the pc105 LSGT key, which types '>'
                    pg.hotkey("shift", ",")
                else:
                    pg.press(key)
        elif isinstance(action, Hotkey):
            pg.hotkey(*[self._key(pg, k) for k in action.keys])
        else:
            raise ExecutionError(f"the executor cannot perform {type(action).__name__}")

    def _drag(self, pg: ModuleType, action: Drag) -> None:
        start = action.start or Point(x=pg.position()[0], y=pg.position()[1])
        pg.moveTo(start.x, start.y)
        pg.mouseDown(button=action.button)
        try:
            for i in range(1, self.drag_steps + 1):
                t = i / self.drag_steps
                pg.moveTo(round(start.x + (action.end.x - start.x) * t), round(start.y + (action.end.y - start.y) * t))
                self._sleep(self.drag_duration / self.drag_steps)
        finally:
            pg.mouseUp(button=action.button)

    def _key(self, pg: ModuleType, name: str) -> str:
        try:
            key = normalize_key(name)
        except ActionParseError as exc:
            raise ExecutionError(str(exc)) from None
        mapping = getattr(pg.platformModule, "keyboardMapping", None)
        if mapping is not None and key in mapping and not mapping[key]:  # None or keycode 0
            raise ExecutionError(f"the key {key!r} has no keycode in this X server's keymap, so it cannot be pressed")
        return key

    def _type(self, pg: ModuleType, text: str, *, at_pointer: bool = False) -> None:
        if not needs_clipboard(text):
            pg.write(text)
            return
        target = self.focused_class(at_pointer=at_pointer)
        keys = self.paste_keys or (("shift", "insert") if is_terminal(target) else ("ctrl", "v"))
        # shift+insert pastes PRIMARY in xterm and VTE terminals; other programs take CLIPBOARD (owning PRIMARY
        # there would clear their own selection, and with it a pending replace-the-selection).
        selections = ("PRIMARY", "CLIPBOARD") if keys == ("shift", "insert") else ("CLIPBOARD",)
        try:
            owner = self._selection_owner()
            mark = owner.offer(text, selections)  # returns once the X server confirms the new owner
        except ClipboardError as exc:
            raise ExecutionError(f"could not put {text[:20]!r} on the clipboard: {exc}") from None
        pg.hotkey(*keys)
        if not owner.wait_taken(mark, self.paste_timeout):
            shown = f"{target[1]} window" if target else "focused window"
            raise ExecutionError(
                f"the text {text[:30]!r} was not typed: the {shown} did not take the paste ({'+'.join(keys)}) "
                f"within {self.paste_timeout:g} s; click into a text field first"
            )

    def focused_class(self, *, at_pointer: bool = False) -> tuple[str, str] | None:
        """WM_CLASS of the window that gets typed text, None when unknown."""
        try:
            if self._xq is None:
                from Xlib import display as xdisplay

                self._xq = xdisplay.Display()
            return window_class(self._xq, at_pointer=at_pointer)
        except Exception:  # noqa: BLE001 - no answer about the window: treat it as an ordinary program
            self._xq = None
            return None

    def _selection_owner(self) -> SelectionOwner:
        if self._selection is None:
            try:
                self._selection = SelectionOwner()
            except Exception as exc:  # noqa: BLE001 - no X connection for the clipboard
                raise ClipboardError(f"no X connection for the clipboard ({type(exc).__name__}: {exc})") from None
        return self._selection

    def close(self) -> None:
        """Let go of the X connections of the clipboard and window questions (pasted text stops being offered)."""
        if self._selection is not None:
            self._selection.close()
            self._selection = None
        if self._xq is not None:
            try:
                self._xq.close()
            except Exception:  # noqa: BLE001
                pass
            self._xq = None


def _release_held_inputs(pg: ModuleType) -> None:
    """Release keys and buttons a killed run left pressed (killed between a key's press and its release, a held
    key would repeat into the focused program, a held button would turn the next click into a drag).

    Releases go through XTest, whose device the X server only releases keys it holds: a key the person holds
    on the real keyboard is not touched."""
    try:
        from Xlib import X
        from Xlib.ext import xtest

        display = pg.platformModule._display
        keymap = display.query_keymap()
        for index, byte in enumerate(keymap):
            for bit in range(8):
                if byte & (1 << bit):
                    xtest.fake_input(display, X.KeyRelease, index * 8 + bit)
        mask = display.screen().root.query_pointer().mask
        for button, flag in ((1, X.Button1Mask), (2, X.Button2Mask), (3, X.Button3Mask)):
            if mask & flag:
                xtest.fake_input(display, X.ButtonRelease, button)
        display.sync()
    except Exception:  # noqa: BLE001 - best effort: no X extension, another platform
        pass
