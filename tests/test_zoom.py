"""Zoom-in grounding (agent/zoom.py): the crop choice, the exact mapping back, the rounds (no server here; the real
vLLM runs the same chain in tests/test_zoom_real_vllm.py)."""
from __future__ import annotations

import io
import math

import pytest
from PIL import Image

from actions.coords import Monitor, OutOfScreenError, fractions_to_screen, point_fractions
from actions.parser import parse_summary
from actions.types import ActionParseError, Click, Point
from agent.reply import ModelReply, Usage
from agent.tokens import image_tokens
from agent.zoom import (
    MIN_CROP_SIDE,
    CropPlan,
    action_description,
    choose_crop,
    crop_png,
    full_detail,
    patches,
    read_point,
    zoom_click,
    zoom_in,
    zoom_step,
    zoom_text,
)

SCREENS = [(1280, 720), (1920, 1080), (2560, 1440), (3840, 2160), (1080, 1920), (5120, 1440)]
LIMITS = [4096, 16384]


def _walk(size, limit, center, rounds=6):
    view, plans = size, []
    for _ in range(rounds):
        plan = choose_crop(center, image_size=size, view_size=view, in_token_limit=limit)
        if plan is None:
            break
        plans.append(plan)
        view = (plan.width, plan.height)
    return plans


# ---- crop choice -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("size", SCREENS)
@pytest.mark.parametrize("where", [(0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.97, 0.03), (0.01, 0.99)])
def test_every_window_is_sent_at_full_detail_inside_the_screenshot_and_around_the_point(size, limit, where):
    width, height = size
    center = (where[0] * width, where[1] * height)
    plans = _walk(size, limit, center)
    assert plans, "at least one round must be possible on a screen"
    view = size
    for plan in plans:
        # sent at full detail: the image rule leaves it as is (never shrunk), and we never shrink it either
        assert full_detail(plan.sent_width, plan.sent_height, limit)
        assert plan.sent_width >= plan.width and plan.sent_height >= plan.height
        assert plan.scale <= 2.0 + 1e-9
        # the token cost is what the rule gives for the sent size, with no resize (the rule's own check)
        assert patches(plan.sent_width, plan.sent_height) <= limit
        assert image_tokens(plan.sent_width, plan.sent_height, limit) == math.ceil(plan.sent_height / 28) * math.ceil(
            plan.sent_width / 28)
        # inside the screenshot, around the point (clamped at the edges)
        x1, y1, x2, y2 = plan.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert x1 <= center[0] <= x2 and y1 <= center[1] <= y2
        # smaller than the view before it, never below the minimum side (unless the screen is smaller)
        assert plan.width < view[0] or plan.height < view[1]
        assert min(plan.width, plan.height) >= min(MIN_CROP_SIDE, width, height) - 1
        view = (plan.width, plan.height)


def test_window_halves_per_round_and_is_centred_away_from_the_edges():
    plans = _walk((1920, 1080), 16384, (900.0, 500.0), rounds=3)
    assert [(p.width, p.height) for p in plans] == [(960, 540), (480, 270), (240, 135)]
    assert [p.box for p in plans] == [(420, 230, 1380, 770), (660, 365, 1140, 635), (780, 433, 1020, 568)]  # 500 - 67.5 = 432.5: halves up
    assert [(p.sent_width, p.sent_height) for p in plans] == [(1920, 1080), (960, 540), (480, 270)]  # 2x enlarged


def test_window_is_cut_to_what_the_model_sees_unshrunk():
    # 4K, Thinking-2506 (16384 patches): half the screen (1920x1080) is within the limit; enlarged only to the limit
    first = choose_crop((1920.0, 1080.0), image_size=(3840, 2160), view_size=(3840, 2160), in_token_limit=16384)
    assert (first.width, first.height) == (1920, 1080)
    assert full_detail(first.sent_width, first.sent_height, 16384)
    assert not full_detail(first.sent_width + 28, first.sent_height + 28, 16384)  # as large as the rule allows
    # Instruct (4096 patches): half the screen would be shrunk by the rule, so the window itself is cut
    cut = choose_crop((1920.0, 1080.0), image_size=(3840, 2160), view_size=(3840, 2160), in_token_limit=4096)
    assert (cut.width, cut.height) == (cut.sent_width, cut.sent_height)  # no room to enlarge
    assert patches(cut.width, cut.height) <= 4096 < patches(cut.width + 14, cut.height + 14)
    assert abs(cut.width / cut.height - 16 / 9) < 0.01


