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
from actions.types import Click, Done, Drag, Fail, Point
from agent.cli import report as cmd_report
from agent.debug.annotate import annotate, image_point
from agent.debug.report import build_report, step_kind, write_gif, write_report
from agent.trajectory import RetriedAnswer, RunInfo, StepRecord, TrajectoryWriter, read_trajectory
from envs.base import ActionResult
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
    assert "<td>model reply</td>" in page and "<td>model_ms</td>" not in page  # labels, not raw keys
    assert page.count('src="data:image/jpeg;base64,') == 3
    # each screenshot opens at full size: a link to the run's own file
    assert page.count('<a class="shot" href="step_0001.png"') == 1
    assert "full size (1280x720)" in page


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


# ---- what each step says (runs written directly: no display needed) ------------------------------------
def write_run(root: Path, records: list[StepRecord], status: str = "fail", resumed_at: int | None = None) -> Path:
    writer = TrajectoryWriter(root)
    for record in records:
        Image.new("RGB", (320, 200), (250, 250, 250)).save(root / record.screenshot)
        writer.append(record)
    writer.write_info(RunInfo(task="a task", status=status, steps=len(records), resumed_at_step=resumed_at))
    writer.close()
    return root


def record(step: int, actions: list, results: list[ActionResult] | None = None, **extra) -> StepRecord:
    results = results if results is not None else [ActionResult(settle_ms=100.0 * step) for _ in actions]
    overall = next((r for r in results if not r.ok), results[-1] if results else ActionResult(skipped=True))
    return StepRecord(step=step, screenshot=f"step_{step:04d}.png", image_width=320, image_height=200,
                      action=actions[0] if actions else None, actions=actions, result=overall, results=results,
                      **extra)


def section(page: str, step: int) -> str:
    start = page.index(f'id="step-{step}"')
    end = page.find("<section", start)
    return page[start:end if end > 0 else len(page)]


def timeline_cell(page: str, step: int) -> str:
    return re.search(rf'<a class="([a-z]+)" href="#step-{step}"[^>]*>(.*?)</a>', page).group(0)


def test_a_final_fail_shows_as_failed_not_as_a_green_chip(tmp_path):
    run = write_run(tmp_path / "run", [
        record(1, [Click(at=Point(x=10, y=10))]),
        record(2, [Fail(reason="the file does not exist")], [ActionResult()]),
    ])
    page = build_report(run)
    assert 'class="failed" href="#step-2"' in timeline_cell(page, 2)
    assert 'class="done"' not in page
    assert '<span class="badge failed">failed</span>' in section(page, 2)
    assert "the agent gave up (fail): the file does not exist" in section(page, 2)
    assert step_kind(read_trajectory(run)[1]) == "failed"


def test_a_stopped_step_is_not_a_green_done_and_a_finished_done_is(tmp_path):
    run = write_run(tmp_path / "run", [
        record(1, [Done(answer="42")], [], stopped="stopped in the step-through debugger"),
    ], status="stopped")
    page = build_report(run)
    cell = timeline_cell(page, 1)
    assert 'class="stopped"' in cell and cell.endswith("1<br>stopped</a>")
    assert "stopped here, not run: stopped in the step-through debugger" in section(page, 1)
    assert 'class="step stopped"' in page
    done = write_run(tmp_path / "done", [record(1, [Done(answer="42")], [ActionResult()])], status="done")
    page = build_report(done)
    assert 'class="done" href="#step-1"' in page and "<div class=\"result\">done: 42" in page


def test_an_old_trajectory_stop_note_still_reads_as_stopped(tmp_path):
    run = write_run(tmp_path / "run", [record(1, [Done()], [], notes=["stop: input closed"])], status="stopped")
    assert step_kind(read_trajectory(run)[0]) == "stopped"


def test_the_resume_is_marked_where_the_run_was_stopped(tmp_path):
    run = write_run(tmp_path / "run", [
        record(1, [Click(at=Point(x=10, y=10))]),
        record(2, [Click(at=Point(x=20, y=10))], [], stopped="kill switch: SIGINT received"),
        record(3, [Click(at=Point(x=30, y=10))], resumed=True),
        record(4, [Done()], [ActionResult()]),
    ], status="done")
    page = build_report(run)
    mark = page.index('class="resume-mark" id="resumed-3"')
    assert page.index('id="step-2"') < mark < page.index('id="step-3"')
    assert "The run stopped after step 2 (kill switch: SIGINT received) and was resumed here" in page
    nav = page[page.index('<nav class="timeline"'):page.index("</nav>")]
    assert nav.index("#step-2") < nav.index('<span class="resume"') < nav.index("#step-3")
    assert page.count('class="resume-mark"') == 1


def test_an_older_run_is_marked_from_run_json(tmp_path):
    run = write_run(tmp_path / "run", [record(1, [Click(at=Point(x=1, y=1))]), record(2, [Done()], [ActionResult()])],
                    status="done", resumed_at=2)
    assert 'id="resumed-2"' in build_report(run)


def test_the_retry_hint_typed_in_the_debugger_is_shown(tmp_path):
    retried = RetriedAnswer(hint="the <button> is at the top", reason="asked again in the step-through debugger",
                            summary="Click the middle.", actions=[Click(at=Point(x=160, y=100))])
    run = write_run(tmp_path / "run", [record(1, [Click(at=Point(x=160, y=20))], retries=[retried])])
    step = section(build_report(run), 1)
    assert "asked again (1)" in step
    assert 'hint: "the &lt;button&gt; is at the top"' in step
    assert "discarded answer: click (160, 100)" in step


def test_settle_time_is_shown_under_its_own_step_with_readable_labels(tmp_path):
    first = record(1, [Click(at=Point(x=10, y=10))], [ActionResult(settle_ms=432.0)],
                   timings={"observe_ms": 12.7, "model_ms": 2345.0, "execute_ms": 500.0, "settle_ms": 432.0})
    # an older trajectory: step 2 carries the observation's "settle" (step 1's wait), and no settle_ms of its own
    second = record(2, [Click(at=Point(x=20, y=10))], [ActionResult(settle_ms=77.0)],
                    timings={"observe_ms": 3.0, "grab": 0.0, "settle": 432.0, "encode": 2.0, "model_ms": 800.0})
    page = build_report(write_run(tmp_path / "run", [first, second, record(3, [Done()], [ActionResult()])]))
    one, two = section(page, 1), section(page, 2)
    assert "<td>screen settle</td><td>432 ms</td>" in one
    assert "<td>model reply</td><td>2.35 s</td>" in one
    assert "<td>screenshot (grab + encode)</td><td>13 ms</td>" in one
    assert "432" not in two and "<td>screen settle</td><td>77 ms</td>" in two
    assert "_ms</td>" not in page


def test_full_size_links_point_at_the_screenshots_from_wherever_the_page_is_written(tmp_path):
    run = write_run(tmp_path / "my run", [record(1, [Done()], [ActionResult()])], status="done")
    inside = write_report(run).read_text(encoding="utf-8")
    assert 'href="step_0001.png"' in inside and "full size (320x200)" in inside
    elsewhere = write_report(run, tmp_path / "pages" / "r.html").read_text(encoding="utf-8")
    href = re.search(r'<a class="shot" href="([^"]+)"', elsewhere).group(1)
    assert href == "../my%20run/step_0001.png"
    from urllib.parse import unquote
    assert ((tmp_path / "pages") / unquote(href)).resolve() == (run / "step_0001.png").resolve()
