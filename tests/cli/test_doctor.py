"""`kimi-cua doctor` on a real Xvfb display against a real (loopback) HTTP model server."""
from __future__ import annotations

import argparse
import base64
import io
import json
import socket

import pytest

from agent.cli import doctor
from agent.cli.doctor import DoctorSettings, exit_code, render_table, run_checks
from tests.loopback import LoopbackServer


def ok_policy(_body: dict) -> str:
    return "◁think▷fine◁/think▷OK"


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_everything_passes_on_a_real_display_with_a_matching_server(xdisplay):
    with LoopbackServer(ok_policy) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url), "local")
        sent = list(server.requests)
    rows = by_name(checks)
    assert [c.name for c in checks] == ["display", "screenshot", "input", "clipboard", "model server",
                                        "served model", "context", "max tokens", "screenshot fit", "image limit",
                                        "round trip"]
    assert all(c.status == "ok" for c in checks), render_table(checks)
    assert exit_code(checks) == 0
    assert "1280x720" in rows["display"].detail and "1280x720" in rows["screenshot"].detail
    assert "kimi-vl-thinking-2506" in rows["served model"].detail
    assert "holds ~" in rows["context"].detail
    assert "reply limit 8192 <= max_model_len 131072" in rows["max tokens"].detail
    # one screenshot of the screen's own size (what `run` sends), then the image limit, then the round trip
    assert "a 1280x720 screenshot was accepted" in rows["screenshot fit"].detail
    assert [image_sizes(request) for request in sent] == [[(1280, 720)], [(28, 28)] * 64, []]


def image_sizes(request: dict) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for message in request["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part.get("type") == "image_url":
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                with Image.open(io.BytesIO(data)) as im:
                    sizes.append(im.size)
    return sizes


def test_max_tokens_above_max_model_len_fails_with_the_fix(xdisplay):
    with LoopbackServer(ok_policy, max_model_len=4096) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url), "local")
    row = by_name(checks)["max tokens"]
    assert row.status == "fail" and "8192" in row.detail and "4096" in row.detail
    # what is left beside one 1280x720 screenshot (1196 + 5 tokens) and the text margin (512)
    assert "--max-tokens 2383" in row.fix and "--max-model-len" in row.fix
    assert exit_code(checks) == 1 and "failed: max tokens" in render_table(checks)
    with LoopbackServer(ok_policy, max_model_len=4096) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url, max_tokens=1024), "local")
    assert by_name(checks)["max tokens"].status == "ok" and exit_code(checks) == 0, render_table(checks)


def test_a_screenshot_larger_than_the_encoder_cache_fails_with_the_batched_tokens_fix(xdisplay):
    with LoopbackServer(ok_policy, encoder_cache_size=2048) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url, size=(1920, 1080)), "local")
    row = by_name(checks)["screenshot fit"]
    assert row.status == "fail" and "1920x1080 screenshot is 2691 image tokens" in row.detail and "2048" in row.detail
    assert "--max-num-batched-tokens 8192" in row.fix
    assert exit_code(checks) == 1
    with LoopbackServer(ok_policy, encoder_cache_size=2048) as server:  # the screen's own 1280x720 fits
        checks = run_checks(DoctorSettings(base_url=server.base_url), "local")
    assert by_name(checks)["screenshot fit"].status == "ok", render_table(checks)


def test_a_screenshot_that_leaves_no_room_for_the_reply_fails(xdisplay):
    with LoopbackServer(ok_policy, max_model_len=8192) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url, size=(3840, 2160)), "local")
    rows = by_name(checks)
    assert rows["max tokens"].status == "ok"  # 8192 <= 8192: not refused, but ...
    row = rows["screenshot fit"]
    assert row.status == "fail" and "3840x2160" in row.detail and "cuts replies short" in row.detail
    assert "--max-tokens" in row.fix and "--max-model-len" in row.fix


