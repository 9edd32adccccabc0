"""Code for other harnesses: built from typed values only, and our own parser reads it back unchanged."""
from __future__ import annotations

import ast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actions.codegen import encode_text, needs_clipboard, osworld_action, to_pyautogui_code
from actions.parser import parse_summary
from actions.types import Click, Done, Drag, Fail, Hotkey, Move, Point, Press, Scroll, TypeText, Wait

coord = st.integers(0, 3839)
point = st.builds(Point, x=coord, y=coord)
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="<"), max_size=40)
key = st.sampled_from(["enter", "esc", "tab", "a", "z", "5", "f5", "pagedown", "backspace", "ctrl", "shift", "/"])
parseable = st.one_of(
    st.builds(Click, at=st.none() | point, button=st.sampled_from(["left", "right", "middle"]),
              count=st.integers(1, 3)),
    st.builds(Move, at=point),
    st.builds(Drag, start=point, end=point, button=st.sampled_from(["left", "right", "middle"])),
    st.builds(Drag, end=point),
    st.builds(Scroll, dy=st.integers(-50, 50), at=st.none() | point),
    st.builds(Scroll, dx=st.integers(-50, 50).filter(bool), at=st.none() | point),
    st.builds(Press, key=key, count=st.integers(1, 100)),
    st.builds(Hotkey, keys=st.lists(key, min_size=1, max_size=4)),
    st.builds(Wait, seconds=st.sampled_from([0, 0.5, 1.0, 2.5, 60])),
)


@settings(max_examples=1_500, deadline=None)
@given(parseable)
def test_generated_code_parses_back_to_the_same_action(action):
    code = to_pyautogui_code(action)
    assert parse_summary(f"```python\n{code}\n```") == [action]


def test_scroll_on_both_axes_becomes_two_calls_that_parse_back():
    code = to_pyautogui_code(Scroll(dy=-3, dx=2, at=Point(x=5, y=6)))
    assert parse_summary(code) == [Scroll(dy=-3, at=Point(x=5, y=6)), Scroll(dx=2, at=Point(x=5, y=6))]


@pytest.mark.parametrize(("action", "code"), [
    (Click(at=Point(x=10, y=20)), "pyautogui.click(x=10, y=20)"),
    (Click(at=Point(x=10, y=20), count=2), "pyautogui.doubleClick(x=10, y=20)"),
    (Click(at=Point(x=1, y=2), button="right", count=2), "pyautogui.click(x=1, y=2, clicks=2, button='right')"),
    (Drag(start=Point(x=1, y=2), end=Point(x=3, y=4)),
     "pyautogui.moveTo(x=1, y=2)\npyautogui.dragTo(x=3, y=4, duration=0.5)"),
    (Press(key="Return", count=2), "pyautogui.press('enter', presses=2)"),
    (Press(key="<"), "pyautogui.hotkey('shift', ',')"),
    (Hotkey(keys=["Control", "c"]), "pyautogui.hotkey('ctrl', 'c')"),
    (Wait(seconds=2), "time.sleep(2)"),
])
def test_code_is_plain_pyautogui(action, code):
    assert to_pyautogui_code(action) == code


def test_osworld_words_for_done_fail_and_a_wait_that_really_waits():
    # WAIT would sleep --sleep_after_execution (0 s by default in OSWorld's runners): a wait is code that sleeps.
    assert [osworld_action(a) for a in (Wait(seconds=3), Done(answer="x"), Fail(reason="y"))] == [
        "time.sleep(3)", "DONE", "FAIL"]
    assert osworld_action(Click(at=Point(x=1, y=2))) == "pyautogui.click(x=1, y=2)"


