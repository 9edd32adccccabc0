"""``failures.html``: the misses of a grounding evaluation, as a page that survives being moved.

The page itself is self-contained: a summary table (accuracy and misses per table of the run), an index of
every miss, and one card per miss with two embedded JPEG thumbnails (the whole screenshot, and a zoom on the
target) with the target (green) and the predicted point (red) drawn. Full-size views live in a sibling folder,
``failures_files/`` (linked relatively, so moving the results folder as a whole keeps them working): the
screenshot itself (a hard link to the dataset's file where the file system allows, else a copy) and an SVG per
miss that draws the target and the point on it at full size. Thumbnails are cached there too, so a resumed run
only draws the new misses; files no longer referenced are removed.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import os
import re
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from agent.evals.screenspot import SampleResult

FILES_DIR = "failures_files"
THUMB_WIDTH = 320  # the whole screenshot, embedded
ZOOM_SIZE = 200  # the zoom on the target, embedded (longer side)
JPEG_QUALITY = 68
TAG_TABLES = (("group", "group"), ("application", "application"), ("platform", "platform"), ("split", "split"),
              ("data_source", "source"), ("ui_type", "ui type"))

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#1d1f23}
h1{font-size:20px;margin:18px 0 4px}h2{font-size:16px;margin:22px 0 6px}.meta{color:#666}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 10px;border-bottom:1px solid #e3e3e3;text-align:left;
vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f5f7}
table.index{width:100%}table.index td{font-size:12px}
section.miss{border-top:1px solid #ccc;padding:10px 0;display:grid;grid-template-columns:auto auto 1fr;gap:12px}
section.miss h3{grid-column:1/-1;margin:0;font-size:15px}
img.thumb{border:1px solid #bbb;display:block}.shots a{font-size:12px;margin-right:10px}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:6px;margin:4px 0;font-size:12px}
.verdict{padding:1px 7px;border-radius:9px;color:#fff;font-size:12px;background:#b3261e}
.verdict.wrong_format{background:#c98a00}.err{color:#b00000}.missing{padding:30px;background:#eee;color:#b00000}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _safe(name: str) -> str:
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:60]}-{digest}"


def _digest(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode("utf-8")).hexdigest()[:12]


def _data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


# ---- drawing -------------------------------------------------------------------------------------------
def _marks(draw: ImageDraw.ImageDraw, result: "SampleResult", scale: float, dx: float, dy: float) -> None:
    """The target (green) and the predicted point (red), from image pixels to this picture's pixels."""
    outline = [((x - dx) * scale, (y - dy) * scale) for x, y in result.target.outline()]
    if len(outline) >= 2:
        draw.polygon(outline, outline=(0, 170, 0), width=2)
    if result.point is not None:
        x, y = (result.point[0] - dx) * scale, (result.point[1] - dy) * scale
        r = 6
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(230, 0, 0), width=2)
        draw.line((x - r - 4, y, x + r + 4, y), fill=(230, 0, 0), width=1)
        draw.line((x, y - r - 4, x, y + r + 4), fill=(230, 0, 0), width=1)


def zoom_box(result: "SampleResult", width: int, height: int) -> tuple[int, int, int, int] | None:
    """The region around the target (and the predicted point when it is near), in image pixels."""
    outline = result.target.outline()
    if not outline:
        return None
    xs, ys = [p[0] for p in outline], [p[1] for p in outline]
    x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    size = max(x2 - x1, y2 - y1, 1.0)
    margin = max(size, 40.0)
    x1, y1, x2, y2 = x1 - margin, y1 - margin, x2 + margin, y2 + margin
    if result.point is not None:
        px, py = result.point
        reach = max(4 * size, min(width, height) / 5)
        if x1 - reach <= px <= x2 + reach and y1 - reach <= py <= y2 + reach:
            x1, y1 = min(x1, px - 30), min(y1, py - 30)
            x2, y2 = max(x2, px + 30), max(y2, py + 30)
    # square it up, then keep it inside the image
    side = max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = min(side, width, height)
    left = min(max(cx - side / 2, 0), width - side)
    top = min(max(cy - side / 2, 0), height - side)
    box = (int(left), int(top), int(round(left + side)), int(round(top + side)))
    return box if box[2] > box[0] and box[3] > box[1] else None


