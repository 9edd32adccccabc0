"""Datasets generated from real Tk applications under Xvfb: true boxes, both layouts, evaluated end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from agent.evals.screenspot_data import load_dataset
from agent.evals.screenspot_make import generate
from tests.loopback import LoopbackServer
from tests.evals.test_screenspot import image_size_of, instruction_of, run_cli


@pytest.fixture(scope="module")
def v2_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "v2"
    generate(out, layout="v2", scenes=1, seed=7)
    return out


def _hex(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def test_generated_boxes_cover_exactly_the_widget_pixels(v2_data: Path) -> None:
    checked = 0
    for ann in sorted(v2_data.glob("screenspot_*_v2.json")):
        for row in json.loads(ann.read_text()):
            image = Image.open(v2_data / "screenspotv2_image" / row["img_filename"]).convert("RGB")
            x, y, w, _h = row["bbox"]
            bg = _hex(row["bg"])
            inside = [image.getpixel((x + dx, y + 1)) for dx in range(1, w - 1)]  # the widget's top row
            outside = [image.getpixel((x + dx, y - 1)) for dx in range(1, w - 1) if y >= 1]  # just above it
            assert sum(p == bg for p in inside) / len(inside) > 0.8, row["instruction"]
            assert not any(p == bg for p in outside), row["instruction"]
            checked += 1
    assert checked >= 15


def test_pro_layout_is_written_and_loads(tmp_path: Path) -> None:
    generate(tmp_path / "pro", layout="pro", scenes=2, seed=1)
    ds = load_dataset(tmp_path / "pro")
    assert ds.layout == "pro"
    assert {s.application for s in ds.samples} == {"settings", "calculator", "browser"}
    assert {s.ui_type for s in ds.samples} == {"text", "icon"}
    sizes = {Image.open(s.image).size for s in ds.samples}
    assert all(Image.open(s.image).size == s.img_size for s in ds.samples)
    assert len(sizes) == 3  # desktop, mobile and web windows differ in size


def test_generated_v2_evaluates_to_the_exact_expected_breakdown(v2_data: Path, tmp_path: Path) -> None:
    boxes: dict[tuple[str, tuple[int, int]], list[int]] = {}
    expected: dict[str, dict[str, int]] = {}
    for ann in sorted(v2_data.glob("screenspot_*_v2.json")):
        split = ann.stem.split("_")[1]
        for row in json.loads(ann.read_text()):
            size = Image.open(v2_data / "screenspotv2_image" / row["img_filename"]).size
            boxes[(row["instruction"], size)] = row["bbox"]
            counts = expected.setdefault(split, {"text": 0, "icon": 0})
            counts[row["data_type"]] += 1

    def policy(body: dict) -> str:  # text targets: the box centre in pixels; icons: no point at all
        instruction = instruction_of(body).split("<instruction> ", 1)[1]
        x, y, w, h = boxes[(instruction, image_size_of(body))]
        icon = instruction.startswith("open ")
        return "computer.wait()" if icon else f"pyautogui.click(x={x + w // 2}, y={y + h // 2})"

    out = tmp_path / "run"
    with LoopbackServer(policy) as server:
        assert run_cli(["eval", "screenspot", str(v2_data), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "screenspot-v2"
    total_text = sum(c["text"] for c in expected.values())
    total_icon = sum(c["icon"] for c in expected.values())
    overall = summary["metrics"]["overall"]
    assert (overall["num_total"], overall["num_correct_action"], overall["wrong_format_num"]) == (
        total_text + total_icon, total_text, total_icon)
    assert (overall["text_acc"], overall["icon_acc"]) == (1.0, 0.0)
    for split, c in expected.items():
        table = summary["metrics"]["by_split"][f"split:{split}"]
        assert (table["num_total"], table["num_correct_action"]) == (c["text"] + c["icon"], c["text"])
    assert set(summary["metrics"]["by_data_source"]) == {"source:tk-settings", "source:tk-calculator",
                                                          "source:tk-browser"}