def test_no_window_when_it_cannot_get_smaller():
    assert choose_crop((50.0, 50.0), image_size=(100, 100), view_size=(100, 100), in_token_limit=16384) is None
    plans = _walk((1280, 720), 16384, (640.0, 360.0), rounds=10)
    assert 1 <= len(plans) < 10 and min(plans[-1].width, plans[-1].height) >= MIN_CROP_SIDE
    with pytest.raises(ValueError):
        choose_crop((1.0, 1.0), image_size=(100, 100), view_size=(100, 100), in_token_limit=4096, factor=1.0)


def test_crop_png_is_the_window_at_its_sent_size():
    image = Image.new("RGB", (400, 300), "white")
    image.putpixel((250, 120), (255, 0, 0))
    plan = CropPlan(left=200, top=100, width=100, height=60, sent_width=100, sent_height=60)
    with Image.open(io.BytesIO(crop_png(image, plan))) as crop:
        assert crop.size == (100, 60) and crop.getpixel((50, 20)) == (255, 0, 0)
    big = plan.model_copy(update={"sent_width": 200, "sent_height": 120})
    with Image.open(io.BytesIO(crop_png(image.convert("P"), big))) as crop:
        assert crop.size == (200, 120)


# ---- exact mapping -----------------------------------------------------------------------------------------------
def test_to_image_maps_edges_to_edges_and_fractions_exactly():
    plan = CropPlan(left=1234, top=567, width=960, height=540, sent_width=1920, sent_height=1080)
    assert plan.to_image(0.0, 0.0) == (1234, 567)
    assert plan.to_image(1.0, 1.0) == (1234 + 960, 567 + 540)
    assert plan.to_image(0.25, 0.5) == (1234 + 240, 567 + 270)


@pytest.mark.parametrize("answer, expected", [
    ("pyautogui.click(x=0.25, y=0.5)", (0.25, 0.5)),  # fractions of the crop as sent
    ("pyautogui.click(480, 540)", (0.25, 0.5)),  # pixels of the crop as sent (1920x1080)
    ('{"bbox_2d": [0.2, 0.4, 0.3, 0.6]}', (0.25, 0.5)),  # a box: its centre
])
def test_read_point_reads_the_crop_frame_like_the_coordinate_boundary(answer, expected):
    fx, fy = read_point(answer, parse_summary, 1920, 1080)
    assert fx == pytest.approx(expected[0], abs=1e-12) and fy == pytest.approx(expected[1], abs=1e-12)


@pytest.mark.parametrize("answer", ["pyautogui.click(x=1.2, y=0.5)", "pyautogui.click(2000, 10)", "WAIT",
                                   "pyautogui.write('hi')"])
def test_read_point_refuses_no_point_or_one_outside_the_crop(answer):
    with pytest.raises(ActionParseError):
        read_point(answer, parse_summary, 1920, 1080)


def test_point_outside_is_the_boundary_s_own_error():
    with pytest.raises(OutOfScreenError):
        point_fractions(Point(x=1.5, y=0.5), shown_width=10, shown_height=10, reading="normalized")


MONITORS = [
    ((1920, 1080), Monitor(left=0, top=0, width=1920, height=1080)),
    ((1920, 1080), Monitor(left=2560, top=360, width=1920, height=1080)),  # second monitor, offset
    ((2560, 1440), Monitor(left=1920, top=0, width=2560, height=1440)),
    ((3840, 2160), Monitor(left=-3840, top=-200, width=3840, height=2160)),  # left of the primary
    ((3840, 2160), Monitor(left=1920, top=0, width=1920, height=1080, scale=2.0)),  # HiDPI: logical = physical / 2
]


