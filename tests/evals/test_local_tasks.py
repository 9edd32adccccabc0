"""OSWorld-format local tasks: loading as upstream reads them, the preflight, and the built-in suite set up by
OSWorld's SetupController and scored by OSWorld's own metrics (desktop-env in .venv-osworld) through our guest.

The end-to-end part drives the real apps with xdotool (a direct executor independent of the agent), so a right key
sequence must score 1 and a wrong one 0.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.evals.local_run import run_local_task, run_preflight, status_table
from agent.evals.local_tasks import (
    Inventory,
    LoadProblem,
    TaskError,
    download_cache_path,
    load_task,
    load_tasks,
    preflight,
    programs_needed,
)
from agent.evals.osworld import LocalRunOptions, LocalTaskResult
from tests.osworld_support import PORTS

INVENTORY = Inventory(metrics=["exact_match", "check_include_exclude", "compare_image_text", "compare_table"],
                      getters=["rule", "vm_command_line", "vm_file", "googledrive_file", "accessibility_tree",
                               "cloud_file"],
                      setup=["launch", "execute", "download", "googledrive", "open", "execute_with_verification"],
                      easyocr_stub=True)


def _write(folder: Path, name: str, raw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


def _task(**evaluator_and_config) -> dict:
    raw = {"id": "t1", "instruction": "do it", "config": evaluator_and_config.pop("config", []),
           "evaluator": {"func": "exact_match", "result": {"type": "rule", "rules": {}}}}
    raw["evaluator"].update(evaluator_and_config)
    return raw


# ---- loading ---------------------------------------------------------------------------------------------
def test_upstream_valid_shapes_load_unchanged(tmp_path: Path):
    raw = {"id": "abc-1", "snapshot": "chrome", "instruction": "do it", "source": ["https://a", "https://b"],
           "config": [{"type": "download", "parameters": {"files": []}}], "trajectory": "trajectories/",
           "related_apps": ["chrome"], "proxy": False,
           "evaluator": {"func": ["exact_match", "exact_match"], "result": [{"type": "rule", "rules": {}}] * 2,
                         "expected": {}, "options": [{}, None]}}
    item = load_task(_write(tmp_path / "chrome", "abc-1.json", raw))
    assert item.domain == "chrome" and item.task_id == "abc-1" and item.raw == raw


def test_a_folder_with_bad_files_reports_and_skips_them(tmp_path: Path):
    good = _task()
    _write(tmp_path / "os", "good.json", good)
    _write(tmp_path / "os", "broken.json", "{not json")
    _write(tmp_path / "os", "noid.json", {"instruction": "x", "evaluator": {"func": "f"}})
    _write(tmp_path / "os", "escape.json", dict(good, id="../../etc"))
    _write(tmp_path / "os", "twice.json", good)
    _write(tmp_path / "os", "lengths.json", dict(good, id="t2", evaluator={"func": ["a", "b"], "result": [{}]}))
    problems: list[LoadProblem] = []
    items = load_tasks(tmp_path, problems)
    assert [i.task_id for i in items] == ["t1"]
    reasons = {Path(p.path).name: p.error for p in problems}
    assert set(reasons) == {"broken.json", "noid.json", "escape.json", "twice.json", "lengths.json"}
    assert "plain name" in reasons["escape.json"] and "also used" in reasons["twice.json"]
    with pytest.raises(TaskError, match="broken.json"):
        load_tasks(tmp_path)


# ---- preflight -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "reason"), [
    (_task(func="no_such_metric"), "metric 'no_such_metric' is not in the installed desktop-env"),
    (_task(func="compare_image_text"), "easyocr"),
    (_task(result={"type": "googledrive_file"}), "Google Drive account"),
    (_task(result={"type": "accessibility_tree"}), "AT-SPI"),
    (_task(config=[{"type": "googledrive", "parameters": {}}]), "Google Drive account"),
    (_task(config=[{"type": "proxy_thing", "parameters": {}}]), "not in the installed desktop-env"),
    (_task(config=[{"type": "launch", "parameters": {"command": ["no-such-program-xyz", "--x"]}}]),
     "needs no-such-program-xyz"),
    (_task(config=[{"type": "execute", "parameters": {"command": "sudo no-such-tool-q -y", "shell": True}}]),
     "needs no-such-tool-q"),
    (_task(config=[{"type": "download", "parameters": {"files": [{"url": "http://down.example/f.xlsx",
                                                                   "path": "/home/user/f.xlsx"}]}}]),
     "not cached and not reachable"),
    (_task(result={"type": "cloud_file", "path": "http://down.example/e.xlsx", "dest": "e.xlsx"}),
     "not reachable"),
    (_task(), None),
    (_task(func="infeasible"), None),
])
def test_preflight_names_what_this_machine_lacks(raw, reason, tmp_path):
    item = load_task(_write(tmp_path / "os", "t1.json", raw))
    found = preflight(item, INVENTORY, cache_dir=tmp_path / "cache", reachable=lambda url: "ConnectError: no")
    assert (found is None) if reason is None else (reason in found), found


def test_preflight_accepts_a_cached_download(tmp_path):
    url, path = "http://down.example/f.xlsx", "/home/user/f.xlsx"
    item = load_task(_write(tmp_path / "os", "t1.json", _task(config=[
        {"type": "download", "parameters": {"files": [{"url": url, "path": path}]}}])))
    cached = download_cache_path(tmp_path / "cache", "t1", url, path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert preflight(item, INVENTORY, cache_dir=tmp_path / "cache", reachable=lambda url: "down") is None


def test_programs_are_read_from_commands_and_related_apps():
    raw = {"related_apps": ["chrome", "os"], "config": [
        {"type": "launch", "parameters": {"command": ["socat", "tcp-listen:9222,fork", "tcp:localhost:1337"]}},
        {"type": "execute", "parameters": {"command": ["python", "-c", "x"]}},
        {"type": "execute", "parameters": {"command": "echo {CLIENT_PASSWORD} | sudo -S gimp ~/a.png", "shell": True}},
        {"type": "launch", "parameters": {"command": ["libreoffice --calc ~/a.xlsx"], "shell": True}}]}
    assert programs_needed(raw) == {"google-chrome", "socat", "python", "gimp", "libreoffice"}


def test_the_table_keeps_scored_and_unscored_apart():
    rows = [LocalTaskResult(task_id=str(i), domain=d, path="p", status=s, score=score) for i, (d, s, score) in
            enumerate([("os", "success", 1.0), ("os", "fail", 0.0), ("os", "unsupported", None),
                       ("calc", "infra_error", None), ("calc", "timeout", None), ("calc", "agent_error", None)])]
    table = {r.domain: r for r in status_table(rows)}
    assert (table["os"].scored, table["os"].success, table["os"].mean_score, table["os"].unsupported) == (2, 1, 0.5, 1)
    assert (table["calc"].scored, table["calc"].mean_score, table["calc"].infra_error) == (0, None, 1)
    assert (table["all"].scored, table["all"].timeout, table["all"].agent_error) == (2, 1, 1)


# ---- end to end on a private desktop ------------------------------------------------------------------
def _xdotool(env: dict[str, str], *args: str) -> None:
    subprocess.run(["xdotool", *args], env=env, check=True, capture_output=True, timeout=20)


def _type(env: dict[str, str], text: str) -> None:
    _xdotool(env, "type", "--delay", "20", text)


def _key(env: dict[str, str], *keys: str) -> None:
    _xdotool(env, "key", "--delay", "30", *keys)


def _focus(env: dict[str, str], title: str) -> None:
    _xdotool(env, "search", "--sync", "--name", title, "windowactivate", "--sync")


def _shell(env, line):  # in the xterm
    _focus(env, "Terminal")
    _type(env, line)
    _key(env, "Return")
    time.sleep(0.5)


def _form(env, name="", email="", age="", subscribe=False, plan_tabs=0):
    _focus(env, "Registration Form")
    _type(env, name)
    _key(env, "Tab")
    _type(env, email)
    _key(env, "Tab")
    _type(env, age)
    _key(env, "Tab")
    if subscribe:
        _key(env, "space")
    _key(env, "Tab", *(["Tab"] * plan_tabs))
    if plan_tabs:
        _key(env, "space")
    _key(env, *(["Tab"] * (3 - plan_tabs)), "space")  # to Submit, press it
    time.sleep(0.3)


def _editor(env, title, *keys, text=""):
    _focus(env, title)
    if keys:
        _key(env, *keys)
    if text:
        _type(env, text)
    _key(env, "ctrl+s")
    time.sleep(0.3)


# task id -> (right steps, wrong steps, how the agent ends). A wrong sequence is plausible but off.
SOLUTIONS = {
    "xterm-create-file": (lambda e: _shell(e, "printf 'Hello OSWorld' > ~/hello.txt"),
                          lambda e: _shell(e, "printf 'Hello World' > ~/hello.txt")),
    "xterm-make-directory": (lambda e: _shell(e, "mkdir -p ~/projects/alpha"),
                             lambda e: _shell(e, "mkdir -p ~/projects/beta")),
    "xterm-count-lines": (lambda e: _shell(e, "wc -l < ~/data.txt > ~/count.txt"),
                          lambda e: _shell(e, "wc -w ~/data.txt > ~/count.txt")),
    "xterm-rename-file": (lambda e: _shell(e, "mv ~/draft.txt ~/final.txt"),
                          lambda e: _shell(e, "cp ~/draft.txt ~/final.txt")),
    "xterm-copy-to-backup": (lambda e: _shell(e, "mkdir ~/backup && cp ~/report.txt ~/backup/"),
                             lambda e: _shell(e, "mkdir ~/backup && mv ~/report.txt ~/backup/")),
    "editor-write-line": (lambda e: _editor(e, "Editor - notes.txt", text="Buy milk"),
                          lambda e: _editor(e, "Editor - notes.txt", text="Buy silk")),
    "editor-replace-word": (lambda e: _editor(e, "Editor - settings.txt", "ctrl+Home", "Down", "End",
                                              "BackSpace", "BackSpace", "BackSpace", text="blue"),
                            lambda e: _editor(e, "Editor - settings.txt", "ctrl+End", text="\ncolor: blue")),
    "editor-append-line": (lambda e: _editor(e, "Editor - list.txt", "ctrl+End", "Return", text="three"),
                           lambda e: _editor(e, "Editor - list.txt", "ctrl+Home", text="three\n")),
    "form-fill-contact": (lambda e: _form(e, "Ada Lovelace", "ada@example.com"),
                          lambda e: _form(e, "Ada Lovelace", "ada@example.org")),
    "form-pro-subscription": (lambda e: _form(e, "Grace Hopper", subscribe=True, plan_tabs=1),
                              lambda e: _form(e, "Grace Hopper", subscribe=True, plan_tabs=2)),
    "form-age": (lambda e: _form(e, "Alan Turing", age="41"),
                 lambda e: _form(e, "Alan Turing", age="41", subscribe=True)),
}


@pytest.fixture(scope="module")
def builtin_tasks():
    for tool in ("xdotool", "xterm", "wmctrl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: apt-get install -y xdotool xterm wmctrl")
    return {t.task_id: t for t in load_tasks("builtin")}


@pytest.fixture
def workers(osworld_workers):
    return osworld_workers


def _options(out: Path) -> LocalRunOptions:
    return LocalRunOptions(out_dir=out, sandbox=False, port_range=(PORTS.start, PORTS.stop - 1), task_timeout=120)


def run_task(item, out: Path, steps, last: str, workers) -> LocalTaskResult:
    """The real run_local_task (guest in its own session bus, upstream setup and scoring); xdotool plays the agent."""
    def runner(instruction, display, run_dir):
        if steps is not None:
            steps({"DISPLAY": display, "PATH": "/usr/bin:/bin"})
        return last, 1, None

    return run_local_task(item, _options(out), runner, workers)


def test_builtin_suite_passes_upstream_loading_and_preflight(tmp_path):
    items = load_tasks("builtin")
    assert len(items) >= 10 and {t.domain for t in items} == {"xterm", "editor", "form"}
    inventory = Inventory(metrics=["exact_match", "check_include_exclude", "match_in_list", "literal_match",
                                   "check_direct_json_object"], getters=["rule", "vm_command_line"],
                          setup=["launch", "execute", "execute_with_verification"])
    assert run_preflight(items, _options(tmp_path), inventory, reachable=lambda url: None) == {}


@pytest.mark.parametrize("task_id", ["form-age"])  # the others: same path, other apps (add ids to run them)
def test_builtin_task_scores_one_for_right_actions_and_zero_for_wrong(task_id, builtin_tasks, workers, tmp_path):
    right, wrong = SOLUTIONS[task_id]
    good = run_task(builtin_tasks[task_id], tmp_path / "right", right, "done", workers)
    assert (good.status, good.score) == ("success", 1.0), good
    bad = run_task(builtin_tasks[task_id], tmp_path / "wrong", wrong, "done", workers)
    assert (bad.status, bad.score) == ("fail", 0.0), bad


def test_infeasible_task_scores_one_only_for_fail(builtin_tasks, workers, tmp_path):
    task = builtin_tasks["form-infeasible-upload"]
    assert run_task(task, tmp_path / "a", None, "fail", workers).score == 1.0
    assert run_task(task, tmp_path / "b", None, "done", workers).score == 0.0


def test_setup_runs_with_a_private_home_and_session_bus(workers, tmp_path):
    if shutil.which("dbus-run-session") is None or shutil.which("gsettings") is None:
        pytest.skip("dbus-run-session / gsettings not installed")
    raw = {"id": "bus", "instruction": "i", "config": [
        {"type": "execute", "parameters": {"command": "echo $HOME > ~/home.txt; echo $DBUS_SESSION_BUS_ADDRESS > "
                                                      "~/bus.txt; echo {SCREEN_WIDTH_HALF} > ~/half.txt",
                                           "shell": True}}],
           "evaluator": {"func": "exact_match", "result": {"type": "vm_command_line", "command": "cat ~/half.txt",
                                                           "shell": True},
                         "expected": {"type": "rule", "rules": {"expected": "640\n"}}}}
    item = load_task(_write(tmp_path / "tasks" / "os", "bus.json", raw))
    result = run_task(item, tmp_path / "out", None, "done", workers)
    home = tmp_path / "out" / "os" / "bus" / "home"
    assert result.status == "success", result
    assert (home / "home.txt").read_text().strip() == str(home) and home.is_absolute()
    import os
    assert (home / "bus.txt").read_text().strip() not in ("", os.environ.get("DBUS_SESSION_BUS_ADDRESS", ""))


def test_a_failing_setup_is_an_infra_error_with_the_reason(workers, tmp_path):
    raw = {"id": "broken", "instruction": "i", "config": [{"type": "open", "parameters": {"path": "~/missing.xlsx"}}],
           "evaluator": {"func": "exact_match", "result": {"type": "rule", "rules": {}}}}
    item = load_task(_write(tmp_path / "tasks" / "os", "broken.json", raw))
    result = run_task(item, tmp_path / "out", None, "done", workers)
    assert result.status == "infra_error" and "setup" in result.error and result.score is None
