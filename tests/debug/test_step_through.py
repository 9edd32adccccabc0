"""Step-through debugging, driven through a pseudo-terminal like a person at a keyboard.

The agent runs in a child process on the session's Xvfb display against the Tk target app and a loopback
vLLM server; the test types commands into the child's terminal and checks the screen output, the app's
state and the trajectory.

The child is the real ``kimi-cua run ... --step``.
"""
from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e_support import (
    DONE,
    ROOT,
    centre,
    cli,
    kimi_reply,
    last_image_size,
    read_state,
    run_cli,
    trajectory,
)
from tests.loopback import LoopbackServer

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Terminal:
    """A child process on a pseudo-terminal: ``expect`` output, ``send`` lines."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                                     start_new_session=True)
        os.close(slave)
        self.text = ""  # everything read so far, ANSI codes and carriage returns removed
        self._seen = 0

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not chunk:
            return False
        self.text += ANSI.sub("", chunk.decode("utf-8", "replace"))
        return True

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Wait for ``pattern`` (regex) in output after the previous match; return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text, self._seen)
            if match:
                self._seen = match.end()
                return match
            if time.monotonic() > deadline or not self._read(0.2) and self.proc.poll() is not None:
                raise AssertionError(f"{pattern!r} did not appear; output after the last match:\n"
                                     f"{self.text[self._seen:][-3000:]}")

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.05) and select.select([self.master], [], [], 0)[0]:
            pass
        return self.proc.wait(timeout=1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        os.close(self.master)


def step_command(server: LoopbackServer, out: Path, task: str, max_steps: int) -> list[str]:
    return cli() + ["run", task, "--base-url", server.base_url, "--out", str(out), "--max-steps", str(max_steps),
                    "--retries", "0", "--step"]




@pytest.fixture
def terminal(xdisplay):
    opened: list[Terminal] = []

    def open_terminal(server: LoopbackServer, out: Path, task: str = "Press the button", max_steps: int = 8):
        env = dict(os.environ, DISPLAY=xdisplay.display, PYTHONUNBUFFERED="1", TERM="dumb")
        term = Terminal(step_command(server, out, task, max_steps), env)
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()


def click_button(app: Path):
    def policy(request):
        state = read_state(app)
        if state["pressed"]:
            return DONE
        x, y = centre(state["boxes"]["button"], last_image_size(request))
        return kimi_reply("Click the 'Press me' button.", f"pyautogui.click(x={x}, y={y})")
    return policy


def test_step_mode_shows_the_step_and_runs_the_action_on_execute(app, terminal, tmp_path):
    out = tmp_path / "run"
    with LoopbackServer(click_button(app)) as server:
        term = terminal(server, out)
        term.expect(r"=== step 1/8 ===")
        term.expect(r"thinking: Let me look at the screen")
        term.expect(r"summary: ## Action:\s+Click the 'Press me' button")
        term.expect(r"budget: [\d,]+ prompt tokens of 131,072 \([\d.]+%\) \[server\].*images")
        click = term.expect(r"action 1: click \((\d+), (\d+)\)  \[screen pixels\]")
        shot = Path(term.expect(r"screenshot: (\S+\.png)").group(1))
        term.expect(r"\[step 1\] command")
        assert read_state(app)["pressed"] == 0  # nothing happens before the user says so
        term.send("execute")
        term.expect(r"step 1 done: ok")
        term.expect(r"=== step 2/8 ===")
        term.expect(r"action 1: done")
        term.send("")
        assert term.wait() == 0, term.text[-2000:]
    assert read_state(app)["pressed"] == 1
    bx = read_state(app)["boxes"]["button"]
    x, y = int(click.group(1)), int(click.group(2))
    assert bx[0] <= x <= bx[2] and bx[1] <= y <= bx[3]
    with Image.open(shot) as drawn, Image.open(out / "step_0001.png") as raw:
        assert drawn.width == raw.width and drawn.height > raw.height  # the caption strip
        ring = [drawn.getpixel((x + dx, y)) for dx in range(-16, 17)]
        assert any(r > 200 and g < 60 and b < 120 for r, g, b in ring), "no click marker at the action"


def test_edit_replaces_the_action_with_one_typed_in_the_model_language(app, terminal, tmp_path):
    def policy(request):  # the model insists on the text field
        x, y = centre(read_state(app)["boxes"]["entry"], last_image_size(request))
        return kimi_reply("Click the field.", f"pyautogui.click(x={x}, y={y})")

    out = tmp_path / "run"
    with LoopbackServer(policy) as server:
        term = terminal(server, out, max_steps=2)
        term.expect(r"\[step 1\] command")
        term.send("edit os.system('touch pwned')")
        term.expect(r"cannot use that action: no action was found")
        term.send("edit pyautogui.click(x=5000, y=300)")
        term.expect(r"cannot use that action: x=5000 is outside the screenshot \(0..1280\)")
        bx, by = centre(read_state(app)["boxes"]["button"], (1280, 720))
        term.send(f"edit pyautogui.click(x={bx}, y={by})")
        edited = term.expect(r"action 1: click \((\d+), (\d+)\)  \[screen pixels\]")
        term.expect(r"screenshot: \S+_2\.png")
        term.send("e")
        term.expect(r"step 1 done \(your action\): ok")
        term.expect(r"\[step 2\] command")
        term.send("stop")
        assert term.wait() == 1
    assert read_state(app)["pressed"] == 1
    assert not (ROOT / "pwned").exists()
    first = trajectory(out)[0]
    assert first["decided_by"] == "user"
    assert first["action"]["at"] == {"x": int(edited.group(1)), "y": int(edited.group(2))}


def test_retry_sends_the_hint_to_the_model_and_skip_runs_nothing(app, terminal, tmp_path):
    out = tmp_path / "run"
    with LoopbackServer(click_button(app)) as server:
        term = terminal(server, out, max_steps=3)
        term.expect(r"\[step 1\] command")
        term.send("retry the button is at the top")
        term.expect(r"=== step 1/3 ===")  # the same step, asked again
        term.expect(r"\[step 1\] command")
        term.send("skip")
        term.expect(r"step 1/3 \| click \(\d+, \d+\) \| skipped, not run \|")  # the step line says so, not "ok"
        term.expect(r"step 1 done: skipped")
        term.expect(r"\[step 2\] command")
        term.send("q")
        term.expect(r"step 2/3 \| click \(\d+, \d+\) \| stopped, not run \(stopped in the step-through debugger\)")
        term.expect(r"step 2 stopped: not run")
        assert term.wait() == 1
        requests = list(server.requests)
    assert len(requests) == 3
    assert "Hint from the user: the button is at the top" in json.dumps(requests[1])
    assert "Hint from the user" not in json.dumps(requests[0])
    assert read_state(app)["pressed"] == 0
    steps = trajectory(out)
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["result"]["skipped"] and all(r["skipped"] for r in steps[0]["results"])
    # the hint typed in the debugger is in the trajectory, with the answer it replaced
    assert [(r["hint"], r["reason"]) for r in steps[0]["retries"]] == [
        ("the button is at the top", "asked again in the step-through debugger")]
    assert steps[0]["retries"][0]["actions"][0]["type"] == "click"
    assert steps[1]["stopped"] == "stopped in the step-through debugger" and not steps[0]["stopped"]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "stopped" and info["steps"] == 2


def test_ctrl_c_at_the_prompt_says_what_to_do_and_twice_stops_cleanly(app, terminal, tmp_path):
    out = tmp_path / "run"
    with LoopbackServer(click_button(app)) as server:
        term = terminal(server, out)
        term.expect(r"\[step 1\] command")
        os.kill(term.proc.pid, signal.SIGINT)  # what Ctrl-C sends (the test's terminal is not the child's tty)
        term.expect(r"press Ctrl-C again or type stop to end the run here")
        term.expect(r"\[step 1\] command")
        term.send("bogus")  # the prompt still works, and a command in between starts the count again
        term.expect(r"unknown command 'bogus'")
        term.expect(r"\[step 1\] command")
        os.kill(term.proc.pid, signal.SIGINT)
        term.expect(r"press Ctrl-C again")
        term.expect(r"\[step 1\] command")
        os.kill(term.proc.pid, signal.SIGINT)
        term.expect(r"Ctrl-C again: stopping the run")
        term.expect(r"step 1 stopped: not run")
        assert term.wait() == 1
    assert read_state(app)["pressed"] == 0
    steps = trajectory(out)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "stopped" and info["steps"] == len(steps) == 1
    assert steps[0]["stopped"] == "Ctrl-C twice in the step-through debugger"


def test_ctrl_c_while_the_debugger_waits_in_process(tmp_path):
    """The prompt's own SIGINT handling, without a terminal: a pipe for input, signals sent to this process."""
    from actions.coords import Monitor
    from actions.types import Click, Point
    from agent.debug.step_through import StepThrough
    from agent.hooks import StepContext
    from envs.base import Observation, ScreenGeometry

    read_fd, write_fd = os.pipe()
    shown = io.StringIO()
    geometry = ScreenGeometry(monitor=Monitor(width=64, height=40), screen_width=64, screen_height=40)
    context = StepContext(step=1, max_steps=3, reply=None, actions=[Click(at=Point(x=5, y=5))],
                          observation=Observation(image=b"", width=64, height=40, geometry=geometry))
    before = signal.getsignal(signal.SIGINT)
    with os.fdopen(read_fd) as commands, os.fdopen(write_fd, "w") as typing:
        debugger = StepThrough(commands, shown)
        pid = os.getpid()
        threading.Timer(0.3, os.kill, (pid, signal.SIGINT)).start()  # once: a hint, the prompt again
        threading.Timer(0.8, lambda: (typing.write("execute\n"), typing.flush())).start()
        assert debugger.before_action(context) is None  # then "execute" runs the action
        assert "press Ctrl-C again or type stop" in shown.getvalue()
        assert shown.getvalue().count("[step 1] command") == 2
        assert signal.getsignal(signal.SIGINT) is before  # the run's handler is back once the prompt returns
        threading.Timer(0.3, os.kill, (pid, signal.SIGINT)).start()
        threading.Timer(0.7, os.kill, (pid, signal.SIGINT)).start()
        decision = debugger.before_action(context)
        assert decision is not None and decision.verdict == "stop"
        assert signal.getsignal(signal.SIGINT) is before
        # Ctrl-C at the safety question refuses the action
        from agent.safety.policy import ConfirmRequest

        threading.Timer(0.3, os.kill, (pid, signal.SIGINT)).start()
        request = ConfirmRequest(step=1, action=Click(at=Point(x=5, y=5)), description="click (5, 5)", rule="r",
                                 reason="a test")
        assert debugger.confirm(request) is False
        assert "^C - not allowed" in shown.getvalue()
    assert signal.getsignal(signal.SIGINT) is before


