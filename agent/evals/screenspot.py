"""ScreenSpot-family grounding evaluation: concurrent requests, resumable results, upstream metrics.

``DIR/results.jsonl`` gets one line per finished sample (appended and flushed as each answer arrives), so a
killed run loses only the requests in flight and a re-run skips what is done. Samples whose request failed
at the server are not written: the next run retries them. ``DIR/summary.json`` holds ScreenSpot-Pro's
metric tables (``num_correct_action, num_total, wrong_format_num, action_acc, text_acc, icon_acc``) for the
whole set and every upstream breakdown; ``DIR/failures.html`` (with ``DIR/failures_files/``) draws the box and
the predicted point of every miss (agent/evals/failures_page.py).
"""
from __future__ import annotations

import io
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from string import Template
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import prompts
from actions.coords import MixedFramesError, Monitor, OutOfScreenError, reading_of, to_screen
from actions.types import ActionParseError, action_points
from agent.models.vllm import ModelClient, ServerError, image_part
from agent.reply import ModelReply
from agent.evals.failures_page import write_failures_html
from agent.zoom import client_in_token_limit, zoom_grounding, zoom_records
from agent.evals.upstream_answers import upstream_point
from agent.evals.screenspot_data import Correctness, Dataset, PredictedPoint, Sample, SampleTags, Target, score

PROMPTS = {"kimi": "grounding_kimi", "screenspot-pro-kimivl": "grounding_sspro"}
RESULTS_FILE, SUMMARY_FILE, FAILURES_FILE, RUN_FILE = "results.jsonl", "summary.json", "failures.html", "run.json"
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


AnswerReading = Literal["kimi-cua", "upstream"]
READINGS: tuple[AnswerReading, ...] = ("kimi-cua", "upstream")
READING_NAMES = {"kimi-cua": "kimi-cua's parser", "upstream": "ScreenSpot-Pro's Kimi-VL wrapper"}


class EvalError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