def thumbnails(result: "SampleResult", image: Image.Image) -> tuple[bytes, bytes | None]:
    """(whole screenshot, zoom on the target or None) as JPEG bytes, marks drawn."""
    width, height = image.size
    scale = THUMB_WIDTH / width
    if image.mode != "RGB":
        image = image.convert("RGB")
    whole = image.resize((THUMB_WIDTH, max(1, round(height * scale))), Image.Resampling.BILINEAR, reducing_gap=2.0)
    _marks(ImageDraw.Draw(whole), result, scale, 0, 0)
    zoom = None
    box = zoom_box(result, width, height)
    if box is not None:
        crop = image.crop(box)
        zscale = ZOOM_SIZE / max(crop.size)
        crop = crop.resize((max(1, round(crop.width * zscale)), max(1, round(crop.height * zscale))),
                           Image.Resampling.LANCZOS)
        _marks(ImageDraw.Draw(crop), result, zscale, box[0], box[1])
        zoom = _jpeg(crop)
    return _jpeg(whole), zoom


def overlay_svg(result: "SampleResult", image_name: str) -> str:
    """A full-size SVG view of the miss: the screenshot (a file beside it) with the target and the point."""
    w, h = result.image_size
    shapes = []
    outline = result.target.outline()
    if outline:
        pts = " ".join(f"{x:g},{y:g}" for x, y in outline)
        shapes.append(f'<polygon points="{pts}" fill="rgba(0,200,0,0.15)" stroke="#0a0" stroke-width="3"/>')
    if result.point is not None:
        x, y = result.point
        shapes.append(f'<circle cx="{x:g}" cy="{y:g}" r="{max(w, h) / 120:g}" fill="none" stroke="#e00" '
                      f'stroke-width="3"/><circle cx="{x:g}" cy="{y:g}" r="{max(w, h) / 400:g}" fill="#e00"/>')
    href = _e(image_name)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="0 0 {w} {h}" width="{w}" height="{h}"><title>{_e(result.id)}: {_e(result.instruction)}'
            f'</title><image href="{href}" xlink:href="{href}" x="0" y="0" width="{w}" height="{h}"/>'
            f'{"".join(shapes)}</svg>\n')


# ---- files beside the page -----------------------------------------------------------------------------
def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        if dest.exists() and dest.stat().st_size == source.stat().st_size:
            return
        dest.unlink(missing_ok=True)
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


