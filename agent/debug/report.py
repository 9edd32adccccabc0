"""A run directory as one self-contained HTML page (and an animated GIF).

Everything is embedded: screenshots with the actions drawn are JPEG data URIs, the style sheet is inline,
there is no script; each screenshot links to the full-size file in the run directory. The page opens with the
run's outcome and a timeline (one cell per step, coloured by what happened, linking to the step, with a mark
where the run was stopped and resumed); each step shows the screenshot, the thinking (collapsed), the summary,
the actions in screen pixels, answers asked again (with the hint typed in the debugger), the result, timings
and token use. Errors, a final fail and a stopped step are told apart from success.
"""
from __future__ import annotations

import base64
import html
import os
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

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
nav.timeline a.done{background:#2e9d5b}nav.timeline a.error{background:#d93636}
nav.timeline a.failed{background:#b3261e;outline:2px solid #5c0f0b}nav.timeline a.stopped{background:#c98a00}
nav.timeline span.resume{align-self:center;padding:2px 6px;border-left:3px dashed #c98a00;color:#8a5e00;
font-size:11px}
.resume-mark{margin:18px 0 -4px;padding:6px 12px;border-left:4px dashed #c98a00;background:#fff8e6;color:#5c4200}
main{padding:12px 24px}section.step{background:#fff;border:1px solid #ddd;border-radius:6px;margin:14px 0;
padding:12px 16px}
section.step.error{border:2px solid #d93636;background:#fff6f6}
section.step.failed{border:2px solid #b3261e}section.step.stopped{border:2px dashed #c98a00}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff;margin-left:6px;
vertical-align:middle}.badge.failed{background:#b3261e}.badge.stopped{background:#c98a00}
.badge.done{background:#2e9d5b}.badge.skipped{background:#8d939c}
a.full{font-size:12px}
section.step h2{font-size:16px;margin:0 0 8px}.grid{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);
gap:16px}
img.shot{max-width:100%;border:1px solid #ccc}.missing{padding:40px;background:#eee;text-align:center}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:8px;border-radius:4px;margin:4px 0}
.err{color:#b00000;font-weight:600;background:#ffe3e3;padding:6px 8px;border-radius:4px;margin:6px 0}
table{border-collapse:collapse;font-size:12px}td{padding:2px 10px 2px 0;vertical-align:top}
tr.part td:first-child{padding-left:14px;color:#555}
.label{color:#666;font-size:12px;text-transform:uppercase;letter-spacing:.04em;margin-top:8px}
details summary{cursor:pointer;color:#4a5565}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def step_failed(record: StepRecord) -> bool:
    return bool(record.parse_error or record.error or not record.result.ok
                or any(not r.ok for r in record.results))


def stop_reason(record: StepRecord) -> str | None:
    """Why the run stopped at this step, or None (older trajectories: the hook's "stop: ..." note)."""
    if record.stopped:
        return record.stopped
    if record.result.skipped:
        for note in record.notes:
            if note.startswith("stop: "):
                return note[len("stop: "):]
    return None


def terminal_reached(record: StepRecord) -> str | None:
    """"done" or "fail" when the step's done/fail action was reached (every action before it ran and
    succeeded, nothing skipped or stopped, a checked DONE confirmed); otherwise None."""
    if record.verification is not None and not record.verification.accepted:
        return None
    for index, action in enumerate(record.actions):
        if action.type in ("done", "fail"):
            results = record.results or [record.result]
            ran = (len(record.results) > index if record.results else index == 0)
            if ran and not record.result.skipped and all(r.ok and not r.skipped for r in results):
                return action.type
            return None
    return None


def step_kind(record: StepRecord) -> str:
    """One word for the timeline: error, stopped, skipped, done, failed (the agent gave up), user or action."""
    if step_failed(record):
        return "error"
    if stop_reason(record) is not None:
        return "stopped"
    if record.result.skipped:
        return "skipped"
    terminal = terminal_reached(record)
    if terminal is not None:
        return "done" if terminal == "done" else "failed"
    if record.decided_by == "user":
        return "user"
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


# Human-readable names of the timings a step records (milliseconds), in display order.
TIMING_LABELS = {
    "observe_ms": "screenshot (grab + encode)",
    "grab": "  grab",
    "encode": "  encode",
    "save_ms": "save screenshot",
    "build_ms": "build request",
    "model_ms": "model reply",
    "parse_ms": "parse answer",
    "execute_ms": "run actions (incl. settle)",
    "settle_ms": "  screen settle",
}


def timing_label(key: str) -> str:
    if key in TIMING_LABELS:
        return TIMING_LABELS[key].strip()
    name = key[:-3] if key.endswith("_ms") else key
    return name.replace("_", " ")


def format_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:,.2f} s"
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms"


def step_timings(record: StepRecord) -> list[tuple[str, str, float]]:
    """(raw key, label, milliseconds) of one step, in a fixed order (a label indented by two spaces is a part
    of the one above it).

    The wait for the screen to settle after a step's actions belongs to that step: older trajectories recorded
    it under the next step (the observation's ``settle``); that entry is left out and the step's own waits are
    taken from its results.
    """
    timings = {k: v for k, v in record.timings.items() if k != "settle"}
    if "settle_ms" not in timings:
        settled = [r.settle_ms for r in (record.results or [record.result]) if r.settle_ms is not None]
        if settled:
            timings["settle_ms"] = sum(settled)
    order = list(TIMING_LABELS)
    keys = sorted(timings, key=lambda k: (order.index(k) if k in order else len(order), k))
    return [(k, TIMING_LABELS.get(k, timing_label(k)), timings[k]) for k in keys]


def resumed_steps(records: list[StepRecord], info: RunInfo | None) -> set[int]:
    """Steps recorded first after the run was stopped (or killed) and resumed."""
    marked = {r.step for r in records if r.resumed}
    if not marked and info is not None and info.resumed_at_step:  # trajectories from before ``resumed``
        marked = {r.step for r in records if r.step == info.resumed_at_step}
    return marked


def _timeline(records: list[StepRecord], resumed: set[int]) -> str:
    cells = []
    for r in records:
        kind = step_kind(r)
        what = r.action.type if r.action is not None else ("unparsed" if r.parse_error else "none")
        if kind in ("stopped", "skipped"):
            what = kind
        title = "; ".join(describe(a) for a in r.actions) or (r.parse_error or "no action")
        if kind == "stopped":
            title = f"stopped here, not run: {stop_reason(r)} ({title})"
        if r.step in resumed:
            cells.append('<span class="resume" title="the run was stopped and resumed here">resumed</span>')
        cells.append(f'<a class="{kind}" href="#step-{r.step}" title="{_e(title)}">'
                     f"{r.step}<br>{_e(what)}</a>")
    return f'<nav class="timeline" id="timeline">{"".join(cells)}</nav>'


def _resume_mark(previous: StepRecord | None, record: StepRecord) -> str:
    if previous is None:
        before = "The run was stopped before its first step was recorded"
    else:
        reason = stop_reason(previous)
        before = f"The run stopped after step {previous.step}" + (f" ({reason})" if reason else "")
    when = datetime.fromtimestamp(record.timestamp).strftime("%Y-%m-%d %H:%M:%S")
    return (f'<div class="resume-mark" id="resumed-{record.step}">{_e(before)} and was resumed here '
            f"(step {record.step} decided at {when}).</div>")


def _full_size_href(run_dir: Path, record: StepRecord, page_dir: Path) -> str:
    relative = os.path.relpath(run_dir / record.screenshot, page_dir)
    return quote(Path(relative).as_posix())


def _retries(record: StepRecord) -> str:
    if not record.retries:
        return ""
    items = []
    for retry in record.retries:
        hint = f'hint: "{_e(retry.hint)}"' if retry.hint else "no hint"
        why = f" &middot; {_e(retry.reason)}" if retry.reason else ""
        if retry.parse_error:
            answer = f"unparseable answer: {retry.parse_error}"
        else:
            answer = "; ".join(describe(a) for a in retry.actions) or "no action"
        items.append(f'<li class="retry">{hint}{why}<br><span style="color:#666">discarded answer: '
                     f"{_e(answer)}</span></li>")
    return (f'<div class="label">asked again ({len(record.retries)})</div>'
            f'<ul class="retries">{"".join(items)}</ul>')


def _checks(run_dir: Path, record: StepRecord, page_dir: Path) -> str:
    """--verify-done's check of a DONE, and what the loop guard saw at this step."""
    out = ""
    v = record.verification
    if v is not None:
        outcome = "confirmed: the run ended with done" if v.accepted else "overturned: the reason went back to the model"
        shot = (f' &middot; <a href="{quote(os.path.relpath(run_dir / v.screenshot, page_dir))}" target="_blank">'
                "screenshot checked</a>") if v.screenshot else ""
        out += (f'<div class="label">done checked (--verify-done)</div><div class="verify">verdict '
                f"<b>{_e(v.verdict)}</b>, {_e(outcome)}{shot}<br>reason: {_e(v.reason)}</div>")
    if record.loop_guard:
        tiers = {1: "note 1", 2: "note 2 (stronger)", 3: "stop"}
        items = "".join(f"<li>{_e(e.shape)}, {_e(tiers.get(e.tier, e.tier))}: {_e(e.message)}</li>"
                        for e in record.loop_guard)
        out += f'<div class="label">loop guard</div><ul class="loop-guard">{items}</ul>'
    return out


def _step(run_dir: Path, record: StepRecord, page_dir: Path | None = None) -> str:
    failed = step_failed(record)
    kind = step_kind(record)
    image = annotated(run_dir, record)
    if image is None:
        shot = f'<div class="missing err">screenshot {_e(record.screenshot)} is missing or unreadable</div>'
    else:
        href = _full_size_href(run_dir, record, page_dir or run_dir)
        shot = (f'<a class="shot" href="{href}" target="_blank" title="open the full-size screenshot">'
                f'<img class="shot" alt="step {record.step} screenshot" src="{_data_uri(image)}" '
                f'width="{min(image.width, IMAGE_WIDTH)}"></a>'
                f'<div><a class="full" href="{href}" target="_blank">full size '
                f"({record.image_width}x{record.image_height})</a></div>")
    errors = []
    if record.parse_error:
        errors.append(f"could not parse the answer: {record.parse_error}")
    if record.error:
        errors.append(record.error)
    for index, result in enumerate(record.results or [record.result], 1):
        if not result.ok:
            errors.append(f"action {index} failed: {result.error or 'no reason given'}")
    actions = "".join(f"<li>{_e(describe(a))}</li>" for a in record.actions) or "<li>none</li>"
    terminal = next((a for a in record.actions if a.type in ("done", "fail")), None)
    badge = ""
    if kind == "stopped":
        result = f"stopped here, not run: {stop_reason(record)}"
        if not record.result.skipped:
            result = f"ran, then the run stopped: {stop_reason(record)}"
        badge = '<span class="badge stopped">stopped</span>'
    elif record.result.skipped:
        result = "skipped (not run)"
        badge = '<span class="badge skipped">skipped</span>'
    elif failed:
        result = "failed"
    elif kind == "failed":
        reason = getattr(terminal, "reason", None)
        result = "the agent gave up (fail)" + (f": {reason}" if reason else "")
        badge = '<span class="badge failed">failed</span>'
    elif kind == "done":
        answer = getattr(terminal, "answer", None)
        result = "done" + (f": {answer}" if answer else "")
        badge = '<span class="badge done">done</span>'
    elif record.verification is not None and not record.verification.accepted:
        result = "done, overturned by the check"
        badge = '<span class="badge stopped">done overturned</span>'
    else:
        result = "ok"
    if record.result.settle_ms is not None:
        result += f", screen settled after {record.result.settle_ms:.0f} ms"
    part = ' class="part"'
    timings = "".join(f'<tr title="{_e(key)}"{part if label.startswith("  ") else ""}>'
                      f"<td>{_e(label.strip())}</td><td>{format_ms(ms)}</td></tr>"
                      for key, label, ms in step_timings(record))
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
    classes = "step" + (" error" if failed else f" {kind}" if kind in ("failed", "stopped") else "")
    return f"""<section class="{classes}" id="step-{record.step}" data-step="{record.step}" data-kind="{kind}">
<h2>Step {record.step}{badge}{by} <a href="#timeline" style="font-size:12px">top</a></h2>
{''.join(f'<div class="err">{_e(e)}</div>' for e in errors)}
<div class="grid"><div>{shot}</div><div>
{thinking}
<div class="label">summary</div><pre>{_e(record.summary) or '(empty)'}</pre>
<div class="label">actions (screen pixels)</div><ul>{actions}</ul>
{_retries(record)}
{_checks(run_dir, record, page_dir or run_dir)}
<div class="label">result</div><div class="result">{_e(result)}</div>
<div class="label">tokens</div><div>{tokens}</div>
<div class="label">timings</div><table class="timings">{timings}</table>
{f'<div class="label">notes</div><ul>{notes}</ul>' if notes else ''}
</div></div></section>"""


def build_report(run_dir: Path, page_dir: Path | None = None) -> str:
    """The HTML page for the run in ``run_dir`` (raises FileNotFoundError when it holds no trajectory).

    ``page_dir``: the folder the page will be saved in (default ``run_dir``), for the full-size links.
    """
    run_dir = Path(run_dir)
    records = read_trajectory(run_dir)
    info = read_info(run_dir)
    title = f"kimi-cua run: {info.task if info else run_dir.name}"
    resumed = resumed_steps(records, info)
    parts = []
    for index, record in enumerate(records):
        if record.step in resumed:
            parts.append(_resume_mark(records[index - 1] if index else None, record))
        parts.append(_step(run_dir, record, page_dir))
    body = "".join(parts) or "<p>No steps were recorded.</p>"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body>{_header(info, records, run_dir)}{_timeline(records, resumed)}<main>{body}</main></body></html>")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    out = Path(out) if out else Path(run_dir) / "report.html"
    page = build_report(run_dir, out.parent)
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
