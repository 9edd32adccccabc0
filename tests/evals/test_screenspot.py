"""`kimi-cua eval screenspot` end to end against the loopback server: exact accuracy and every breakdown."""
from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agent.cli.eval_screenspot import register_eval
from tests.loopback import LoopbackServer, Reply
from tests.evals.test_screenspot_data import pro_row, write_osworld_g, write_pro

MODEL = "kimi-vl-thinking-2506"


def run_cli(argv: list[str]) -> int:
    """The real argument parsing and handler (agent.cli.main when it lists this module, else the same parser)."""
    from agent.cli import main as cli

    if "agent.cli.eval_screenspot" in cli.COMMAND_MODULES:
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="kimi-cua")
    sub = parser.add_subparsers()
    register_eval(sub.add_parser("eval").add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def instruction_of(body: dict[str, Any]) -> str:
    for message in body["messages"]:
        if message["role"] == "user":
            for part in message["content"]:
                if part.get("type") == "text":
                    return part["text"]
    raise AssertionError("no user text in the request")


def image_size_of(body: dict[str, Any]) -> tuple[int, int]:
    for message in body["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part.get("type") == "image_url":
                data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                with Image.open(io.BytesIO(data)) as im:
                    return im.size
    raise AssertionError("no image in the request")


def by_instruction(answers: dict[str, str | Reply]):
    def policy(body: dict[str, Any]) -> str | Reply:
        text = instruction_of(body)
        for instruction, answer in answers.items():
            if text.endswith(instruction):
                return answer
        raise AssertionError(f"unexpected instruction {text!r}")
    return policy


# ---- ScreenSpot-Pro ------------------------------------------------------------------------------------
def pro_dataset(root: Path) -> tuple[Path, dict[str, str]]:
    small, big = (1000, 500), (2000, 1000)
    rows = {
        "gimp_linux": [pro_row(0, "gimp", "Creative", "text", [100, 100, 200, 200], small),
                       pro_row(1, "gimp", "Creative", "icon", [100, 100, 200, 200], small),
                       pro_row(2, "gimp", "Creative", "icon", [100, 100, 200, 200], small)],
        "vscode_macos": [pro_row(0, "vscode", "Dev", "text", [100, 100, 200, 200], small, "macos"),
                         pro_row(1, "vscode", "Dev", "text", [100, 100, 200, 200], small, "macos"),
                         pro_row(2, "vscode", "Dev", "icon", [100, 100, 200, 200], small, "macos")],
        "word_linux": [pro_row(i, "word", "Office", t, [200, 200, 400, 400], big)
                       for i, t in enumerate(["text", "icon", "text", "text"])],
    }
    answers = {
        "target gimp 0": "## Action: click it\n## Code:\n```python\npyautogui.click(x=0.15, y=0.3)\n```",  # correct
        "target gimp 1": "pyautogui.click(x=0.9, y=0.9)",  # wrong
        "target gimp 2": "I cannot find that element.",  # wrong_format
        "target vscode 0": "click(x=150, y=150)",  # pixels, correct
        "target vscode 1": '{"bbox_2d": [0.1, 0.2, 0.2, 0.4]}',  # box -> centre (0.15, 0.3), correct
        "target vscode 2": "◁think▷The icon is top left.◁/think▷pyautogui.click(x=0.12, y=0.25)",  # correct
        "target word 0": "◁think▷still looking and never finishing",  # cut off: wrong_format
        "target word 1": "computer.wait()",  # no point: wrong_format
        "target word 2": "pyautogui.click(x=0.2, y=0.4)",  # exactly the bottom-right corner: correct
        "target word 3": "click(x=401, y=300)",  # one pixel right of the box: wrong
    }
    return write_pro(root, rows), answers


def m(correct: int, total: int, wrong_format: int, text: float, icon: float) -> dict[str, Any]:
    return {"num_correct_action": correct, "num_total": total, "wrong_format_num": wrong_format,
            "action_acc": correct / total, "text_acc": text, "icon_acc": icon}


PRO_EXPECTED = {
    "overall": m(5, 10, 3, 4 / 6, 1 / 4),
    "leaderboard_simple_style": {"group:Creative": m(1, 3, 1, 1.0, 0.0), "group:Dev": m(3, 3, 0, 1.0, 1.0),
                                 "group:Office": m(1, 4, 2, 1 / 3, 0.0)},
    "leaderboard_detailed_style": {"app:gimp": m(1, 3, 1, 1.0, 0.0), "app:vscode": m(3, 3, 0, 1.0, 1.0),
                                   "app:word": m(1, 4, 2, 1 / 3, 0.0)},
    "by_platform": {"plat:linux": m(2, 7, 3, 2 / 4, 0.0), "plat:macos": m(3, 3, 0, 1.0, 1.0)},
    "by_ui_type": {"ui_type:icon": m(1, 4, 2, 0.0, 1 / 4), "ui_type:text": m(4, 6, 1, 4 / 6, 0.0)},
    "seeclick_style": {"plat:linux inst_style:instruction gt_type:positive": m(2, 7, 3, 2 / 4, 0.0),
                       "plat:macos inst_style:instruction gt_type:positive": m(3, 3, 0, 1.0, 1.0)},
    "fine_grained": {
        "plat:linux app:gimp inst_style:instruction gt_type:positive": m(1, 3, 1, 1.0, 0.0),
        "plat:linux app:word inst_style:instruction gt_type:positive": m(1, 4, 2, 1 / 3, 0.0),
        "plat:macos app:vscode inst_style:instruction gt_type:positive": m(3, 3, 0, 1.0, 1.0)},
}


def assert_metrics(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for section, tables in expected.items():
        if "num_total" in tables:
            assert actual[section] == pytest.approx(tables), section
            continue
        assert sorted(actual[section]) == sorted(tables), section
        for key, table in tables.items():
            assert actual[section][key] == pytest.approx(table), f"{section} {key}"


def test_pro_accuracy_and_every_breakdown_match_the_upstream_rules(tmp_path: Path, capsys) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    out = tmp_path / "run"
    with LoopbackServer(by_instruction(answers)) as server:
        code = run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--concurrency", "4", "--no-progress"])
        assert len(server.requests) == 10
        assert {r["temperature"] for r in server.requests} == {0.0}
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "screenspot-pro" and summary["finished"] == 10 and summary["unfinished"] == 0
    assert_metrics(summary["metrics"], PRO_EXPECTED)
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    rows = {r["id"]: r for r in lines}
    assert rows["vscode-0"]["point"] == [150, 150] and rows["vscode-0"]["correct"] is True
    assert rows["gimp-2"]["correctness"] == "wrong_format" and "unparseable" in rows["gimp-2"]["error"]
    assert rows["word-0"]["correctness"] == "wrong_format" and rows["word-0"]["point"] is None
    assert all(r["latency_ms"] >= 0 and r["answer"] for r in lines)
    page = (out / "failures.html").read_text()
    assert page.count('<section class="miss"') == 5 and "gimp-1" in page and "vscode-0" not in page
    printed = capsys.readouterr().out
    # accuracy (kimi-cua, primary) beside accuracy (upstream: ScreenSpot-Pro's Kimi-VL wrapper reads only
    # "x=<fraction>, y=<fraction>": gimp 0, vscode 2 and word 2 are its only hits; pixels and boxes are wrong_format)
    assert "| table | n | accuracy (kimi-cua) | accuracy (upstream) | text | icon | wrong format |" in printed
    assert "primary reading of the answers: kimi-cua" in printed
    assert "| overall | 10 | 50.00 | 30.00 | 66.67 | 25.00 | 3 |" in printed
    assert "| group:Dev | 3 | 100.00 | 33.33 | 100.00 | 100.00 | 0 |" in printed
    # a table without text (or icon) samples has no text (icon) accuracy: "-", not 0.00
    assert "| ui_type:icon | 4 | 25.00 | 25.00 | - | 25.00 | 2 |" in printed
    assert "| ui_type:text | 6 | 66.67 | 33.33 | 66.67 | - | 1 |" in printed
    assert summary["answers"] == "kimi-cua" and summary["metrics_by_reading"]["kimi-cua"] == summary["metrics"]
    assert_metrics(summary["metrics_by_reading"]["upstream"], {
        "overall": m(3, 10, 6, 2 / 6, 1 / 4),
        "leaderboard_simple_style": {"group:Creative": m(1, 3, 1, 1.0, 0.0), "group:Dev": m(1, 3, 2, 0.0, 1.0),
                                     "group:Office": m(1, 4, 3, 1 / 3, 0.0)}})
    assert rows["vscode-0"]["upstream_correctness"] == "wrong_format" and rows["vscode-0"]["upstream_point"] is None
    assert rows["gimp-0"]["upstream_correctness"] == "correct" and rows["gimp-0"]["upstream_point"] == [150, 150]
    assert summary["ui_type_counts"]["overall"] == {"text": 6, "icon": 4}
    assert summary["ui_type_counts"]["by_ui_type"]["ui_type:icon"] == {"text": 0, "icon": 4}
    assert summary["ui_type_counts"]["leaderboard_simple_style"]["group:Office"] == {"text": 3, "icon": 1}


def test_the_screenspot_pro_prompt_sends_its_system_message(tmp_path: Path) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    with LoopbackServer(by_instruction(answers)) as server:
        code = run_cli(["eval", "screenspot", str(data), "--out", str(tmp_path / "run"), "--base-url",
                        server.base_url, "--prompt", "screenspot-pro-kimivl", "--limit", "2", "--no-progress"])
        body = server.requests[0]
    assert code == 0
    assert body["messages"][0]["role"] == "system" and "## Code:" in body["messages"][0]["content"]
    assert instruction_of(body).startswith("## Task Instruction:\ntarget ")


def test_filters_select_group_and_type(tmp_path: Path) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    with LoopbackServer(by_instruction(answers)) as server:
        code = run_cli(["eval", "screenspot", str(data), "--out", str(tmp_path / "run"), "--base-url",
                        server.base_url, "--group", "Office", "--type", "text", "--no-progress"])
        asked = sorted(instruction_of(b).split("> ")[-1] for b in server.requests)
    assert code == 0
    assert asked == ["target word 0", "target word 2", "target word 3"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["overall"] == pytest.approx(m(1, 3, 1, 1 / 3, 0.0))


def test_resume_after_a_killed_run_skips_finished_samples_and_never_duplicates(tmp_path: Path) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    out = tmp_path / "run"
    with LoopbackServer(by_instruction(answers)) as server:
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--limit", "4", "--no-progress"]) == 0
    results = out / "results.jsonl"
    with results.open("a") as f:  # the kill tore the line being written
        f.write('{"id": "vscode-1", "instruction": "target vs')
    with LoopbackServer(by_instruction(answers)) as server:
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"]) == 0
        assert len(server.requests) == 6
    ids = [json.loads(x)["id"] for x in results.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 10
    assert_metrics(json.loads((out / "summary.json").read_text())["metrics"], PRO_EXPECTED)


def test_server_errors_leave_samples_unfinished_and_a_rerun_retries_only_them(tmp_path: Path) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    out = tmp_path / "run"
    failing = dict(answers, **{"target word 2": Reply(status=400, content="the request was malformed")})
    with LoopbackServer(by_instruction(failing)) as server:
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["finished"], summary["unfinished"]) == (9, 1)
    with LoopbackServer(by_instruction(answers)) as server:
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"]) == 0
        assert [instruction_of(b).split("> ")[-1] for b in server.requests] == ["target word 2"]
    assert_metrics(json.loads((out / "summary.json").read_text())["metrics"], PRO_EXPECTED)


def test_several_base_urls_share_the_load(tmp_path: Path) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    with LoopbackServer(by_instruction(answers)) as a, LoopbackServer(by_instruction(answers)) as b:
        code = run_cli(["eval", "screenspot", str(data), "--out", str(tmp_path / "run"), "--base-url", a.base_url,
                        "--base-url", b.base_url, "--no-progress"])
        assert (len(a.requests), len(b.requests)) == (5, 5)
    assert code == 0


def test_a_resume_with_another_prompt_is_refused(tmp_path: Path, capsys) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    out = tmp_path / "run"
    with LoopbackServer(by_instruction(answers)) as server:
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--limit", "1", "--no-progress"]) == 0
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--prompt", "screenspot-pro-kimivl", "--no-progress"]) == 2
    assert "different run" in capsys.readouterr().err


def test_bad_data_exits_2_naming_the_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "screenspot_web_v2.json").write_text(json.dumps([{"img_filename": "x.png", "instruction": "a"}]))
    assert run_cli(["eval", "screenspot", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "screenspot_web_v2.json" in err and "'bbox'" in err


# ---- OSWorld-G -----------------------------------------------------------------------------------------
def test_osworld_g_bbox_polygon_refusal_and_class_groups(tmp_path: Path, capsys) -> None:
    rows = [
        {"id": "g1", "box_type": "bbox", "box_coordinates": [10, 10, 20, 20]},
        {"id": "g2", "box_type": "bbox", "box_coordinates": [10, 10, 20, 20]},
        {"id": "g3", "box_type": "polygon", "box_coordinates": [0, 0, 100, 0, 0, 100]},
        {"id": "g4", "box_type": "polygon", "box_coordinates": [0, 0, 100, 0, 0, 100]},
        {"id": "g5", "box_type": "refusal", "box_coordinates": [-1, -1, -1, -1]},
        {"id": "g6", "box_type": "refusal", "box_coordinates": [-1, -1, -1, -1]},
        {"id": "g7", "box_type": "refusal", "box_coordinates": [-1, -1, -1, -1]},
        {"id": "g8", "box_type": "refusal", "box_coordinates": [-1, -1, -1, -1]},
    ]
    gui_types = {"g1": ["Button"], "g2": ["Button", "Icon"], "g3": "Icon", "g4": ["Text field"], "g7": ["Button"]}
    for r in rows:
        r.update(image_path="shot.png", instruction=f"find {r['id']}")
        if r["id"] in gui_types:
            r["GUI_types"] = gui_types[r["id"]]
    # As downloaded: OSWorld-G.json (evaluated by default) beside OSWorld-G_refined.json (--subset refined).
    data = write_osworld_g(tmp_path / "og", rows, {"shot.png": (200, 100)},
                           classification={"text_matching": ["g1", "g2", "g5"], "element_recognition": ["g3", "g1"]})
    refined = [dict(r, instruction=f"refined {r['id']}") for r in rows[:2]]
    (data / "OSWorld-G_refined.json").write_text(json.dumps(refined))
    answers = {"find g1": "pyautogui.click(x=0.1, y=0.2)",  # (20, 20) in the box
               "find g2": "click(x=100, y=50)",  # outside
               "find g3": "pyautogui.click(x=0.1, y=0.2)",  # inside the triangle
               "find g4": "pyautogui.click(x=0.45, y=0.5)",  # (90, 50): beyond the hypotenuse
               "find g5": "computer.wait()",  # no point: a refusal
               "find g6": "pyautogui.click(x=-1, y=-1)",  # negative point: a refusal
               "find g7": "pyautogui.click(x=0.5, y=0.5)",  # pointed at something that is not there
               "find g8": "no idea"}  # garbage: never a refusal
    out = tmp_path / "run"
    with LoopbackServer(by_instruction(answers)) as server:
        code = run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "osworld-g"
    og = summary["osworld_g"]
    assert (og["total"], og["correct"], og["accuracy"]) == (8, 4, 0.5)
    # g4, g6, g7, g8 are not in the classification file: left out of the class tables, as upstream does.
    assert og["accuracy_dict_group"] == {
        "element_recognition": {"total": 2, "correct": 2, "accuracy": 1.0},
        "text_matching": {"total": 3, "correct": 2, "accuracy": 2 / 3}}
    assert og["accuracy_dict_gui_types"] == {
        "Button": {"total": 3, "correct": 1, "accuracy": 1 / 3},
        "Icon": {"total": 2, "correct": 1, "accuracy": 0.5},
        "Text field": {"total": 1, "correct": 0, "accuracy": 0.0}}
    assert "by_ui_type" not in summary["metrics"] or summary["metrics"]["by_ui_type"] == {}
    printed = capsys.readouterr().out
    assert "ui_type:None" not in printed and "| Button | 3 | 1 | 33.33 |" in printed
    assert summary["metrics"]["overall"]["wrong_format_num"] == 1
    verdicts = {json.loads(x)["id"]: json.loads(x)["correctness"] for x in (out / "results.jsonl").read_text().split("\n") if x}
    assert verdicts == {"g1": "correct", "g2": "wrong", "g3": "correct", "g4": "wrong", "g5": "correct",
                        "g6": "correct", "g7": "wrong", "g8": "wrong_format"}
    with LoopbackServer(lambda request: "pyautogui.click(x=0.1, y=0.2)") as server:
        code = run_cli(["eval", "screenspot", str(data), "--subset", "refined", "--out", str(tmp_path / "refined"),
                        "--base-url", server.base_url, "--no-progress"])
        assert code == 0 and len(server.requests) == 2
    refined_rows = [json.loads(x) for x in (tmp_path / "refined" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["instruction"] for r in refined_rows) == ["refined g1", "refined g2"]
