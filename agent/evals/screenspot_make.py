"""Generate grounding datasets from real Tk applications on a private Xvfb display.

Each scene is a small application window (a settings dialog, a calculator, a web-page-like window) built
with seeded labels and placement. The true box of every target widget is read from Tk (``winfo_rootx`` ...)
while the window is on screen, then the screen is grabbed. Each target widget has its own solid background
colour (saved as ``bg``) so tests can check the boxes against the pixels independently of this module.

Written in the ScreenSpot-v2 layout (``screenspot_<split>_v2.json`` + ``screenspotv2_image/``) or the
ScreenSpot-Pro layout (``annotations/<app>_linux.json`` + ``images/<app>_linux/``).

The Tk part runs in a child process (``python -m agent.evals.screenspot_make --child SPEC``) bound to the private
display, so the caller needs no DISPLAY and no Tk state survives a scene.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from envs.xvfb import VirtualDisplay

SCREEN = (1280, 720)
BITMAP_ICONS = {  # Tk built-in bitmap -> what a user would call it
    "info": ("information", "信息"), "question": ("help", "帮助"), "warning": ("warning", "警告"),
    "error": ("error", "错误"), "hourglass": ("history", "历史"), "questhead": ("profile", "个人资料"),
}


class AppSpec(BaseModel):
    name: str
    split: Literal["desktop", "mobile", "web"]
    group: str
    width: int
    height: int


APPS = [
    AppSpec(name="settings", split="desktop", group="OS", width=SCREEN[0], height=SCREEN[1]),
    AppSpec(name="calculator", split="mobile", group="Scientific", width=360, height=640),
    AppSpec(name="browser", split="web", group="Office", width=1024, height=640),
]


class GeneratorError(RuntimeError):
    pass


class GeneratedTarget(BaseModel):
    instruction: str
    instruction_cn: str
    ui_type: Literal["text", "icon"]
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in image pixels (inclusive of the widget's last pixel + 1)
    bg: str


class GeneratedScene(BaseModel):
    app: str
    image: str
    width: int
    height: int
    targets: list[GeneratedTarget]


class GeneratedDataset(BaseModel):
    root: Path
    layout: str
    images: int
    samples: int


# ---- child: build one window, read boxes, grab ------------------------------------------------------
def _colors(rng: random.Random, n: int) -> list[str]:
    seen: set[str] = set()
    out = []
    while len(out) < n:
        r, g, b = (rng.randrange(120, 250, 10) for _ in range(3))
        c = f"#{r:02x}{g:02x}{b:02x}"
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def _build(tk, root, app: str, rng: random.Random) -> list[tuple[object, str, str, str]]:
    """Widgets of one app -> [(widget, instruction, instruction_cn, ui_type)]."""
    targets: list[tuple[object, str, str, str]] = []
    if app == "settings":
        tk.Label(root, text="Preferences", font=("DejaVu Sans", 18)).grid(row=0, column=0, columnspan=4, pady=12)
        options = rng.sample(["Dark mode", "Notifications", "Auto update", "Bluetooth", "Wi-Fi", "Location",
                              "Night light", "Do not disturb"], 4)
        for i, name in enumerate(options):
            w = tk.Checkbutton(root, text=name, font=("DejaVu Sans", 12))
            w.grid(row=1 + i, column=rng.randrange(0, 2), sticky="w", padx=rng.randrange(20, 120), pady=8)
            targets.append((w, f"toggle {name}", f"切换{name}", "text"))
        buttons = rng.sample(["Save", "Cancel", "Apply", "Reset", "Export", "Import"], 3)
        for i, name in enumerate(buttons):
            w = tk.Button(root, text=name, font=("DejaVu Sans", 12), width=8)
            w.grid(row=6, column=i, padx=rng.randrange(10, 60), pady=30)
            targets.append((w, f"click the {name} button", f"点击{name}按钮", "text"))
        for i, bitmap in enumerate(rng.sample(sorted(BITMAP_ICONS), 2)):
            w = tk.Button(root, bitmap=bitmap, width=40, height=40)
            w.grid(row=0, column=4 + i, padx=8)
            en, cn = BITMAP_ICONS[bitmap]
            targets.append((w, f"open {en} (the {bitmap} icon)", f"打开{cn}", "icon"))
    elif app == "calculator":
        keys = list("789456123") + ["0", ".", "="]
        chosen = set(rng.sample(keys, 5)) | {"="}
        frame = tk.Frame(root)
        frame.pack(pady=rng.randrange(60, 140))
        for i, key in enumerate(keys):
            w = tk.Button(frame, text=key, font=("DejaVu Sans", 16), width=3)
            w.grid(row=i // 3, column=i % 3, padx=4, pady=4)
            if key in chosen:
                targets.append((w, f"press {key}", f"按{key}", "text"))
        icon = rng.choice(sorted(BITMAP_ICONS))
        w = tk.Button(root, bitmap=icon, width=36, height=36)
        w.place(x=rng.randrange(10, 300), y=10)
        targets.append((w, f"open {BITMAP_ICONS[icon][0]} (the {icon} icon)", f"打开{BITMAP_ICONS[icon][1]}", "icon"))
    elif app == "browser":
        bar = tk.Frame(root)
        bar.pack(fill="x", pady=6)
        for bitmap in rng.sample(sorted(BITMAP_ICONS), 2):
            w = tk.Button(bar, bitmap=bitmap, width=30, height=30)
            w.pack(side="left", padx=4)
            targets.append((w, f"open {BITMAP_ICONS[bitmap][0]} (the {bitmap} icon)",
                            f"打开{BITMAP_ICONS[bitmap][1]}", "icon"))
        tk.Entry(bar, width=60).pack(side="left", padx=8)
        go = tk.Button(bar, text="Search", font=("DejaVu Sans", 11))
        go.pack(side="left")
        targets.append((go, "search the web", "搜索", "text"))
        nav = tk.Frame(root)
        nav.pack(pady=rng.randrange(20, 120))
        for name in rng.sample(["Home", "Products", "Pricing", "Blog", "Contact", "About", "Careers"], 4):
            w = tk.Label(nav, text=name, font=("DejaVu Sans", 13, "underline"), padx=10, pady=4)
            w.pack(side="left", padx=rng.randrange(8, 40))
            targets.append((w, f"go to the {name} page", f"打开{name}页面", "text"))
    else:
        raise GeneratorError(f"unknown app {app!r}")
    return targets


def _settle(root, timeout: float = 5.0) -> None:
    """Process events until the window is mapped and its position stops changing (the WM has placed it)."""
    import time

    deadline = time.monotonic() + timeout
    last, stable = None, 0
    while time.monotonic() < deadline and stable < 5:
        root.update()
        now = (root.winfo_viewable(), root.winfo_rootx(), root.winfo_rooty(), root.winfo_width(), root.winfo_height())
        stable = stable + 1 if now == last and now[0] else 0
        last = now
        time.sleep(0.03)
    if not last or not last[0]:
        raise GeneratorError(f"the window {root.title()!r} never appeared on the display")


def _child(spec_path: Path) -> None:
    import tkinter as tk

    import mss
    from PIL import Image

    spec = json.loads(spec_path.read_text())
    out = Path(spec["out"])
    rng = random.Random(spec["seed"])
    scenes = []
    for app in [AppSpec(**a) for a in spec["apps"]]:
        for k in range(spec["scenes"]):
            root = tk.Tk()
            root.title(f"{app.name} {k}")
            x0 = 0 if app.split == "desktop" else rng.randrange(0, SCREEN[0] - app.width)
            y0 = 0 if app.split == "desktop" else rng.randrange(0, max(1, SCREEN[1] - app.height - 40))
            root.geometry(f"{app.width}x{app.height}+{x0}+{y0}")
            widgets = _build(tk, root, app.name, rng)
            colors = _colors(rng, len(widgets))
            for (w, *_), color in zip(widgets, colors):
                w.configure(bg=color, activebackground=color, highlightthickness=0)
            _settle(root)
            if app.split == "desktop":  # the whole screen, decorations included
                left, top, width, height = 0, 0, SCREEN[0], SCREEN[1]
            else:  # the window's client area only: images of several sizes
                left, top = max(0, root.winfo_rootx()), max(0, root.winfo_rooty())
                width = min(root.winfo_rootx() + root.winfo_width(), SCREEN[0]) - left
                height = min(root.winfo_rooty() + root.winfo_height(), SCREEN[1]) - top
            targets = []
            for (w, en, cn, ui_type), color in zip(widgets, colors):
                x1, y1 = w.winfo_rootx() - left, w.winfo_rooty() - top
                targets.append(GeneratedTarget(instruction=en, instruction_cn=cn, ui_type=ui_type, bg=color,
                                               box=(x1, y1, x1 + w.winfo_width(), y1 + w.winfo_height())))
            with mss.mss() as grab:
                shot = grab.grab({"left": left, "top": top, "width": width, "height": height})
                image = Image.frombytes("RGB", shot.size, shot.bgra, "raw", "BGRX")
            name = f"{app.name}_{k}.png"
            image.save(out / name)
            scenes.append(GeneratedScene(app=app.name, image=name, width=width, height=height,
                                         targets=targets).model_dump())
            root.destroy()
    (out / "scenes.json").write_text(json.dumps(scenes))


# ---- parent: run the child on Xvfb, write a layout ---------------------------------------------------
def capture_scenes(work: Path, *, scenes: int, seed: int, display: str | None = None) -> list[GeneratedScene]:
    spec = work / "spec.json"
    spec.write_text(json.dumps({"out": str(work), "seed": seed, "scenes": scenes,
                                "apps": [a.model_dump() for a in APPS]}))
    vd = None if display else VirtualDisplay(*SCREEN).start()
    try:
        env = vd.env if vd else dict(os.environ, DISPLAY=display or "")
        proc = subprocess.run([sys.executable, "-m", "agent.evals.screenspot_make", "--child", str(spec)], env=env,
                              cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                              timeout=120, check=False)
    finally:
        if vd:
            vd.stop()
    if proc.returncode != 0:
        raise GeneratorError(f"the Tk scene builder failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return [GeneratedScene(**s) for s in json.loads((work / "scenes.json").read_text())]


def write_v2(out: Path, scenes: list[GeneratedScene], work: Path) -> int:
    images = out / "screenspotv2_image"
    images.mkdir(parents=True)
    by_split: dict[str, list[dict]] = {a.split: [] for a in APPS}
    split_of = {a.name: a.split for a in APPS}
    for scene in scenes:
        name = f"{split_of[scene.app]}_{scene.image}"
        shutil.copy(work / scene.image, images / name)
        for t in scene.targets:
            x1, y1, x2, y2 = t.box
            by_split[split_of[scene.app]].append({
                "img_filename": name, "bbox": [x1, y1, x2 - x1, y2 - y1], "instruction": t.instruction,
                "data_type": t.ui_type, "data_source": f"tk-{scene.app}", "bg": t.bg})
    for split, rows in by_split.items():
        (out / f"screenspot_{split}_v2.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return sum(len(r) for r in by_split.values())


def write_pro(out: Path, scenes: list[GeneratedScene], work: Path) -> int:
    (out / "annotations").mkdir(parents=True)
    group_of = {a.name: a.group for a in APPS}
    rows_by_app: dict[str, list[dict]] = {}
    for scene in scenes:
        folder = f"{scene.app}_linux"
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(work / scene.image, out / "images" / folder / scene.image)
        rows = rows_by_app.setdefault(folder, [])
        for t in scene.targets:
            rows.append({
                "id": f"{folder}_{len(rows)}", "img_filename": f"{folder}/{scene.image}", "bbox": list(t.box),
                "img_size": [scene.width, scene.height], "instruction": t.instruction,
                "instruction_cn": t.instruction_cn, "group": group_of[scene.app], "platform": "linux",
                "application": scene.app, "ui_type": t.ui_type, "bg": t.bg})
    for folder, rows in rows_by_app.items():
        (out / "annotations" / f"{folder}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return sum(len(r) for r in rows_by_app.values())


def generate(out: Path, *, layout: Literal["v2", "pro"] = "v2", scenes: int = 1, seed: int = 0,
             display: str | None = None) -> GeneratedDataset:
    """Write a dataset to ``out`` (absent or empty). Starts its own Xvfb unless ``display`` is given."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise GeneratorError(f"{out} is not empty; choose a new folder")
    if scenes < 1:
        raise GeneratorError("--scenes must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenspot-gen-") as tmp:
        work = Path(tmp)
        captured = capture_scenes(work, scenes=scenes, seed=seed, display=display)
        count = write_v2(out, captured, work) if layout == "v2" else write_pro(out, captured, work)
    return GeneratedDataset(root=out, layout=layout, images=len(captured), samples=count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: the Tk scene builder (run by generate())")
    parser.add_argument("--child", type=Path, required=True)
    _child(parser.parse_args().child)
