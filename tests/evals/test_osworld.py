"""`kimi-cua eval osworld` result layout and skip logic (fake DesktopEnv), and `kimi-cua eval local` end to end
with the loopback model server's scripted policy on private Xvfb desktops."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from agent.cli.eval_osworld import register_eval
from agent.evals.osworld import (
    ExampleRef,
    OSWorldOptions,
    OSWorldUnavailable,
    collect_results,
    domain_table,
    import_desktop_env,
    load_meta,
    pending,
    run_examples,
)
from tests.e2e_support import kimi_reply
from tests.loopback import LoopbackServer


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


class FakeDesktopEnv:
    """DesktopEnv's shape: reset(task_config) -> obs, step(action, pause) -> (obs, reward, done, info), evaluate()."""

    def __init__(self, score: float = 1.0) -> None:
        self.score, self.actions, self.configs, self.closed = score, [], [], False

    def _get_obs(self) -> dict:
        return {"screenshot": _png(), "accessibility_tree": None, "terminal": None, "instruction": ""}

    def reset(self, task_config: dict) -> dict:
        self.configs.append(task_config)
        self.actions = []
        return self._get_obs()

    def step(self, action: str, pause: float = 2) -> tuple:
        self.actions.append(action)
        return self._get_obs(), 0, action in ("DONE", "FAIL"), {}

    def evaluate(self) -> float:
        return self.score

    def close(self) -> None:
        self.closed = True


class ScriptedAgent:
    def __init__(self, plan: list[list[str]]) -> None:
        self.plan, self.resets, self.i = plan, 0, 0

    def reset(self, *args, **kwargs) -> None:
        self.resets += 1
        self.i = 0

    def predict(self, instruction: str, obs: dict) -> tuple[str, list[str]]:
        actions = self.plan[min(self.i, len(self.plan) - 1)]
        self.i += 1
        return f"response {self.i}", actions


@pytest.fixture
def osworld(tmp_path: Path) -> OSWorldOptions:
    root = tmp_path / "OSWorld"
    meta = {"os": ["a1", "a2"], "chrome": ["b1"]}
    (root / "evaluation_examples").mkdir(parents=True)
    (root / "evaluation_examples" / "test_all.json").write_text(json.dumps(meta))
    for domain, ids in meta.items():
        folder = root / "evaluation_examples" / "examples" / domain
        folder.mkdir(parents=True)
        for i in ids:
            (folder / f"{i}.json").write_text(json.dumps({"id": i, "instruction": f"do {i}", "config": [],
                                                          "evaluator": {"func": "exact_match"}}))
    return OSWorldOptions(osworld_dir=root, result_dir=tmp_path / "results", settle_after_reset=0,
                          sleep_after_execution=0, max_steps=5)


def _run(options, refs, env, agent):
    seen = []
    run_examples(refs, options, lambda: env, lambda: agent, lambda ref, score, error: seen.append((ref, score, error)))
    return seen


def test_results_are_written_in_osworld_layout(osworld):
    env = FakeDesktopEnv(score=1.0)
    agent = ScriptedAgent([["pyautogui.click(x=1, y=2)", "pyautogui.press('enter')"], ["DONE"]])
    ref = ExampleRef(domain="os", example_id="a1")
    seen = _run(osworld, [ref], env, agent)
    folder = osworld.result_dir / "pyautogui" / "screenshot" / "kimi-vl" / "os" / "a1"
    assert seen == [(ref, 1.0, None)]
    assert (folder / "result.txt").read_text() == "1.0\n"
    lines = [json.loads(l) for l in (folder / "traj.jsonl").read_text().splitlines()]
    assert [l["action"] for l in lines] == ["pyautogui.click(x=1, y=2)", "pyautogui.press('enter')", "DONE"]
    assert [l["step_num"] for l in lines] == [1, 1, 2]
    assert set(lines[0]) == {"step_num", "action_timestamp", "action", "response", "reward", "done", "info",
                             "screenshot_file"}
    assert lines[-1]["done"] is True
    for line in lines:
        assert (folder / line["screenshot_file"]).read_bytes().startswith(b"\x89PNG")
    assert env.configs[0]["instruction"] == "do a1" and agent.resets == 1 and env.closed


def test_stepping_stops_at_max_steps_and_still_evaluates(osworld):
    env = FakeDesktopEnv(score=0.0)
    agent = ScriptedAgent([["WAIT"]])
    _run(osworld, [ExampleRef(domain="os", example_id="a2")], env, agent)
    assert env.actions == ["WAIT"] * osworld.max_steps
    assert collect_results(osworld) == [("os", 0.0)]


def test_finished_examples_are_skipped_and_half_written_ones_cleared(osworld):
    refs = [ExampleRef(domain="os", example_id="a1"), ExampleRef(domain="os", example_id="a2")]
    _run(osworld, refs[:1], FakeDesktopEnv(), ScriptedAgent([["DONE"]]))
    half = osworld.example_dir(refs[1])
    half.mkdir(parents=True)
    (half / "traj.jsonl").write_text('{"step_num": 1}\n')
    assert pending(refs, osworld) == refs[1:]
    assert not (half / "traj.jsonl").exists()