def _run_typing(code: str) -> list[tuple[str, object]]:
    """Execute generated typing code with pyautogui and subprocess replaced by recorders."""
    import base64
    import types

    seen: list[tuple[str, object]] = []
    pg = types.SimpleNamespace(write=lambda t: seen.append(("write", t)), click=lambda **k: seen.append(("click", k)),
                               hotkey=lambda *k: seen.append(("hotkey", k)))
    clipboard: list[bytes] = []

    def run(cmd, input=None, **kwargs):  # xclip: -o reads back what the last input set (as its forked child serves it)
        if "-o" in cmd:
            return types.SimpleNamespace(stdout=clipboard[-1] if clipboard else b"")
        clipboard.append(input)
        seen.append(("xclip", input))

    sp = types.SimpleNamespace(run=run, DEVNULL=-3)
    tm = types.SimpleNamespace(sleep=lambda s: seen.append(("sleep", s)))
    real_import = __import__
    fakes = {"subprocess": sp, "base64": base64, "time": tm}

    def fake_import(name, *args, **kwargs):
        return fakes[name] if name in fakes else real_import(name, *args, **kwargs)

    exec(code, {"pyautogui": pg, "__builtins__": dict(__builtins__ if isinstance(__builtins__, dict)
                                                        else vars(__builtins__), __import__=fake_import)})
    return seen


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_text_never_appears_as_a_literal_and_decodes_exactly(text):
    code = to_pyautogui_code(TypeText(text=text))
    literals = [n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert all(set(v) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") or
               v in ("xclip", "-selection", "clipboard", "-o", "-t", "UTF8_STRING", "utf-8", "surrogatepass", "ctrl",
                     "v") for v in literals)
    names = {ast.unparse(c.func) for c in ast.walk(ast.parse(code)) if isinstance(c, ast.Call)}
    if needs_clipboard(text):
        assert names <= {"subprocess.run", "pyautogui.hotkey", "base64.b64decode", "next", "range", "time.sleep"}
        assert _run_typing(code) == [("xclip", text.encode("utf-8", "surrogatepass")), ("hotkey", ("ctrl", "v"))]
    else:
        assert names <= {"pyautogui.write", "base64.b64decode", "base64.b64decode('%s').decode" % encode_text(text)}
        assert _run_typing(code) == [("write", text)]


def test_typing_at_a_point_clicks_first():
    assert _run_typing(to_pyautogui_code(TypeText(text="abc", at=Point(x=3, y=4)))) == [
        ("click", {"x": 3, "y": 4}), ("write", "abc")]


def test_a_paste_waits_until_the_clipboard_serves_the_text():
    """xclip's forked child takes the selection after xclip returns: ctrl+v only once reading it back gives the text."""
    import types

    code = to_pyautogui_code(TypeText(text="a<b"))
    events: list[object] = []
    owned: list[bytes] = []
    reads = iter([b"", b"old", b"a<b"])  # no owner yet, the previous text, then ours

    def run(cmd, input=None, **kwargs):
        if "-o" in cmd:
            events.append("read")
            return types.SimpleNamespace(stdout=next(reads))
        owned.append(input)
        events.append("xclip")

    fakes = {"subprocess": types.SimpleNamespace(run=run, DEVNULL=-3),
             "time": types.SimpleNamespace(sleep=lambda s: events.append("sleep"))}
    real_import = __import__
    exec(code, {"pyautogui": types.SimpleNamespace(hotkey=lambda *k: events.append(k)),
                "__builtins__": dict(vars(__builtins__) if not isinstance(__builtins__, dict) else __builtins__,
                                     __import__=lambda n, *a, **k: fakes.get(n) or real_import(n, *a, **k))})
    assert owned == [b"a<b"]
    assert events == ["xclip", "read", "sleep", "read", "sleep", "read", ("ctrl", "v")]


@pytest.mark.parametrize("text", ["日本語", "a<b", "😀", "naïve"])
def test_text_pyautogui_cannot_type_is_pasted(text):
    code = to_pyautogui_code(TypeText(text=text))
    assert "xclip" in code and "stdout=subprocess.DEVNULL" in code and code.endswith("pyautogui.hotkey('ctrl', 'v')")


@pytest.mark.parametrize("action", [Click(at=Point(x=float("nan"), y=1)), Move(at=Point(x=float("inf"), y=1))])
def test_non_finite_points_are_refused(action):
    with pytest.raises(ValueError, match="finite"):
        to_pyautogui_code(action)
