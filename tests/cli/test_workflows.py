"""Workflows of issue 19: resume reuses the recorded settings, replay takes the recording's size, --display for
--env virtual, eval local makes a relative --out absolute, one default size."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from agent.cli.main import build_parser, main
from agent.cli.replay import recorded_size
from agent.cli.validate import DEFAULT_SIZE
from agent.trajectory import read_info, read_trajectory
from envs.xvfb import VirtualDisplay, x_socket
from tests.e2e_support import DONE, kimi_reply
from tests.loopback import LoopbackServer

WAIT = kimi_reply("Wait a moment.", "computer.wait()")


def cli(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def test_resume_reuses_the_recorded_server_model_steps_and_environment(xdisplay, tmp_path, capsys):
    out = tmp_path / "run"
    with LoopbackServer([WAIT, WAIT, DONE]) as server:
        code, err = cli(["run", "wait, then finish", "--base-url", server.base_url, "--out", str(out),
                         "--env", "local", "--display", xdisplay.display, "--max-steps", "1", "--retries", "0",
                         "--coords", "normalized", "--max-images", "8"], capsys)
        assert code == 1, err  # out of steps
        first = read_info(out)
        assert first.settings["base_url"] == server.base_url and first.settings["max_steps"] == 1
        assert first.settings["display"] == xdisplay.display and first.settings["env"] == "local"
        # no --base-url, --display, --coords or --max-images: the recorded ones; --max-steps given again wins
        code, err = cli(["run", "--resume", str(out), "--max-steps", "3"], capsys)
        assert code == 0, err
        assert len(server.requests) == 3
    info = read_info(out)
    assert info.started == first.started  # the start time is the run's, not the resume's
    assert info.config["max_steps"] == 3 and info.config["coordinate_mode"] == "normalized"
    assert info.config["max_images"] == 8 and info.settings["display"] == xdisplay.display
    assert info.status == "done" and [s.step for s in read_trajectory(out)] == [1, 2, 3]


def test_resume_with_the_same_task_is_accepted(xdisplay, tmp_path, capsys):
    out = tmp_path / "run"
    with LoopbackServer([WAIT, DONE]) as server:
        args = ["--base-url", server.base_url, "--display", xdisplay.display, "--retries", "0"]
        assert cli(["run", "wait", "--out", str(out), "--max-steps", "1", *args], capsys)[0] == 1
        code, err = cli(["run", "--resume", str(out), "wait", "--max-steps", "2"], capsys)
    assert code == 0, err


def test_replay_takes_the_recordings_size(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"task": "t", "settings": {"size": [1024, 768]}}))
    assert recorded_size(out) == (1024, 768)
    (out / "run.json").write_text(json.dumps({"task": "t"}))  # older runs: the first step's monitor
    step = {"step": 1, "screenshot": "step_0001.png", "image_width": 800, "image_height": 600,
            "monitor": {"left": 0, "top": 0, "width": 800, "height": 600}, "response": "", "summary": ""}
    (out / "trajectory.jsonl").write_text(json.dumps(step) + "\n")
    assert recorded_size(out) == (800, 600)


def test_replay_on_a_virtual_desktop_starts_it_at_the_recorded_size(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"task": "t", "settings": {"size": [1024, 768]}}))
    seen = {}

    def fake_open(options):
        seen["size"] = (options.width, options.height)
        raise RuntimeError("stop here")

    monkeypatch.setattr("agent.cli.replay.open_environment", fake_open)
    with pytest.raises(RuntimeError):
        args = build_parser().parse_args(["replay", str(out), "--env", "virtual"])
        args.handler(args)
    assert seen["size"] == (1024, 768)


def test_env_virtual_takes_the_display_it_is_given():
    number = next(n for n in range(79, 69, -1) if not x_socket(f":{n}").exists()
                  and not Path(f"/tmp/.X{n}-lock").exists())
    with VirtualDisplay(320, 240, window_manager=None, display=f":{number}") as vd:
        assert vd.display == f":{number}"
        with pytest.raises(Exception, match="is taken"):
            VirtualDisplay(320, 240, window_manager=None, display=number).start()


def test_one_default_size_for_run_replay_doctor_and_eval_local():
    parser = build_parser()
    assert DEFAULT_SIZE == (1920, 1080)
    assert parser.parse_args(["eval", "local", "builtin"]).size == DEFAULT_SIZE
    from agent.cli.environments import env_options_from

    for command in (["run", "x"], ["replay", "DIR"]):
        options = env_options_from(parser.parse_args(command))
        assert (options.width, options.height) == DEFAULT_SIZE
    assert parser.parse_args(["doctor", "--size", "1280x720"]).size == (1280, 720)


def test_eval_local_makes_a_relative_out_absolute(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_suite(items, options, on_result=None, problems=None):
        seen["out"] = options.out_dir
        return []

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("agent.evals.local_run.run_local_suite", fake_suite)
    monkeypatch.setattr("agent.evals.osworld_code.osworld_python", lambda: "python")
    with LoopbackServer([]) as server:
        code, err = cli(["eval", "local", "builtin", "--out", "runs/local", "--no-sandbox", "--base-url",
                         server.base_url], capsys)
    assert code == 0, err
    assert seen["out"] == tmp_path / "runs" / "local" and seen["out"].is_absolute()
