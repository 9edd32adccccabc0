"""Text on X selections served from this process, and the focused window's class (python-xlib).

Pasting through ``xclip`` raced: xclip forks and only the child takes the selection, so a paste right after it
could get the previous clipboard (1 in 200 on Xvfb). Here the selection is owned by this process itself: one
thread with its own X connection takes ownership, confirms it with a round trip before ``offer`` returns,
and answers every request, counting those that took the text. So a caller knows the selection holds the new
text before pasting, and afterwards whether the focused program asked for it at all (xterm ignores ctrl+v:
no request comes, and the typed action is reported as not done).
"""
from __future__ import annotations

import os
import select
import threading
from typing import Any

TEXT_TARGETS = ("UTF8_STRING", "text/plain;charset=utf-8", "TEXT", "STRING", "text/plain")
# Window classes (WM_CLASS instance or class, lower case) of terminals: they paste with shift+insert, which
# takes the PRIMARY selection in xterm and VTE terminals, and ignore ctrl+v (xterm: readline's quoted-insert).
TERMINAL_CLASSES = frozenset({
    "xterm", "uxterm", "urxvt", "rxvt", "rxvt-unicode", "gnome-terminal", "gnome-terminal-server", "konsole",
    "xfce4-terminal", "mate-terminal", "lxterminal", "qterminal", "terminator", "tilix", "alacritty", "kitty",
    "st", "st-256color", "sakura", "guake", "tilda", "terminology", "wezterm", "org.wezfurlong.wezterm", "foot",
    "eterm", "aterm", "kgx", "yakuake", "cool-retro-term", "x-terminal-emulator", "org.gnome.console",
    "io.elementary.terminal", "deepin-terminal", "hyper",
})


class ClipboardError(RuntimeError):
    """The selection could not be taken or served; the message says why."""


def is_terminal(window_class: tuple[str, str] | None) -> bool:
    if not window_class:
        return False
    names = {n.lower() for n in window_class if n}
    return bool(names & TERMINAL_CLASSES) or any(n.endswith("terminal") for n in names)


