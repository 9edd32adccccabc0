"""Answers the parser once read as something other than what was written (issue 18, items 4 and 5).

Each reading is checked the way a user meets it: through ``kimi-cua parse``'s own pipeline (parse, then the
one coordinate conversion) on a 1280x720 image.
"""
from __future__ import annotations

import pytest

from actions.coords import Monitor, to_screen
from actions.parser import parse_reply
from actions.types import ActionParseError, Click, Done, Fail, Hotkey, Point, Wait

W, H = 1280, 720


def read(text: str) -> list:
    monitor = Monitor(width=W, height=H)
    return [to_screen(a, shown_width=W, shown_height=H, monitor=monitor) for a in parse_reply(text)]


def refused(text: str) -> str:
    with pytest.raises(ActionParseError) as caught:
        read(text)
    return str(caught.value)


# ---- item 4: no answer crashes the parser -----------------------------------------------------------
@pytest.mark.parametrize(("text", "says"), [
    ('pyautogui.scroll(5, direction=["up"])', "direction must be up, down, left or right"),
    ("```python\npyautogui.scroll(5, direction=['up'])\n```", "direction must be up, down, left or right"),
    ("pyautogui.click(0.5, 0.5, button=['left'])", "button must be"),
    ("computer.terminate(status=['success'])", "status must be"),
])
def test_an_unhashable_argument_is_a_format_error_not_a_crash(text, says):
    assert says in refused(text)


def test_any_unexpected_exception_inside_the_parser_becomes_a_format_error(monkeypatch):
    import actions.parser as parser

    def broken(code):
        raise KeyError("a bug no rule foresaw")

    monkeypatch.setattr(parser, "_parse_code", broken)
    with pytest.raises(ActionParseError, match=r"could not be read \(KeyError\)"):
        parser.parse_reply("```python\npyautogui.click(0.5, 0.5)\n```")


# ---- item 5: readings -------------------------------------------------------------------------------
def test_a_terminal_word_wins_over_a_point_after_it():
    assert read("DONE (1, 1)") == [Done()]


def test_a_terminal_word_wins_over_numbers_in_prose():
    assert read("FAIL. There are 2 files (9, 3).") == [Fail()]


def test_a_negated_call_in_prose_is_not_an_action():
    assert read("I will not click(0.5, 0.5) yet; let me WAIT.") == [Wait()]
    assert "says not to" in refused("I don't want to click(x=0.5, y=0.5) here.")
    assert "says not to" in refused("Do not pyautogui.click(x=0.5, y=0.5) on the Delete button.")


@pytest.mark.parametrize("text", [
    "No. The button is there.\nToolcall: click(x=0.5, y=0.5)",
    "There is no OK button, so click(x=0.5, y=0.5) on Cancel.",
    "Not the first one: pyautogui.click(x=0.5, y=0.5)",
])
def test_a_call_in_another_clause_is_not_negated(text):
    assert read(text) == [Click(at=Point(x=640, y=360))]


def test_integers_zero_and_one_with_other_integers_are_pixels():
    assert read("pyautogui.click(1, 1)") == [Click(at=Point(x=1, y=1))]
    assert read("pyautogui.click(x=0, y=1)") == [Click(at=Point(x=0, y=1))]
    # a decimal in the call makes it normalized, as always
    assert read("pyautogui.click(x=0.5, y=1)") == [Click(at=Point(x=640, y=719))]
    assert read("pyautogui.click(1.0, 1.0)") == [Click(at=Point(x=1279, y=719))]


@pytest.mark.parametrize("text", [
    "pyautogui.drag(start=[0.2, 0.3], end=[640, 360])",
    "pyautogui.click(x=0.5, y=540)",
    "```python\npyautogui.moveTo(0.25, 0.25)\npyautogui.dragTo(900, 500)\n```",
])
def test_one_action_mixing_fractions_and_pixels_is_refused(text):
    assert "mixes normalized and pixel" in refused(text)


@pytest.mark.parametrize("tag", ["bash", "sh", "shell", "console", "javascript"])
def test_a_shell_or_other_language_block_is_never_read_as_prose(tag):
    message = refused(f"## Code:\n```{tag}\npyautogui.click(x=0.5, y=0.5)\n```")
    assert f"```{tag} block" in message


def test_a_json_block_with_a_box_still_reads_as_a_point():
    assert read('```json\n{"bbox_2d": [100, 200, 300, 400], "label": "OK 2"}\n```') == [Click(at=Point(x=200, y=300))]


def test_getattr_call_is_refused_not_half_executed():
    assert "getattr() is not an allowed action" in refused("Toolcall: getattr(pyautogui,'click')(0.5, 0.5)")


def test_press_with_more_than_six_keys_is_refused():
    assert "at most 6" in refused("pyautogui.press('a+b+c+d+e+f+g+h+i')")
    assert read("pyautogui.press('ctrl+shift+t')") == [Hotkey(keys=["ctrl", "shift", "t"])]
    held = "".join(f"pyautogui.keyDown('{k}')\n" for k in "abcdefg") + "pyautogui.press('x')"
    assert "at most 6" in refused(f"```python\n{held}\n```")


@pytest.mark.parametrize(("text", "why"), [
    ("There are 3 buttons; the first is at (0.2, 0.3).", "other numbers"),
    ("(0.1, 0.2) or (0.3, 0.4)", "two points"),
    ("It is not at (0.5, 0.5).", "a negation"),
])
def test_the_bare_point_fallback_fires_only_for_a_point_and_nothing_else(text, why):
    with pytest.raises(ActionParseError):
        read(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("(x=0.31, y=0.62)", Point(x=397, y=446)),  # 0.31 x 1280 = 396.8: the nearest pixel (not truncated)
    ("The element is at (0.25, 0.6).", Point(x=320, y=432)),
    ("[0.75, 0.125]", Point(x=960, y=90)),
    ('{"bbox_2d": [0.28, 0.50, 0.52, 0.70]}', Point(x=512, y=432)),
])
def test_a_point_alone_is_still_a_click(text, expected):
    assert read(text) == [Click(at=expected)]


def test_an_answer_that_crashed_the_parser_is_fed_back_and_the_run_goes_on(tmp_path):
    import json

    from agent.loop import Agent, AgentConfig
    from agent.models.vllm import VLLMClient
    from agent.trajectory import read_trajectory
    from tests.e2e_support import DONE, kimi_reply
    from tests.fault_server import MemoryDesktop
    from tests.loopback import LoopbackServer

    bad = kimi_reply("Scroll up.", 'pyautogui.scroll(5, direction=["up"])')
    with LoopbackServer([bad, DONE]) as server:
        result = Agent(MemoryDesktop(), VLLMClient(server.base_url, retries=0),
                       AgentConfig(max_steps=3, out_dir=tmp_path / "run")).run("scroll up")
        second = json.dumps(server.requests[1]["messages"][-1])
    assert result.status == "done"
    assert "direction must be" in read_trajectory(tmp_path / "run")[0].parse_error
    assert "could not be used" in second and "direction must be" in second
