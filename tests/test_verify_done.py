"""--verify-done (agent/verify.py): a DONE stands only on the checker's clear yes; otherwise the reason goes back to the
model and the run goes on. Loopback runs with scripted answers (tests/verify_support.py), the verdict reader, the
report, the step line, eval local's counts and the flags. The same run against the real vLLM:
tests/test_guards_real_vllm.py."""
from __future__ import annotations

import argparse

import pytest

from agent.cli.run import _step_state
from agent.debug.report import build_report
from agent.evals.local_run import done_checks, format_status_table, status_table
from agent.evals.osworld import LocalTaskResult
from agent.loop import Agent, AgentConfig
from agent.models.vllm import VLLMClient
from agent.reply import make_reply
from agent.trajectory import read_trajectory
from agent.verify import read_verdict
from tests.e2e_support import DONE
from tests.fault_server import MemoryDesktop
from tests.loopback import LoopbackServer
from tests.verify_support import TASK, answer, check_run, is_check, paint_blue


def verified_run(tmp_path, verify_done=True, max_steps=6):
    desktop = MemoryDesktop(640, 400, on_execute=paint_blue)
    with LoopbackServer(lambda body: answer(body["messages"])) as server:
        agent = Agent(desktop, VLLMClient(server.base_url, retries=0),
                      AgentConfig(max_steps=max_steps, out_dir=tmp_path / "run", stream=False, verify_done=verify_done))
        result = agent.run(TASK)
        requests = [r["messages"] for r in server.requests]
    return result, desktop, requests


def test_a_done_overturned_by_the_check_and_the_run_then_finishing(tmp_path):
    result, desktop, requests = verified_run(tmp_path)
    steps = read_trajectory(tmp_path / "run")
    check_run(result, steps, tmp_path / "run", [m for m in requests if is_check(m)])
    assert len(desktop.executed) == 1
    page = build_report(tmp_path / "run")
    assert "done checked (--verify-done)" in page and "done overturned" in page
    assert "overturned: the reason went back to the model" in page and "confirmed: the run ended with done" in page
    assert 'href="step_0001_verify.png"' in page
    assert _step_state(steps[0]).startswith("done overturned by the check (no: The screen is still white")
    assert _step_state(steps[2]) == "done"
    assert done_checks(tmp_path / "run") == (2, 1)


def test_without_the_flag_the_first_done_ends_the_run(tmp_path):
    result, desktop, requests = verified_run(tmp_path, verify_done=False)
    assert result.status == "done" and result.steps == 1 and not any(is_check(m) for m in requests)
    assert read_trajectory(tmp_path / "run")[0].verification is None


def test_a_resumed_run_does_not_take_an_overturned_done_for_the_end(tmp_path):
    result, _, _ = verified_run(tmp_path, max_steps=1)  # stops after the overturned DONE of step 1
    assert result.status == "max_steps"
    desktop = MemoryDesktop(640, 400, on_execute=paint_blue)
    with LoopbackServer(lambda body: answer(body["messages"])) as server:
        agent = Agent(desktop, VLLMClient(server.base_url, retries=0),
                      AgentConfig(max_steps=6, out_dir=tmp_path / "run", stream=False, verify_done=True))
        result = agent.run(TASK, resume=True)
    assert result.status == "done" and result.steps == 3


@pytest.mark.parametrize("text, verdict, reason", [
    ("◁think▷hm◁/think▷## Verdict:\nyes\n## Reason:\nThe file is saved.", "yes", "The file is saved"),
    ("## Verdict: **No**\n## Reason: the dialog is still open.", "no", "the dialog is still open"),
    ("Yes. The window shows the saved file.", "yes", "The window shows the saved file"),
    ("no", "no", "(no reason given)"),
    ("It might be complete, hard to tell.", "unclear", "It might be complete, hard to tell"),
    ("## Verdict:\nyes\n... actually, Verdict: no", "unclear", "actually, Verdict: no"),
    ("◁think▷the screen shows", "unclear", "the check was cut off before its answer"),
])
def test_only_a_clear_yes_is_a_yes(text, verdict, reason):
    assert read_verdict(make_reply(text)) == (verdict, reason)


def test_eval_local_counts_checked_and_overturned_dones(tmp_path):
    rows = [LocalTaskResult(task_id="a", domain="d", path="a.json", status="success", score=1.0, done_checked=2,
                            done_overturned=1),
            LocalTaskResult(task_id="b", domain="d", path="b.json", status="fail", score=0.0, done_checked=1),
            LocalTaskResult(task_id="c", domain="e", path="c.json", status="fail", score=0.0)]
    table = {r.domain: r for r in status_table(rows)}
    assert (table["d"].done_checked, table["d"].overturned) == (3, 1)
    assert (table["all"].done_checked, table["all"].overturned) == (3, 1)
    text = format_status_table(status_table(rows))
    assert "done_checked" in text.splitlines()[0] and "overturned" in text.splitlines()[0]
    assert done_checks(tmp_path / "nothing") == (0, 0)


def test_the_flags():
    from agent.cli.eval_osworld import register_eval
    from agent.cli.run import register

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    register_eval(sub)
    assert parser.parse_args(["run", "t"]).verify_done is None  # off
    assert parser.parse_args(["run", "t", "--verify-done"]).verify_done is True
    assert parser.parse_args(["local", "builtin"]).verify_done is True  # on for eval local
    assert parser.parse_args(["local", "builtin", "--no-verify-done"]).verify_done is False
