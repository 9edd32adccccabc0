"""`kimi-cua replay`: re-running a recorded run on Xvfb against a fresh Tk app, and stopping on divergence.

A run is recorded once per module with the real `kimi-cua run` (loopback vLLM server): click the button,
type "hello" + Enter into the field, done. Each test starts a fresh app and replays (a copy of) that run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from agent.debug.replay import screen_difference
from tests.e2e_support import (
    DONE,
    ROOT,
    centre,
    cli,
    kimi_reply,
    last_image_size,
    read_state,
    run_cli,
    start_app,
)
from tests.loopback import LoopbackServer


def replay_cli(args: list[str], display: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DISPLAY=display)
    return subprocess.run(cli() + ["replay", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT, check=False)


@pytest.fixture(scope="module")
def recorded(xdisplay, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recorded")
    state = root / "state.json"
    app = start_app(xdisplay.display, state)

    def policy(request):
        now = read_state(state)
        size = last_image_size(request)
        if not now["pressed"]:
            x, y = centre(now["boxes"]["button"], size)
            return kimi_reply("Press the button.", f"pyautogui.click(x={x}, y={y})")
        if not now["sent"]:
            x, y = centre(now["boxes"]["entry"], size)
            return kimi_reply("Type hello and send it.",
                              f"pyautogui.click(x={x}, y={y})\npyautogui.write('hello')\npyautogui.press('enter')")
        return DONE

    out = root / "run"
    try:
        with LoopbackServer(policy) as server:
            proc = run_cli(["run", "Press the button, then send hello", "--base-url", server.base_url,
                            "--out", str(out), "--max-steps", "5", "--retries", "0"], env_display=xdisplay.display)
    finally:
        app.terminate()
        app.wait(timeout=5)
    assert proc.returncode == 0, proc.stderr
    assert read_state(state)["sent"] == ["hello"]
    return out


def copy_run(recorded: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(recorded, copy)
    return copy


def paint(path: Path, box: tuple[int, int, int, int]) -> None:
    with Image.open(path) as im:
        im = im.convert("RGB")
    ImageDraw.Draw(im).rectangle(box, fill=(0, 90, 255))
    im.save(path)


def test_replay_repeats_the_recorded_actions_on_a_fresh_app(recorded, app, xdisplay, tmp_path):
    out = tmp_path / "replayed"
    proc = replay_cli([str(recorded), "--out", str(out)], xdisplay.display)
    assert proc.returncode == 0, proc.stderr
    assert read_state(app)["pressed"] == 1
    assert read_state(app)["sent"] == ["hello"]
    steps = [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(s["decided_by"] == "replay" for s in steps)
    assert [a["type"] for a in steps[1]["actions"]] == ["click", "type", "press"]
    assert "replayed 3 steps" in proc.stderr


def test_replay_stops_before_the_step_whose_screen_differs_and_names_it(recorded, app, xdisplay, tmp_path):
    run = copy_run(recorded, tmp_path)
    paint(run / "step_0002.png", (600, 300, 1000, 600))  # 400x300 of 1280x720: ~13% of the screen
    out = tmp_path / "replayed"
    proc = replay_cli([str(run), "--out", str(out)], xdisplay.display)
    assert proc.returncode == 1, proc.stderr
    assert "replay diverged before step 2" in proc.stderr
    assert "% of the screen differs from the recording (tolerance 2.0%)" in proc.stderr
    assert "average colour changed by more than 32/255" in proc.stderr  # the metric is named
    assert "Traceback" not in proc.stderr
    assert read_state(app)["pressed"] == 1  # step 1 ran
    assert read_state(app)["sent"] == []  # step 2 did not
    comparison = out / "divergence_step_0002.png"
    with Image.open(comparison) as im:
        assert im.width > 3 * 1280
    assert json.loads((out / "run.json").read_text())["status"] == "fail"


def test_tolerance_decides_whether_a_small_difference_stops_the_replay(recorded, xdisplay, tmp_path):
    run = copy_run(recorded, tmp_path)
    paint(run / "step_0001.png", (1200, 650, 1240, 690))  # 40x40: ~0.2% of the screen
    state = tmp_path / "state.json"
    strict = start_app(xdisplay.display, state)
    try:
        proc = replay_cli([str(run), "--out", str(tmp_path / "strict"), "--tolerance", "0"], xdisplay.display)
    finally:
        strict.terminate()
        strict.wait(timeout=5)
    assert proc.returncode == 1 and "replay diverged before step 1" in proc.stderr
    assert read_state(state)["pressed"] == 0
    state.unlink()
    lenient = start_app(xdisplay.display, state)
    try:
        proc = replay_cli([str(run), "--out", str(tmp_path / "lenient")], xdisplay.display)
    finally:
        lenient.terminate()
        lenient.wait(timeout=5)
    assert proc.returncode == 0, proc.stderr
    assert read_state(state)["sent"] == ["hello"]


def test_step_mode_replay_takes_commands_and_can_skip_a_step(recorded, app, xdisplay, tmp_path):
    proc = replay_cli([str(recorded), "--out", str(tmp_path / "replayed"), "--step"], xdisplay.display,
                      stdin="skip\nretry\nexecute\n")  # then end of input at the done step
    assert proc.returncode == 1, proc.stderr
    assert "=== step 1/3 ===" in proc.stderr and "summary: ## Action:\nPress the button." in proc.stderr
    assert "retry is not available here" in proc.stderr
    assert "input closed: stopping" in proc.stderr
    assert read_state(app)["pressed"] == 0  # skipped
    assert read_state(app)["sent"] == ["hello"]
    replayed = [json.loads(line) for line in (tmp_path / "replayed" / "trajectory.jsonl").read_text().splitlines()]
    assert replayed[-1]["stopped"] == "input closed in the step-through debugger"  # the report shows it stopped
    assert not any(r["stopped"] for r in replayed[:-1])


def test_replay_exits_2_for_a_directory_that_is_not_a_run(xdisplay, tmp_path):
    proc = replay_cli([str(tmp_path)], xdisplay.display)
    assert proc.returncode == 2
    assert "trajectory.jsonl does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_screen_difference_ignores_noise_and_counts_real_changes():
    base = Image.new("RGB", (1280, 720), (200, 200, 200))
    noisy = Image.effect_noise((1280, 720), 6).convert("RGB")  # +-small grey noise everywhere
    noisy = Image.blend(base, noisy, 0.1)
    assert screen_difference(base, base.copy()) == 0.0
    assert screen_difference(base, noisy) == 0.0
    changed = base.copy()
    ImageDraw.Draw(changed).rectangle((0, 0, 127, 71), fill=(0, 0, 0))  # 1% of the screen
    assert screen_difference(base, changed) == pytest.approx(0.01, abs=0.001)
    assert screen_difference(base, Image.new("RGB", (1920, 1080))) == 1.0
