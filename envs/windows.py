"""Which window has the keyboard focus on an X display (EWMH ``_NET_ACTIVE_WINDOW``, else the input focus).

The safety policy asks before each step, so that keystrokes are judged per window (a terminal's line is not
mixed with what was typed into a browser). python-xlib, one connection per display, kept open.
"""
from __future__ import annotations

import threading

_connections: dict[str, object] = {}
_lock = threading.Lock()


def _connection(display: str):
    from Xlib import display as xdisplay

    with _lock:
        conn = _connections.get(display)
        if conn is None:
            conn = _connections[display] = xdisplay.Display(display)
        return conn


def focused_window(display: str) -> tuple[int, str] | None:
    """(window id, WM_CLASS words) of the focused top-level window, or None when the X server cannot tell."""
    try:
        from Xlib import X

        conn = _connection(display)
        root = conn.screen().root
        window = None
        active = root.get_full_property(conn.intern_atom("_NET_ACTIVE_WINDOW"), X.AnyPropertyType)
        if active is not None and len(active.value) and active.value[0]:
            window = conn.create_resource_object("window", int(active.value[0]))
        else:
            focus = conn.get_input_focus().focus
            if isinstance(focus, int) or focus in (X.NONE, X.PointerRoot):
                return None
            window = focus
        for _ in range(8):  # the focus may sit on a child of the top-level window that carries WM_CLASS
            wm_class = window.get_wm_class()
            if wm_class:
                return int(window.id), " ".join(wm_class)
            parent = window.query_tree().parent
            if not parent or int(parent.id) == int(root.id):
                break
            window = parent
        return int(window.id), ""
    except Exception:  # no X server, a window that went away: the policy treats the focus as unknown
        with _lock:
            _connections.pop(display, None)
        return None