class _Files:
    """``failures_files/``: what the page links to; unreferenced files are removed at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.thumbs = folder / "thumbs"
        self.used: set[Path] = set()

    def image(self, source: Path) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"img-{_digest(str(source))}{source.suffix.lower() or '.png'}"
        dest = self.folder / name
        _link_or_copy(source, dest)
        self.used.add(dest)
        return name

    def write_text(self, name: str, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        dest = self.folder / name
        if not dest.exists() or dest.read_text(encoding="utf-8") != text:
            dest.write_text(text, encoding="utf-8")
        self.used.add(dest)

    def cached(self, key: str) -> tuple[bytes, bytes | None] | None:
        whole, zoom = self.thumbs / f"{key}.jpg", self.thumbs / f"{key}.zoom.jpg"
        if not whole.is_file():
            return None
        self.used.add(whole)
        if zoom.is_file():
            self.used.add(zoom)
            return whole.read_bytes(), zoom.read_bytes()
        return whole.read_bytes(), None

    def cache(self, key: str, whole: bytes, zoom: bytes | None) -> None:
        self.thumbs.mkdir(parents=True, exist_ok=True)
        for name, data in ((f"{key}.jpg", whole), (f"{key}.zoom.jpg", zoom)):
            if data is not None:
                (self.thumbs / name).write_bytes(data)
                self.used.add(self.thumbs / name)

    def prune(self) -> None:
        for folder in (self.thumbs, self.folder):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.is_file() and path not in self.used:
                    path.unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()  # nothing to show: no empty folder beside the page


# ---- the page ------------------------------------------------------------------------------------------
def _summary_rows(results: list["SampleResult"]) -> list[tuple[str, list["SampleResult"]]]:
    rows: list[tuple[str, list["SampleResult"]]] = [("all samples", results)]
    for attribute, label in TAG_TABLES:
        values = sorted({str(getattr(r, attribute)) for r in results if getattr(r, attribute) is not None})
        if len(values) < 2 and not (attribute == "ui_type" and values):
            continue
        for value in values:
            rows.append((f"{label}: {value}", [r for r in results if str(getattr(r, attribute)) == value]))
    return rows


def _summary_table(results: list["SampleResult"]) -> str:
    lines = []
    for name, rows in _summary_rows(results):
        n = len(rows)
        correct = sum(r.correct for r in rows)
        misses = n - correct
        wrong_format = sum(r.correctness == "wrong_format" for r in rows)
        unreadable = sum(r.unreadable for r in rows)
        accuracy = f"{100 * correct / n:.2f}" if n else "-"
        lines.append(f'<tr><td>{_e(name)}</td><td class="n">{n}</td><td class="n">{correct}</td>'
                     f'<td class="n">{misses}</td><td class="n">{wrong_format}</td><td class="n">{unreadable}</td>'
                     f'<td class="n">{accuracy}</td></tr>')
    return ('<table class="summary"><tr><th>table</th><th>samples</th><th>correct</th><th>misses</th>'
            '<th>wrong format</th><th>unreadable</th><th>accuracy %</th></tr>' + "".join(lines) + "</table>")


def _where(result: "SampleResult") -> str:
    return " / ".join(str(v) for v in (result.group, result.application, result.platform, result.split,
                                       result.data_source) if v)


def _index(failed: list["SampleResult"], anchors: dict[str, str]) -> str:
    rows = []
    for number, r in enumerate(failed, 1):
        rows.append(f'<tr><td class="n">{number}</td><td><a href="#{anchors[r.id]}">{_e(r.id)}</a></td>'
                    f"<td>{_e(_where(r))}</td><td>{_e(r.ui_type or '')}</td><td>{_e(r.correctness)}</td>"
                    f"<td>{_e(r.instruction[:90])}</td><td>{_e((r.error or '')[:80])}</td></tr>")
    return ('<table class="index"><tr><th>#</th><th>sample</th><th>where</th><th>type</th><th>verdict</th>'
            '<th>instruction</th><th>error</th></tr>' + "".join(rows) + "</table>")


def _drawable(result: "SampleResult") -> bool:
    w, h = result.image_size
    return not result.unreadable and bool(w and h) and Path(result.image).is_file()


def _thumb_key(result: "SampleResult") -> str:
    return f"{_safe(result.id)}-{_digest(result.image, result.image_size, result.point, result.target.outline())}"


def _draw(result: "SampleResult") -> tuple[bytes, bytes | None]:
    with Image.open(result.image) as opened:
        return thumbnails(result, opened)


def _draw_all(results: list["SampleResult"], files: _Files) -> dict[str, tuple[bytes, bytes | None] | Exception]:
    """Thumbnails of every drawable miss: from the cache, else drawn (decoding is most of it: several threads)."""
    out: dict[str, tuple[bytes, bytes | None] | Exception] = {}
    todo = []
    for r in results:
        if not _drawable(r):
            continue
        cached = files.cached(_thumb_key(r))
        if cached is not None:
            out[r.id] = cached
        else:
            todo.append(r)
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            futures = {r.id: (r, pool.submit(_draw, r)) for r in todo}
            for rid, (r, future) in futures.items():
                try:
                    out[rid] = future.result()
                except Exception as exc:  # noqa: BLE001 - any decoder error (a decompression bomb too)
                    out[rid] = exc
                else:
                    files.cache(_thumb_key(r), *out[rid])
    return out


def _card(result: "SampleResult", anchor: str, files: _Files,
          drawn: dict[str, tuple[bytes, bytes | None] | Exception]) -> str:
    w, h = result.image_size
    meta = [f"target {result.target.kind}"]
    if result.target.box is not None:
        meta[0] += " (" + ", ".join(f"{v:g}" for v in result.target.box) + ")"
    meta.append("point " + (f"({result.point[0]:g}, {result.point[1]:g})" if result.point is not None else "none"))
    meta.append(f"image {w}x{h}")
    shots = '<div class="missing">no image</div>'
    source = Path(result.image)
    if result.id in drawn:
        thumbs = drawn[result.id]
        try:
            if isinstance(thumbs, Exception):
                raise thumbs
            image_name = files.image(source)
        except Exception as exc:  # noqa: BLE001 - the card says what went wrong; the page is still written
            shots = f'<div class="missing">cannot draw {_e(source.name)}: {_e(exc)}</div>'
        else:
            svg_name = f"{_safe(result.id)}.svg"
            files.write_text(svg_name, overlay_svg(result, image_name))
            whole, zoom = thumbs
            full = f"{FILES_DIR}/{svg_name}"
            shots = (f'<div class="shots"><a href="{_e(full)}" target="_blank" title="full size, marks drawn">'
                     f'<img class="thumb" src="{_data_uri(whole)}" alt="screenshot"></a>'
                     f'<a href="{_e(full)}" target="_blank">full size</a>'
                     f'<a href="{_e(FILES_DIR + "/" + image_name)}" target="_blank">original</a></div>')
            if zoom is not None:
                shots += (f'<div class="shots"><a href="{_e(full)}" target="_blank" title="full size">'
                          f'<img class="thumb zoom" src="{_data_uri(zoom)}" alt="zoom on the target"></a>'
                          f"<span class=\"meta\">zoom on the target</span></div>")
    elif not source.is_file() and not result.unreadable:
        shots = f'<div class="missing">{_e(result.image)} is missing</div>'
    error = f'<div class="err">{_e(result.error)}</div>' if result.error else ""
    return (f'<section class="miss" id="{anchor}"><h3>{_e(result.id)} <span class="verdict {_e(result.correctness)}">'
            f'{_e(result.correctness)}</span> <a href="#index" style="font-size:12px">index</a></h3>{shots}'
            f'<div><p>{_e(result.instruction)}</p><p class="meta">{_e(_where(result))}; {_e("; ".join(meta))}</p>'
            f"{error}<details><summary>answer</summary><pre>{_e(result.answer[-1500:])}</pre></details></div>"
            "</section>")


def write_failures_html(path: Path, results: Iterable["SampleResult"], *, limit: int | None = None,
                        title: str = "") -> int:
    """Write ``path`` (and ``failures_files/`` beside it) for the misses among ``results``; returns their count.

    ``limit``: draw at most this many cards (the summary and the index still list every miss).
    """
    results = list(results)
    failed = sorted((r for r in results if not r.correct), key=lambda r: r.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = _Files(path.parent / FILES_DIR)
    anchors = {r.id: f"miss-{number}" for number, r in enumerate(failed, 1)}
    shown = failed if limit is None else failed[:limit]
    drawn = _draw_all(shown, files)
    cards = "".join(_card(r, anchors[r.id], files, drawn) for r in shown)
    files.prune()
    more = (f"<p>{len(failed) - len(shown)} more misses are in the index above but not drawn "
            f"(limit {limit}).</p>") if len(shown) < len(failed) else ""
    heading = f"{len(failed)} misses of {len(results)} samples"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>grounding failures: {_e(heading)}'
            f'</title><style>{CSS}</style></head><body><h1>{_e(heading)}</h1>'
            f'<p class="meta">{_e(title)}{" - " if title else ""}written {datetime.now():%Y-%m-%d %H:%M}. '
            "Green: the target; red: the predicted point. Thumbnails are embedded; full-size views are in "
            f"{FILES_DIR}/ beside this page (keep the two together).</p>"
            f'<h2>Summary</h2>{_summary_table(results)}<h2 id="index">Index of misses</h2>'
            f'{_index(failed, anchors) if failed else "<p>No misses.</p>"}<h2>Misses</h2>{cards}{more}'
            "</body></html>")
    path.write_text(page, encoding="utf-8")
    return len(failed)
