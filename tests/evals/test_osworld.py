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
            kimi_reply("Saved.", "computer.terminate(status='success')")]


@pytest.mark.parametrize("typed, expected_score", [("Buy milk", 1.0), ("Buy silk", 0.0)])
def test_eval_local_scores_the_agent_run_with_the_task_evaluator(typed, expected_score, tmp_path, capsys):
    import argparse

    task = Path(__file__).resolve().parents[2] / "agent" / "evals" / "tasks" / "editor" / "editor-write-line.json"
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    register_eval(parser.add_subparsers())
    with LoopbackServer(_editor_policy(typed)) as server:
        args = parser.parse_args(["local", str(task), "--out", str(out), "--base-url", server.base_url,
                                  "--max-steps", "6"])
        code = args.handler(args)  # each task runs in a fresh process on its own Xvfb desktop
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    result = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert result["status"] == "done" and result["steps"] == 4
    assert result["score"] == expected_score
    assert (out / "editor" / "editor-write-line" / "run" / "trajectory.jsonl").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table"][-1]["domain"] == "all"
    assert "editor/editor-write-line: score" in stdout


def test_eval_local_rerun_resumes_without_redoing_or_duplicating_finished_tasks(tmp_path):
    from tests.e2e_support import run_cli

    task = Path(__file__).resolve().parents[2] / "agent" / "evals" / "tasks" / "editor" / "editor-write-line.json"
    out = tmp_path / "out"
    with LoopbackServer(_editor_policy("Buy milk")) as server:
        first = run_cli(["eval", "local", str(task), "--out", str(out), "--base-url", server.base_url,
                         "--max-steps", "6"], env_display=None, timeout=180)
    assert first.returncode == 0, first.stderr
    with LoopbackServer([]) as server:  # any request would fail: a finished task must not run again
        again = run_cli(["eval", "local", str(task), "--out", str(out), "--base-url", server.base_url],
                        env_display=None, timeout=180)
        requests = len(server.requests)
    assert again.returncode == 0, again.stderr
    assert requests == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["score"] == 1.0
    assert json.loads((out / "summary.json").read_text())["tasks"] == 1
