"""Typed text arrives where it was typed, or the action says it did not (issue 18, item 10).

On the session's real Xvfb display: an xterm (which ignores ctrl+v and pastes PRIMARY on shift+insert), the Tk
target app, and ``xclip -o`` as an independent reader of the selection.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from actions.clipboard import SelectionOwner, is_terminal
from actions.executor import ExecutionError, PyAutoGUIExecutor
from actions.types import Press, TypeText
from tests.apps.hit_targets import ENTRY_BOX, TargetApp
from actions.types import Point


def wait_until(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.05)


@pytest.fixture
def executor(xdisplay):
    executor = PyAutoGUIExecutor(paste_timeout=1.0)
    yield executor
    executor.close()


@pytest.fixture
def xterm(xdisplay, executor, tmp_path):
    """A focused xterm running a bare bash in ``tmp_path``."""
    proc = subprocess.Popen(["xterm", "-geometry", "100x20+40+40", "-e", "bash", "--noprofile", "--norc"],
                            env=xdisplay.env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: is_terminal(executor.focused_class()), "the xterm getting the focus")
        time.sleep(0.3)  # bash draws its prompt
        yield tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_text_xterm_cannot_take_from_ctrl_v_arrives_through_shift_insert(xterm, executor):
    out = xterm / "out.txt"
    text = "printf '%s\\n' 'a<b naïve 日本 😀' > out.txt"  # '<' and non-ASCII: pasted, not typed
    executor.execute(TypeText(text=text))
    executor.execute(Press(key="enter"))
    assert wait_until(lambda: out.is_file() and out.read_text(encoding="utf-8"), "the command's output") == \
        "a<b naïve 日本 😀\n"


def test_a_paste_the_focused_program_ignores_is_reported_as_not_typed(xterm, xdisplay):
    executor = PyAutoGUIExecutor(paste_keys=("ctrl", "v"), paste_timeout=0.5)  # what xterm ignores
    try:
        with pytest.raises(ExecutionError, match="was not typed"):
            executor.execute(TypeText(text="echo naïve"))
        executor.execute(Press(key="esc"))  # end xterm's quoted-insert
    finally:
        executor.close()


def test_the_selection_holds_the_new_text_before_offer_returns(xdisplay):
    owner = SelectionOwner()
    try:
        for i in range(40):
            text = f"paste {i} ü<{'x' * i}>"
            mark = owner.offer(text, ("CLIPBOARD",))
            got = subprocess.run(["xclip", "-o", "-selection", "clipboard"], env=xdisplay.env, capture_output=True,
                                 timeout=10, check=True).stdout.decode("utf-8")
            assert got == text  # never the previous text: the race of xclip's forked owner is gone
            assert owner.wait_taken(mark, 5.0)  # and the owner saw that a program took it
    finally:
        owner.close()


def test_repeated_pastes_into_a_tk_entry_each_paste_the_new_text(xdisplay, executor):
    with TargetApp(xdisplay.env, xdisplay.width, xdisplay.height) as app:
        end = Point(x=ENTRY_BOX[2] - 4, y=(ENTRY_BOX[1] + ENTRY_BOX[3]) // 2)
        executor.execute(TypeText(text="ü0", at=end))
        for i in range(1, 20):
            executor.execute(TypeText(text=f"ü{i}"))
        expected = "".join(f"ü{i}" for i in range(20))
        wait_until(lambda: any(e["event"] == "text" and e["value"] == expected for e in app.drain(0.2)),
                   f"the entry holding {expected!r}")


def test_keys_a_killed_run_left_held_are_released_before_acting(xdisplay):
    from Xlib import display as xdisplay_module

    from actions.types import Move

    subprocess.run(["xdotool", "keydown", "shift"], env=xdisplay.env, check=True)  # a run killed mid-hotkey
    d = xdisplay_module.Display(xdisplay.display)
    try:
        assert any(d.query_keymap())
        executor = PyAutoGUIExecutor()
        executor._pg = None  # a fresh start, as in a resumed process
        executor.execute(Move(at=Point(x=300, y=300)))
        assert not any(d.query_keymap())  # shift no longer held: typed text is not shifted
    finally:
        subprocess.run(["xdotool", "keyup", "shift"], env=xdisplay.env, check=False)
        d.close()
