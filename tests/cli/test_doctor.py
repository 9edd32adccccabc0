"""`kimi-cua doctor` on a real Xvfb display against a real (loopback) HTTP model server."""
from __future__ import annotations

import argparse
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
                                        "served model", "context", "image limit", "round trip"]
    assert all(c.status == "ok" for c in checks), render_table(checks)
    assert exit_code(checks) == 0
    assert "1280x720" in rows["display"].detail and "1280x720" in rows["screenshot"].detail
    assert "kimi-vl-thinking-2506" in rows["served model"].detail
    assert "holds ~" in rows["context"].detail
    images_sent = sum(1 for p in sent[0]["messages"][0]["content"] if p.get("type") == "image_url")
    assert images_sent == 64 and len(sent) == 2


def test_a_dead_server_fails_with_a_fix_and_skips_the_server_checks(xdisplay, dead_url):
    checks = run_checks(DoctorSettings(base_url=dead_url), "local")
    rows = by_name(checks)
    assert rows["model server"].status == "fail" and "kimi-cua serve" in rows["model server"].fix
    assert dead_url in rows["model server"].detail or dead_url in rows["model server"].fix
    assert all(rows[n].status == "skip" for n in ("served model", "context", "image limit", "round trip"))
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


def test_virtual_env_checks_a_private_xvfb_desktop(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    with LoopbackServer(ok_policy) as server:
        checks = run_checks(DoctorSettings(base_url=server.base_url), "virtual")
    rows = by_name(checks)
    assert rows["virtual display"].status == "ok"
    assert all(rows[n].status == "ok" for n in ("display", "screenshot", "input", "clipboard")), render_table(checks)
    assert exit_code(checks) == 0


def test_cli_prints_the_table_or_json_and_sets_the_exit_code(xdisplay, dead_url, capsys):
    parser = argparse.ArgumentParser()
    doctor.register(parser.add_subparsers())
    args = parser.parse_args(["doctor", "--base-url", dead_url])
    assert args.handler(args) == 1
    assert "model server" in capsys.readouterr().out
    with LoopbackServer(ok_policy) as server:
        args = parser.parse_args(["doctor", "--base-url", server.base_url, "--json", "--max-images", "4"])
        assert args.handler(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["status"] for r in rows} == {"ok"} and "accepted 4 images" in by_name(
        [doctor.Check(**r) for r in rows])["image limit"].detail