def test_continue_runs_n_steps_then_pauses_and_breakpoints_pause_a_free_run(app, terminal, tmp_path):
    long_thinking = "I wonder. " * 80 + "THE-VERY-END"

    asked = 0

    def policy(request):
        nonlocal asked
        asked += 1
        if asked >= 6 or read_state(app)["pressed"]:
            return DONE
        if asked == 5:
            x, y = centre(read_state(app)["boxes"]["button"], last_image_size(request))
            return f"◁think▷{long_thinking}◁/think▷## Code:\n```python\npyautogui.click(x={x}, y={y})\n```"
        return kimi_reply("Wait.", "computer.wait()")

    out = tmp_path / "run"
    with LoopbackServer(policy) as server:
        term = terminal(server, out, max_steps=8)
        term.expect(r"\[step 1\] command")
        term.send("continue 2")
        term.expect(r"step 2: wait 1s \(continuing\)")
        term.expect(r"=== step 3/8 ===")
        term.expect(r"\[step 3\] command")
        term.send("break click")
        term.expect(r"breakpoints: click")
        term.send("c")
        term.expect(r"step 4: wait 1s \(continuing\)")
        term.expect(r"breakpoint: click")
        shortened = term.expect(r"thinking: (.*)")
        assert "THE-VERY-END" in shortened.group(1) and "type think for all" in shortened.group(1)
        assert shortened.group(1).count("I wonder.") < 40
        term.expect(r"\[step 5\] command")
        assert read_state(app)["pressed"] == 0
        term.send("think")
        full = term.expect(r"--- thinking \(\d+ chars\) ---\n(.*?)\n--- end ---")
        assert full.group(1).count("I wonder.") == 80
        term.send("break -click")
        term.expect(r"breakpoints: none")
        term.send("continue")
        assert term.wait() == 0, term.text[-2000:]
    assert read_state(app)["pressed"] == 1
    assert "=== step 2/8 ===" not in term.text and "=== step 4/8 ===" not in term.text
    assert [s["action"]["type"] for s in trajectory(out)] == ["wait"] * 4 + ["click", "done"]