def test_a_screenshot_over_the_context_fails(xdisplay):
    with LoopbackServer(ok_policy, max_model_len=2048) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url, size=(3840, 2160), max_tokens=512), "local")
    row = by_name(checks)["screenshot fit"]
    assert row.status == "fail" and "does not fit max_model_len 2048" in row.detail
    assert "--max-model-len" in row.fix


def test_a_dead_server_fails_with_a_fix_and_skips_the_server_checks(xdisplay, dead_url):
    checks = run_checks(DoctorSettings(base_url=dead_url), "local")
    rows = by_name(checks)
    assert rows["model server"].status == "fail" and "kimi-cua serve" in rows["model server"].fix
    assert dead_url in rows["model server"].detail or dead_url in rows["model server"].fix
    assert all(rows[n].status == "skip" for n in ("served model", "context", "max tokens", "screenshot fit",
                                                  "image limit", "round trip"))
    assert exit_code(checks) == 1
    table = render_table(checks)
    assert "FAIL" in table and "fix: start it with `kimi-cua serve`" in table and "failed: model server" in table


def test_an_image_limit_below_the_agents_setting_fails_with_the_limit(xdisplay):
    with LoopbackServer(ok_policy, max_images=8) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url, max_images=16), "local")
    row = by_name(checks)["image limit"]
    assert row.status == "fail" and "takes 8 images" in row.detail and "--max-images 8" in row.fix
    assert exit_code(checks) == 1


def test_an_agent_context_above_max_model_len_fails_with_both_numbers(xdisplay):
    with LoopbackServer(ok_policy, max_model_len=32768) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url, max_context=131072), "local")
    row = by_name(checks)["context"]
    assert row.status == "fail" and "131072" in row.detail and "32768" in row.detail
    assert "--max-context 32768" in row.fix


def test_a_model_name_the_server_does_not_serve_fails(xdisplay):
    with LoopbackServer(ok_policy) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url, model="kimi-vl-instruct"), "local")
    row = by_name(checks)["served model"]
    assert row.status == "fail" and "kimi-vl-instruct is not served" in row.detail and "--model" in row.fix


def test_no_display_fails_and_points_to_the_virtual_desktop(monkeypatch, dead_url):
    monkeypatch.delenv("DISPLAY", raising=False)
    checks = run_checks(DoctorSettings(base_url=dead_url), "local")
    row = by_name(checks)["display"]
    assert row.status == "fail" and "--env virtual" in row.fix
    assert "input" not in by_name(checks)


def test_virtual_env_checks_a_private_xvfb_desktop_of_the_run_size(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    with LoopbackServer(ok_policy) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url), "virtual")
        sent = list(server.requests)
    rows = by_name(checks)
    assert rows["virtual display"].status == "ok" and "1920x1080" in rows["virtual display"].detail
    assert image_sizes(sent[0]) == [(1920, 1080)]  # `run --env virtual` defaults to 1920x1080
    assert all(rows[n].status == "ok" for n in ("display", "screenshot", "input", "clipboard")), render_table(checks)
    assert exit_code(checks) == 0


def test_cli_prints_the_table_or_json_and_sets_the_exit_code(xdisplay, dead_url, capsys):
    parser = argparse.ArgumentParser()
    doctor.register(parser.add_subparsers())
    args = parser.parse_args(["doctor", "--base-url", dead_url])
    assert args.handler(args) == 1
    assert "model server" in capsys.readouterr().out
    with LoopbackServer(ok_policy) as server:
        args = parser.parse_args(["doctor", "--base-url", server.base_url, "--json", "--max-images", "4",
                                  "--size", "1366x768", "--max-tokens", "2000"])
        assert args.handler(args) == 0
    rows = by_name([doctor.Check(**r) for r in json.loads(capsys.readouterr().out)])
    assert {r.status for r in rows.values()} == {"ok"} and "accepted 4 images" in rows["image limit"].detail
    assert "reply limit 2000" in rows["max tokens"].detail and "1366x768" in rows["screenshot fit"].detail
    with pytest.raises(SystemExit):
        parser.parse_args(["doctor", "--size", "big"])