@pytest.mark.parametrize("size, monitor", MONITORS)
def test_a_point_chosen_inside_a_crop_lands_on_the_intended_screen_pixel(size, monitor):
    """Through every window of a walk: answer the intended pixel as a 4-decimal fraction and as integer pixels of the
    crop as sent; the exact point is within 0.5 px of the intended one and the click is that pixel."""
    width, height = size
    sx, sy = width / monitor.width, height / monitor.height  # screenshot pixels per screen pixel
    for target in [(monitor.left + 7, monitor.top + 5), (monitor.left + monitor.width - 3, monitor.top + 611),
                   (monitor.left + monitor.width // 3, monitor.top + monitor.height - 1)]:
        # the intended screen pixel in the screenshot's frame (the boundary's convention: pixel i <-> coordinate i)
        tx, ty = (target[0] - monitor.left) * sx, (target[1] - monitor.top) * sy
        for plan in _walk(size, 16384, (tx + 40, ty - 30)) + _walk(size, 4096, (tx - 25, ty + 25)):
            if not (plan.left <= tx <= plan.left + plan.width and plan.top <= ty <= plan.top + plan.height):
                continue  # the target is not in this window (the coarse point was off): nothing to answer
            answers = [f"pyautogui.click(x={(tx - plan.left) / plan.width:.4f}, y={(ty - plan.top) / plan.height:.4f})",
                       f"pyautogui.click({round((tx - plan.left) * plan.scale)}, "
                       f"{round((ty - plan.top) * plan.sent_height / plan.height)})"]
            for answer in answers:
                fx, fy = read_point(answer, parse_summary, plan.sent_width, plan.sent_height)
                x, y = plan.to_image(fx, fy)
                exact = (monitor.left + x / sx, monitor.top + y / sy)
                assert abs(exact[0] - target[0]) <= 0.5 and abs(exact[1] - target[1]) <= 0.5, (answer, plan, exact)
                click = fractions_to_screen(x / width, y / height, monitor)
                assert (click.x, click.y) == target, (answer, plan)


# ---- rounds ------------------------------------------------------------------------------------------------------
def _reply(text: str) -> ModelReply:
    return ModelReply(text=text, thinking="", summary=text, usage=Usage(prompt_tokens=10, completion_tokens=5))


def _png(size):
    out = io.BytesIO()
    Image.new("RGB", size, "gray").save(out, format="PNG")
    return out.getvalue()


def test_zoom_in_records_every_round_and_maps_back():
    size = (1920, 1080)
    target = (1500.0, 200.0)
    asked = []

    def ask(part, plan, number):
        asked.append((number, plan, part["image_url"]["url"][:22]))
        return _reply(f"pyautogui.click(x={(target[0] - plan.left) / plan.width:.6f}, "
                      f"y={(target[1] - plan.top) / plan.height:.6f})")

    monitor = Monitor(left=1920, top=0, width=1920, height=1080)
    result = zoom_in(_png(size), (1530.0, 180.0), rounds=3, ask=ask, parse=parse_summary, in_token_limit=16384,
                     monitor=monitor, first_answer="first")
    assert [r.round for r in result.rounds] == [0, 1, 2, 3] and result.stopped is None
    assert result.rounds[0].crop == (0, 0, 1920, 1080) and result.rounds[0].point == (1530.0, 180.0)
    assert result.rounds[0].answer == "first" and result.rounds[0].screen_point == (1920 + 1530, 180)
    assert [n for n, _, _ in asked] == [1, 2, 3] and all(u == "data:image/png;base64," for _, _, u in asked)
    for rec, (_, plan, _) in zip(result.rounds[1:], asked):
        assert rec.crop == plan.box and rec.sent == (plan.sent_width, plan.sent_height)
        assert rec.point == pytest.approx(target, abs=1e-3)
        assert rec.screen_point == (1920 + 1500, 200)
        assert rec.screen_crop == (1920 + plan.left, plan.top, 1920 + plan.left + plan.width, plan.top + plan.height)
        assert rec.prompt_tokens == 10 and rec.completion_tokens == 5
    assert result.point == pytest.approx(target, abs=1e-3)
    # each window is centred on the previous round's point
    assert asked[1][1].box == choose_crop(result.rounds[1].point, image_size=size, view_size=(960, 540),
                                          in_token_limit=16384).box


def test_an_unusable_round_ends_zooming_and_the_previous_point_stands():
    replies = iter(["pyautogui.click(x=0.5, y=0.5)", "I cannot see it", "pyautogui.click(x=0.1, y=0.1)"])
    result = zoom_in(_png((1920, 1080)), (1000.0, 500.0), rounds=3, ask=lambda *_: _reply(next(replies)),
                     parse=parse_summary, in_token_limit=16384)
    assert [r.round for r in result.rounds] == [0, 1, 2]
    assert result.rounds[2].error and result.rounds[2].point is None and result.rounds[2].answer == "I cannot see it"
    assert result.point == result.rounds[1].point and "round 2" in result.stopped
    outside = zoom_in(_png((1920, 1080)), (1000.0, 500.0), rounds=2, ask=lambda *_: _reply("click(x=2500, y=10)"),
                      parse=parse_summary, in_token_limit=16384)
    assert outside.point == (1000.0, 500.0) and "outside" in outside.rounds[1].error


def test_a_refused_zoom_request_is_recorded_not_raised():
    from agent.models.vllm import RequestRefused

    def ask(*_):
        raise RequestRefused("too big", status=400, server_message="too big")

    result = zoom_in(_png((1280, 720)), (10.0, 10.0), rounds=2, ask=ask, parse=parse_summary, in_token_limit=4096)
    assert len(result.rounds) == 2 and "refused" in result.rounds[1].error and result.point == (10.0, 10.0)


class _FakeClient:
    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []

    def complete(self, messages, **kwargs):
        self.requests.append((messages, kwargs))
        return _reply(self.answers.pop(0))


def test_zoom_click_replaces_only_the_point_and_uses_the_prompt():
    client = _FakeClient(["pyautogui.click(x=0.5, y=0.5)"])
    monitor = Monitor(left=100, top=50, width=1920, height=1080)
    parsed = Click(at=Point(x=0.5, y=0.25), button="right", count=2)
    converted = Click(at=Point(x=100 + 960, y=50 + 270), button="right", count=2)
    action, result = zoom_click(client, image=_png((1920, 1080)), image_size=(1920, 1080), monitor=monitor,
                                parsed=parsed, converted=converted, rounds=1, instruction="the Save button",
                                in_token_limit=16384, temperature=0.3, max_tokens=99)
    plan = choose_crop((960.0, 270.0), image_size=(1920, 1080), view_size=(1920, 1080), in_token_limit=16384)
    assert (action.button, action.count) == ("right", 2)
    assert action.at == Point(x=100 + plan.left + plan.width // 2, y=50 + plan.top + plan.height // 2)
    messages, kwargs = client.requests[0]
    assert kwargs == {"temperature": 0.3, "max_tokens": 99}
    assert [m["role"] for m in messages] == ["user"]
    text = messages[0]["content"][1]["text"]
    assert text == zoom_text("the Save button", plan, round_number=1, rounds=1, image_size=(1920, 1080))
    assert "zoomed-in view" in text and f"x={plan.left} to x={plan.left + plan.width}" in text
    assert "the Save button" in text and result.rounds[1].screen_point == (action.at.x, action.at.y)


def test_zoom_step_zooms_the_first_click_only():
    client = _FakeClient(["pyautogui.click(x=0.5, y=0.5)"])
    monitor = Monitor(width=1280, height=720)
    parsed = parse_summary("pyautogui.write('x')\npyautogui.click(x=0.5, y=0.5)\npyautogui.click(x=0.1, y=0.1)")
    converted = [parsed[0], Click(at=Point(x=640, y=360)), Click(at=Point(x=128, y=72))]
    actions, result = zoom_step(client, image=_png((1280, 720)), image_size=(1280, 720), monitor=monitor,
                                parsed=parsed, converted=converted, summary="## Action: click OK\n## Code: ...",
                                rounds=1, in_token_limit=16384)
    assert actions[0] == converted[0] and actions[2] == converted[2] and result is not None
    assert "click OK" in client.requests[0][0][0]["content"][1]["text"]
    none, nothing = zoom_step(client, image=b"", image_size=(1280, 720), monitor=monitor, parsed=[parsed[0]],
                              converted=[parsed[0]], summary="", rounds=2, in_token_limit=16384)
    assert nothing is None and none == [parsed[0]]


def test_action_description():
    click = Click(at=Point(x=1, y=1))
    assert action_description("## Action:\nClick the red  button.\n## Code:\n```python\nx\n```", click) == \
        "Click the red button."
    assert action_description("I will click OK.\n```python\npyautogui.click(1, 1)\n```", click) == "I will click OK."
    assert action_description("pyautogui.click(1, 1)", click) == "pyautogui.click(1, 1)"
