"""ScreenSpot-family grounding datasets: loading every upstream layout, and the upstream hit rule.

Layouts (detected from the files, see REFERENCE.md section 4):
- ScreenSpot v1 / v2: ``screenspot_{mobile,desktop,web}[_v2].json`` (``img_filename, bbox [x, y, w, h],
  instruction, data_type, data_source``) and an image folder beside them;
- ScreenSpot-Pro: ``annotations/<app>_<platform>.json`` (``id, img_filename, bbox [x1, y1, x2, y2], img_size,
  instruction, instruction_cn, group, platform, application, ui_type``) and ``images/``;
- OSWorld-G: one JSON list (``id, image_path, instruction, box_type, box_coordinates``) with ``images/`` and
  an optional ``classification_result.json``.

The hit rule mirrors each upstream script, including where it compares normalized values and where pixels,
so that floating point edge cases land on the same side.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Layout = Literal["screenspot", "pro", "osworld-g"]
TargetKind = Literal["bbox", "polygon", "refusal"]
Correctness = Literal["correct", "wrong", "wrong_format"]

V1V2_SPLITS = ("mobile", "desktop", "web")
IMAGE_DIR_CANDIDATES = ("images", "screenspotv2_image", "screenspot_imgs", "screenspot_images", "imgs", ".")
CLASSIFICATION_FILE = "classification_result.json"


class DatasetError(ValueError):
    """A dataset file that is missing or malformed; the message names the file and the field."""


class Target(BaseModel):
    """What counts as a hit, in pixels of the annotated image."""

    model_config = ConfigDict(frozen=True)
    kind: TargetKind
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 (bbox)
    polygon: tuple[float, ...] | None = None  # x1, y1, x2, y2, ... (polygon)

    def outline(self) -> list[tuple[float, float]]:
        """Corner points for drawing (empty for a refusal)."""
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
        if self.polygon is not None:
            p = self.polygon
            return [(p[i], p[i + 1]) for i in range(0, len(p) - 1, 2)]
        return []


class SampleTags(BaseModel):
    """What the upstream breakdowns group by; carried from a sample into its result."""

    split: str | None = None
    group: str | None = None
    application: str | None = None
    platform: str | None = None
    ui_type: str | None = None
    data_source: str | None = None
    classes: tuple[str, ...] = ()  # OSWorld-G classification (none when the file does not list the sample)
    gui_types: tuple[str, ...] = ()  # OSWorld-G's GUI_types of the sample

    def tags(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in SampleTags.model_fields}


class Sample(SampleTags):
    """One grounding task: find ``instruction`` on ``image``."""

    model_config = ConfigDict(frozen=True)
    id: str
    image: Path
    instruction: str
    instruction_cn: str | None = None
    target: Target
    benchmark: str  # screenspot | screenspot-v2 | screenspot-pro | osworld-g
    layout: Layout
    source_file: str  # annotation file stem (upstream's task_filename)
    img_size: tuple[int, int] | None = None  # (w, h) as annotated (Pro); None: the image's own size


class Dataset(BaseModel):
    root: Path
    layout: Layout
    benchmark: str
    samples: list[Sample]
    annotation_files: list[Path]
    classification_file: Path | None = None


class PredictedPoint(BaseModel):
    """A predicted point in the frame of the image the model saw, kept both ways upstream scripts use it.

    ``fraction`` is the point divided by the image size; ``pixels`` is the point in image pixels. The value
    the model wrote is kept exactly on its own side (normalized answers keep their fraction, pixel answers
    keep their pixels), the other side is derived once.
    """

    model_config = ConfigDict(frozen=True)
    fraction: tuple[float, float]
    pixels: tuple[float, float]

    @classmethod
    def from_model(cls, x: float, y: float, *, reading: str, width: int, height: int) -> PredictedPoint:
        if reading == "normalized":
            return cls(fraction=(x, y), pixels=(x * width, y * height))
        return cls(fraction=(x / width, y / height), pixels=(x, y))


# ---- the hit rule ----------------------------------------------------------------------------------
def _in_rect(px: float, py: float, rect: tuple[float, float, float, float]) -> bool:
    return rect[0] <= px <= rect[2] and rect[1] <= py <= rect[3]


def point_in_polygon(px: float, py: float, polygon: tuple[float, ...]) -> bool:
    """Even-odd ray casting, the same half-open edge rule as OSWorld-G's evaluator."""
    n = len(polygon) // 2
    inside = False
    j = n - 1
    for i in range(n):
        xi, yi = polygon[2 * i], polygon[2 * i + 1]
        xj, yj = polygon[2 * j], polygon[2 * j + 1]
        if (yi > py) != (yj > py) and px < (xj - xi) * (py - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def score(sample: Sample, point: PredictedPoint | None, *, image_size: tuple[int, int],
          refused: bool = False) -> Correctness:
    """Upstream's verdict for one answer.

    ``point`` None with ``refused`` False means the answer had no usable point (``wrong_format``);
    ``refused`` True means a well-formed answer that deliberately gave no point (wait / fail / done),
    which OSWorld-G scores as a refusal.
    """
    target = sample.target
    if target.kind == "refusal":
        if point is None:
            return "correct" if refused else "wrong_format"
        return "correct" if point.pixels[0] < 0 and point.pixels[1] < 0 else "wrong"
    if point is None:
        return "wrong_format"
    if sample.layout == "osworld-g":  # compares image pixels
        px, py = point.pixels
        if target.kind == "polygon":
            assert target.polygon is not None
            return "correct" if point_in_polygon(px, py, target.polygon) else "wrong"
        assert target.box is not None
        return "correct" if _in_rect(px, py, target.box) else "wrong"
    # ScreenSpot v1/v2 and Pro normalize the box by the image size and compare fractions.
    assert target.box is not None
    width, height = sample.img_size or image_size
    x1, y1, x2, y2 = target.box
    rect = (x1 / width, y1 / height, x2 / width, y2 / height)
    fx, fy = point.fraction
    return "correct" if _in_rect(fx, fy, rect) else "wrong"


# ---- raw records (validated field by field) --------------------------------------------------------
class _Raw(BaseModel):
    # NaN and infinity are refused when loading: written back as null they would make results unreadable.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class _V1V2Record(_Raw):
    img_filename: str
    bbox: tuple[float, float, float, float]
    instruction: str
    data_type: str | None = None
    data_source: str | None = None


class _ProRecord(_Raw):
    id: str | int | None = None
    img_filename: str
    bbox: tuple[float, float, float, float]
    img_size: tuple[int, int] | None = None
    instruction: str
    instruction_cn: str | None = None
    group: str | None = None
    platform: str | None = None
    application: str | None = None
    ui_type: str | None = None


class _OSWorldGRecord(_Raw):
    id: str | int | None = None
    image_path: str
    instruction: str
    box_type: Literal["bbox", "polygon", "refusal"]
    box_coordinates: list[float] = Field(default_factory=list)
    GUI_types: list[str] | str | None = None


def _read_json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of samples, found {type(data).__name__}")
    return data


def _validate(model: type[_Raw], record: Any, path: Path, index: int) -> Any:
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: sample #{index} is {type(record).__name__}, expected an object")
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        field = loc[0] if loc else "(record)"
        where = f" at index {'.'.join(loc[1:])}" if len(loc) > 1 else ""
        got = record.get(field, "(missing)")
        raise DatasetError(f"{path}: sample #{index} field {field!r}: {err['msg'].lower()}{where} "
                           f"(got {str(got)[:80]})") from None


def _inside_root(name: str, annotation: Path, index: int, field: str) -> str:
    """An image path relative to the dataset, never leaving it (no absolute path, no '..')."""
    for flavour in (PurePosixPath(name), PureWindowsPath(name)):
        if flavour.is_absolute() or flavour.drive or flavour.root or ".." in flavour.parts:
            raise DatasetError(f"{annotation}: sample #{index} field {field!r}: {name[:120]!r} points outside the "
                               "dataset folder; image paths must be relative paths inside it")
    if not name.strip() or "\x00" in name:
        raise DatasetError(f"{annotation}: sample #{index} field {field!r}: {name[:120]!r} is not an image path")
    return name


def _image_dir(root: Path, first_image: str, annotation: Path) -> Path:
    for name in IMAGE_DIR_CANDIDATES:
        candidate = (root / name).resolve()
        if (candidate / first_image).is_file():
            return candidate
    tried = ", ".join(str(root / n) for n in IMAGE_DIR_CANDIDATES)
    raise DatasetError(f"{annotation}: field 'img_filename'/'image_path' = {first_image!r} was not found in any "
                       f"image folder (tried {tried}); put the images beside the annotations")


def _check_image(path: Path, annotation: Path, index: int, field: str) -> None:
    if not path.is_file():
        raise DatasetError(f"{annotation}: sample #{index} field {field!r}: image {path} does not exist")


def _unique_ids(samples: list[Sample]) -> list[Sample]:
    """Stable, unique ids (resume depends on them): repeated ids get a ``#k`` suffix in file order."""
    seen: Counter[str] = Counter()
    out = []
    for s in samples:
        seen[s.id] += 1
        out.append(s if seen[s.id] == 1 else s.model_copy(update={"id": f"{s.id}#{seen[s.id]}"}))
    return out


# ---- loaders ----------------------------------------------------------------------------------------
def _v1v2_files(root: Path) -> list[Path]:
    v2 = sorted(root.glob("screenspot_*_v2.json"))
    v1 = sorted(p for p in root.glob("screenspot_*.json") if not p.stem.endswith("_v2"))
    return v2 or v1


def load_screenspot(files: list[Path], root: Path) -> Dataset:
    benchmark = "screenspot-v2" if any(f.stem.endswith("_v2") for f in files) else "screenspot"
    samples: list[Sample] = []
    image_dir: Path | None = None
    for path in files:
        split = re.sub(r"^screenspot_|_v2$", "", path.stem)
        for i, raw in enumerate(_read_json_list(path)):
            rec: _V1V2Record = _validate(_V1V2Record, raw, path, i)
            _inside_root(rec.img_filename, path, i, "img_filename")
            if image_dir is None:
                image_dir = _image_dir(root, rec.img_filename, path)
            x, y, w, h = rec.bbox
            if w < 0 or h < 0:
                raise DatasetError(f"{path}: sample #{i} field 'bbox': {list(rec.bbox)} has a negative width or "
                                   "height (ScreenSpot boxes are [x, y, w, h])")
            image = image_dir / rec.img_filename
            _check_image(image, path, i, "img_filename")
            samples.append(Sample(
                id=f"{split}-{i}", image=image, instruction=rec.instruction,
                target=Target(kind="bbox", box=(x, y, x + w, y + h)), benchmark=benchmark, layout="screenspot",
                source_file=path.stem, split=split, ui_type=rec.data_type, data_source=rec.data_source))
    return Dataset(root=root, layout="screenspot", benchmark=benchmark, samples=_unique_ids(samples),
                   annotation_files=files)


def load_pro(root: Path) -> Dataset:
    files = sorted((root / "annotations").glob("*.json"))
    if not files:
        raise DatasetError(f"{root / 'annotations'}: no <app>_<platform>.json annotation files")
    image_dir = root / "images"
    samples: list[Sample] = []
    for path in files:
        for i, raw in enumerate(_read_json_list(path)):
            rec: _ProRecord = _validate(_ProRecord, raw, path, i)
            image = image_dir / _inside_root(rec.img_filename, path, i, "img_filename")
            _check_image(image, path, i, "img_filename")
            x1, y1, x2, y2 = rec.bbox
            if x2 < x1 or y2 < y1:
                raise DatasetError(f"{path}: sample #{i} field 'bbox': {list(rec.bbox)} is not [x1, y1, x2, y2]")
            samples.append(Sample(
                id=str(rec.id) if rec.id is not None else f"{path.stem}-{i}", image=image,
                instruction=rec.instruction, instruction_cn=rec.instruction_cn,
                target=Target(kind="bbox", box=rec.bbox), benchmark="screenspot-pro", layout="pro",
                source_file=path.stem, img_size=rec.img_size, split=path.stem, group=rec.group,
                application=rec.application, platform=rec.platform, ui_type=rec.ui_type))
    return Dataset(root=root, layout="pro", benchmark="screenspot-pro", samples=_unique_ids(samples),
                   annotation_files=files)


def load_classification(path: Path) -> dict[str, list[str]]:
    """OSWorld-G's ``classification_result.json`` -> {sample id: [classes]} (a sample may have several)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the classification file ({exc})") from None
    classified = data.get("classified") if isinstance(data, dict) else None
    if not isinstance(classified, dict):
        raise DatasetError(f"{path}: field 'classified' must map class name -> list of {{'id': ...}}")
    by_id: dict[str, list[str]] = {}
    for cls, items in classified.items():
        if not isinstance(items, list):
            raise DatasetError(f"{path}: field 'classified.{cls}' must be a list")
        for k, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item:
                raise DatasetError(f"{path}: field 'classified.{cls}[{k}].id' is missing")
            ids = by_id.setdefault(str(item["id"]), [])
            if cls not in ids:
                ids.append(cls)
    return by_id


def load_osworld_g(annotation: Path, root: Path, classification: Path | None = None) -> Dataset:
    records = _read_json_list(annotation)
    if classification is None and (annotation.parent / CLASSIFICATION_FILE).is_file():
        classification = annotation.parent / CLASSIFICATION_FILE
    classes = load_classification(classification) if classification else None
    samples: list[Sample] = []
    image_dir: Path | None = None
    for i, raw in enumerate(records):
        rec: _OSWorldGRecord = _validate(_OSWorldGRecord, raw, annotation, i)
        _inside_root(rec.image_path, annotation, i, "image_path")
        if image_dir is None:
            image_dir = _image_dir(root, rec.image_path, annotation)
        image = image_dir / rec.image_path
        _check_image(image, annotation, i, "image_path")
        coords = rec.box_coordinates
        if rec.box_type == "bbox":
            if len(coords) != 4:
                raise DatasetError(f"{annotation}: sample #{i} field 'box_coordinates': a bbox needs [x, y, w, h], "
                                   f"got {len(coords)} numbers")
            x, y, w, h = coords
            target = Target(kind="bbox", box=(x, y, x + w, y + h))
        elif rec.box_type == "polygon":
            if len(coords) < 6 or len(coords) % 2:
                raise DatasetError(f"{annotation}: sample #{i} field 'box_coordinates': a polygon needs an even "
                                   f"number (>= 6) of values, got {len(coords)}")
            target = Target(kind="polygon", polygon=tuple(coords))
        else:
            target = Target(kind="refusal")
        sid = str(rec.id) if rec.id is not None else str(i)
        # Samples the classification file does not list are left out of the class tables (as upstream).
        sample_classes = tuple(classes.get(sid, [])) if classes is not None else ()
        gui_types = rec.GUI_types if isinstance(rec.GUI_types, list) else [rec.GUI_types] if rec.GUI_types else []
        samples.append(Sample(
            id=sid, image=image, instruction=rec.instruction, target=target, benchmark="osworld-g",
            layout="osworld-g", source_file=annotation.stem, classes=sample_classes,
            gui_types=tuple(dict.fromkeys(str(t) for t in gui_types if str(t).strip()))))
    return Dataset(root=root, layout="osworld-g", benchmark="osworld-g", samples=_unique_ids(samples),
                   annotation_files=[annotation], classification_file=classification)


def _kind_of_json(path: Path) -> Layout | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None
    first = data[0]
    if "box_type" in first:
        return "osworld-g"
    if "img_size" in first or "application" in first:
        return "pro"
    if "img_filename" in first and "bbox" in first:
        return "screenspot"
    return None


def detect_layout(path: Path) -> Layout:
    """Which upstream layout ``path`` (a folder or one annotation file) is in."""
    if path.is_file():
        kind = _kind_of_json(path)
        if kind is None:
            raise DatasetError(f"{path}: not a ScreenSpot / ScreenSpot-Pro / OSWorld-G annotation file "
                               "(fields img_filename+bbox, img_size+application, or box_type expected)")
        return kind
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    if (path / "annotations").is_dir() and any((path / "annotations").glob("*.json")):
        return "pro"
    if _v1v2_files(path):
        return "screenspot"
    if any(_kind_of_json(p) == "osworld-g" for p in sorted(path.glob("*.json"))):
        return "osworld-g"
    raise DatasetError(f"{path}: no known layout found: expected screenspot_<split>[_v2].json (ScreenSpot v1/v2), "
                       "annotations/*.json + images/ (ScreenSpot-Pro) or an OSWorld-G JSON with box_type")


def _osworld_g_file(folder: Path, candidates: list[Path], subset: str | None) -> Path:
    """The annotation file of a downloaded OSWorld-G folder: ``OSWorld-G.json`` by default, ``<name>_<subset>.json``
    with ``subset`` (``refined``: ``OSWorld-G_refined.json``)."""
    if subset is not None:
        chosen = [p for p in candidates if p.stem.endswith(f"_{subset}")]
        if len(chosen) != 1:
            names = ", ".join(p.name for p in candidates)
            raise DatasetError(f"{folder}: no single OSWorld-G file for --subset {subset} among {names}")
        return chosen[0]
    if len(candidates) == 1:
        return candidates[0]
    # The one file every other file's name extends (OSWorld-G.json beside OSWorld-G_refined.json).
    base = [p for p in candidates if all(o.stem.startswith(p.stem + "_") for o in candidates if o != p)]
    if len(base) == 1:
        return base[0]
    names = ", ".join(p.name for p in candidates)
    raise DatasetError(f"{folder}: several OSWorld-G annotation files ({names}); pass the one to evaluate")


def load_dataset(data: str | Path, *, classification: Path | None = None, subset: str | None = None) -> Dataset:
    """Load DATA (folder or annotation file, any upstream layout). Raises DatasetError.

    A downloaded OSWorld-G folder holds ``OSWorld-G.json`` and ``OSWorld-G_refined.json``: the first is evaluated
    unless ``subset`` is ``"refined"``."""
    path = Path(data).expanduser()
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(data)):
        path = download_from_hub(str(data))
    layout = detect_layout(path)
    if layout == "pro":
        if path.is_file():  # one annotations/<app>_<platform>.json
            ds = load_pro(path.parent.parent)
            return ds.model_copy(update={"samples": [s for s in ds.samples if s.source_file == path.stem],
                                         "annotation_files": [path]})
        return load_pro(path)
    if layout == "screenspot":
        files = [path] if path.is_file() else _v1v2_files(path)
        return load_screenspot(files, path.parent if path.is_file() else path)
    if path.is_file():
        return load_osworld_g(path, path.parent, classification)
    candidates = [p for p in sorted(path.glob("*.json")) if _kind_of_json(p) == "osworld-g"]
    return load_osworld_g(_osworld_g_file(path, candidates, subset), path, classification)


def download_from_hub(repo_id: str) -> Path:
    """Fetch a dataset snapshot from the model hub (only when the hub is reachable)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DatasetError(f"{repo_id}: not a local path, and huggingface_hub is not installed to fetch it "
                           "(pip install huggingface_hub, or download the dataset and pass its folder)") from None
    try:
        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset"))
    except Exception as exc:  # noqa: BLE001 - network, auth, unknown repo: all end the same way for the user
        raise DatasetError(f"{repo_id}: not a local path and the hub download failed ({exc.__class__.__name__}: "
                           f"{str(exc)[:200]}); download the dataset yourself and pass its folder") from None


def select(samples: list[Sample], *, filters: dict[str, list[str]] | None = None,
           limit: int | None = None) -> list[Sample]:
    """Keep samples whose fields match every filter (field -> accepted values), then the first ``limit``."""
    kept = samples
    for field, values in (filters or {}).items():
        if values:
            wanted = {v.lower() for v in values}
            kept = [s for s in kept if str(getattr(s, field) or "").lower() in wanted]
    return kept[:limit] if limit is not None else kept
