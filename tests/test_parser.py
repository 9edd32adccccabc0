"""The parser: every dialect in the corpus gives exactly the expected actions; bad text a readable error."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from actions.keys import known_keys, normalize_key
from actions.parser import FORMAT_HINT, parse_reply, parse_summary, split_reply
from actions.types import ActionParseError, Click, Point, TypeText
from tests.parser_corpus import CORPUS, Rejected


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_corpus_output_parses_to_exactly_the_expected_result(text, expected):
    if isinstance(expected, Rejected):
        with pytest.raises(ActionParseError) as caught:
            parse_reply(text)
        assert expected.says in str(caught.value)
    else:
        assert parse_reply(text) == expected


def test_corpus_is_large_and_covers_every_action_type():
    assert len(CORPUS) >= 60
    kinds = {a.type for _, _, expected in CORPUS if isinstance(expected, list) for a in expected}
    assert kinds == {"click", "move", "drag", "scroll", "type", "press", "hotkey", "wait", "done", "fail"}


def test_numbers_keep_the_type_they_were_written_in():
    (pixel,) = parse_summary("pyautogui.click(x=960, y=540)")
    (fraction,) = parse_summary("pyautogui.click(x=0.5, y=1)")
    assert isinstance(pixel.at.x, int) and isinstance(fraction.at.x, float) and isinstance(fraction.at.y, int)


def test_hostile_code_is_never_executed(tmp_path: Path):
    canary = tmp_path / "executed"
    payloads = [
        f"```python\n__import__('pathlib').Path({str(canary)!r}).touch()\n```",
        f"Toolcall: click(x=__import__('pathlib').Path({str(canary)!r}).touch(), y=0)",
        f"```python\npyautogui.write(open({str(canary)!r}, 'w').write('x'))\n```",
        f"```python\nexec(\"open({str(canary)!r}, 'w')\")\n```",
    ]
    for payload in payloads:
        with pytest.raises(ActionParseError):
            parse_reply(payload)
    assert not canary.exists()


def test_error_messages_tell_the_model_how_to_answer():
    with pytest.raises(ActionParseError) as caught:
        parse_summary("I am not sure.")
    assert str(caught.value).endswith(FORMAT_HINT)


def test_truncated_reply_says_it_was_cut_off():
    with pytest.raises(ActionParseError, match="cut off"):
        parse_reply("◁think▷ The button is at (0.5, 0.5), so I will click")


def test_split_reply_uses_the_last_end_marker():
    assert split_reply("◁think▷a◁/think▷b◁/think▷ c ") == ("a◁/think▷b", "c", False)
    assert split_reply("no thinking") == ("", "no thinking", False)
    assert split_reply("◁think▷ cut") == ("cut", "", True)


def test_summary_with_markers_is_split_too():
    assert parse_summary("◁think▷(0.9, 0.9)◁/think▷(0.1, 0.2)") == [Click(at=Point(x=0.1, y=0.2))]


def test_typed_text_is_kept_byte_for_byte():
    text = "a\\b \"q\" 'x' <tag> 日本 😀\n"
    (action,) = parse_summary(f"```python\npyautogui.write({text!r})\n```")
    assert action == TypeText(text=text)


@pytest.mark.parametrize(("written", "canonical"), [
    ("ctrl", "ctrl"), ("Control", "ctrl"), ("CTRL", "ctrl"), ("cmd", "win"), ("Win", "win"), ("super", "win"),
    ("meta", "win"), ("command", "win"), ("option", "alt"), ("Enter", "enter"), ("return", "enter"),
    ("\n", "enter"), ("Esc", "esc"), ("escape", "esc"), ("PgUp", "pageup"), ("page_up", "pageup"),
    ("Page Down", "pagedown"), ("del", "delete"), ("Delete", "delete"), ("BackSpace", "backspace"),
    ("ArrowUp", "up"), ("KEY_LEFT", "left"), ("Key.right", "right"), ("space", "space"), (" ", "space"),
    ("Tab", "tab"), ("F5", "f5"), ("A", "a"), ("<", "<"), ("plus", "+"), ("PrtSc", "printscreen"),
])
def test_key_names_are_normalized(written, canonical):
    assert normalize_key(written) == canonical
    assert canonical in known_keys()


@pytest.mark.parametrize("bad", ["", "hyperdrive", "é", "日", "ctrl+c", "x" * 40])
def test_unknown_keys_are_parse_errors(bad):
    with pytest.raises(ActionParseError):
        normalize_key(bad)


def run_cli(stdin: str, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "agent.cli.parse", *args], check=False, input=stdin, text=True,
                          capture_output=True, cwd=Path(__file__).resolve().parents[1], timeout=60)


def test_cli_prints_actions_in_pixels_of_the_shown_image():
    done = run_cli("◁think▷(0.9, 0.9)◁/think▷```python\npyautogui.click(x=0.5, y=0.25)\npyautogui.write('日本')\n```",
                   "--width", "1000", "--height", "800")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"type": "click", "at": {"x": 500, "y": 200}, "button": "left", "count": 1},
                                       {"type": "type", "text": "日本", "at": None}]


def test_cli_mode_pixels_reads_small_numbers_as_pixels():
    done = run_cli("click(x=1, y=1)", "--width", "100", "--height", "100", "--mode", "pixels")
    assert json.loads(done.stdout)[0]["at"] == {"x": 1, "y": 1}


@pytest.mark.parametrize("text", ["__import__('os').system('id')", "◁think▷ cut off", "click(x=5000, y=1)"])
def test_cli_exits_2_with_the_reason(text):
    done = run_cli(text, "--width", "1920", "--height", "1080")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: ") and len(done.stderr) > 20
