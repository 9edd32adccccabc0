"""Task files of our own in OSWorld's schema, one or more per domain (tests/osworld_tasks/<domain>/), with
placeholders, list-valued sources, empty expectations, downloads from a local HTTP server (the stand-in for the
model hub) and apps: set up by OSWorld's SetupController and scored by OSWorld's own metrics through
``run_local_task``. A right action sequence must score 1 and a wrong one 0. Tasks whose app is not installed here
(scripts/install.sh --osworld-apps) are reported unsupported by the preflight and skipped."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.evals.local_run import load_inventory, run_local_task
from agent.evals.local_tasks import load_task, preflight
from agent.evals.osworld import LocalRunOptions
from tests.osworld_support import PORTS, FileServer, free_port, require_osworld

TASKS = Path(__file__).resolve().parents[1] / "osworld_tasks"
PEOPLE = "name,age\ncarol,35\nalice,30\nbob,25\n"
PEOPLE_SORTED = "name,age\nalice,30\nbob,25\ncarol,35\n"
AGES = "name,age\nann,31\nben,32\n"

# task id -> (right shell commands, wrong shell commands), run with the task's HOME and DISPLAY like an agent's
CHROME = ("google-chrome --user-data-dir=$HOME/.config/google-chrome --no-first-run {url}/{page} "
          ">/dev/null 2>&1 & sleep 4")
SOLUTIONS = {
    "os-half-width": ("cut -dx -f1 ~/Desktop/size.txt > ~/Desktop/answer.txt",
                      "echo 1280 > ~/Desktop/answer.txt"),
    "multi-sort-download": ("f=~/Desktop/people.csv; { head -1 $f; tail -n +2 $f | sort; } > ~/Desktop/sorted.csv",
                            "cp ~/Desktop/people.csv ~/Desktop/sorted.csv"),
    "multi-empty-expected": ("echo 1.25 > ~/scale.txt", "echo 0.9 > ~/scale.txt"),
    "chrome-second-tab": (CHROME.replace("{page}", "two.html"), CHROME.replace("{page}", "three.html")),
    "calc-open-and-save-csv": ("printf 'dave,40\\n' >> ~/ages.csv", "printf 'dave,41\\n' >> ~/ages.csv"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "people.csv").write_text(PEOPLE)
    (root / "people-sorted.csv").write_text(PEOPLE_SORTED)
    (root / "ages.csv").write_text(AGES)
    (root / "ages-gold.csv").write_text(AGES + "dave,40\n")
    for page in ("one", "two", "three"):
        (root / f"{page}.html").write_text(f"<title>{page}</title>{page}")
    with FileServer(root) as files:
        yield files


@pytest.fixture
def workers(osworld_workers):
    return osworld_workers


def _materialize(task_id: str, folder: Path, url: str, chromium_port: int):
    source = next(TASKS.rglob(f"{task_id}.json"))
    text = source.read_text().replace("http://files.kimi-cua.test", url)
    text = text.replace("{TEST_CHROMIUM_PORT}", str(chromium_port))
    target = folder / source.parent.name / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return load_task(target)


def _run(task_id, commands, out, served, workers):
    chromium_port = free_port()
    item = _materialize(task_id, out / "tasks", served.url, chromium_port)
    options = LocalRunOptions(out_dir=out, sandbox=False, port_range=(PORTS.start, PORTS.stop - 1),
                              chromium_port=chromium_port, task_timeout=240, cache_dir=out.parent / "cache")
    reason = preflight(item, load_inventory(workers), cache_dir=options.cache_dir, reachable=lambda url: None)
    if reason:
        pytest.skip(f"{task_id}: {reason}")
    home = out / item.domain / item.task_id / "home"

    def runner(instruction, display, run_dir):
        env = dict(os.environ, HOME=str(home), DISPLAY=display)
        done = subprocess.run(["bash", "-c", commands.replace("{url}", served.url)], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return "done", 1, None

    return run_local_task(item, options, runner, workers)


def test_every_domain_task_is_upstream_valid_json():
    files = sorted(TASKS.rglob("*.json"))
    assert {f.parent.name for f in files} >= {"os", "multi_apps", "chrome", "libreoffice_calc"}
    for f in files:
        raw = json.loads(f.read_text())
        assert {f.stem} == {raw["id"]} and raw["id"] in SOLUTIONS, f


@pytest.mark.parametrize("task_id", sorted(SOLUTIONS))
def test_right_actions_score_one_and_wrong_zero_by_upstream_metrics(task_id, served, workers, tmp_path):
    if task_id == "chrome-second-tab" and shutil.which("google-chrome") is None:
        pytest.skip("google-chrome is not installed (scripts/install.sh --osworld-apps)")
    right, wrong = SOLUTIONS[task_id]
    good = _run(task_id, right, tmp_path / "right", served, workers)
    assert (good.status, good.score) == ("success", 1.0), good
    bad = _run(task_id, wrong, tmp_path / "wrong", served, workers)
    assert (bad.status, bad.score) == ("fail", 0.0), bad


def test_coverage_report_classifies_the_installed_wheel(tmp_path):
    require_osworld()
    out = tmp_path / "coverage.json"
    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "benchmarks" / "osworld_coverage.py"),
                           "--tasks", str(TASKS), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert "googledrive" in report["summary"]["setup"]["not_local"]
    assert "accessibility_tree" in report["summary"]["getters"]["not_local"]
    assert report["getters"]["vm_file"]["local_offline"] and report["setup"]["download"]["local"]
    assert not report["setup"]["download"]["local_offline"]
    assert report["tasks"]["loaded"] == len(SOLUTIONS)