# ---- prompts ---------------------------------------------------------------------------------------
class GroundingPrompt(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    system: str | None
    user: str  # string.Template with $instruction

    def messages(self, instruction: str, image: dict[str, Any]) -> list[dict[str, Any]]:
        text = Template(self.user).safe_substitute(instruction=instruction)
        out: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": [image, {"type": "text", "text": text}]})
        return out


def load_prompt(name_or_path: str) -> GroundingPrompt:
    """A built-in prompt (``kimi``, ``screenspot-pro-kimivl``) or a file with ``[system]``/``[user]`` sections."""
    if name_or_path in PROMPTS:
        text = prompts.load(PROMPTS[name_or_path])
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise EvalError(f"--prompt {name_or_path!r}: neither a built-in prompt ({', '.join(PROMPTS)}) "
                            "nor a file")
        text = path.read_text(encoding="utf-8")
    sections: dict[str, list[str]] = {}
    current = "user"
    for line in text.splitlines():
        if line.strip() in ("[system]", "[user]"):
            current = line.strip()[1:-1]
            sections[current] = []
        else:
            sections.setdefault(current, []).append(line)
    user = "\n".join(sections.get("user", [])).strip("\n")
    if "$instruction" not in user and "${instruction}" not in user:
        raise EvalError(f"prompt {name_or_path!r}: the [user] section has no $instruction placeholder")
    system = "\n".join(sections.get("system", [])).strip("\n") or None
    return GroundingPrompt(name=name_or_path, system=system, user=user)


# ---- one sample ------------------------------------------------------------------------------------
class SampleResult(SampleTags):
    """One line of results.jsonl."""

    model_config = ConfigDict(extra="ignore")
    id: str
    instruction: str
    image: str
    image_size: tuple[int, int]
    point: tuple[float, float] | None = None  # predicted point in image pixels
    target: Target
    correctness: Correctness
    correct: bool
    answer: str  # raw model text (thinking included)
    latency_ms: float
    error: str | None = None  # why the answer had no usable point
    unreadable: bool = False  # the image could not be read: the model was not asked, the sample counts wrong
    # --zoom N: every round's crop box and point (agent/zoom.py ZoomRound; round 0 is the first answer). ``point`` and
    # ``correctness`` are then the final round's, ``correctness_before_zoom`` the first answer's (kimi-cua reading).
    zoom: list[dict[str, Any]] | None = None
    correctness_before_zoom: Correctness | None = None
    # The same answer read as ScreenSpot-Pro's Kimi-VL wrapper reads it (agent/evals/upstream_answers.py);
    # None in results written before both readings were kept (summarize fills it in from ``answer``).
    upstream_correctness: Correctness | None = None
    upstream_point: tuple[float, float] | None = None  # in image pixels


class RunSettings(BaseModel):
    """What a results directory was produced with; a resume must match it."""

    benchmark: str
    data: str
    prompt: str
    language: Literal["en", "cn"] = "en"
    model: str
    temperature: float
    max_tokens: int | None
    zoom: int = 0  # zoom-in rounds (--zoom)


class UnreadableImage(EvalError):
    """One sample's image cannot be used (missing, not an image, a decompression bomb): a per-sample error."""


def _image_size(data: bytes, path: Path) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.width, im.height
    except Exception as exc:  # noqa: BLE001 - any decoder error (DecompressionBombError too) means the same
        raise UnreadableImage(f"{path}: not a readable image ({type(exc).__name__}: {str(exc)[:160]})") from None
    if width <= 0 or height <= 0 or width * height > (Image.MAX_IMAGE_PIXELS or 2**62):
        raise UnreadableImage(f"{path}: {width}x{height} pixels is not a screenshot (more than "
                              f"{Image.MAX_IMAGE_PIXELS:,} pixels would be a decompression bomb)")
    return width, height


_NUMBER = r"(-?\d+(?:\.\d+)?)"
_NEGATIVE_POINT = re.compile(rf"x\s*=\s*{_NUMBER}\s*,\s*y\s*=\s*{_NUMBER}|\[\s*{_NUMBER}\s*,\s*{_NUMBER}\s*[,\]]")


def _negative_point(text: str) -> tuple[float, float] | None:
    """The first point written with both coordinates negative (OSWorld-G's way to say "not there")."""
    for m in _NEGATIVE_POINT.finditer(text):
        values = [float(v) for v in m.groups() if v is not None]
        if len(values) == 2 and values[0] < 0 and values[1] < 0:
            return values[0], values[1]
    return None


def judge_reply(sample: Sample, reply_text: str, summary: str, truncated: bool, width: int,
                height: int, parse: Callable[[str], list[Any]]) -> tuple[Correctness, tuple[float, float] | None,
                                                                        str | None]:
    """(verdict, point in image pixels, error) for one answer, through the project's parser."""
    if truncated:
        return score(sample, None, image_size=(width, height)), None, "the reply was cut off inside its thinking"
    try:
        actions = parse(summary)
    except ActionParseError as exc:
        negative = _negative_point(summary)
        if negative is None:
            return score(sample, None, image_size=(width, height)), None, f"unparseable answer: {exc}"
        # The parser rejects off-screen points; OSWorld-G reads a negative point as "no such element".
        reading = "normalized" if all(abs(v) <= 1 for v in negative) else "pixels"
        point = PredictedPoint.from_model(*negative, reading=reading, width=width, height=height)
        return score(sample, point, image_size=(width, height)), point.pixels, "negative point (a refusal)"
    action = next((a for a in actions if action_points(a)), None)
    if action is None:
        verdict = score(sample, None, image_size=(width, height), refused=True)
        return verdict, None, None if verdict == "correct" else "the answer has no point"
    raw = action_points(action)[0]
    reading = reading_of(action)
    point = PredictedPoint.from_model(float(raw.x), float(raw.y), reading=reading, width=width, height=height)
    error = None
    try:  # the project's one conversion: also rejects points outside the image
        to_screen(action, shown_width=width, shown_height=height, monitor=Monitor(width=width, height=height))
    except OutOfScreenError as exc:
        error = f"point outside the image: {exc}"
    except MixedFramesError as exc:  # no one point was meant: no usable answer
        return score(sample, None, image_size=(width, height)), None, f"unusable point: {exc}"
    return score(sample, point, image_size=(width, height)), point.pixels, error


def judge_upstream(sample: Sample, reply_text: str, width: int,
                   height: int) -> tuple[Correctness, tuple[float, float] | None]:
    """(verdict, point in image pixels) of the answer read as ScreenSpot-Pro's Kimi-VL wrapper reads it."""
    found = upstream_point(reply_text)
    if found is None:
        return score(sample, None, image_size=(width, height)), None
    point = PredictedPoint.from_model(*found, reading="normalized", width=width, height=height)
    return score(sample, point, image_size=(width, height)), point.pixels


def evaluate_sample(sample: Sample, client: ModelClient, prompt: GroundingPrompt, *, temperature: float,
                    max_tokens: int | None, language: str, parse: Callable[[str], list[Any]], zoom: int = 0,
                    in_token_limit: int | None = None) -> SampleResult:
    """Ask the model about one sample and judge the answer. Raises ServerError when the server fails; an
    image that cannot be read is a result of its own (``unreadable``), so the evaluation goes on."""
    instruction = sample.instruction_cn if language == "cn" and sample.instruction_cn else sample.instruction
    try:
        data = sample.image.read_bytes()
        width, height = _image_size(data, sample.image)
    except (OSError, UnreadableImage) as exc:
        reason = str(exc) if isinstance(exc, UnreadableImage) else f"{sample.image}: cannot read ({exc.strerror or exc})"
        return SampleResult(
            id=sample.id, instruction=instruction, image=str(sample.image), image_size=(0, 0), point=None,
            target=sample.target, correctness="wrong", correct=False, answer="", latency_ms=0.0,
            error=f"unreadable image: {reason}", unreadable=True, **sample.tags())
    messages = prompt.messages(instruction, image_part(data, MIME.get(sample.image.suffix.lower(), "image/png")))
    started = time.perf_counter()
    reply: ModelReply = client.complete(messages, temperature=temperature, max_tokens=max_tokens)
    latency = reply.latency_ms or (time.perf_counter() - started) * 1000
    verdict, point, error = judge_reply(sample, reply.text, reply.summary, reply.truncated, width, height, parse)
    zoomed, before_zoom = None, None
    if zoom and point is not None and error is None and min(point) >= 0:  # look closer (agent/zoom.py)
        found = zoom_grounding(client, image=data, start=point, instruction=instruction, rounds=zoom, parse=parse,
                               in_token_limit=in_token_limit or client_in_token_limit(client), system=prompt.system,
                               temperature=temperature, max_tokens=max_tokens)
        zoomed, before_zoom, point = zoom_records(found), verdict, found.point
        verdict = score(sample, PredictedPoint(fraction=found.fractions, pixels=point), image_size=(width, height))
    upstream_verdict, upstream_pixels = judge_upstream(sample, reply.text, width, height)
    return SampleResult(
        id=sample.id, instruction=instruction, image=str(sample.image), image_size=(width, height), point=point,
        target=sample.target, correctness=verdict, correct=verdict == "correct", answer=reply.text,
        latency_ms=round(latency, 1), error=error, upstream_correctness=upstream_verdict,
        upstream_point=upstream_pixels, zoom=zoomed, correctness_before_zoom=before_zoom, **sample.tags())


# ---- results file ----------------------------------------------------------------------------------
def read_results(path: Path) -> dict[str, SampleResult]:
    """Finished samples by id. A torn last line (a killed run) is cut off so later appends stay clean."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    done: dict[str, SampleResult] = {}
    offset = 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        end = offset + len(line) + (0 if is_last else 1)
        if line.strip():
            try:
                result = SampleResult.model_validate_json(line)
            except ValidationError as exc:
                if is_last or all(not rest.strip() for rest in lines[number:]):
                    with path.open("r+b") as f:  # torn tail: drop it
                        f.truncate(offset)
                    break
                raise EvalError(f"{path}: line {number} is not a result record ({exc.errors()[0]['msg']}); "
                                "delete that line or use another --out") from None
            done.setdefault(result.id, result)
        offset = end
    return done


class ResultWriter:
    """Appends one JSON line per result and flushes it to the OS before returning."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, result: SampleResult) -> None:
        line = result.model_dump_json() + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        self._file.close()


# ---- metrics (ScreenSpot-Pro's eval_screenspot_pro.py semantics) ------------------------------------
class Metrics(BaseModel):
    num_correct_action: int
    num_total: int
    wrong_format_num: int
    action_acc: float
    text_acc: float  # 0 when the table has no text sample (as upstream)
    icon_acc: float


def metrics_of(results: list[SampleResult]) -> Metrics:
    def acc(rows: list[SampleResult]) -> float:
        return sum(r.correct for r in rows) / len(rows) if rows else 0

    return Metrics(
        num_correct_action=sum(r.correctness == "correct" for r in results), num_total=len(results),
        wrong_format_num=sum(r.correctness == "wrong_format" for r in results), action_acc=acc(results),
        text_acc=acc([r for r in results if r.ui_type == "text"]),
        icon_acc=acc([r for r in results if r.ui_type == "icon"]))


def groups(results: list[SampleResult], fields: list[tuple[str, str]],
           constants: Iterable[tuple[str, str]] = ()) -> dict[str, list[SampleResult]]:
    """The samples of every existing combination of ``fields`` ((attribute, key label) pairs), keyed like upstream."""
    values = [sorted({str(getattr(r, attr)) for r in results}) for attr, _ in fields]
    out: dict[str, list[SampleResult]] = {}
    for combo in itertools.product(*values):
        rows = [r for r in results if all(str(getattr(r, attr)) == v for (attr, _), v in zip(fields, combo))]
        if rows:
            key = " ".join([f"{label}:{v}" for (_, label), v in zip(fields, combo)]
                           + [f"{label}:{v}" for label, v in constants])
            out[key] = rows
    return out


def breakdown(results: list[SampleResult], fields: list[tuple[str, str]],
              constants: Iterable[tuple[str, str]] = ()) -> dict[str, Metrics]:
    """One table per existing combination of ``fields`` ((attribute, key label) pairs), keyed like upstream."""
    return {key: metrics_of(rows) for key, rows in groups(results, fields, constants).items()}


def ui_type_counts(rows: list[SampleResult]) -> dict[str, int]:
    """How many text and icon samples a table holds (its text_acc / icon_acc mean nothing when 0)."""
    return {"text": sum(r.ui_type == "text" for r in rows), "icon": sum(r.ui_type == "icon" for r in rows)}


class OSWorldGGroup(BaseModel):
    total: int
    correct: int
    accuracy: float


def osworld_g_groups(results: list[SampleResult], field: str = "classes") -> dict[str, OSWorldGGroup]:
    """OSWorld-G's accuracy_dict_group (``classes``) or its accuracy per GUI type (``gui_types``): a sample
    counts in each of its classes; a sample with none (absent from the classification file, or without
    ``GUI_types``) is left out of these tables, as upstream's evaluator does."""
    groups: dict[str, list[bool]] = {}
    for r in results:
        for cls in getattr(r, field):
            groups.setdefault(cls, []).append(r.correct)
    return {cls: OSWorldGGroup(total=len(v), correct=sum(v), accuracy=sum(v) / len(v)) for cls, v in sorted(groups.items())}


class Summary(BaseModel):
    benchmark: str
    data: str
    prompt: str
    model: str
    selected: int
    finished: int
    unfinished: int
    unreadable_images: int = 0  # samples whose image could not be read (counted wrong; see results.jsonl)
    metrics: dict[str, Any]
    # Text and icon samples of every table in ``metrics`` (same keys): upstream's text_acc / icon_acc are 0 for
    # a table without such samples, which the printed table shows as "-".
    ui_type_counts: dict[str, Any] = Field(default_factory=dict)
    osworld_g: dict[str, Any] | None = None
    throughput: dict[str, float] = Field(default_factory=dict)
    # Which reading of the answers ``metrics`` uses (``--answers``), and every table under both readings:
    # "kimi-cua" (the project's parser) and "upstream" (ScreenSpot-Pro's Kimi-VL wrapper, comparable with
    # leaderboards). The printed table shows both side by side.
    answers: AnswerReading = "kimi-cua"
    metrics_by_reading: dict[str, dict[str, Any]] = Field(default_factory=dict)


def breakdown_sections(dataset: Dataset, results: list[SampleResult]) -> dict[str, dict[str, list[SampleResult]]]:
    """The samples behind every upstream breakdown table of the dataset's layout, by section and key."""
    # Samples without a ui_type (all of OSWorld-G's) make no "ui_type:None" row.
    sections = {"by_ui_type": groups([r for r in results if r.ui_type is not None], [("ui_type", "ui_type")])}
    if dataset.layout == "screenspot":
        sections["by_split"] = groups(results, [("split", "split")])
        sections["by_data_source"] = groups(results, [("data_source", "source")])
        sections["by_split_and_source"] = groups(results, [("split", "split"), ("data_source", "source")])
    elif dataset.layout == "pro":
        fixed = [("inst_style", "instruction"), ("gt_type", "positive")]
        sections["leaderboard_simple_style"] = groups(results, [("group", "group")])
        sections["leaderboard_detailed_style"] = groups(results, [("application", "app")])
        sections["by_platform"] = groups(results, [("platform", "plat")])
        sections["seeclick_style"] = groups(results, [("platform", "plat")], fixed)
        sections["fine_grained"] = groups(results, [("platform", "plat"), ("application", "app")], fixed)
    return sections


def read_as(results: list[SampleResult], reading: AnswerReading, dataset: Dataset) -> list[SampleResult]:
    """The results with ``correctness``/``correct``/``point`` of the given reading of their answers."""
    if reading == "kimi-cua":
        return results
    by_id = {s.id: s for s in dataset.samples}
    out = []
    for r in results:
        verdict, point = r.upstream_correctness, r.upstream_point
        if verdict is None:  # a line written before both readings were kept: read its stored answer again
            if r.unreadable or r.id not in by_id:
                verdict, point = r.correctness, None
            else:
                verdict, point = judge_upstream(by_id[r.id], r.answer, *r.image_size)
        out.append(r.model_copy(update={"correctness": verdict, "correct": verdict == "correct", "point": point}))
    return out


def _tables(dataset: Dataset, results: list[SampleResult]) -> dict[str, Any]:
    metrics: dict[str, Any] = {"overall": metrics_of(results).model_dump()}
    for name, tables in breakdown_sections(dataset, results).items():
        metrics[name] = {key: metrics_of(rows).model_dump() for key, rows in tables.items()}
    return metrics


def summarize(dataset: Dataset, results: list[SampleResult], settings: RunSettings, selected: int,
              throughput: dict[str, float] | None = None, answers: AnswerReading = "kimi-cua") -> Summary:
    by_reading = {reading: read_as(results, reading, dataset) for reading in READINGS}
    results = by_reading[answers]
    metrics_by_reading = {reading: _tables(dataset, rows) for reading, rows in by_reading.items()}
    metrics = metrics_by_reading[answers]
    counts: dict[str, Any] = {"overall": ui_type_counts(results)}
    for name, tables in breakdown_sections(dataset, results).items():
        counts[name] = {key: ui_type_counts(rows) for key, rows in tables.items()}
    osworld = None
    if dataset.layout == "osworld-g":
        correct = sum(r.correct for r in results)
        osworld = {"total": len(results), "correct": correct,
                   "accuracy": correct / len(results) if results else 0,
                   "by_target_kind": {k: sum(1 for r in results if r.target.kind == k)
                                      for k in ("bbox", "polygon", "refusal")}}
        if dataset.classification_file is not None:
            osworld["accuracy_dict_group"] = {k: v.model_dump() for k, v in osworld_g_groups(results).items()}
        if any(r.gui_types for r in results):
            osworld["accuracy_dict_gui_types"] = {k: v.model_dump()
                                                  for k, v in osworld_g_groups(results, "gui_types").items()}
    return Summary(benchmark=dataset.benchmark, data=settings.data, prompt=settings.prompt, model=settings.model,
                   selected=selected, finished=len(results), unfinished=selected - len(results),
                   unreadable_images=sum(r.unreadable for r in results), metrics=metrics,
                   ui_type_counts=counts, osworld_g=osworld, throughput=throughput or {}, answers=answers,
                   metrics_by_reading=metrics_by_reading)


def format_table(summary: Summary) -> str:
    """A Markdown table (pastes into a paper draft or an issue) of every metric table in the summary, with the
    accuracy under both readings of the answers side by side, the primary one (``--answers``) first."""
    primary = summary.answers
    other = next(r for r in READINGS if r != primary)
    other_metrics = summary.metrics_by_reading.get(other) or {}
    title = (f"{summary.benchmark}: {summary.finished}/{summary.selected} samples, model {summary.model}, "
             f"prompt {summary.prompt}; primary reading of the answers: {primary} ({READING_NAMES[primary]}), "
             f"beside it {other} ({READING_NAMES[other]})")
    lines = [title, "",
             f"| table | n | accuracy ({primary}) | accuracy ({other}) | text | icon | wrong format |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def share(value: float, samples: int | None) -> str:
        return "-" if samples == 0 else f"{100 * value:.2f}"  # None: a summary without counts (older runs)

    def row(name: str, m: dict[str, Any], o: dict[str, Any] | None, counts: dict[str, int] | None) -> str:
        counts = counts or {}
        beside = f"{100 * o['action_acc']:.2f}" if o else "-"
        return (f"| {name} | {m['num_total']} | {100 * m['action_acc']:.2f} | {beside} | "
                f"{share(m['text_acc'], counts.get('text'))} | {share(m['icon_acc'], counts.get('icon'))} | "
                f"{m['wrong_format_num']} |")

    lines.append(row("overall", summary.metrics["overall"], other_metrics.get("overall"),
                     summary.ui_type_counts.get("overall")))
    for section, tables in summary.metrics.items():
        if section in ("overall", "fine_grained", "seeclick_style", "by_split_and_source"):
            continue
        section_counts = summary.ui_type_counts.get(section) or {}
        other_tables = other_metrics.get(section) or {}
        lines.extend(row(key, m, other_tables.get(key), section_counts.get(key)) for key, m in tables.items())
    for field, heading in (("accuracy_dict_group", "OSWorld-G class"), ("accuracy_dict_gui_types", "GUI type")):
        if summary.osworld_g and field in summary.osworld_g:
            lines += ["", f"| {heading} | n | correct | accuracy |", "|---|---:|---:|---:|"]
            for cls, g in summary.osworld_g[field].items():
                lines.append(f"| {cls} | {g['total']} | {g['correct']} | {100 * g['accuracy']:.2f} |")
    if summary.unreadable_images:
        lines += ["", f"{summary.unreadable_images} sample(s) with an unreadable image, counted wrong (their errors are "
                  "in results.jsonl; fix the images and delete those lines to ask again)"]
    if summary.unfinished:
        lines += ["", f"{summary.unfinished} sample(s) unfinished (server errors): re-run the same command to retry"]
    return "\n".join(lines)


# ---- the run ---------------------------------------------------------------------------------------
class RunOutcome(BaseModel):
    summary: Summary
    new_results: int
    errors: list[str]


def _check_settings(out: Path, settings: RunSettings) -> None:
    path = out / RUN_FILE
    if path.exists():
        try:
            previous = RunSettings.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError:
            raise EvalError(f"{path}: not a run settings file; use another --out") from None
        differs = [k for k in ("benchmark", "prompt", "language", "model", "temperature", "max_tokens", "zoom")
                   if getattr(previous, k) != getattr(settings, k)]
        if differs:
            detail = ", ".join(f"{k}: {getattr(previous, k)!r} then, {getattr(settings, k)!r} now" for k in differs)
            raise EvalError(f"{out} holds results of a different run ({detail}); use another --out")
    else:
        path.write_text(settings.model_dump_json(indent=2), encoding="utf-8")


def run_eval(dataset: Dataset, samples: list[Sample], out: Path, clients: list[ModelClient],
             settings: RunSettings, *, prompt: GroundingPrompt, concurrency: int = 16,
             parse: Callable[[str], list[Any]] | None = None, progress: bool = True,
             max_consecutive_errors: int | None = None, answers: AnswerReading = "kimi-cua") -> RunOutcome:
    """Evaluate ``samples`` (skipping those already in ``out``), then write the summary and failures page."""
    if parse is None:
        from actions.parser import parse_reply as parse
    if not clients:
        raise EvalError("no model server given (--base-url)")
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    results_path = out / RESULTS_FILE
    done = read_results(results_path)
    selected_ids = {s.id for s in samples}
    pending = [s for s in samples if s.id not in done]
    finished = [done[s.id] for s in samples if s.id in done]
    errors: list[str] = []
    limit_errors = max_consecutive_errors or max(concurrency, 8)
    writer = ResultWriter(results_path)
    bar = _progress(len(samples), len(finished), progress)
    correct = sum(r.correct for r in finished)
    started = time.perf_counter()
    new = 0
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="screenspot")
    queue = iter(enumerate(pending))
    running: dict[Future[SampleResult], Sample] = {}

    def submit_next() -> None:
        item = next(queue, None)
        if item is not None:
            i, sample = item
            client = clients[i % len(clients)]  # round-robin over replicas
            future = pool.submit(evaluate_sample, sample, client, prompt, temperature=settings.temperature,
                                 max_tokens=settings.max_tokens, language=settings.language, parse=parse,
                                 zoom=settings.zoom)
            running[future] = sample

    consecutive = 0
    try:
        for _ in range(max(1, concurrency)):  # at most `concurrency` requests in flight, none queued
            submit_next()
        while running:
            finished_now, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished_now:
                sample = running.pop(future)
                try:
                    result = future.result()
                except ServerError as exc:
                    errors.append(f"{sample.id}: {exc}")
                    consecutive += 1
                else:
                    consecutive = 0
                    writer.write(result)
                    finished.append(result)
                    new += 1
                    correct += result.correct
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(acc=f"{100 * correct / len(finished):.2f}%", refresh=False)
                if consecutive < limit_errors:
                    submit_next()
        if consecutive >= limit_errors:
            errors.append(f"stopped after {consecutive} consecutive server errors; fix the server and re-run")
    finally:  # on Ctrl-C too: every line already written stays, requests in flight are abandoned
        pool.shutdown(wait=False, cancel_futures=True)
        writer.close()
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    finished = [r for r in finished if r.id in selected_ids]
    throughput = {"seconds": round(elapsed, 3), "samples_per_s": round(new / elapsed, 3) if elapsed > 0 else 0.0}
    summary = summarize(dataset, finished, settings, len(samples), throughput, answers=answers)
    (out / SUMMARY_FILE).write_text(summary.model_dump_json(indent=2), encoding="utf-8")
    write_failures_html(out / FAILURES_FILE, finished,
                        title=f"{dataset.benchmark}, model {settings.model}, prompt {settings.prompt}")
    return RunOutcome(summary=summary, new_results=new, errors=errors)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="screenspot", unit="sample", dynamic_ncols=True)
