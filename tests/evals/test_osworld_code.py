"""Our generated code through OSWorld's REAL code path: desktop-env 1.0.2's ``DesktopEnv.step`` (with its
``_fix_pyautogui_less_than_bug`` rewriter) and ``PythonController``, in .venv-osworld, driving our guest.

A hostile corpus of texts (quotes, backslashes, newlines, ``<``, ``pyautogui.typewrite(`` and ``press('<')`` inside
the text, NUL, RTL and zero-width marks, 2,000-character strings) is typed: every text must reach the typing
primitive exactly and nothing else may run. A control proves the test can see an escape: the old ``repr()``-quoted
code for the attack in issue 16 does run its ``os.system`` through the same path.
"""
from __future__ import annotations

import base64
import json

import pytest

from actions.codegen import needs_clipboard, osworld_action
from actions.types import Hotkey, Point, TypeText
from agent.evals.local_tasks import APPS_DIR
from envs.osworld_guest import GuestConfig, GuestServer
from envs.xvfb import VirtualDisplay
from tests.osworld_support import free_port, recording_pyautogui, use_test_displays

ATTACK = "pyautogui.typewrite(\"X' if __import__('os').system('touch {canary}') else 'Y<Z\")"


def hostile_corpus(canary: str) -> list[str]:
    pieces = [
        "plain words",
        "it's a \"quoted\" 'text'",
        "back\\slash \\n \\t \\x41 \\u003c \\\\ \\' \\\"",
        "line one\nline two\r\nline three\ttabbed",
        "a<b", "<<<", "1 < 2 > 0",
        ATTACK.format(canary=canary),
        "pyautogui.typewrite('X\\' if __import__(\"os\").system(\"touch " + canary + "\") else \"Y<Z')",
        "pyautogui.typewrite(\"\\u003c\"); __import__('os').system('touch " + canary + "')",
        "pyautogui.press('<')", "pyautogui.press(\"\\u003c\")", "pyautogui.press('<'); pyautogui.typewrite('<')",
        "\"\"\"; import os; os.system('touch " + canary + "'); \"\"\"",
        "'''); __import__('os').system('touch " + canary + "') #",
        "NUL\x00byte\x00",
        "RTL \u202eevil\u202c, marks \u200f\u200e, zero \u200b width \u200d joiner \ufeff bom",
        "שלום עולם", "مرحبا", "日本語 naïve café 😀",
        "\\", "'", "\"", "<", " ",
        "lone \ud800 surrogate",
    ]
    long_mix = ("".join(pieces) * 20)[:2000]
    return pieces + ["x" * 2000, long_mix, ("<'\"\\\n" * 400)[:2000]]


@pytest.fixture(scope="module")
def desktop():
    use_test_displays()
    with VirtualDisplay(1024, 768) as vd:
        yield vd


@pytest.fixture
def worker(osworld_workers):
    return osworld_workers.get()


def _records(path) -> list[list]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_hostile_texts_are_typed_exactly_through_desktop_env_step(desktop, worker, tmp_path):
    canary = tmp_path / "pwned"
    record = tmp_path / "record.jsonl"
    env = recording_pyautogui(tmp_path, record)
    texts = hostile_corpus(str(canary))
    with GuestServer(GuestConfig(display=desktop.display, home=tmp_path / "home", extra_env=env),
                     port=free_port()) as guest:
        worker.connect(guest.base_url, cache_dir=tmp_path / "cache", screen_size=(1024, 768))
        actions = [osworld_action(TypeText(text=t)) for t in texts]
        actions.append(osworld_action(TypeText(text=texts[7], at=Point(x=10, y=20))))
        results = worker.step(actions)
    assert len(results) == len(actions)
    assert not canary.exists(), "model text became code in the guest"
    seen = _records(record)
    expected = [call for t in texts for call in _typing_calls(t)]
    expected += [["click", [], {"x": 10, "y": 20}], *_typing_calls(texts[7])]
    assert seen == expected  # every text exactly, and no other call


def _typing_calls(text: str) -> list[list]:
    """What typing ``text`` must do, and nothing more: write it, or put its exact bytes on the clipboard and paste."""
    if not needs_clipboard(text):
        return [["write", [text], {}]]
    return [["xclip", ["-selection", "clipboard"], base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()],
            ["hotkey", ["ctrl", "v"], {}]]


def test_control_repr_quoted_code_does_escape_through_the_same_path(desktop, worker, tmp_path):
    """Without this the test above could pass because nothing ever runs: repr() quoting is not safe."""
    canary = tmp_path / "pwned-control"
    record = tmp_path / "record.jsonl"
    env = recording_pyautogui(tmp_path, record)
    old_style = f"pyautogui.write({ATTACK.format(canary=canary)!r})"
    with GuestServer(GuestConfig(display=desktop.display, home=tmp_path / "home", extra_env=env),
                     port=free_port()) as guest:
        worker.connect(guest.base_url, cache_dir=tmp_path / "cache", screen_size=(1024, 768))
        worker.step([old_style])
    assert canary.exists()


REAL_TEXTS = [
    "it's \"quoted\" \\ back\\slash \\n \\x41 \\u003c",
    "a<b<<c>d",
    ATTACK,  # {canary} left as it is: the text itself is what must arrive
    "pyautogui.press('<'); pyautogui.typewrite('<')",
    "line one\nline two",
    "naïve café שלום \u200f zero\u200bwidth",
    ("<'\"\\ mixed " * 30).strip(),
    "\n",
]


def test_texts_typed_for_real_on_x_arrive_exactly(desktop, worker, tmp_path):
    """Real pyautogui and xclip on Xvfb, into a Tk editor launched by OSWorld's SetupController."""
    home = tmp_path / "home"
    typed = home / "typed.txt"
    task = {"id": "typing", "instruction": "type", "config": [
        {"type": "launch", "parameters": {"command": ["python", str(APPS_DIR / "tk_editor.py"), "~/typed.txt"]}},
        {"type": "execute_with_verification", "parameters": {
            "command": ["true"], "verification": {"window_exists": "Editor - typed.txt"}, "max_wait_time": 30}},
        {"type": "activate_window", "parameters": {"window_name": "Editor - typed.txt"}},
    ], "evaluator": {"func": "infeasible"}}
    with GuestServer(GuestConfig(display=desktop.display, home=home), port=free_port()) as guest:
        worker.connect(guest.base_url, cache_dir=tmp_path / "cache", screen_size=(1024, 768))
        worker.reset(task)
        # one step per text, through DesktopEnv.step each (a fresh `python -c` in the guest), then one save
        worker.step([osworld_action(TypeText(text=text)) for text in REAL_TEXTS])
        worker.step([osworld_action(Hotkey(keys=["ctrl", "s"]))])
        assert typed.read_text(encoding="utf-8") == "".join(REAL_TEXTS)
