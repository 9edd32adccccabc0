"""OSWorld-format local tasks: schema, metrics, and the built-in suite set up, solved and scored on Xvfb.

The end-to-end part drives the real apps with xdotool (a direct executor independent of the agent), so a
right key sequence must score 1 and a wrong one 0 for every built-in task.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.evals.local_tasks import (
    METRICS,
    SUPPORTED_SETUP,
    TaskConfig,
    TaskError,
    TaskSandbox,
    check_direct_json_object,
    check_include_exclude,
    exact_match,
    fuzzy_match,
    literal_match,
    load_task,
    load_tasks,
    match_in_list,
)


# ---- metrics ------------------------------------------------------------------------------------------
def test_exact_match_scores_only_identical_values():
    assert exact_match("Buy milk", {"expected": "Buy milk"}) == 1.0
    assert exact_match("Buy milk\n", {"expected": "Buy milk"}) == 0.0


def test_check_include_exclude_needs_every_include_and_no_exclude():
    rules = {"include": ["blue", "size"], "exclude": ["red"]}
    assert check_include_exclude("color: blue size: 12", rules) == 1.0
    assert check_include_exclude("color: blue", rules) == 0.0
    assert check_include_exclude("color: blue size: 12 red", rules) == 0.0
    assert check_include_exclude(None, rules) == 0.0


def test_match_in_list_and_literal_match_and_fuzzy_match():
    assert match_in_list("7", {"expected": ["7", "seven"]}) == 1.0
    assert match_in_list("8", {"expected": ["7"]}) == 0.0
    assert literal_match("ABC", "abc", ignore_case=True) == 1.0
    assert literal_match("ABC", "abc") == 0.0
    assert fuzzy_match("hello world", {"expected": "hello world"}) == 1.0
    assert 0.0 < fuzzy_match("hello wrld", {"expected": "hello world"}) < 1.0


def test_check_direct_json_object_compares_only_expected_keys():
    rules = {"expected": {"name": "Ada", "subscribe": True}}
    assert check_direct_json_object('{"name": "Ada", "subscribe": true, "plan": "Pro"}', rules) == 1.0
    assert check_direct_json_object('{"name": "Ada", "subscribe": false}', rules) == 0.0
    assert check_direct_json_object("not json", rules) == 0.0


# ---- schema and suite ---------------------------------------------------------------------------------
def test_builtin_suite_has_ten_tasks_over_three_apps_all_runnable_locally():
    tasks = load_tasks("builtin")
    assert len(tasks) >= 10
    assert {t.domain for t in tasks} == {"xterm", "editor", "form"}
    assert len({t.task.id for t in tasks}) == len(tasks)
    for item in tasks:
        assert all(step.type in SUPPORTED_SETUP for step in item.task.config), item.path
        funcs = item.task.evaluator.func
        for func in funcs if isinstance(funcs, list) else [funcs]:
            assert func == "infeasible" or func in METRICS, (item.path, func)


def test_osworld_shaped_task_with_unknown_fields_loads(tmp_path: Path):
    raw = {"id": "abc", "snapshot": "chrome", "instruction": "do it", "source": "x",
           "config": [{"type": "download", "parameters": {"files": []}}], "trajectory": "trajectories/",
           "related_apps": ["chrome"], "evaluator": {"func": ["exact_match"], "result": [{"type": "rule", "rules": {}}],
                                                     "expected": [{"type": "rule", "rules": {"expected": 1}}]},
           "proxy": False}
    path = tmp_path / "chrome" / "abc.json"
    path.parent.mkdir()
    path.write_text(json.dumps(raw))
    item = load_task(path)
    assert item.domain == "chrome" and item.task.id == "abc"


def test_invalid_task_file_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.json"
    path.write_text('{"id": "x"}')
    with pytest.raises(TaskError, match="bad.json"):
        load_task(path)


def test_setup_type_that_needs_a_vm_is_refused_with_a_reason(tmp_path: Path):
    task = TaskConfig.model_validate({"id": "t", "instruction": "i", "config": [{"type": "download", "parameters": {}}],
                                      "evaluator": {"func": "exact_match"}})
    sandbox = TaskSandbox({"PATH": "/usr/bin:/bin"}, tmp_path)
    with pytest.raises(TaskError, match="download.*not supported"):
        sandbox.setup(task)


def test_commands_run_in_a_private_home(tmp_path: Path):
    task = TaskConfig.model_validate({
        "id": "t", "instruction": "i",
        "config": [{"type": "execute", "parameters": {"command": "echo hi > ~/out.txt", "shell": True}}],
        "evaluator": {"func": "exact_match", "result": {"type": "vm_command_line", "command": ["cat", "~/out.txt"]},
                      "expected": {"type": "rule", "rules": {"expected": "hi\n"}}}})
    sandbox = TaskSandbox({"PATH": "/usr/bin:/bin"}, tmp_path / "home")
    sandbox.setup(task)
    assert (tmp_path / "home" / "out.txt").read_text() == "hi\n"
    assert sandbox.evaluate(task, "done").score == 1.0
    assert sandbox.evaluate(task, "fail").score == 0.0  # declaring a feasible task infeasible scores 0


def test_and_conjunction_scores_zero_when_one_metric_fails(tmp_path: Path):
    task = TaskConfig.model_validate({
        "id": "t", "instruction": "i",
        "evaluator": {"func": ["exact_match", "exact_match"], "conj": "and",
                      "result": [{"type": "vm_command_line", "command": "printf a", "shell": True}] * 2,
                      "expected": [{"type": "rule", "rules": {"expected": "a"}},
                                   {"type": "rule", "rules": {"expected": "b"}}]}})
    sandbox = TaskSandbox({"PATH": "/usr/bin:/bin"}, tmp_path)
    assert sandbox.evaluate(task, "done").score == 0.0
    task.evaluator.conj = "or"
    assert sandbox.evaluate(task, "done").score == 1.0


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
    return {t.task.id: t.task for t in load_tasks("builtin")}


def _run(make_display, tmp_path: Path, task: TaskConfig, steps, last_action: str | None) -> float:
    vd = make_display(1280, 720)
    sandbox = TaskSandbox(vd.env, tmp_path / task.id / "home")
    try:
        sandbox.setup(task)
        if steps is not None:
            steps(vd.env)
        return sandbox.evaluate(task, last_action).score
    finally:
        sandbox.close()
        vd.stop()


@pytest.mark.parametrize("task_id", sorted(SOLUTIONS))
def test_builtin_task_scores_one_for_right_actions_and_zero_for_wrong(task_id, builtin_tasks, make_display,
                                                                     tmp_path):
    right, wrong = SOLUTIONS[task_id]
    task = builtin_tasks[task_id]
    assert _run(make_display, tmp_path / "right", task, right, "done") == 1.0
    assert _run(make_display, tmp_path / "wrong", task, wrong, "done") == 0.0


def test_builtin_task_scores_zero_when_nothing_was_done(builtin_tasks, make_display, tmp_path):
    assert _run(make_display, tmp_path, builtin_tasks["editor-replace-word"], None, None) == 0.0


def test_infeasible_task_scores_one_only_for_fail(builtin_tasks, make_display, tmp_path):
    task = builtin_tasks["form-infeasible-upload"]
    assert _run(make_display, tmp_path / "a", task, None, "fail") == 1.0
    assert _run(make_display, tmp_path / "b", task, lambda e: _form(e, "Someone"), "done") == 0.0
