"""Generated model answers through the parser and the coordinate conversion; prints JSON.

    python benchmarks/parser_fuzz.py [--answers 200000] [--seed 0]

Each answer goes through what ``kimi-cua parse`` and the agent loop do with model text: ``parse_reply`` (or
``parse_summary``), then ``to_screen`` for every action on a random image size. Counted:
- ``format_errors``: ``ActionParseError`` (the expected refusal, fed back to the model);
- ``other_exceptions``: anything else escaping (must be 0), with the first examples;
- ``hangs_over_100ms``: answers whose parse took more than 100 ms of this thread's CPU time (must be 0); the
  wall-clock count is reported beside it (on a loaded machine the wall clock also counts waiting for a core);
- ``executed``: whether a canary file that hostile answers try to create exists afterwards (must be false).

Answers are drawn from: random unicode; concatenated dialect fragments; generated calls with random literal
arguments (fenced or Toolcall); corpus entries with random edits; the misreadings of issue 18 (words beside
numbers, negations, mixed frames, foreign fences, getattr, long key chains) with random edits; and pathological
shapes (thousands of calls, deep nesting, huge numbers, answers at the length cap).
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actions.coords import Monitor, to_screen  # noqa: E402
from actions.parser import MAX_SUMMARY_CHARS, parse_reply, parse_summary  # noqa: E402
from actions.types import ActionParseError  # noqa: E402
from tests.parser_corpus import CORPUS  # noqa: E402
from tests.test_parser_fuzz import ALPHABET, CANARY, FRAGMENTS, HOSTILE, variants  # noqa: E402

NAMES = ["click", "doubleClick", "rightClick", "moveTo", "dragTo", "drag", "scroll", "hscroll", "write",
         "typewrite", "press", "hotkey", "keyDown", "keyUp", "terminate", "wait", "sleep", "getattr", "eval",
         "system", "done", "fail", "type", "key"]
MODULES = ["", "pyautogui.", "computer.", "pg.", "time.", "os.", "getattr(pyautogui, 'click')"]
KEYWORDS = ["x", "y", "clicks", "button", "keys", "message", "direction", "start", "end", "status", "answer",
            "presses", "amount", "point", "zz"]
MISREADINGS = [
    "DONE (1, 1)", "FAIL. There are 2 files (9, 3).", "I will not click(0.5, 0.5) yet; let me WAIT.",
    "pyautogui.click(1, 1)", "pyautogui.drag(start=[0.2, 0.3], end=[640, 360])", "```bash\nclick(0.5, 0.5)\n```",
    "Toolcall: getattr(pyautogui,'click')(0.5, 0.5)", "pyautogui.press('a+b+c+d+e+f+g+h+i')",
    'pyautogui.scroll(5, direction=["up"])', "Do not click(x=0.1, y=0.2). DONE", "(0.1, 0.2) or (0.3, 0.4)",
    '{"bbox_2d": [0.1, 0.2, 0.3, 0.4], "label": "7"}', "It is not at (0.5, 0.5).", "WAIT [0.5, 0.5]",
    "click(x=0.5, y=540)", "```sh\nrm -rf ~\n```", "Answer: (12, 34)", "I can't do(0.1, 0.2)",
]


def literal(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return repr(rng.uniform(-2, 2))
    if kind == 1:
        return str(rng.randint(-5, 5000))
    if kind == 2:
        return repr("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 10))))
    if kind == 3:
        return rng.choice(["None", "True", "False", "nan", "inf", "1e999", "-0.0", "10**9", "0x1F"])
    if kind == 4:
        return "[" + ", ".join(literal(rng) for _ in range(rng.randint(0, 4))) + "]"
    if kind == 5:
        return rng.choice(["'up'", "'down'", "['up']", "{'a': 1}", "'ctrl+c'", "'a+b+c+d+e+f+g'", "'enter'"])
    if kind == 6:
        return rng.choice(HOSTILE)
    return repr(rng.random())


def call(rng: random.Random) -> str:
    args = []
    for _ in range(rng.randint(0, 5)):
        args.append(literal(rng) if rng.random() < 0.5 else f"{rng.choice(KEYWORDS)}={literal(rng)}")
    text = f"{rng.choice(MODULES)}{rng.choice(NAMES)}({', '.join(args)})"
    shape = rng.randrange(4)
    if shape == 0:
        return f"```python\n{text}\n```"
    if shape == 1:
        return f"Toolcall: {text}"
    if shape == 2:
        return f"## Action:\n{rng.choice(['Click it.', 'Do not click it.', 'DONE', 'I am not DONE.'])}\n## Code:\n```{rng.choice(['python', '', 'bash', 'json'])}\n{text}\n```"
    return text


def pathological(rng: random.Random) -> str:
    kind = rng.randrange(7)
    n = rng.randint(100, 6000)
    if kind == 0:
        return "click(" * n
    if kind == 1:
        return "pyautogui.click(0.5, 0.5)\n" * min(n, MAX_SUMMARY_CHARS // 26)
    if kind == 2:
        return "(" * n + "0.5, 0.5" + ")" * n
    if kind == 3:
        return "9" * n
    if kind == 4:
        return "not " * (n // 2) + "click(0.1, 0.2)"
    if kind == 5:
        return ("(0.1, 0.2) " * n)[:MAX_SUMMARY_CHARS]
    return "```python\n" + "pyautogui.hotkey(" + ", ".join(["'a'"] * min(n, 3000)) + ")\n```"


def answers(rng: random.Random, count: int):
    corpus = [text for _, text, _ in CORPUS if len(text) < 10_000]
    made = 0
    while made < count:
        kind = rng.randrange(7)
        if kind == 0:
            base = "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 200)))
        elif kind == 1:
            base = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 30)))
        elif kind == 2:
            base = call(rng)
        elif kind == 3:
            base = rng.choice(corpus)
        elif kind == 4:
            base = rng.choice(MISREADINGS)
        elif kind == 5:
            base = pathological(rng)
        else:
            base = "◁think▷" + call(rng) + "◁/think▷" + call(rng)
        batch = min(count - made, 1 if kind == 5 else 20)
        for text in variants(base, rng, batch):
            yield text
            made += 1


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    CANARY.unlink(missing_ok=True)
    counts = {"answers": 0, "parsed": 0, "format_errors": 0, "other_exceptions": 0, "hangs_over_100ms": 0,
              "wall_over_100ms": 0}
    examples: list[dict] = []
    slowest = (0.0, "")
    signal.signal(signal.SIGALRM, _alarm)
    started = time.perf_counter()
    for text in answers(rng, args.answers):
        counts["answers"] += 1
        whole = rng.random() < 0.5
        width, height = rng.choice([(1920, 1080), (1280, 720), (3840, 2160), (100, 100), (1, 1)])
        monitor = Monitor(width=width, height=height)
        cpu, wall = time.thread_time(), time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, 5.0)  # a real hang ends as an exception, counted as a hang
        try:
            actions = (parse_reply if whole else parse_summary)(text)
            for action in actions:
                to_screen(action, shown_width=width, shown_height=height, monitor=monitor)
            counts["parsed"] += 1
        except ActionParseError:
            counts["format_errors"] += 1
        except _Hang:
            counts["hangs_over_100ms"] += 1
            examples.append({"kind": "hang", "text": text[:300]})
            continue
        except Exception as exc:  # noqa: BLE001 - exactly what is counted
            counts["other_exceptions"] += 1
            if len(examples) < 10:
                examples.append({"kind": type(exc).__name__, "error": str(exc)[:200], "text": text[:300]})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        cpu_s, wall_s = time.thread_time() - cpu, time.perf_counter() - wall
        if cpu_s > 0.1:
            counts["hangs_over_100ms"] += 1
            if len(examples) < 10:
                examples.append({"kind": "slow", "cpu_ms": round(cpu_s * 1000, 1), "text": text[:300]})
        if wall_s > 0.1:
            counts["wall_over_100ms"] += 1
        if cpu_s > slowest[0]:
            slowest = (cpu_s, text[:120])
    return {**counts, "executed": CANARY.exists(), "slowest_cpu_ms": round(slowest[0] * 1000, 2),
            "slowest_answer": slowest[1], "seconds": round(time.perf_counter() - started, 1), "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(run(parser.parse_args()), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
