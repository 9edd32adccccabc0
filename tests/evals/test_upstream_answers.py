"""``--answers upstream``: answers read exactly as ScreenSpot-Pro's Kimi-VL wrapper reads them, beside ours."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main as run_cli
from agent.evals.upstream_answers import upstream_point
from tests.evals.test_screenspot import pro_dataset
from tests.loopback import LoopbackServer


def by_instruction(answers: dict[str, str]):
    def policy(request: dict) -> str:
        text = request["messages"][-1]["content"][-1]["text"]
        return next(a for key, a in answers.items() if key in text)
    return policy


@pytest.mark.parametrize(("reply", "point"), [
    ("pyautogui.click(x=0.25, y=0.5)", (0.25, 0.5)),
    ("◁think▷x=0.9, y=0.9 maybe◁/think▷## Code:\npyautogui.click(x=0.25, y=0.5)", (0.25, 0.5)),  # after the think
    ("◁think▷x=0.9, y=0.9 and never closed", None),  # cut off inside the thinking
    ("pyautogui.click(x=0.25,y=0.5)", None),  # no space after the comma
    ("pyautogui.click(x = 0.25, y = 0.5)", None),  # spaces around =
    ("pyautogui.click(x=512, y=300)", None),  # pixels
    ("pyautogui.click(0.25, 0.5)", None),  # positional
    ('{"bbox_2d": [0.1, 0.2, 0.3, 0.4]}', None),  # a box
    ("x = int(0.879 * screen_width)\ny = int(0.149 * screen_height)\npyautogui.click(x, y)", None),  # computed
    ("pyautogui.click(x=0.3, y=1.5)", (0.3, 1.0)),  # its pattern stops after the "1" of 1.5
    ("pyautogui.moveTo(x=0.1, y=0.2); pyautogui.click(x=0.7, y=0.8)", (0.1, 0.2)),  # the first match
    ("pyautogui.click(x=1, y=0)", (1.0, 0.0)),
])
def test_the_wrapper_reading(reply: str, point: tuple[float, float] | None) -> None:
    assert upstream_point(reply) == point


def test_answers_upstream_makes_the_wrappers_reading_primary_and_old_results_are_read_again(tmp_path: Path,
                                                                                          capsys) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    out = tmp_path / "run"
    with LoopbackServer(by_instruction(answers)) as server:
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"]) == 0
        # Lines written before both readings were kept have no upstream fields: they are read again from the answer.
        lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        for line in lines:
            line.pop("upstream_correctness"), line.pop("upstream_point")
        (out / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        capsys.readouterr()
        before = len(server.requests)
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--answers", "upstream", "--no-progress"]) == 0
        assert len(server.requests) == before  # nothing asked again: both readings come from the stored answers
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers"] == "upstream"
    assert summary["metrics"]["overall"]["action_acc"] == pytest.approx(0.3)
    assert summary["metrics_by_reading"]["kimi-cua"]["overall"]["action_acc"] == pytest.approx(0.5)
    printed = capsys.readouterr().out
    assert "primary reading of the answers: upstream" in printed
    assert "| table | n | accuracy (upstream) | accuracy (kimi-cua) |" in printed
    assert "| overall | 10 | 30.00 | 50.00 |" in printed
