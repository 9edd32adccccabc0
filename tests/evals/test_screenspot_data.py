"""Loading every ScreenSpot-family layout, its errors, and the upstream hit rule (synthetic datasets)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from agent.evals.screenspot_data import (
    DatasetError,
    PredictedPoint,
    detect_layout,
    load_dataset,
    point_in_polygon,
    score,
    select,
)


def _image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 200, 200)).save(path)


def write_v2(root: Path, rows_by_split: dict[str, list[dict]], sizes: dict[str, tuple[int, int]]) -> Path:
    for name, size in sizes.items():
        _image(root / "screenspotv2_image" / name, size)
    for split, rows in rows_by_split.items():
        (root / f"screenspot_{split}_v2.json").write_text(json.dumps(rows))
    return root


def write_pro(root: Path, rows_by_file: dict[str, list[dict]]) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for stem, rows in rows_by_file.items():
        for row in rows:
            path = root / "images" / row["img_filename"]
            if not path.exists():
                _image(path, tuple(row["img_size"]))
        (root / "annotations" / f"{stem}.json").write_text(json.dumps(rows))
    return root


def write_osworld_g(root: Path, rows: list[dict], sizes: dict[str, tuple[int, int]],
                    classification: dict[str, list[str]] | None = None) -> Path:
    for name, size in sizes.items():
        _image(root / "images" / name, size)
    (root / "OSWorld-G.json").write_text(json.dumps(rows))
    if classification is not None:
        classified = {cls: [{"id": i} for i in ids] for cls, ids in classification.items()}
        (root / "classification_result.json").write_text(json.dumps({"classified": classified}))
    return root


def pro_row(i: int, app: str, group: str, ui_type: str, box: list[int], size=(1000, 500), platform="linux") -> dict:
    return {"id": f"{app}-{i}", "img_filename": f"{app}_{platform}/s{i}.png", "bbox": box, "img_size": list(size),
            "instruction": f"target {app} {i}", "instruction_cn": f"目标 {i}", "group": group,
            "platform": platform, "application": app, "ui_type": ui_type}


def test_v2_layout_is_detected_and_xywh_boxes_become_corners(tmp_path: Path) -> None:
    root = write_v2(tmp_path, {
        "mobile": [{"img_filename": "m.png", "bbox": [10, 20, 30, 40], "instruction": "a", "data_type": "text",
                    "data_source": "ios"}],
        "web": [{"img_filename": "w.png", "bbox": [1, 2, 3, 4], "instruction": "b", "data_type": "icon",
                 "data_source": "shop"}]}, {"m.png": (100, 200), "w.png": (300, 100)})
    assert detect_layout(root) == "screenspot"
    ds = load_dataset(root)
    assert ds.benchmark == "screenspot-v2"
    by_split = {s.split: s for s in ds.samples}
    assert by_split["mobile"].target.box == (10, 20, 40, 60)
    assert by_split["web"].ui_type == "icon" and by_split["web"].data_source == "shop"
    assert by_split["mobile"].image == root / "screenspotv2_image" / "m.png"


def test_pro_layout_keeps_corner_boxes_and_metadata(tmp_path: Path) -> None:
    root = write_pro(tmp_path, {"gimp_linux": [pro_row(0, "gimp", "Creative", "icon", [5, 6, 50, 60])]})
    ds = load_dataset(root)
    assert ds.layout == "pro" and ds.benchmark == "screenspot-pro"
    s = ds.samples[0]
    assert (s.id, s.target.box, s.img_size, s.group, s.application, s.platform, s.ui_type, s.split) == (
        "gimp-0", (5, 6, 50, 60), (1000, 500), "Creative", "gimp", "linux", "icon", "gimp_linux")
    assert s.instruction_cn == "目标 0"


def test_osworld_g_layout_reads_bbox_polygon_refusal_and_classes(tmp_path: Path) -> None:
    root = write_osworld_g(tmp_path, [
        {"id": "a", "image_path": "x.png", "instruction": "i", "box_type": "bbox", "box_coordinates": [1, 2, 3, 4]},
        {"id": "b", "image_path": "x.png", "instruction": "j", "box_type": "polygon",
         "box_coordinates": [0, 0, 10, 0, 10, 10]},
        {"id": "c", "image_path": "x.png", "instruction": "k", "box_type": "refusal", "box_coordinates": []},
    ], {"x.png": (64, 48)}, classification={"text_matching": ["a", "b"], "layout": ["a"]})
    ds = load_dataset(root)
    kinds = {s.id: (s.target.kind, s.target.box, s.target.polygon, s.classes) for s in ds.samples}
    assert kinds == {"a": ("bbox", (1, 2, 4, 6), None, ("text_matching", "layout")),
                     "b": ("polygon", None, (0, 0, 10, 0, 10, 10), ("text_matching",)),
                     "c": ("refusal", None, None, ())}  # not in the file: in no class table (as upstream)


@pytest.mark.parametrize("field,value,needle", [
    ("bbox", [1, 2, 3], "field 'bbox'"),
    ("img_filename", "missing.png", "field 'img_filename'"),
    ("instruction", None, "field 'instruction'"),
])
def test_a_bad_pro_record_names_the_file_and_the_field(tmp_path: Path, field: str, value, needle: str) -> None:
    root = write_pro(tmp_path, {"word_windows": [pro_row(0, "word", "Office", "text", [1, 1, 5, 5])]})
    ann = root / "annotations" / "word_windows.json"
    rows = json.loads(ann.read_text())
    rows[0][field] = value
    ann.write_text(json.dumps(rows))
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    assert str(ann) in str(err.value) and needle in str(err.value)


def test_missing_and_unknown_data_get_readable_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nope" / "deeper")
    (tmp_path / "notes.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(DatasetError, match="no known layout"):
        load_dataset(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "screenspot_web_v2.json").write_text("[{")
    with pytest.raises(DatasetError, match=r"screenspot_web_v2.json: not valid JSON"):
        load_dataset(tmp_path / "broken")


def test_pro_hit_rule_is_inclusive_and_uses_annotated_size(tmp_path: Path) -> None:
    root = write_pro(tmp_path, {"a_linux": [pro_row(0, "a", "G", "text", [100, 50, 200, 100], size=(1000, 500))]})
    s = load_dataset(root).samples[0]

    def at(x: float, y: float, reading: str = "normalized") -> str:
        return score(s, PredictedPoint.from_model(x, y, reading=reading, width=1000, height=500),
                     image_size=(1000, 500))

    assert at(0.1, 0.1) == "correct"  # exactly on the top-left corner
    assert at(0.2, 0.2) == "correct"  # exactly on the bottom-right corner
    assert at(0.2001, 0.15) == "wrong"
    assert at(200, 100, "pixels") == "correct" and at(201, 100, "pixels") == "wrong"
    assert score(s, None, image_size=(1000, 500)) == "wrong_format"


def test_osworld_g_rules_for_polygon_and_refusal(tmp_path: Path) -> None:
    root = write_osworld_g(tmp_path, [
        {"id": "p", "image_path": "x.png", "instruction": "i", "box_type": "polygon",
         "box_coordinates": [0, 0, 100, 0, 0, 100]},
        {"id": "r", "image_path": "x.png", "instruction": "j", "box_type": "refusal", "box_coordinates": [-1] * 4},
    ], {"x.png": (200, 200)})
    poly, refusal = load_dataset(root).samples

    def pt(x: float, y: float) -> PredictedPoint:
        return PredictedPoint.from_model(x, y, reading="pixels", width=200, height=200)

    assert score(poly, pt(10, 10), image_size=(200, 200)) == "correct"
    assert score(poly, pt(60, 60), image_size=(200, 200)) == "wrong"  # beyond the hypotenuse
    assert score(refusal, pt(-1, -1), image_size=(200, 200)) == "correct"
    assert score(refusal, pt(-1, 5), image_size=(200, 200)) == "wrong"
    assert score(refusal, None, image_size=(200, 200), refused=True) == "correct"
    assert score(refusal, None, image_size=(200, 200)) == "wrong_format"
    assert point_in_polygon(5, 5, (0, 0, 10, 0, 10, 10, 0, 10))


def test_select_filters_case_insensitively_then_limits(tmp_path: Path) -> None:
    root = write_pro(tmp_path, {"a_linux": [pro_row(i, "a", "CAD" if i % 2 else "Dev", "text" if i < 3 else "icon",
                                                    [0, 0, 1, 1]) for i in range(6)]})
    samples = load_dataset(root).samples
    assert [s.id for s in select(samples, filters={"group": ["cad"]})] == ["a-1", "a-3", "a-5"]
    assert [s.id for s in select(samples, filters={"group": ["CAD"], "ui_type": ["icon"]}, limit=1)] == ["a-3"]