class SelectionOwner:
    """``owner.offer(text, ("CLIPBOARD",))`` -> a mark; ``owner.wait_taken(mark, 2.0)`` -> did a program take it.

    All X requests of its connection are made by its own thread; callers only exchange state under a lock.
    """

    def __init__(self, display: str | None = None) -> None:
        from Xlib import X
        from Xlib import display as xdisplay

        self._X = X
        self._d = xdisplay.Display(display)
        self._d.set_error_handler(lambda *args: None)  # a requestor that vanished mid-request is not our error
        self._win = self._d.screen().root.create_window(-10, -10, 1, 1, 0, X.CopyFromParent)
        self._atoms: dict[str, int] = {}
        self._names: dict[int, str] = {}
        for name in ("CLIPBOARD", "PRIMARY", "TARGETS", "TIMESTAMP", "MULTIPLE", "ATOM", *TEXT_TARGETS):
            atom = self._d.intern_atom(name)
            self._atoms[name], self._names[atom] = atom, name
        self._d.flush()
        # the biggest property one request can carry (4-byte units), less room for the request header
        self.max_bytes = max(4096, self._d.display.info.max_request_length * 4 - 64)
        self._cond = threading.Condition()
        self._data = b""
        self._owned: set[str] = set()
        self._wanted: tuple[int, bytes, tuple[str, ...]] | None = None
        self._asked = self._applied = 0
        self._taken = 0  # text requests answered with the text
        self._failure: str | None = None
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="x-selection", daemon=True)
        self._thread.start()

    # ---- callers ----------------------------------------------------------------------------------
    def offer(self, text: str, selections: tuple[str, ...] = ("CLIPBOARD",), timeout: float = 2.0) -> int:
        """Own ``selections`` with ``text``; returns once the X server confirms it (a mark for ``wait_taken``)."""
        data = text.encode("utf-8")
        if len(data) > self.max_bytes:
            raise ClipboardError(f"the text is {len(data):,} bytes; at most {self.max_bytes:,} can be pasted at once")
        with self._cond:
            if self._closed:
                raise ClipboardError(self._failure or "the selection owner was closed")
            self._asked += 1
            generation = self._asked
            self._wanted = (generation, data, tuple(selections))
            os.write(self._wake_w, b"!")
            if not self._cond.wait_for(lambda: self._applied >= generation or self._closed, timeout):
                raise ClipboardError(f"the X server did not confirm the selection within {timeout:g} s")
            if self._closed or self._failure:
                raise ClipboardError(self._failure or "the selection owner was closed")
            return self._taken

    def wait_taken(self, mark: int, timeout: float) -> bool:
        """Whether some program took the text (a text request answered) after ``mark``, waiting up to ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: self._taken > mark or self._closed, timeout) and self._taken > mark

    def owns(self, selection: str) -> bool:
        with self._cond:
            return selection in self._owned

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        os.write(self._wake_w, b"!")
        self._thread.join(timeout=2)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self._d.close()
        except Exception:  # noqa: BLE001 - the server may be gone already
            pass

    # ---- the serving thread -------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._closed:
                while self._d.pending_events():
                    self._handle(self._d.next_event())
                ready, _, _ = select.select([self._d.fileno(), self._wake_r], [], [], 1.0)
                if self._wake_r in ready:
                    os.read(self._wake_r, 64)
                    self._take()
        except Exception as exc:  # noqa: BLE001 - the X connection is gone: every later offer says so
            with self._cond:
                self._failure = f"the X connection of the clipboard closed ({type(exc).__name__}: {exc})"
                self._closed = True
                self._cond.notify_all()

    def _take(self) -> None:
        with self._cond:
            wanted, self._wanted = self._wanted, None
        if wanted is None:
            return
        generation, data, selections = wanted
        X = self._X
        failure = None
        self._data = data
        for name in selections:
            self._win.set_selection_owner(self._atoms[name], X.CurrentTime)
        owned = {name for name in selections
                 if getattr(self._d.get_selection_owner(self._atoms[name]), "id", 0) == self._win.id}
        if owned != set(selections):
            failure = f"another program kept the {', '.join(sorted(set(selections) - owned))} selection"
        with self._cond:
            self._owned = owned
            self._failure = failure
            self._applied = generation
            self._cond.notify_all()

    def _handle(self, event: Any) -> None:
        X = self._X
        if event.type == X.SelectionClear:
            with self._cond:
                self._owned.discard(self._names.get(event.atom, ""))
            return
        if event.type != X.SelectionRequest:
            return
        from Xlib import Xatom
        from Xlib.protocol import event as xevent

        selection = self._names.get(event.selection, "")
        target = self._names.get(event.target, "")
        prop = event.property or event.target  # obsolete requestors give no property
        answered = False
        took_text = False
        with self._cond:
            owned = selection in self._owned
        try:
            if owned and target == "TARGETS":
                offered = [self._atoms[n] for n in ("TARGETS", *TEXT_TARGETS)]
                event.requestor.change_property(prop, Xatom.ATOM, 32, offered)
                answered = True
            elif owned and target in TEXT_TARGETS:
                data = self._data
                kind = event.target
                if target in ("STRING", "text/plain"):
                    try:
                        data = data.decode("utf-8").encode("latin-1")  # ICCCM: STRING is Latin-1
                    except UnicodeEncodeError:
                        data = None  # refused: the requestor asks again for UTF8_STRING
                elif target == "TEXT":
                    kind = self._atoms["UTF8_STRING"]
                if data is not None:
                    event.requestor.change_property(prop, kind, 8, data)
                    answered = took_text = True
            notify = xevent.SelectionNotify(time=event.time, requestor=event.requestor, selection=event.selection,
                                            target=event.target, property=prop if answered else X.NONE)
            event.requestor.send_event(notify)
            self._d.flush()
        except Exception:  # noqa: BLE001 - the requestor went away: nothing was taken
            return
        if took_text:
            with self._cond:
                self._taken += 1
                self._cond.notify_all()


def window_class(display: Any, *, at_pointer: bool = False) -> tuple[str, str] | None:
    """WM_CLASS (instance, class) of the window that gets the keys: the focused one, or with ``at_pointer`` the
    top-level window under the pointer (right after a click, before the window manager moved the focus)."""
    from Xlib import X

    root = display.screen().root
    try:
        if at_pointer:
            child = root.query_pointer().child
            found = _client_class(child) if child not in (None, X.NONE) else None
            if found:
                return found
        focus = display.get_input_focus().focus
        window = focus if hasattr(focus, "id") else None
        while window is not None and window.id != root.id:
            found = window.get_wm_class()
            if found:
                return found
            parent = window.query_tree().parent
            window = parent if hasattr(parent, "id") and parent.id else None
        active = root.get_full_property(display.intern_atom("_NET_ACTIVE_WINDOW"), X.AnyPropertyType)
        if active is not None and active.value and active.value[0]:
            return display.create_resource_object("window", int(active.value[0])).get_wm_class()
    except Exception:  # noqa: BLE001 - a window that vanished while asked about: unknown
        return None
    return None


def _client_class(window: Any, depth: int = 3) -> tuple[str, str] | None:
    """WM_CLASS of ``window`` or of the first descendant that has one (the client inside a WM frame)."""
    if not hasattr(window, "id"):
        return None
    found = window.get_wm_class()
    if found or depth == 0:
        return found
    for child in window.query_tree().children:
        found = _client_class(child, depth - 1)
        if found:
            return found
    return None
