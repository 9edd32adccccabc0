"""Task files of our own in OSWorld's schema, one or more per domain (tests/osworld_tasks/<domain>/), with
placeholders, list-valued sources, empty expectations, downloads from a local HTTP server (the stand-in for the
model hub) and apps: set up by OSWorld's SetupController and scored by OSWorld's own metrics through
``run_local_task``. A right action sequence must score 1 and a wrong one 0.

The sequences of the app tasks (LibreOffice Calc/Writer/Impress, GIMP, VLC, Thunderbird) are GUI actions: typed
actions (``actions.types``) turned into pyautogui code by ``actions.codegen.osworld_action`` - what our agent hands
OSWorld's runners - and run through the worker's ``DesktopEnv.step`` (OSWorld's ``PythonController``, our guest's
``/execute``) on the task's display. The os, multi_apps and chrome tasks are solved by shell commands (the answer
is a file's content; chrome's is a second tab, which Chrome's CDP setup owns). The apps come from
``scripts/install.sh --osworld-apps`` (scripts/test.sh runs it): a missing app fails here, in CI, rather than skip.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actions.codegen import osworld_action
from actions.types import Action, Hotkey, Press, TypeText, Wait
from agent.evals.local_run import load_inventory, run_local_task
from agent.evals.local_tasks import load_task, preflight
from agent.evals.osworld import LocalRunOptions
from agent.evals.osworld_code import osworld_python
from tests.osworld_support import PORTS, FileServer, free_port, require_osworld

TASKS = Path(__file__).resolve().parents[1] / "osworld_tasks"
PEOPLE = "name,age\ncarol,35\nalice,30\nbob,25\n"
PEOPLE_SORTED = "name,age\nalice,30\nbob,25\ncarol,35\n"
AGES = "name,age\nann,31\nben,32\n"
SHOTS = os.environ.get("KIMI_CUA_TEST_SHOTS")  # a folder: a screenshot after each GUI sequence (debugging)

# task id -> (right, wrong): shell commands (run with the task's HOME and DISPLAY like an agent's) or GUI actions
CHROME = ("google-chrome --user-data-dir=$HOME/.config/google-chrome --no-first-run {url}/{page} "
          ">/dev/null 2>&1 & sleep 4")
SHELL = {
    "os-half-width": ("cut -dx -f1 ~/Desktop/size.txt > ~/Desktop/answer.txt",
                      "echo 1280 > ~/Desktop/answer.txt"),
    "multi-sort-download": ("f=~/Desktop/people.csv; { head -1 $f; tail -n +2 $f | sort; } > ~/Desktop/sorted.csv",
                            "cp ~/Desktop/people.csv ~/Desktop/sorted.csv"),
    "multi-empty-expected": ("echo 1.25 > ~/scale.txt", "echo 0.9 > ~/scale.txt"),
    "chrome-second-tab": (CHROME.replace("{page}", "two.html"), CHROME.replace("{page}", "three.html")),
}


def _writer(word: str) -> list[Action]:
    # The document is open (the setup waited for its window); Escape closes a first-start dialog if there is one.
    return [Press(key="escape"), Hotkey(keys=["ctrl", "end"]), TypeText(text=f" {word}"), Hotkey(keys=["ctrl", "s"]),
            Wait(seconds=1.5), Press(key="enter"), Wait(seconds=1.5)]


def _calc(age: str) -> list[Action]:
    # Enter accepts the Text Import dialog of the CSV; Escape closes the first start's user-interface dialog; then
    # the first empty row, the values, and Keep Current Format
    return [Wait(seconds=1), Press(key="enter"), Wait(seconds=3), Press(key="escape"), Hotkey(keys=["ctrl", "end"]),
            Press(key="home"), Press(key="down"), TypeText(text=f"dave\t{age}\n"), Hotkey(keys=["ctrl", "s"]),
            Wait(seconds=1.5), Press(key="enter"), Wait(seconds=1.5)]


def _impress(title: str) -> list[Action]:
    # Tab selects the title placeholder, Enter edits it; save, keeping the PowerPoint format
    return [Press(key="escape"), Press(key="tab"), Press(key="enter"), Hotkey(keys=["ctrl", "a"]),
            TypeText(text=title), Press(key="escape"), Press(key="escape"), Hotkey(keys=["ctrl", "s"]),
            Wait(seconds=1.5), Press(key="enter"), Wait(seconds=1.5)]


def _gimp(flip: str) -> list[Action]:
    # Image > Transform > Flip ..., then File > Overwrite pic.png, through the menus' keyboard mnemonics
    return [Wait(seconds=2), Hotkey(keys=["alt", "i"]), Press(key="t"), Press(key=flip), Wait(seconds=1),
            Hotkey(keys=["alt", "f"]), Press(key="w"), Wait(seconds=3)]


def _thunderbird(layout: str) -> list[Action]:
    # Escape closes an account-setup dialog if one shows (the task's profile has Local Folders only); then
    # View > Layout > Classic/Wide View.
    # Thunderbird writes the changed pref into prefs.js within a second.
    return [Press(key="escape"), Wait(seconds=1), Hotkey(keys=["alt", "v"]), Press(key="l"), Press(key=layout),
            Wait(seconds=3)]


GUI: dict[str, tuple[list[Action], list[Action]]] = {
    "thunderbird-classic-layout": (_thunderbird("c"), _thunderbird("w")),
    "vlc-resume-playback": ([Press(key="space"), Wait(seconds=1)], [Press(key="space"), Wait(seconds=1),
                                                                     Press(key="space"), Wait(seconds=1)]),
    "gimp-mirror-image": (_gimp("h"), _gimp("v")),
    "calc-open-and-save-csv": (_calc("40"), _calc("41")),
    "writer-append-word": (_writer("World"), _writer("Word")),
    "impress-retitle-slide": (_impress("Final"), _impress("Finale")),
}
SOLUTIONS = {**SHELL, **GUI}

MAKE_OFFICE_FILES = """
import sys, docx, pptx
root = sys.argv[1]
for name, text in (("hello", "Hello"), ("hello-gold", "Hello World")):
    d = docx.Document(); d.add_paragraph(text); d.save(f"{root}/{name}.docx")
