"""SIGKILL `kimi-cua run` at random moments, resume it each time, and count what went wrong; prints JSON.

    python benchmarks/kill_matrix.py [--kills 50] [--items 25] [--seed 1] [--port 0] [--latency 0.05]

On a private Xvfb desktop (openbox; $KIMI_CUA_DISPLAYS picks its number) an xterm runs bash in a scratch
folder. A scripted model (the loopback server) answers every step with "clear the line, then type
`echo item-NNN >> log.txt` + Enter", one new item per step, then DONE when all ``--items`` are in. It trusts its
own history like a model does: asked again for a step it already answered (a kill before anything ran), it
answers the same; told that a step "may have run", it looks (reads log.txt, as it would read the terminal) and
types the item again only if it is not there.

Each kill lands at one of three random moments, chosen at random: anywhere in the start-up (0 s to the measured
time of the first request), 0-500 ms after the model's reply was sent (parsing, the intent, the actions), or
0-300 ms after the intent appeared (while the actions run and the screen settles); then `kimi-cua run --resume`
continues. A finished run starts a
new one until ``--kills`` kills were made. Counted, per run and in total:
- ``actions_executed_twice``: items appended more than once to log.txt;
- ``records_lost``: items in log.txt that no step record typed, plus step numbers missing from the trajectory;
- ``records_duplicated``: step numbers recorded twice;
- ``unreadable_trajectories``: trajectories that failed to read back after a kill (or screenshots missing);
- ``items_missing``: items never appended by the finished run (the model was told and did not redo it).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actions.clipboard import is_terminal, window_class  # noqa: E402
from agent.trajectory import INTENT_FILE, read_trajectory  # noqa: E402
from envs.xvfb import VirtualDisplay  # noqa: E402
from tests.loopback import LoopbackServer, Reply  # noqa: E402

STEP = re.compile(r"Step (\d+) of")
INTERRUPTED = re.compile(r"Step (\d+) was interrupted.*?may have run completely, partly or not at all: .*?item-(\d+)",
                         re.S)


def reply(code: str) -> str:
    return f"◁think▷Next item.◁/think▷## Action:\nAppend the next item.\n## Code:\n```python\n{code}\n```"


class ScriptedModel:
    """Answers by the plan; the same server serves every incarnation of a run (it is the model's memory)."""

    def __init__(self, items: int) -> None:
        self.items = items
        self.log: Path | None = None
        self.assigned: dict[int, int] = {}  # step -> item typed in that step
        self.lock = threading.Lock()
        self.served = 0

    def reset(self, log: Path) -> None:
        with self.lock:
            self.log, self.assigned = log, {}

    def __call__(self, body: dict) -> str | Reply:
        text = _last_user_text(body)
        step = int(STEP.search(text).group(1))
        with self.lock:
            item = self.assigned.get(step)
            if item is None:
                told = INTERRUPTED.search(text)
                present = set(self.log.read_text().split()) if self.log and self.log.exists() else set()
                if told and f"item-{int(told.group(2)):03d}" not in present:
                    item = int(told.group(2))  # it looked at the terminal: the line is not there, so it redoes it
                else:
                    item = max(self.assigned.values(), default=0) + 1
                self.assigned[step] = item
            self.served += 1
        if item > self.items:
            return reply("computer.terminate(status='success')")
        return reply(f"pyautogui.hotkey('ctrl', 'u')\npyautogui.write('echo item-{item:03d} >> log.txt\\n')")


def _last_user_text(body: dict) -> str:
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            content = message["content"]
            return content if isinstance(content, str) else "\n".join(p.get("text", "") for p in content)
    return ""


def _start_terminal(vd: VirtualDisplay, work: Path) -> subprocess.Popen[bytes]:
    from Xlib import display as xdisplay

    env = dict(vd.env, HISTFILE="/dev/null", PS1="$ ")
    term = subprocess.Popen(["xterm", "-geometry", "100x30+10+10", "-e", "bash", "--noprofile", "--norc"],
                            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = xdisplay.Display(vd.display)
    deadline = time.monotonic() + 20
    while not is_terminal(window_class(d)):
        if time.monotonic() > deadline:
            raise RuntimeError("the xterm did not get the focus")
        time.sleep(0.05)
    d.close()
    time.sleep(0.5)
    return term


def _check_readable(out: Path) -> tuple[bool, list[int]]:
    try:
        steps = read_trajectory(out)
    except Exception:  # noqa: BLE001 - any failure to read back counts
        return False, []
    ok = all((out / s.screenshot).is_file() for s in steps)
    return ok, [s.step for s in steps]


def _judge_run(out: Path, log: Path, items: int) -> dict[str, int]:
    steps = read_trajectory(out)
    numbers = [s.step for s in steps]
    lines = log.read_text().split() if log.exists() else []
    counts = Counter(lines)
    typed = {m.group(1) for s in steps for a in s.actions if a.type == "type"
             for m in [re.search(r"(item-\d+)", a.text)] if m}
    return {
        "actions_executed_twice": sum(n - 1 for n in counts.values() if n > 1),
        "records_lost": sum(1 for line in counts if line not in typed)
        + len(set(range(1, max(numbers, default=0) + 1)) - set(numbers)),
        "records_duplicated": len(numbers) - len(set(numbers)),
        "items_missing": sum(1 for i in range(1, items + 1) if f"item-{i:03d}" not in counts),
        "interrupted_steps": sum(1 for s in steps if any(n.startswith("interrupted") for n in s.notes)),
        "steps": len(steps),
    }


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    started = time.perf_counter()
    model = ScriptedModel(args.items)
    totals = Counter()
    kills = 0
    runs: list[dict] = []
    kill_log: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kill-matrix-") as tmp, VirtualDisplay(1024, 600) as vd, \
            LoopbackServer(model, latency=args.latency, port=args.port) as server:
        base = [sys.executable, "-m", "agent", "run"]
        common = ["--base-url", server.base_url, "--retries", "0", "--env", "local", "--display", vd.display,
                  "--max-steps", str(args.items * 4)]
        env = dict(os.environ, DISPLAY=vd.display)
        run_index = 0
        startup = 4.0  # seconds from the process start to its first request (learned as it goes)
        while kills < args.kills:
            run_index += 1
            work = Path(tmp) / f"run{run_index}"
            work.mkdir()
            out, log = work / "out", work / "log.txt"
            model.reset(log)
            term = _start_terminal(vd, work)
            first = True
            try:
                while True:
                    if first or not (out / "run.json").exists():
                        command = base + ["append the items", "--out", str(out)] + common
                    else:
                        command = base + ["--resume", str(out)] + common
                    first = False
                    launched = time.time()
                    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True)
                    if kills >= args.kills:
                        _, err = proc.communicate(timeout=600)
                        if proc.returncode != 0:
                            raise RuntimeError(f"the final resume failed ({proc.returncode}): {err[-2000:]}")
                        break
                    served = model.served
                    began = time.monotonic()
                    mode = rng.choice(("startup", "reply", "actions"))
                    if mode == "startup":  # anywhere from the process start to about its first request
                        time.sleep(rng.uniform(0.0, startup))
                    else:
                        deadline = time.monotonic() + 120
                        while proc.poll() is None and time.monotonic() < deadline and (
                                model.served == served if mode == "reply" else not (out / INTENT_FILE).exists()):
                            time.sleep(0.001)
                        if model.served != served:
                            startup = 0.5 * startup + 0.5 * (time.monotonic() - began)
                        time.sleep(rng.uniform(0.0, 0.5 if mode == "reply" else 0.3))
                    if proc.poll() is not None:  # it finished (or failed) before the kill
                        err = proc.stderr.read()
                        if proc.returncode != 0:
                            raise RuntimeError(f"the run failed before its kill ({proc.returncode}): {err[-2000:]}")
                        break
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=30)
                    proc.stderr.close()
                    kills += 1
                    readable, numbers = _check_readable(out) if (out / "trajectory.jsonl").exists() else (True, [])
                    totals["unreadable_trajectories"] += 0 if readable else 1
                    intent = out / INTENT_FILE
                    # an intent this incarnation wrote (not one left by an earlier kill): actions were running
                    pending = intent.exists() and intent.stat().st_mtime >= launched
                    totals["kills_with_intent_pending"] += int(pending)
                    kill_log.append({"run": run_index, "mode": mode, "steps": len(numbers),
                                     "intent_pending": pending})
                    if not readable:
                        break
                judged = _judge_run(out, log, args.items)
                runs.append({"run": run_index, **judged})
                for key, value in judged.items():
                    totals[key] += value
            finally:
                term.terminate()
                term.wait(timeout=10)
    return {
        "kills": kills,
        "runs": len(runs),
        "items_per_run": args.items,
        "actions_executed_twice": totals["actions_executed_twice"],
        "records_lost": totals["records_lost"],
        "records_duplicated": totals["records_duplicated"],
        "unreadable_trajectories": totals["unreadable_trajectories"],
        "items_missing": totals["items_missing"],
        "kills_with_intent_pending": totals["kills_with_intent_pending"],
        "interrupted_steps_recorded": totals["interrupted_steps"],
        "steps_recorded": totals["steps"],
        "kills_by_moment": dict(Counter(k["mode"] for k in kill_log)),
        "kills_before_the_first_step": sum(1 for k in kill_log if not k["steps"] and not k["intent_pending"]),
        "per_run": runs,
        "kill_log": kill_log if args.verbose else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--items", type=int, default=25, help="lines each run appends before DONE")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="loopback server port (default: any free one)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the scripted model takes per reply")
    parser.add_argument("--verbose", action="store_true", help="list every kill")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
