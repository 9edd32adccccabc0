"""The one coordinate boundary (actions/coords.py), checked with exact numbers."""
from __future__ import annotations

import pytest

from actions.coords import MixedFramesError, Monitor, OutOfScreenError, reading_of, to_screen
from actions.parser import parse_summary
from actions.types import Click, Drag, Point, Scroll, TypeText, Wait

FULL_HD = Monitor(width=1920, height=1080)


def screen(text: str, shown=(1920, 1080), monitor=FULL_HD, mode="auto"):
    (action,) = parse_summary(text)
    return to_screen(action, shown_width=shown[0], shown_height=shown[1], monitor=monitor, mode=mode)


def test_normalized_point_is_a_fraction_of_the_monitor():
    assert screen("pyautogui.click(x=0.5, y=0.25)").at == Point(x=960, y=270)


def test_pixels_of_a_downscaled_image_scale_up_to_the_screen():
    # 3840x2160 screen shown to the model at 1196x672 (vLLM's resize for 4096 tokens)
    got = screen("pyautogui.click(x=598, y=336)", shown=(1196, 672), monitor=Monitor(width=3840, height=2160))
    assert got.at == Point(x=1920, y=1080)


def test_second_monitor_offset_is_added():
    right = Monitor(left=1280, top=0, width=1920, height=1080)
    assert screen("pyautogui.click(x=0.5, y=0.5)", monitor=right).at == Point(x=2240, y=540)


def test_hidpi_screenshot_pixels_map_to_logical_points():
    retina = Monitor(width=1440, height=900, scale=2.0)  # screenshot 2880x1800, input in points
    assert screen("pyautogui.click(x=1440, y=900)", shown=(2880, 1800), monitor=retina).at == Point(x=720, y=450)


def test_box_becomes_its_centre():
    assert screen('{"bbox_2d": [0.2, 0.2, 0.4, 0.6]}').at == Point(x=576, y=432)


def test_edge_of_the_image_stays_on_the_last_pixel():
    assert screen("pyautogui.click(x=1.0, y=1.0)").at == Point(x=1919, y=1079)
    assert screen("pyautogui.click(x=0, y=0)").at == Point(x=0, y=0)


def test_out_of_screen_points_are_refused_not_clamped():
    with pytest.raises(OutOfScreenError, match="outside the screenshot"):
        screen("pyautogui.click(x=2000, y=10)")


def test_mode_forces_a_reading():
    small = {"shown": (100, 100), "monitor": Monitor(width=100, height=100)}
    assert screen("pyautogui.click(x=1, y=1)", **small, mode="normalized").at == Point(x=99, y=99)
    assert screen("pyautogui.click(x=1.0, y=1.0)", **small, mode="pixels").at == Point(x=1, y=1)
    with pytest.raises(OutOfScreenError):
        screen("pyautogui.click(x=5, y=5)", mode="normalized")


def test_one_reading_per_action_covers_both_drag_points():
    drag = Drag(start=Point(x=0, y=1), end=Point(x=100, y=100))
    assert reading_of(drag) == "pixels"
    got = to_screen(drag, shown_width=1920, shown_height=1080, monitor=FULL_HD)
    assert (got.start, got.end) == (Point(x=0, y=1), Point(x=100, y=100))
    # A fraction beside pixels in one action is two frames at once: refused, never read as pixel (0, 0).
    with pytest.raises(MixedFramesError, match="mixes normalized and pixel"):
        to_screen(Drag(start=Point(x=0.5, y=0.5), end=Point(x=100, y=100)), shown_width=1920, shown_height=1080,
                  monitor=FULL_HD)


@pytest.mark.parametrize("action", [Wait(), Scroll(dy=3), TypeText(text="x"), Click()])
def test_actions_without_points_pass_through(action):
    assert to_screen(action, shown_width=10, shown_height=10, monitor=FULL_HD) == action