for name, title in (("deck", "Draft"), ("deck-gold", "Final")):
    p = pptx.Presentation(); s = p.slides.add_slide(p.slide_layouts[5]); s.shapes.title.text = title
    p.save(f"{root}/{name}.pptx")
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "people.csv").write_text(PEOPLE)
    (root / "people-sorted.csv").write_text(PEOPLE_SORTED)
    (root / "ages.csv").write_text(AGES)
    (root / "ages-gold.csv").write_text(AGES + "dave,40\n")
    for page in ("one", "two", "three"):
        (root / f"{page}.html").write_text(f"<title>{page}</title>{page}")
    from PIL import Image, ImageDraw

    pic = Image.new("RGB", (120, 80), "white")  # asymmetric both ways: a horizontal flip is not a vertical one
    ImageDraw.Draw(pic).rectangle((0, 0, 40, 30), fill="red")
    ImageDraw.Draw(pic).rectangle((60, 50, 119, 79), fill="blue")
    pic.save(root / "pic.png")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "20",
                    "-pix_fmt", "yuv420p", str(root / "clip.mp4")], check=True, timeout=60)
    require_osworld()
    # python-docx and python-pptx come with the desktop-env wheel (its metrics read these formats)
    subprocess.run([str(osworld_python()), "-c", MAKE_OFFICE_FILES, str(root)], check=True, timeout=60)
    with FileServer(root) as files:
        yield files


@pytest.fixture
def workers(osworld_workers):
    return osworld_workers


def _materialize(task_id: str, folder: Path, url: str, chromium_port: int, vlc_port: int):
    source = next(TASKS.rglob(f"{task_id}.json"))
    text = source.read_text().replace("http://files.kimi-cua.test", url)
    text = text.replace("{TEST_CHROMIUM_PORT}", str(chromium_port)).replace("{TEST_VLC_PORT}", str(vlc_port))
    target = folder / source.parent.name / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return load_task(target)


