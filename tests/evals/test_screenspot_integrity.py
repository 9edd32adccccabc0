"""ScreenSpot evaluations that always finish (issue 18, item 7): numbers validated when loading, an unreadable
image a per-sample error, image paths kept inside the dataset folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from agent.evals.screenspot_data import DatasetError, load_dataset
from tests.evals.test_screenspot import by_instruction, run_cli
from tests.evals.test_screenspot_data import pro_row, write_pro
from tests.loopback import LoopbackServer

ANSWER = "pyautogui.click(x=0.15, y=0.3)"


def two_samples(root: Path) -> Path:
    return write_pro(root, {"gimp_linux": [pro_row(0, "gimp", "Creative", "text", [100, 100, 200, 200]),
                                           pro_row(1, "gimp", "Creative", "icon", [100, 100, 200, 200])]})


def rewrite_annotation(root: Path, change) -> None:
    path = root / "annotations" / "gimp_linux.json"
    rows = json.loads(path.read_text())
    change(rows)
    path.write_text(json.dumps(rows))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_infinite_bbox_is_refused_when_loading_naming_the_sample(tmp_path, bad):
    root = two_samples(tmp_path / "pro")
    rewrite_annotation(root, lambda rows: rows[1].__setitem__("bbox", [100, bad, 200, 200]))
    with pytest.raises(DatasetError, match=r"gimp_linux.json: sample #1 field 'bbox'.*finite"):
        load_dataset(root)


def test_a_nan_in_an_osworld_g_box_is_refused(tmp_path):
    root = tmp_path / "og"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (100, 50)).save(root / "images" / "a.png")
    rows = [{"id": "1", "image_path": "a.png", "instruction": "x", "box_type": "bbox",
             "box_coordinates": [1, 2, float("nan"), 4]}]
    (root / "OSWorld-G.json").write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match="box_coordinates"):
        load_dataset(root)


@pytest.mark.parametrize("path", ["../secret.png", "/etc/hostname", "gimp_linux/../../secret.png", "C:\\x.png"])
def test_image_paths_must_stay_inside_the_dataset_folder(tmp_path, path):
    root = two_samples(tmp_path / "pro")
    Image.new("RGB", (10, 10)).save(tmp_path / "secret.png")
    rewrite_annotation(root, lambda rows: rows[1].__setitem__("img_filename", path))
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        load_dataset(root)


def test_images_that_cannot_be_read_are_per_sample_errors_and_the_rest_finishes(tmp_path):
    root = two_samples(tmp_path / "pro")
    rows = [pro_row(i, "gimp", "Creative", "text", [100, 100, 200, 200]) for i in range(4)]
    write_pro(root, {"gimp_linux": rows})
    images = root / "images" / "gimp_linux"
    (images / "s1.png").write_bytes(b"this is not an image")
    # a decompression bomb: a tiny file that claims 40000 x 40000 pixels
    Image.new("1", (40_000, 40_000)).save(images / "s2.png", optimize=True)
    answers = {f"target gimp {i}": ANSWER for i in range(4)}
    out = tmp_path / "run"
    with LoopbackServer(by_instruction(answers)) as server:
        code = run_cli(["eval", "screenspot", str(root), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"])
        asked = len(server.requests)
    assert code == 0 and asked == 2  # the two unreadable images were never sent
    results = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(results) == ["gimp-0", "gimp-1", "gimp-2", "gimp-3"]
    for sid in ("gimp-1", "gimp-2"):
        assert results[sid]["unreadable"] and not results[sid]["correct"]
        assert results[sid]["error"].startswith("unreadable image:")
    assert results["gimp-0"]["correct"] and results["gimp-3"]["correct"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unreadable_images"] == 2 and summary["unfinished"] == 0
    # the re-run reads its own results back and has nothing left to do
    with LoopbackServer(by_instruction(answers)) as server:
        assert run_cli(["eval", "screenspot", str(root), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"]) == 0
        assert server.requests == []
