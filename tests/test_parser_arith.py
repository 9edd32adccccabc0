"""Coordinates computed in code are folded (ast + a whitelist), never evaluated; pixels round to the nearest."""
from __future__ import annotations

import pytest

from actions.coords import Monitor, to_screen
from actions.parser import parse_reply
from actions.types import ActionParseError, Click, Point


def code(body: str) -> str:
    return f"## Action:\nclick it\n## Code:\n```python\n{body}\n```"


SSPRO_STYLE = """import pyautogui
screen_width, screen_height = pyautogui.size()
x = int(0.879 * screen_width)
y = int(0.149 * screen_height)
pyautogui.click(x, y)"""


@pytest.mark.parametrize(("body", "point"), [
    (SSPRO_STYLE, (0.879, 0.149)),
    ("pyautogui.click(x=screen_width * 0.25, y=round(0.5 * screen_height))", (0.25, 0.5)),
    ("w, h = pyautogui.size()\npyautogui.click(w / 4, h // 2)", (0.25, 0.5)),
    ("x = 0.2 * screen_width\ny = 0.1 * screen_height\nx = x + 0.1 * screen_width\npyautogui.click(x, y)",
     (pytest.approx(0.3), 0.1)),
    ("x = 960\ny = 1080 / 2\npyautogui.click(x, y)", (960, 540.0)),  # pixels stay pixels
    ("pyautogui.click(x=-(-0.5) * screen_width, y=float(0.5) * screen_height)", (0.5, 0.5)),
])
def test_literal_arithmetic_folds_to_the_point_meant(body: str, point: tuple[float, float]) -> None:
    (click,) = parse_reply(code(body))
    assert isinstance(click, Click) and (click.at.x, click.at.y) == point


@pytest.mark.parametrize(("body", "says"), [
    ("x = 0.5 * screen_width + 10\npyautogui.click(x, 100)", "adds pixels to a fraction of the screen"),
    ("x = __import__('os').system('id')\npyautogui.click(x, 1)", "__import__('os').system() is not allowed in a value"),
    ("x = 2 ** 10\npyautogui.click(x, 1)", "BinOp expressions are not allowed"),
    ("x = screen_width * screen_height\npyautogui.click(x, 1)", "not a point"),
    ("x = 1 / 0\npyautogui.click(x, 1)", "division by zero"),
    ("pyautogui.click(x=undefined_name, y=0.5)", "is not a value"),
    ("pyautogui.FAILSAFE = False\npyautogui.click(0.5, 0.5)", "only assignments to plain names"),
    ("x = [i for i in range(3)]\npyautogui.click(x, 1)", "ListComp expressions are not allowed"),
])
def test_anything_outside_the_whitelist_is_a_format_error(body: str, says: str) -> None:
    with pytest.raises(ActionParseError) as caught:
        parse_reply(code(body))
    assert says in str(caught.value)


def test_names_do_not_leak_between_code_blocks() -> None:
    text = code("x = 0.5 * screen_width\ny = 0.5 * screen_height") + "\n" + code("pyautogui.click(x, y)")
    with pytest.raises(ActionParseError, match="is not a value"):
        parse_reply(text)


@pytest.mark.parametrize(("fraction", "width", "pixel"), [
    (0.365, 1920, 701),  # 700.8: the nearest pixel, not truncated to 700
    (0.5, 1921, 961),  # 960.5: halves go up, never banker's rounding (960)
    (0.3, 1000, 300),  # 0.3 * 1000 = 300.00000000000006
    (1.0, 1920, 1919),  # the right edge stays on the screen
])
def test_pixels_round_to_the_nearest(fraction: float, width: int, pixel: int) -> None:
    screen = to_screen(Click(at=Point(x=fraction, y=0.5)), shown_width=width, shown_height=1000,
                       monitor=Monitor(width=width, height=1000))
    assert screen.at.x == pixel
