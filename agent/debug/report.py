"""A run directory as one self-contained HTML page (and an animated GIF).

Everything is embedded: screenshots with the actions drawn are JPEG data URIs, the style sheet is inline,
there is no script. The page opens with the run's outcome and a timeline (one cell per step, coloured by
what happened, linking to the step); each step shows the screenshot, the thinking (collapsed), the summary,
the actions in screen pixels, the result, timings and token use. Errors are highlighted.
"""
from __future__ import annotations

import base64
import html
from datetime import datetime
from pathlib import Path

from PIL import Image

from actions.coords import Monitor
from actions.types import describe
from agent.debug.annotate import annotate, encode
from agent.trajectory import RunInfo, StepRecord, read_info, read_trajectory

IMAGE_WIDTH = 1280  # embedded screenshots are scaled down to this width (keeps the page small)

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}
header{background:#1d1f23;color:#fff;padding:16px 24px}header h1{font-size:18px;margin:0 0 6px}
header .meta span{margin-right:18px;opacity:.85}.status{font-weight:700}
.s-done{color:#37c871}.s-fail,.s-error{color:#ff5d5d}.s-max_steps,.s-stopped,.s-running{color:#ffc04d}
nav.timeline{display:flex;flex-wrap:wrap;gap:4px;padding:12px 24px;background:#fff;border-bottom:1px solid #ddd;
position:sticky;top:0}
nav.timeline a{display:block;min-width:44px;padding:4px 6px;border-radius:4px;text-align:center;font-size:12px;
text-decoration:none;color:#fff;background:#4a78c2}
nav.timeline a.user{background:#8a59c8}nav.timeline a.skipped{background:#8d939c}
nav.timeline a.terminal{background:#2e9d5b}nav.timeline a.error{background:#d93636}
main{padding:12px 24px}section.step{background:#fff;border:1px solid #ddd;border-radius:6px;margin:14px 0;
padding:12px 16px}
section.step.error{border:2px solid #d93636;background:#fff6f6}
section.step h2{font-size:16px;margin:0 0 8px}.grid{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);
gap:16px}
img.shot{max-width:100%;border:1px solid #ccc}.missing{padding:40px;background:#eee;text-align:center}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:8px;border-radius:4px;margin:4px 0}
.err{color:#b00000;font-weight:600;background:#ffe3e3;padding:6px 8px;border-radius:4px;margin:6px 0}
table{border-collapse:collapse;font-size:12px}td{padding:2px 10px 2px 0;vertical-align:top}
.label{color:#666;font-size:12px;text-transform:uppercase;letter-spacing:.04em;margin-top:8px}
details summary{cursor:pointer;color:#4a5565}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def step_failed(record: StepRecord) -> bool:
    return bool(record.parse_error or record.error or not record.result.ok
                or any(not r.ok for r in record.results))


def step_kind(record: StepRecord) -> str:
    """One word for the timeline: error, terminal, user, skipped or action."""
    if step_failed(record):
        return "error"
    if record.action is not None and record.action.type in ("done", "fail"):
        return "terminal"
    if record.decided_by == "user":
        return "user"
    if record.result.skipped:
        return "skipped"
    return "action"


def monitor_of(record: StepRecord) -> Monitor | None:
    """The monitor a step acted on, when the trajectory records it (older ones do not: origin assumed)."""
    monitor = getattr(record, "monitor", None)
    return monitor if isinstance(monitor, Monitor) else None


def annotated(run_dir: Path, record: StepRecord, *, caption: str | None = "") -> Image.Image | None:
    """The step's screenshot with its actions drawn, or None when the file is gone or unreadable."""
    path = run_dir / record.screenshot
    try:
        with Image.open(path) as opened:
            return annotate(opened, record.actions, monitor_of(record), caption=caption)
    except (OSError, ValueError):
        return None


def _data_uri(image: Image.Image) -> str:
    data = encode(image, "JPEG", max_width=IMAGE_WIDTH, quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _header(info: RunInfo | None, records: list[StepRecord], run_dir: Path) -> str:
    task = info.task if info else "(run.json missing)"
    status = info.status if info else "unknown"
    parts = [f'<span class="status s-{_e(status)}">{_e(status)}</span>', f"<span>{len(records)} steps</span>"]
    if info:
        if info.model:
            parts.append(f"<span>model {_e(info.model)}</span>")
        parts.append(f"<span>started {datetime.fromtimestamp(info.started):%Y-%m-%d %H:%M:%S}</span>")
        if info.finished:
            parts.append(f"<span>{info.finished - info.started:.1f} s</span>")
    prompt = sum(r.usage.prompt_tokens for r in records)
    completion = sum(r.usage.completion_tokens for r in records)
    parts.append(f"<span>{prompt:,} prompt + {completion:,} reply tokens</span>")
    outcome = ""
    if info and info.answer:
        outcome += f'<div>answer: {_e(info.answer)}</div>'
    if info and info.error:
        outcome += f'<div class="err">{_e(info.error)}</div>'
    return (f"<header><h1>{_e(task)}</h1><div class=\"meta\">{''.join(parts)}</div>{outcome}"
            f"<div class=\"meta\"><span>{_e(run_dir)}</span></div></header>")


def _timeline(records: list[StepRecord]) -> str:
    cells = []
    for r in records:
        what = r.action.type if r.action is not None else ("unparsed" if r.parse_error else "none")
        title = "; ".join(describe(a) for a in r.actions) or (r.parse_error or "no action")
        cells.append(f'<a class="{step_kind(r)}" href="#step-{r.step}" title="{_e(title)}">'
                     f"{r.step}<br>{_e(what)}</a>")
    return f'<nav class="timeline" id="timeline">{"".join(cells)}</nav>'


def _step(run_dir: Path, record: StepRecord) -> str:
    failed = step_failed(record)
    image = annotated(run_dir, record)
    if image is None:
        shot = f'<div class="missing err">screenshot {_e(record.screenshot)} is missing or unreadable</div>'
    else:
        shot = (f'<img class="shot" alt="step {record.step} screenshot" src="{_data_uri(image)}" '
                f'width="{min(image.width, IMAGE_WIDTH)}">')
    errors = []
    if record.parse_error:
        errors.append(f"could not parse the answer: {record.parse_error}")
    if record.error:
        errors.append(record.error)
    for index, result in enumerate(record.results or [record.result], 1):
        if not result.ok:
            errors.append(f"action {index} failed: {result.error or 'no reason given'}")
    actions = "".join(f"<li>{_e(describe(a))}</li>" for a in record.actions) or "<li>none</li>"
    if record.result.skipped:
        result = "skipped (not run)"
    elif failed:
        result = "failed"
    else:
        result = "ok"
    if record.result.settle_ms is not None:
        result += f", screen settled after {record.result.settle_ms:.0f} ms"
    timings = "".join(f"<tr><td>{_e(k)}</td><td>{v:,.1f} ms</td></tr>" for k, v in record.timings.items())
    u = record.usage
    tokens = f"{u.prompt_tokens:,} prompt, {u.completion_tokens:,} reply"
    if record.budget and record.budget.get("images_sent") is not None:
        sent = record.budget["images_sent"]
        tokens += f", {sent} image{'' if sent == 1 else 's'} sent"
    thinking = (f"<details><summary>thinking ({len(record.thinking):,} chars)</summary>"
                f"<pre>{_e(record.thinking)}</pre></details>") if record.thinking else ""
    notes = "".join(f"<li>{_e(n)}</li>" for n in record.notes)
    by = " &middot; decided by the user" if record.decided_by == "user" else (
        " &middot; replayed" if record.decided_by == "replay" else "")
    return f"""<section class="step{' error' if failed else ''}" id="step-{record.step}" data-step="{record.step}">
<h2>Step {record.step}{by} <a href="#timeline" style="font-size:12px">top</a></h2>
{''.join(f'<div class="err">{_e(e)}</div>' for e in errors)}
<div class="grid"><div>{shot}</div><div>
{thinking}
<div class="label">summary</div><pre>{_e(record.summary) or '(empty)'}</pre>
<div class="label">actions (screen pixels)</div><ul>{actions}</ul>
<div class="label">result</div><div>{_e(result)}</div>
<div class="label">tokens</div><div>{tokens}</div>
<div class="label">timings</div><table>{timings}</table>
{f'<div class="label">notes</div><ul>{notes}</ul>' if notes else ''}
</div></div></section>"""


def build_report(run_dir: Path) -> str:
    """The HTML page for the run in ``run_dir`` (raises FileNotFoundError when it holds no trajectory)."""
    run_dir = Path(run_dir)
    records = read_trajectory(run_dir)
    info = read_info(run_dir)
    title = f"kimi-cua run: {info.task if info else run_dir.name}"
    body = "".join(_step(run_dir, r) for r in records) or "<p>No steps were recorded.</p>"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{_header(info, records, run_dir)}{_timeline(records)}<main>{body}</main></body></html>")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    out = Path(out) if out else Path(run_dir) / "report.html"
    page = build_report(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def write_gif(run_dir: Path, out: Path | None = None, *, width: int = 800, frame_ms: int = 1200) -> Path:
    """An animated GIF: one frame per step (screenshot, action drawn, caption), looping."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "run.gif"
    frames: list[Image.Image] = []
    for record in read_trajectory(run_dir):
        what = "; ".join(describe(a) for a in record.actions) or (
            f"unparseable answer: {record.parse_error}" if record.parse_error else "no action")
        image = annotated(run_dir, record, caption=f"step {record.step}: {what}")
        if image is None:
            continue
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        frames.append(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256))
    if not frames:
        raise FileNotFoundError(f"{run_dir} has no readable screenshots to make a GIF from")
    size = frames[0].size
    frames = [f if f.size == size else f.resize(size) for f in frames]
    out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, optimize=False)
    return out
