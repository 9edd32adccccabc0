"""`kimi-cua report`: the HTML page of a real recorded run, rendered in headless Chromium, and the GIF.

The run is recorded once per module with the real CLI (`kimi-cua run`) on Xvfb against the Tk app and a
loopback vLLM server: a click, an unparseable answer (an error step), then done.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from actions.coords import Monitor
from actions.types import Click, Drag, Point
from agent.cli import report as cmd_report
from agent.debug.annotate import annotate, image_point
from agent.debug.report import build_report, write_gif, write_report
from agent.trajectory import read_trajectory
from tests.e2e_support import (
    DONE,
    centre,
    kimi_reply,
    last_image_size,
    read_state,
    run_cli,
    start_app,
)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=10000"]

CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const result = {
    images: imgs.length,
    loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    external: imgs.filter(i => !i.src.startsWith('data:')).length,
    steps: [...document.querySelectorAll('section.step')].map(s => Number(s.dataset.step)),
    error_steps: [...document.querySelectorAll('section.step.error')].map(s => Number(s.dataset.step)),
    timeline: [...document.querySelectorAll('nav.timeline a')].map(a => a.getAttribute('href')),
    open_details: document.querySelectorAll('details[open]').length,
    details: document.querySelectorAll('details').length,
    shown_height: document.body.scrollHeight,
  };
  const out = document.createElement('pre');
  out.id = 'kimi-check';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    return exe


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def recorded_run(xdisplay, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recorded")
    state = root / "state.json"
    app = start_app(xdisplay.display, state)
    answers = iter(["click", "garbage", "done"])

    def policy(request):
        kind = next(answers)
        if kind == "click":
            x, y = centre(read_state(state)["boxes"]["button"], last_image_size(request))
            return kimi_reply("Click the 'Press me' button <now> & see.", f"pyautogui.click(x={x}, y={y})")
        if kind == "garbage":
            return "◁think▷Hmm.◁/think▷I am not sure what to do."
        return DONE

    from tests.loopback import LoopbackServer
    out = root / "run"
    try:
        with LoopbackServer(policy) as server:
            proc = run_cli(["run", "Press the button", "--base-url", server.base_url, "--out", str(out),
                            "--max-steps", "5", "--retries", "0"], env_display=xdisplay.display)
    finally:
        app.terminate()
        app.wait(timeout=5)
    assert proc.returncode == 0, proc.stderr
    return out


def test_report_renders_in_chromium_with_every_step_and_every_image_loaded(recorded_run, tmp_path):
    page = write_report(recorded_run, tmp_path / "report.html")
    records = read_trajectory(recorded_run)
    assert len(records) == 3
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"),
                       encoding="utf-8")
    proc = run_chromium(["--dump-dom", checked.as_uri()], tmp_path / "profile")
    found = re.search(r'<pre id="kimi-check">(.*?)</pre>', proc.stdout)
    assert found, f"the page did not finish loading in chromium: {proc.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["steps"] == [1, 2, 3]
    assert result["timeline"] == ["#step-1", "#step-2", "#step-3"]
    assert result["images"] == 3 and result["loaded"] == 3 and result["external"] == 0
    assert result["error_steps"] == [2]  # the unparseable answer is highlighted
    assert result["details"] == 3 and result["open_details"] == 0  # thinking collapsed
    assert result["shown_height"] > 1000


def test_report_page_paints_the_screenshots(recorded_run, tmp_path):
    page = write_report(recorded_run, tmp_path / "report.html")
    shot = tmp_path / "page.png"
    proc = run_chromium([f"--screenshot={shot}", "--window-size=1400,1600", page.as_uri()], tmp_path / "profile")
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        colours = im.convert("RGB").resize((140, 160)).getcolors(maxcolors=140 * 160)
    assert colours is None or len(colours) > 50, "the rendered page is nearly blank"


def test_report_shows_thinking_summary_actions_and_escapes_model_text(recorded_run):
    page = build_report(recorded_run)
    records = read_trajectory(recorded_run)
    click = records[0].action
    assert f"click ({click.at.x}, {click.at.y})" in page
    assert "Click the &#x27;Press me&#x27; button &lt;now&gt; &amp; see." in page
    assert "<now>" not in page
    assert "could not parse the answer" in page
    assert records[0].usage.prompt_tokens > 0
    assert f"{records[0].usage.prompt_tokens:,} prompt, {records[0].usage.completion_tokens:,} reply" in page
    assert "model_ms" in page
    assert page.count('src="data:image/jpeg;base64,') == 3


def test_report_marks_a_missing_screenshot_instead_of_a_broken_image(recorded_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(recorded_run, copy)
    (copy / read_trajectory(copy)[0].screenshot).unlink()
    page = build_report(copy)
    assert "step_0001.png is missing or unreadable" in page
    assert page.count("<img") == 2


def test_gif_has_one_frame_per_step_and_loops(recorded_run, tmp_path):
    gif = write_gif(recorded_run, tmp_path / "run.gif", width=640)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 3
        assert im.width == 640 and im.info.get("loop") == 0


def call_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kimi-cua")
    cmd_report.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_report_command_writes_html_and_gif_to_the_run_directory(recorded_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(recorded_run, copy)
    assert call_report(["report", str(copy), "--gif"]) == 0
    assert (copy / "report.html").stat().st_size > 10_000
    assert (copy / "run.gif").is_file()


def test_report_command_exits_2_naming_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert call_report(["report", str(tmp_path)]) == 2
    assert "trajectory.jsonl does not exist" in capsys.readouterr().err


def test_annotation_maps_screen_pixels_into_a_monitor_at_an_offset():
    monitor = Monitor(left=1920, top=100, width=1280, height=720)
    assert image_point(Point(x=1920, y=100), monitor, (1280, 720)) == (0.5, 0.5)
    assert image_point(Point(x=2560, y=460), monitor, (2560, 1440)) == (1281.0, 721.0)  # HiDPI: 2x image
    blank = Image.new("RGB", (1280, 720), (255, 255, 255))
    drawn = annotate(blank, [Click(at=Point(x=2560, y=460))], monitor, caption="")
    assert drawn.size == (1280, 720)
    r, g, _ = drawn.getpixel((640, 360))
    assert r > 200 and g < 60, "the click marker is not centred on the clicked point"
    assert drawn.getpixel((200, 600)) == (255, 255, 255)


def test_annotation_draws_a_drag_as_a_line_from_start_to_end():
    blank = Image.new("RGB", (400, 300), (255, 255, 255))
    drawn = annotate(blank, [Drag(start=Point(x=50, y=150), end=Point(x=350, y=150))], caption="drag")
    assert drawn.height > 300  # caption strip
    along = [drawn.getpixel((x, 150)) for x in range(80, 320, 20)]
    assert all(p != (255, 255, 255) for p in along)
