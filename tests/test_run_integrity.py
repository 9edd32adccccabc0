"""`kimi-cua run` under kills, full disks and read-only folders (issue 18, items 2, 3, 8 and 9).

Kills are real SIGKILLs; the model is the loopback server on 127.0.0.1; the desktop is a real Xvfb display.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from actions.clipboard import is_terminal, window_class
from actions.types import Click, Point, TypeText
from agent.hooks import AgentHooks
from agent.loop import Agent, AgentConfig
from agent.models.vllm import VLLMClient
from agent.trajectory import (
    INTENT_FILE,
    RunInfo,
    StepRecord,
    TrajectoryWriter,
    read_info,
    read_intent,
    read_trajectory,
    repair_trajectory,
)
from envs.base import ActionResult
from tests.e2e_support import DONE, ROOT, cli, kimi_reply
from tests.fault_server import MemoryDesktop
from tests.loopback import LoopbackServer, Reply
from tests.mounts import tmpfs

WAIT = kimi_reply("Wait.", "computer.wait(seconds=0)")
CLICK = kimi_reply("Click.", "pyautogui.click(x=0.5, y=0.5)")


def last_user_text(body: dict) -> str:
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            content = message["content"]
            parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content]
            return "\n".join(parts)
    return ""


def step_of(body: dict) -> int:
    return int(re.search(r"Step (\d+) of", last_user_text(body)).group(1))


def wait_until(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.05)


def kimi(args: list[str], **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(cli() + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


# ---- item 2: the intent is recorded before acting; a resumed step is not re-run blindly -------------
@pytest.fixture
def terminal_desktop(make_display, tmp_path):
    """A private display with a focused xterm running bash in tmp_path/'work'."""
    from Xlib import display as xdisplay

    vd = make_display(1024, 600)
    work = tmp_path / "work"
    work.mkdir()
    term = subprocess.Popen(["xterm", "-geometry", "90x20+20+20", "-e", "bash", "--noprofile", "--norc"],
                            env=vd.env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = xdisplay.Display(vd.display)
    try:
        wait_until(lambda: is_terminal(window_class(d)), "the xterm getting the focus")
        time.sleep(0.3)  # bash draws its prompt
        yield vd, work
    finally:
        d.close()
        term.terminate()
        term.wait(timeout=5)


def test_a_step_killed_while_its_action_ran_is_never_run_again_blindly(terminal_desktop, tmp_path):
    vd, work = terminal_desktop
    out = tmp_path / "run"
    holder: dict[str, int] = {}

    def first_run(body):  # step 1 appends to a file, then the typed command kills kimi-cua itself
        return kimi_reply("Append and stop.", f"pyautogui.write('echo once >> log.txt; kill -9 {holder['pid']}\\n')")

    with LoopbackServer(first_run) as server:
        proc = kimi(["run", "append a line", "--base-url", server.base_url, "--out", str(out), "--retries", "0",
                     "--env", "local", "--display", vd.display, "--max-steps", "5"])
        holder["pid"] = proc.pid
        proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (work / "log.txt").read_text() == "once\n"
    assert read_trajectory(out) == [] and read_intent(out) is not None  # acted, not recorded: the intent says so
    stepped = tmp_path / "run-step"
    shutil.copytree(out, stepped)  # the same killed run, resumed twice: the model told, and --step asking

    for mode, folder in (("model", out), ("step", stepped)):
        seen: list[str] = []

        def resumed(body):
            seen.append(last_user_text(body))
            return DONE

        with LoopbackServer(resumed) as server:
            proc = kimi(["run", "--resume", str(folder), "--base-url", server.base_url, "--retries", "0", "--env",
                         "local", "--display", vd.display] + (["--step"] if mode == "step" else []),
                        stdin=subprocess.PIPE)
            # --step: "y" = it ran, then an empty line executes the model's DONE
            _, err = proc.communicate("y\n\n" if mode == "step" else "", timeout=120)
        assert proc.returncode == 0, err
        assert (work / "log.txt").read_text() == "once\n"  # not typed twice
        steps = read_trajectory(folder)
        assert [s.step for s in steps] == [1, 2] and not (folder / INTENT_FILE).exists()
        assert any("interrupted" in n for n in steps[0].notes)
        if mode == "model":
            assert steps[0].result.ok is False and "may have run" in steps[0].result.error
            assert "may have run completely, partly or not at all: type 'echo once" in seen[0]
        else:
            assert "did it run?" in err and steps[0].result.ok
            assert "may have run" not in seen[0]


class Killed(BaseException):
    """Stands in for SIGKILL inside one process: nothing after the raise runs."""


def _killed_on_the_second_click(out: Path) -> None:
    """A run whose one step clicks twice, killed while the second click runs (its intent is left behind)."""
    two = kimi_reply("Two clicks.", "pyautogui.click(x=0.1, y=0.1)\npyautogui.click(x=0.2, y=0.2)")

    def die_on_second(desktop, action):
        if len(desktop.executed) == 2:
            raise Killed()

    with LoopbackServer([two]) as server:
        with pytest.raises(Killed):
            Agent(MemoryDesktop(on_execute=die_on_second), VLLMClient(server.base_url, retries=0),
                  AgentConfig(max_steps=3, out_dir=out)).run("two clicks")


def test_the_intent_holds_finished_actions_and_a_rerun_runs_only_the_rest(tmp_path):
    out = tmp_path / "run"
    _killed_on_the_second_click(out)
    intent = read_intent(out)
    assert intent is not None and intent.finished == 1 and read_trajectory(out) == []

    class Rerun(AgentHooks):
        def on_interrupted_step(self, interrupted):
            assert interrupted.finished == 1 and interrupted.uncertain() == Click(at=Point(x=128, y=80))
            return "rerun"

    desktop = MemoryDesktop()
    with LoopbackServer([DONE]) as server:
        result = Agent(desktop, VLLMClient(server.base_url, retries=0), AgentConfig(max_steps=3, out_dir=out),
                       hooks=Rerun()).run("two clicks", resume=True)
    assert result.status == "done"
    assert desktop.executed == [Click(at=Point(x=128, y=80))]  # only the unfinished one ran again
    first = read_trajectory(out)[0]
    assert [r.ok for r in first.results] == [True, True] and any("run again" in n for n in first.notes)


def test_the_model_is_told_of_an_interrupted_step_even_when_the_resume_that_settled_it_was_killed(tmp_path):
    """benchmarks/kill_matrix.py found it: a resume settles the interrupted step (records it, drops the intent) and is
    killed before its first prompt; the note lived only in that process, so the next resume never told the model,
    which went on to the next item and left one undone."""
    out = tmp_path / "run"
    _killed_on_the_second_click(out)

    class DiesBeforeAsking(VLLMClient):
        def complete(self, *args, **kwargs):
            raise Killed()

    with LoopbackServer([DONE]) as server:
        with pytest.raises(Killed):
            Agent(MemoryDesktop(), DiesBeforeAsking(server.base_url, retries=0),
                  AgentConfig(max_steps=3, out_dir=out)).run("two clicks", resume=True)
    assert read_intent(out) is None and len(read_trajectory(out)) == 1  # settled, then killed before the prompt
    with LoopbackServer([DONE]) as server:
        result = Agent(MemoryDesktop(), VLLMClient(server.base_url, retries=0),
                       AgentConfig(max_steps=3, out_dir=out)).run("two clicks", resume=True)
        prompt = last_user_text(server.requests[0])
    assert result.status == "done"
    assert "Step 1 was interrupted" in prompt and "may have run completely, partly or not at all" in prompt, prompt


def test_an_intent_whose_step_was_recorded_is_dropped_on_resume(tmp_path):
    out = tmp_path / "run"
    with LoopbackServer([CLICK, CLICK]) as server:
        Agent(MemoryDesktop(), VLLMClient(server.base_url, retries=0), AgentConfig(max_steps=2, out_dir=out)).run("x")
    record = read_trajectory(out)[-1]
    writer = TrajectoryWriter(out)
    writer.begin_intent(record)  # killed after the record was appended, before the intent was removed
    writer.close()
    desktop = MemoryDesktop()
    with LoopbackServer([DONE]) as server:
        Agent(desktop, VLLMClient(server.base_url, retries=0), AgentConfig(max_steps=5, out_dir=out)).run(
            "x", resume=True)
    assert desktop.executed == [] and [s.step for s in read_trajectory(out)] == [1, 2, 3]
    assert not (out / INTENT_FILE).exists()


# ---- item 3: a torn last line is cut in place ------------------------------------------------------
def record(step: int) -> StepRecord:
    return StepRecord(step=step, screenshot=f"step_{step:04d}.png", image_width=10, image_height=10,
                      summary="x" * 200)


def test_a_torn_last_line_is_cut_in_place_and_a_whole_one_without_newline_is_kept(tmp_path):
    path = tmp_path / "trajectory.jsonl"
    whole = b"".join(record(i).model_dump_json().encode() + b"\n" for i in (1, 2, 3))
    path.write_bytes(whole + record(4).model_dump_json().encode()[:57])
    inode = path.stat().st_ino
    repair_trajectory(tmp_path)
    assert path.read_bytes() == whole and path.stat().st_ino == inode  # the same file, shortened
    path.write_bytes(whole + record(4).model_dump_json().encode())  # complete, only its newline missing
    repair_trajectory(tmp_path)
    assert [r.step for r in read_trajectory(tmp_path)] == [1, 2, 3, 4]
    assert path.read_bytes().endswith(b"}\n")


def test_resume_after_a_torn_tail_keeps_every_step_and_screenshot(tmp_path):
    out = tmp_path / "run"
    with LoopbackServer([CLICK, CLICK]) as server:
        Agent(MemoryDesktop(), VLLMClient(server.base_url, retries=0), AgentConfig(max_steps=2, out_dir=out)).run("x")
    shots = {p.name: p.read_bytes() for p in out.glob("step_*.png")}
    with (out / "trajectory.jsonl").open("a") as f:
        f.write('{"step": 3, "screenshot": "step_00')  # the kill tore step 3's line
    with LoopbackServer([DONE]) as server:
        result = Agent(MemoryDesktop(), VLLMClient(server.base_url, retries=0),
                       AgentConfig(max_steps=5, out_dir=out)).run("x", resume=True)
    assert result.status == "done" and [s.step for s in read_trajectory(out)] == [1, 2, 3]
    assert all((out / name).read_bytes() == data for name, data in shots.items())


def test_a_killed_local_task_run_has_its_torn_results_line_cut_in_place(tmp_path):
    from agent.evals.osworld import LocalTaskResult, read_local_results

    path = tmp_path / "results.jsonl"
    done = LocalTaskResult(task_id="a", domain="d", path="p", score=1.0).model_dump_json() + "\n"
    path.write_text(done + '{"task_id": "b", "dom')
    inode = path.stat().st_ino
    assert list(read_local_results(path)) == [("d", "a")]
    assert path.read_text() == done and path.stat().st_ino == inode


# ---- item 8: a full disk or a read-only --out ------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted for the test (root only)."""
    with tmpfs(tmp_path / "disk", "size=4m") as mount:
        yield mount


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def run_in_process(args: list[str], capsys) -> tuple[int, str]:
    """The real command line, in this process (no interpreter start-up per run)."""
    from agent.cli.main import main

    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def test_a_full_disk_marks_the_run_names_the_fix_and_the_run_resumes_later(xdisplay, small_disk, capsys):
    out = small_disk / "run"
    filler: list[Path] = []

    def policy(body):
        if step_of(body) == 3 and not filler:
            filler.append(fill(small_disk))  # the disk fills up while the model thinks about step 3
        return WAIT

    with LoopbackServer(policy) as server:
        code, err = run_in_process(["run", "wait a while", "--base-url", server.base_url, "--out", str(out),
                                    "--retries", "0", "--max-steps", "10"], capsys)
    assert code == 1, err
    assert f"cannot write {out}" in err and "free some space" in err
    assert f"kimi-cua run --resume {out}" in err
    info = read_info(out)
    assert info.status == "error" and "No space left" in info.error
    assert [s.step for s in read_trajectory(out)] == [1, 2]
    assert not list(out.glob(".*.tmp"))  # no stale temporary file
    filler[0].unlink()
    with LoopbackServer([DONE]) as server:
        code, err = run_in_process(["run", "--resume", str(out), "--base-url", server.base_url, "--retries", "0"],
                                   capsys)
    assert code == 0, err
    assert [s.step for s in read_trajectory(out)] == [1, 2, 3]