def test_closing_the_input_stops_the_run_and_keeps_the_trajectory(app, terminal, tmp_path):
    out = tmp_path / "run"
    with LoopbackServer(click_button(app)) as server:
        term = terminal(server, out)
        term.expect(r"\[step 1\] command")
        term.send("bogus")
        term.expect(r"unknown command 'bogus'")
        os.write(term.master, b"\x04")  # Ctrl-D: end of input on a terminal
        term.expect(r"input closed: stopping the run. The trajectory so far is kept in (\S+); "
                    r"continue it with: kimi-cua run --resume (\S+)")
        assert term.wait() == 1
    assert read_state(app)["pressed"] == 0
    assert len(trajectory(out)) == 1
    assert json.loads((out / "run.json").read_text())["status"] == "stopped"
    with LoopbackServer(click_button(app)) as server:  # the stopped run goes on where it stopped
        proc = run_cli(["run", "--resume", str(out), "--base-url", server.base_url, "--retries", "0"],
                       env_display=os.environ["DISPLAY"])
    assert proc.returncode == 0, proc.stderr
    assert read_state(app)["pressed"] == 1
    assert [s["step"] for s in trajectory(out)] == [1, 2, 3]
    assert [s["resumed"] for s in trajectory(out)] == [False, True, False]
    from agent.debug.report import build_report

    page = build_report(out)  # the report marks where the run was stopped and resumed
    assert "The run stopped after step 1 (input closed in the step-through debugger) and was resumed here" in page