def test_an_example_that_raises_is_reported_and_left_to_rerun(osworld):
    class Broken(FakeDesktopEnv):
        def evaluate(self) -> float:
            raise RuntimeError("VM vanished")

    ref = ExampleRef(domain="chrome", example_id="b1")
    seen = _run(osworld, [ref], Broken(), ScriptedAgent([["DONE"]]))
    assert seen[0][1] is None and "VM vanished" in seen[0][2]
    assert pending([ref], osworld) == [ref]


def test_domain_table_counts_success_per_domain():
    table = {row.domain: row for row in domain_table([("os", 1.0), ("os", 0.0), ("chrome", 0.5)])}
    assert (table["os"].tasks, table["os"].success, table["os"].mean_score) == (2, 1, 0.5)
    assert (table["all"].tasks, table["all"].success) == (3, 1)


def test_missing_desktop_env_gives_a_clear_error_and_exit_2(osworld, monkeypatch):
    monkeypatch.setitem(sys.modules, "desktop_env", None)  # as when OSWorld's environment is not active
    with pytest.raises(OSWorldUnavailable, match="OSWorld's own environment"):
        import_desktop_env()
    import argparse

    parser = argparse.ArgumentParser()
    register_eval(parser.add_subparsers())
    args = parser.parse_args(["osworld", "--osworld-dir", str(osworld.osworld_dir)])
    assert args.handler(args) == 2


# ---- kimi-cua eval local, end to end ---------------------------------------------------------------------
def _editor_policy(text: str):
    # The editor window sits at +40+40, 800x500 on a 1280x720 desktop: (0.3, 0.4) is inside its text area.
    return [kimi_reply("Click into the text area.", "pyautogui.click(x=0.3, y=0.4)"),
            kimi_reply("Type the text.", f"pyautogui.write({text!r})"),
            kimi_reply("Save.", "pyautogui.hotkey('ctrl', 's')"),
            kimi_reply("Saved.", "computer.terminate(status='success')"),
            # eval local checks a DONE by default (--verify-done): a fresh screenshot, a short fresh question
            "◁think▷The editor shows the line.◁/think▷## Verdict:\nyes\n## Reason:\nThe line is in the saved file."]