def test_a_read_only_out_folder_exits_2_naming_the_path_and_the_fix(xdisplay, small_disk, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    out = small_disk / "run"
    with LoopbackServer([WAIT]) as server:  # any exception escaping the command would fail this test
        code, err = run_in_process(["run", "wait", "--base-url", server.base_url, "--out", str(out), "--retries", "0"],
                                   capsys)
    assert code == 2, err
    assert f"cannot write {out}" in err and "choose a writable --out" in err


def test_run_json_is_marked_on_a_full_disk_without_a_temporary_file(small_disk):
    writer = TrajectoryWriter(small_disk / "run")
    info = RunInfo(task="t")
    writer.write_info(info)
    fill(small_disk)
    info.status, info.error = "error", "No space left on device"
    writer.write_info(info)  # no new file can be made: rewritten within its own blocks
    writer.close()
    assert read_info(small_disk / "run").status == "error"
    assert not list((small_disk / "run").glob(".*.tmp"))


# ---- item 9: a SIGKILLed kimi-cua leaves nothing running ---------------------------------------------
def test_sigkill_leaves_no_xvfb_window_manager_or_launched_program_behind(tmp_path):
    release = threading.Event()

    def policy(body):
        release.wait(60)  # the model "thinks" until the test is done
        return WAIT

    with LoopbackServer(policy) as server:
        proc = kimi(["run", "wait", "--base-url", server.base_url, "--out", str(tmp_path / "run"), "--retries", "0",
                     "--env", "virtual", "--size", "800x600", "--launch", "xterm", "--launch", "sleep 600"])
        try:
            wait_until(lambda: server.requests or proc.poll() is not None, "the first model request")
            assert proc.poll() is None, proc.stderr.read()
            children = psutil.Process(proc.pid).children(recursive=True)
            names = sorted(c.name() for c in children)
            assert {"Xvfb", "openbox", "xterm", "sleep"} <= set(names), names
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    wait_until(lambda: not any(alive(c) for c in children), "every child of the killed run ending", timeout=30)
