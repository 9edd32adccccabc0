"""``failures.html`` of ``kimi-cua eval screenspot``: self-contained, a summary and an index, thumbnails with the
target and the prediction drawn, full-size views beside it, and still whole after the folder is moved.

The run is the real command against the loopback server on a small ScreenSpot-Pro-layout dataset; the page is
checked by parsing it and by loading it (and one full-size view) in headless Chromium.
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote
from xml.etree import ElementTree

import pytest
from PIL import Image

from agent.evals.failures_page import FILES_DIR, THUMB_WIDTH, ZOOM_SIZE
from tests.evals.test_screenspot import by_instruction, pro_dataset, run_cli
from tests.loopback import LoopbackServer

MISSES = ["gimp-1", "gimp-2", "word-0", "word-1", "word-3"]


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.summary_rows: list[list[str]] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        elif tag == "table":
            self._table = a.get("class")
        elif tag == "tr" and self._table == "summary":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row:
            self.summary_rows.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> Path:
    """A finished run's folder, moved elsewhere, with the dataset deleted."""
    root = tmp_path_factory.mktemp("failures")
    data, answers = pro_dataset(root / "pro")
    out = root / "run"
    with LoopbackServer(by_instruction(answers)) as server:
        assert run_cli(["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                        "--no-progress"]) == 0
    target = root / "elsewhere" / "results"
    shutil.copytree(out, target)
    shutil.rmtree(out)
    shutil.rmtree(data)
    return target


def decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,"), uri[:60]
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def count(image: Image.Image, test) -> int:
    return sum(1 for y in range(image.height) for x in range(image.width) if test(image.getpixel((x, y))))


def green(p) -> bool:
    return p[1] > 120 and p[0] < 80 and p[2] < 80


def red(p) -> bool:
    return p[0] > 170 and p[1] < 80 and p[2] < 80


def test_the_page_holds_a_summary_an_index_and_every_miss(moved: Path) -> None:
    page = (moved / "failures.html").read_text(encoding="utf-8")
    parsed = Links()
    parsed.feed(page)
    assert "5 misses of 10 samples" in page
    rows = {r[0]: r[1:] for r in parsed.summary_rows}
    # samples, correct, misses, wrong format, unreadable, accuracy
    assert rows["all samples"] == ["10", "5", "5", "3", "0", "50.00"]
    assert rows["group: Office"] == ["4", "1", "3", "2", "0", "25.00"]
    assert rows["application: gimp"] == ["3", "1", "2", "1", "0", "33.33"]
    assert rows["ui type: icon"] == ["4", "1", "3", "2", "0", "25.00"]
    index = re.findall(r'<tr><td class="n">\d+</td><td><a href="#(miss-\d+)">([^<]+)</a>', page)
    assert [name for _, name in index] == MISSES
    assert all(anchor in parsed.ids for anchor, _ in index)
    assert page.count('<section class="miss"') == 5


def test_thumbnails_are_embedded_with_the_target_and_the_point_drawn(moved: Path) -> None:
    parsed = Links()
    parsed.feed((moved / "failures.html").read_text(encoding="utf-8"))
    assert parsed.images and all(src.startswith("data:image/jpeg;base64,") for src in parsed.images)
    wholes = [decode(s) for s in parsed.images if decode(s).width == THUMB_WIDTH]
    zooms = [decode(s) for s in parsed.images if decode(s).width != THUMB_WIDTH]
    assert len(wholes) == 5  # one per miss
    assert len(zooms) == 5 and all(max(z.size) == ZOOM_SIZE for z in zooms)
    assert all(count(z, green) > 50 for z in zooms), "the target is not drawn on the zoom"
    assert sum(count(w, red) > 10 for w in wholes) == 2  # gimp-1 and word-3 have a point; the others none


def test_every_link_works_after_the_folder_moved(moved: Path) -> None:
    parsed = Links()
    parsed.feed((moved / "failures.html").read_text(encoding="utf-8"))
    files = [unquote(h) for h in parsed.links if not h.startswith("#")]
    assert files, "no full-size links"
    for href in files:
        path = (moved / href).resolve()
        assert path.is_file(), href
        assert path.is_relative_to(moved.resolve()) and href.startswith(FILES_DIR + "/")
    svgs = sorted({moved / h for h in files if h.endswith(".svg")})
    assert len(svgs) == 5
    for svg in svgs:
        root = ElementTree.parse(svg).getroot()
        ns = {"s": "http://www.w3.org/2000/svg"}
        image = root.find("s:image", ns)
        assert image is not None and (svg.parent / image.get("href")).is_file()
        assert root.find("s:polygon", ns) is not None
        with Image.open(svg.parent / image.get("href")) as full:
            assert f"0 0 {full.width} {full.height}" == root.get("viewBox")


def test_a_rewrite_keeps_only_what_the_page_uses(moved: Path, tmp_path: Path) -> None:
    from agent.evals.failures_page import write_failures_html
    from agent.evals.screenspot import SampleResult

    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    results = [SampleResult.model_validate_json(line) for line in (copy / "results.jsonl").read_text().splitlines()]
    # the images are gone from the dataset: rewrite with the copies beside the page standing in for them
    svg = ElementTree.parse(next((copy / FILES_DIR).glob("*.svg"))).getroot()
    stand_in = copy / FILES_DIR / svg.find("{http://www.w3.org/2000/svg}image").get("href")
    results = [r.model_copy(update={"image": str(stand_in)}) for r in results]
    kept = [r for r in results if r.id != "gimp-1"]
    assert write_failures_html(copy / "failures.html", kept) == 4
    names = {p.name for p in (copy / FILES_DIR).iterdir() if p.is_file()}
    assert sum(n.endswith(".svg") for n in names) == 4 and not any("gimp-1" in n for n in names)
    assert len(list((copy / FILES_DIR / "thumbs").glob("*.jpg"))) == 8  # whole + zoom of each miss


def test_the_moved_page_and_a_full_size_view_load_in_chromium(moved: Path, tmp_path: Path) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=10000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    checked = moved / "checked.html"
    script = ("<script>window.addEventListener('load',()=>{const i=[...document.images];const p="
              "document.createElement('pre');p.id='kimi-check';p.textContent=JSON.stringify({images:i.length,"
              "loaded:i.filter(x=>x.complete&&x.naturalWidth>0).length});document.body.appendChild(p);});</script>")
    checked.write_text((moved / "failures.html").read_text(encoding="utf-8").replace("</body>", script + "</body>"),
                       encoding="utf-8")
    proc = subprocess.run([exe, *flags, "--dump-dom", checked.as_uri()], capture_output=True, text=True,
                          timeout=120, check=False)
    found = re.search(r'<pre id="kimi-check">(.*?)</pre>', proc.stdout)
    assert found, proc.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] == 10 and result["loaded"] == 10
    svg = next(p for p in (moved / FILES_DIR).glob("*.svg") if "word" in p.name)  # a 2000x1000 screenshot
    shot = tmp_path / "svg.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=2000,1000", svg.as_uri()],
                   capture_output=True, text=True, timeout=120, check=False)
    with Image.open(shot) as painted:
        grey = painted.convert("RGB").getpixel((1500, 900))
    assert grey == (200, 200, 200), "the full-size view did not draw the screenshot"


def test_no_misses_leaves_no_folder_beside_the_page(moved: Path, tmp_path: Path) -> None:
    from agent.evals.failures_page import write_failures_html
    from agent.evals.screenspot import SampleResult

    results = [SampleResult.model_validate_json(line) for line in (moved / "results.jsonl").read_text().splitlines()]
    page = tmp_path / "failures.html"
    assert write_failures_html(page, [r for r in results if r.correct]) == 0
    assert "0 misses of 5 samples" in page.read_text(encoding="utf-8") and not (tmp_path / FILES_DIR).exists()
