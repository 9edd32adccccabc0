"""The pyautogui executor on a real Xvfb display, judged by what the Tk app itself received."""
from __future__ import annotations

import subprocess

import pytest

from actions.executor import ExecutionError, FailSafeTriggered, PyAutoGUIExecutor
from actions.keys import known_keys
from actions.types import Click, Done, Drag, Fail, Hotkey, Move, Point, Press, Scroll, TypeText, Wait
from tests.apps.hit_targets import ENTRY_BOX, TargetApp

ENTRY_END = Point(x=ENTRY_BOX[2] - 4, y=(ENTRY_BOX[1] + ENTRY_BOX[3]) // 2)  # clicking here puts the cursor last


@pytest.fixture(scope="module")
def executor(xdisplay) -> PyAutoGUIExecutor:
    return PyAutoGUIExecutor(drag_duration=0.1)


@pytest.fixture(scope="module")
def shared_app(xdisplay):
    with TargetApp(xdisplay.env, xdisplay.width, xdisplay.height) as app:
        yield app


@pytest.fixture
def app(shared_app):
    shared_app.drain(settle=0.05)
    return shared_app


@pytest.fixture
def fresh_app(xdisplay):
    """An app with an empty, focused entry."""
    with TargetApp(xdisplay.env, xdisplay.width, xdisplay.height) as app:
        yield app


def presses(events):
    return [(e["button"], e["x_root"], e["y_root"]) for e in events if e["event"] == "press"]


def typed(app, executor, action) -> str:
    executor.execute(action)
    texts = [e["value"] for e in app.drain() if e["event"] == "text"]
    return texts[-1] if texts else ""


def test_click_lands_on_the_exact_pixel(app, executor):
    executor.execute(Click(at=Point(x=301, y=402)))
    events = app.drain()
    assert presses(events) == [(1, 301, 402)]
    assert [(e["button"], e["x_root"], e["y_root"]) for e in events if e["event"] == "release"] == [(1, 301, 402)]


def test_double_click_is_seen_as_a_double_click(app, executor):
    executor.execute(Click(at=Point(x=500, y=300), count=2))
    events = app.drain()
    assert presses(events) == [(1, 500, 300)] * 2
    assert [e["event"] for e in events].count("double") == 1


def test_triple_click_is_seen_as_a_triple_click(app, executor):
    executor.execute(Click(at=Point(x=520, y=320), count=3))
    assert [e["event"] for e in app.drain()].count("triple") == 1


@pytest.mark.parametrize(("button", "number"), [("right", 3), ("middle", 2)])
def test_other_buttons_press_their_x_button(app, executor, button, number):
    executor.execute(Click(at=Point(x=640, y=360), button=button))
    assert presses(app.drain()) == [(number, 640, 360)]


def test_drag_holds_the_button_from_start_to_end(app, executor):
    executor.execute(Drag(start=Point(x=200, y=200), end=Point(x=700, y=500)))
    events = app.drain()
    assert presses(events) == [(1, 200, 200)]
    motions = [(e["x_root"], e["y_root"]) for e in events if e["event"] == "motion"]
    assert len(motions) >= 3 and motions[-1] == (700, 500)
    releases = [(e["x_root"], e["y_root"]) for e in events if e["event"] == "release"]
    assert releases == [(700, 500)]


def test_move_then_drag_without_start_drags_from_the_pointer(app, executor):
    executor.execute(Move(at=Point(x=250, y=260)))
    executor.execute(Drag(end=Point(x=260, y=600)))
    events = app.drain()
    assert presses(events) == [(1, 250, 260)]
    assert [(e["x_root"], e["y_root"]) for e in events if e["event"] == "release"] == [(260, 600)]


# Tk reports the horizontal wheel (X buttons 6 = left, 7 = right) as Shift + buttons 4 / 5.
@pytest.mark.parametrize(("scroll", "wheel"), [
    (Scroll(dy=-3, at=Point(x=400, y=400)), [(5, False)] * 3),
    (Scroll(dy=2, at=Point(x=400, y=400)), [(4, False)] * 2),
    (Scroll(dx=2, at=Point(x=400, y=400)), [(5, True)] * 2),
    (Scroll(dx=-1, dy=1, at=Point(x=400, y=400)), [(4, False), (4, True)]),
])
def test_scroll_sends_wheel_clicks_at_the_point(app, executor, scroll, wheel):
    executor.execute(scroll)
    got = [e for e in app.drain() if e["event"] == "press"]
    assert [(e["button"], bool(e["state"] & 0x1)) for e in got] == wheel
    assert {(e["x_root"], e["y_root"]) for e in got} == {(400, 400)}


def test_ascii_text_is_typed_exactly(fresh_app, executor):
    text = "Hello, World! (x=1) ~#$%&*_+{}|:\"?'a>b"
    assert typed(fresh_app, executor, TypeText(text=text, at=ENTRY_END)) == text


@pytest.mark.parametrize("text", ["a<b <tag>", "naïve café — Größe", "日本語のテキスト 中文", "emoji 😀👍 ok"])
def test_text_pyautogui_gets_wrong_goes_through_the_clipboard(fresh_app, executor, text):
    assert typed(fresh_app, executor, TypeText(text=text, at=ENTRY_END)) == text


def test_press_repeats_and_less_than_is_not_greater_than(fresh_app, executor):
    typed(fresh_app, executor, TypeText(text="abcd", at=ENTRY_END))
    assert typed(fresh_app, executor, Press(key="BackSpace", count=2)) == "ab"
    assert typed(fresh_app, executor, Press(key="<")) == "ab<"
    executor.execute(Press(key="Return"))
    assert [e["keysym"] for e in fresh_app.drain() if e["event"] == "key"] == ["Return"]


def test_hotkey_holds_the_modifiers_while_pressing_the_key(app, executor):
    executor.execute(Hotkey(keys=["ctrl", "shift", "k"]))
    keys = [e for e in app.drain() if e["event"] == "key"]
    final = keys[-1]
    assert final["keysym"] in ("K", "k")
    assert final["state"] & 0x4 and final["state"] & 0x1  # ControlMask and ShiftMask


def test_wait_sleeps_and_terminal_actions_touch_nothing():
    slept: list[float] = []
    executor = PyAutoGUIExecutor(sleep=slept.append)
    for action in (Wait(seconds=2.5), Done(answer="42"), Fail(reason="no")):
        executor.execute(action)
    assert slept == [2.5]
    assert executor._pg is None  # pyautogui was never needed


def test_failsafe_corner_raises_failsafe_triggered(xdisplay, executor):
    executor.execute(Move(at=Point(x=0, y=0)))
    try:
        with pytest.raises(FailSafeTriggered, match="corner"):
            executor.execute(Click(at=Point(x=300, y=300)))
    finally:
        subprocess.run(["xdotool", "mousemove", "640", "360"], env=xdisplay.env, check=True)


@pytest.mark.parametrize(("action", "message"), [
    (Click(at=Point(x=0.5, y=0.5)), "to_screen"),
    (Click(at=Point(x=5000, y=100)), "outside the screen"),
    (Press(key="notakey"), "unknown key"),
    (Press(key="f20"), "no keycode"),
])
def test_bad_actions_raise_execution_error(executor, action, message):
    with pytest.raises(ExecutionError, match=message):
        executor.execute(action)


def test_every_canonical_key_is_a_pyautogui_key(executor):
    pyautogui = executor._pyautogui()
    assert known_keys() <= set(pyautogui.KEY_NAMES)