def _run(task_id, solution, out, served, workers):
    chromium_port, vlc_port = free_port(), free_port()
    item = _materialize(task_id, out / "tasks", served.url, chromium_port, vlc_port)
    options = LocalRunOptions(out_dir=out, sandbox=False, port_range=(PORTS.start, PORTS.stop - 1),
                              chromium_port=chromium_port, vlc_port=vlc_port, task_timeout=240,
                              cache_dir=out.parent / "cache")
    reason = preflight(item, load_inventory(workers), cache_dir=options.cache_dir, reachable=lambda url: None)
    assert not reason, f"{task_id}: {reason} (scripts/install.sh --osworld-apps installs the apps)"
    home = out / item.domain / item.task_id / "home"

    def runner(instruction, display, run_dir):
        if isinstance(solution, str):
            env = dict(os.environ, HOME=str(home), DISPLAY=display)
            done = subprocess.run(["bash", "-c", solution.replace("{url}", served.url)], env=env,
                                  capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
        else:  # what our agent hands OSWorld's runners, through DesktopEnv.step on the task's guest
            results = workers.get().step([osworld_action(a) for a in solution], pause=0.0, timeout=120)
            if SHOTS:
                from PIL import ImageGrab

                ImageGrab.grab(xdisplay=display).save(Path(SHOTS) / f"{task_id}-{out.name}-{time.time():.0f}.png")
            assert all(r["info"] is not None for r in results), results
        return "done", len(solution) if isinstance(solution, list) else 1, None

    return run_local_task(item, options, runner, workers)


def test_every_domain_task_is_upstream_valid_json():
    files = sorted(TASKS.rglob("*.json"))
    assert {f.parent.name for f in files} >= {"os", "multi_apps", "chrome", "libreoffice_calc", "libreoffice_writer",
                                              "libreoffice_impress", "gimp", "vlc", "thunderbird"}
    for f in files:
        raw = json.loads(f.read_text())
        assert {f.stem} == {raw["id"]} and raw["id"] in SOLUTIONS, f


@pytest.mark.parametrize("task_id", sorted(SOLUTIONS))
def test_right_actions_score_one_and_wrong_zero_by_upstream_metrics(task_id, served, workers, tmp_path):
    # As in any process that ran the baseline grounder (rapidocr imports opencv): opencv points Qt at its own bundled
    # plugins in this process's environment. Programs the tasks launch must not inherit that (envs/app_env.py): VLC
    # exited at start with it ("Could not load the Qt platform plugin "xcb"") whenever an earlier test had imported it.
    import cv2  # noqa: F401

    right, wrong = SOLUTIONS[task_id]
    good = _run(task_id, right, tmp_path / "right", served, workers)
    assert (good.status, good.score) == ("success", 1.0), (good, _guest_log(tmp_path / "right"))
    bad = _run(task_id, wrong, tmp_path / "wrong", served, workers)
    assert (bad.status, bad.score) == ("fail", 0.0), (bad, _guest_log(tmp_path / "wrong"))


def _guest_log(out: Path) -> str:
    """The end of the task's guest.log: the guest's own lines and what the task's apps printed."""
    return "\n".join(f"{log}:\n{log.read_text(errors='replace')[-3000:]}" for log in out.rglob("guest.log"))


def test_coverage_report_classifies_the_installed_wheel(tmp_path):
    require_osworld()
    out = tmp_path / "coverage.json"
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "benchmarks" / "osworld_coverage.py"),
                           "--tasks", str(TASKS), "--out", str(out)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "googledrive" in report["summary"]["setup"]["not_local"]
    assert "accessibility_tree" in report["summary"]["getters"]["not_local"]
    assert report["getters"]["vm_file"]["local_offline"] and report["setup"]["download"]["local"]
    assert not report["setup"]["download"]["local_offline"]
    assert report["tasks"]["loaded"] == len(SOLUTIONS) and report["tasks"]["bad_files"] == 0
    # every app domain but VS Code is installed by the test path (scripts/install.sh --osworld-apps), and every
    # task file here passes the preflight; VS Code is not packaged in Debian, and the report says so
    assert all(d["installed_here"] for name, d in report["domains"].items() if name != "vs_code"), report["domains"]
    assert "not packaged in Debian" in report["domains"]["vs_code"]["note"]
    assert report["domains"]["vs_code"]["installed_here"] == (shutil.which("code") is not None)
    assert all(set(counts) == {"runnable"} for counts in report["tasks"]["by_domain"].values()), report["tasks"]