def test_eval_local_end_to_end_with_preflight_bad_files_and_resume(tmp_path):
    """The CLI: upstream setup and scoring of an agent run; an unsupported task and a bad file never reach the model;
    a re-run repeats nothing that finished."""
    import os
    import shutil as _shutil

    from tests.e2e_support import run_cli
    from tests.osworld_support import PORTS, require_osworld

    require_osworld()
    tasks = tmp_path / "tasks"
    (tasks / "editor").mkdir(parents=True)
    (tasks / "os").mkdir()
    root = Path(__file__).resolve().parents[2]
    _shutil.copy(root / "agent" / "evals" / "tasks" / "editor" / "editor-write-line.json", tasks / "editor")
    (tasks / "os" / "needs-drive.json").write_text(json.dumps({
        "id": "needs-drive", "instruction": "upload", "config": [{"type": "googledrive", "parameters": {}}],
        "evaluator": {"func": "exact_match", "result": {"type": "rule", "rules": {}}}}))
    (tasks / "os" / "broken.json").write_text("{")
    out = tmp_path / "out"
    os.environ.setdefault("KIMI_CUA_DISPLAYS", "90-99")
    # The default sandbox, network off: the worker reaches the guest through agent.safety.bridge. Chrome's and VLC's
    # bridged ports come from the test range too (the guests' ports skip them).
    args = ["eval", "local", str(tasks), "--out", str(out), "--max-steps", "6", "--size", "1280x720",
            "--ports", f"{PORTS.start}-{PORTS.stop - 1}",
            "--chromium-port", str(PORTS.stop - 1), "--vlc-port", str(PORTS.stop - 2)]
    with LoopbackServer(_editor_policy("Buy milk")) as server:
        first = run_cli([*args, "--base-url", server.base_url], timeout=300)
        first_requests = len(server.requests)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first_requests == 5  # 4 steps and the DONE check; the unsupported task never reached the model
    assert "skipped" in first.stderr and "broken.json" in first.stderr
    results = {r["task_id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert (results["editor-write-line"]["status"], results["editor-write-line"]["score"]) == ("success", 1.0)
    assert results["editor-write-line"]["agent_status"] == "done" and results["editor-write-line"]["steps"] == 4
    assert results["editor-write-line"]["max_steps"] == 6 and results["editor-write-line"]["time_budget"] == 1800
    assert results["needs-drive"]["status"] == "unsupported" and "Google Drive" in results["needs-drive"]["reason"]
    assert (out / "editor" / "editor-write-line" / "run" / "trajectory.jsonl").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["statuses"] == {"success": 1, "unsupported": 1} and summary["bad_files"][0]["path"].endswith("broken.json")
    assert (summary["verify_done"]["checked"], summary["verify_done"]["overturned"]) == (1, 0)
    assert results["editor-write-line"]["done_checked"] == 1 and results["editor-write-line"]["done_overturned"] == 0
    assert "scored" in first.stdout and "unsupported" in first.stdout
    with LoopbackServer([]) as server:  # any request would fail: finished tasks must not run again
        again = run_cli([*args, "--base-url", server.base_url], timeout=300)
        assert len(server.requests) == 0
    assert again.returncode == 0, again.stderr[-2000:]
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_a_timeout_is_repeated_by_a_rerun_and_nothing_else(tmp_path, osworld_workers):
    """A model server that never answers: the task's budget ends it (timeout); the re-run repeats only that task."""
    import socket

    from agent.evals.local_run import run_local_suite
    from agent.evals.local_tasks import load_tasks
    from agent.evals.osworld import LocalRunOptions
    from tests.osworld_support import PORTS, free_port, require_osworld, use_test_displays

    require_osworld()
    use_test_displays()
    tasks = tmp_path / "tasks" / "os"
    tasks.mkdir(parents=True)
    for name in ("quick", "slow"):
        (tasks / f"{name}.json").write_text(json.dumps({
            "id": name, "instruction": "nothing", "config": [],
            "evaluator": {"func": "exact_match", "result": {"type": "vm_command_line", "command": "printf ok",
                                                            "shell": True},
                          "expected": {"type": "rule", "rules": {"expected": "ok"}}}}))
    items = load_tasks(tasks.parent)
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # free_port may give one whose last use lingers
    hole.bind(("127.0.0.1", free_port()))
    hole.listen(8)  # accepts connections, never answers
    options = LocalRunOptions(out_dir=tmp_path / "out", sandbox=False, task_timeout=8, max_steps=2,
                              port_range=(PORTS.start, PORTS.stop - 1),
                              base_url=f"http://127.0.0.1:{hole.getsockname()[1]}/v1", model="m")
    pool = osworld_workers
    try:
        quick_first = lambda instruction, display, out: ("done", 1, None)  # noqa: E731
        first = run_local_suite(items[:1], options, runner=quick_first, workers=pool)  # "quick" scores
        first += run_local_suite(items, options, workers=pool)  # "slow" meets the silent server
        assert {r.task_id: r.status for r in first} == {"quick": "success", "slow": "timeout"}
        ran = []

        def runner(instruction, display, out):
            ran.append(out.parent.name)
            return "done", 1, None

        # The re-run's budget is roomy: on a loaded machine the desktop and the setup alone can take 8 s.
        again = run_local_suite(items, options.model_copy(update={"task_timeout": 120}), runner=runner,
                                workers=pool)
    finally:
        hole.close()
    assert ran == ["slow"], [(r.task_id, r.status, r.error) for r in again]
    assert {r.task_id: r.status for r in again} == {"quick": "success", "slow": "success"}


# ---- eval osworld: folder names from the meta file, and workers that die ----------------------------------
@pytest.mark.parametrize("meta", [{"os": ["../../victim"]}, {"../up": ["a"]}, {"os": ["a/b"]}, {"os": [".."]},
                                  {"os": ["/abs"]}, {"os": [7]}])
def test_meta_entries_that_are_not_plain_names_are_refused(osworld, meta, tmp_path):
    from agent.evals.local_tasks import TaskError

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    osworld.meta_path().write_text(json.dumps(meta))
    with pytest.raises(TaskError, match="plain names"):
        load_meta(osworld)
    assert (victim / "keep.txt").read_text() == "mine"


def test_eval_osworld_exits_non_zero_when_examples_never_report_back(osworld, tmp_path, monkeypatch, capsys):
    import argparse

    fake = tmp_path / "fake"
    (fake / "desktop_env").mkdir(parents=True)
    (fake / "desktop_env" / "__init__.py").write_text("")
    (fake / "desktop_env" / "desktop_env.py").write_text(
        "import os\nclass DesktopEnv:\n    def __init__(self, **kwargs):\n        os._exit(3)  # a worker that dies\n")
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.setenv("PYTHONPATH", str(fake))
    for name in [m for m in sys.modules if m.startswith("desktop_env")]:
        monkeypatch.delitem(sys.modules, name)
    parser = argparse.ArgumentParser()
    register_eval(parser.add_subparsers())
    args = parser.parse_args(["osworld", "--osworld-dir", str(osworld.osworld_dir), "--result-dir",
                              str(osworld.result_dir), "--settle-after-reset", "0", "--num-envs", "2"])
    assert args.handler(args) == 1
    assert "3 of 3 examples never reported back" in capsys.readouterr().err
