"""Re-run a recorded trajectory's actions (screen pixels) on a desktop, checking the screen before each step.

Before a step's actions run, the live screen is compared with the screenshot recorded at that step. The
metric is the **changed-pixel share**: both images are averaged over 4x4 blocks (so anti-aliasing, noise and
one-pixel shifts of text do not count), and a block counts as changed when any colour channel differs by
more than 32 of 255; the difference is the share of changed blocks, 0.0 (identical) to 1.0. A blinking text
cursor or a clock changes a tiny share, a window that moved or a dialog that did not open changes a lot.
When the difference exceeds the tolerance, the replay stops and names the step, the difference and a
side-by-side image (recorded | live | changed blocks in red).

Each replayed step is written to a new trajectory (``decided_by="replay"``), so a replay can be reported.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Literal

from PIL import Image, ImageChops, ImageDraw
from pydantic import BaseModel

from actions.types import Action, Done, Fail, describe
from agent.debug.annotate import encode
from agent.hooks import AgentHooks, HookDecision, StepContext
from agent.reply import ModelReply
from agent.trajectory import (
    RunInfo,
    StepRecord,
    TrajectoryWriter,
    read_info,
    read_trajectory,
)
from envs.base import ActionResult, Environment, Observation

BLOCK = 4  # pixels averaged per side before comparing
CHANNEL_THRESHOLD = 32  # of 255: a block whose colour moved less than this is unchanged
DEFAULT_TOLERANCE = 0.02
METRIC = (f"share of {BLOCK}x{BLOCK}-pixel blocks whose average colour changed by more than "
          f"{CHANNEL_THRESHOLD}/255 in any channel")


class Divergence(BaseModel):
    step: int
    difference: float  # changed-pixel share, 0..1
    tolerance: float
    message: str
    comparison: Path | None = None  # recorded | live | changed blocks


class ReplayResult(BaseModel):
    status: Literal["replayed", "diverged", "failed", "stopped"]
    steps_replayed: int
    differences: dict[int, float]  # step -> difference measured before it
    divergence: Divergence | None = None
    error: str | None = None
    out_dir: Path


def _changed_mask(recorded: Image.Image, live: Image.Image) -> Image.Image:
    size = (max(1, recorded.width // BLOCK), max(1, recorded.height // BLOCK))
    a = recorded.convert("RGB").resize(size, Image.Resampling.BOX)
    b = live.convert("RGB").resize(size, Image.Resampling.BOX)
    r, g, bl = ImageChops.difference(a, b).split()
    largest = ImageChops.lighter(ImageChops.lighter(r, g), bl)
    return largest.point(lambda v: 255 if v > CHANNEL_THRESHOLD else 0)


def screen_difference(recorded: Image.Image, live: Image.Image) -> float:
    """The changed-pixel share between two screenshots (see the module text); 1.0 when sizes differ."""
    if recorded.size != live.size:
        return 1.0
    mask = _changed_mask(recorded, live)
    changed = mask.histogram()[255]
    return changed / (mask.width * mask.height)


def comparison_image(recorded: Image.Image, live: Image.Image) -> Image.Image:
    """Recorded | live | live with the changed blocks tinted red, side by side."""
    live_fit = live.convert("RGB").resize(recorded.size) if live.size != recorded.size else live.convert("RGB")
    marked = live_fit.copy()
    mask = _changed_mask(recorded, live_fit).resize(recorded.size, Image.Resampling.NEAREST)
    marked.paste(Image.new("RGB", recorded.size, (255, 0, 0)), mask=mask.point(lambda v: 150 if v else 0))
    out = Image.new("RGB", (recorded.width * 3 + 20, recorded.height + 24), (30, 30, 30))
    draw = ImageDraw.Draw(out)
    for index, (label, image) in enumerate((("recorded", recorded.convert("RGB")), ("live", live_fit),
                                            ("changed", marked))):
        x = index * (recorded.width + 10)
        out.paste(image, (x, 24))
        draw.text((x + 4, 4), label, fill=(255, 255, 255))
    return out


class Replayer:
    """``Replayer(env, run_dir).run()``; ``hooks`` (e.g. a StepThrough) may approve, edit, skip or stop steps."""

    def __init__(self, env: Environment, run_dir: Path, *, tolerance: float = DEFAULT_TOLERANCE,
                 hooks: AgentHooks | None = None, out_dir: Path | None = None) -> None:
        if not 0.0 <= tolerance <= 1.0:
            raise ValueError(f"the tolerance is a share of the screen between 0 and 1, not {tolerance}")
        self.env = env
        self.run_dir = Path(run_dir)
        self.records = read_trajectory(self.run_dir)
        self.info = read_info(self.run_dir)
        self.tolerance = tolerance
        self.hooks = hooks or AgentHooks()
        self.out_dir = Path(out_dir) if out_dir else self.run_dir / f"replay-{time.strftime('%Y%m%d-%H%M%S')}"

    def run(self) -> ReplayResult:
        writer = TrajectoryWriter(self.out_dir)
        info = RunInfo(task=f"replay of {self.run_dir}: {self.info.task if self.info else ''}".strip(),
                       config={"replay_of": str(self.run_dir), "tolerance": self.tolerance, "metric": METRIC})
        writer.write_info(info)
        result = ReplayResult(status="replayed", steps_replayed=0, differences={}, out_dir=self.out_dir)
        try:
            for record in self.records:
                actions = executed_actions(record)
                if not actions:
                    continue
                outcome = self._step(record, actions, writer, result)
                if outcome is not None:
                    result.status = outcome
                    break
        finally:
            info.status = {"replayed": "done", "diverged": "fail", "failed": "fail", "stopped": "stopped"}[result.status]
            info.error = result.error or (result.divergence.message if result.divergence else None)
            info.steps, info.finished = result.steps_replayed, time.time()
            writer.write_info(info)
            writer.close()
        return result

    def _step(self, record: StepRecord, actions: list[Action], writer: TrajectoryWriter,
              result: ReplayResult) -> Literal["diverged", "failed", "stopped"] | None:
        observation = self.env.observe()
        shot = writer.save_screenshot(record.step, observation.image, observation.extension)
        difference, divergence = self._compare(record, observation)
        result.differences[record.step] = round(difference, 5)
        if divergence is not None:
            result.divergence = divergence
            return "diverged"
        context = StepContext(step=record.step, max_steps=self.records[-1].step, observation=observation,
                              reply=ModelReply(text=record.response, thinking=record.thinking,
                                               summary=record.summary, usage=record.usage),
                              actions=actions, budget=record.budget, screenshot_path=str(writer.out_dir / shot))
        decision = self.hooks.before_action(context) or HookDecision()
        if decision.verdict == "replace" and decision.actions is not None:
            actions = decision.actions
        results: list[ActionResult] = []
        if decision.verdict == "skip":
            results = [ActionResult(skipped=True) for _ in actions]
        elif decision.verdict not in ("stop", "retry"):
            for action in actions:
                if isinstance(action, (Done, Fail)):
                    results.append(ActionResult())
                    break
                outcome = self.env.execute(action)
                results.append(outcome)
                if not outcome.ok:
                    result.error = f"step {record.step}: '{describe(action)}' failed: {outcome.error}"
                    break
        overall = next((r for r in results if not r.ok), results[-1] if results else ActionResult(skipped=True))
        replayed = StepRecord(step=record.step, screenshot=shot, image_width=observation.width,
                              image_height=observation.height, thinking=record.thinking, summary=record.summary,
                              action=actions[0] if actions else None, actions=actions, result=overall,
                              results=results, decided_by="replay",
                              notes=[f"screen difference before the step: {difference:.4f} ({METRIC})"],
                              stopped=(decision.reason or "stopped") if decision.verdict in ("stop", "retry") else None)
        writer.append(replayed)
        self.hooks.on_step_end(replayed)
        result.steps_replayed += 1
        if decision.verdict in ("stop", "retry"):
            result.error = decision.reason or "stopped"
            return "stopped"
        return "failed" if result.error else None

    def _compare(self, record: StepRecord, observation: Observation) -> tuple[float, Divergence | None]:
        path = self.run_dir / record.screenshot
        try:
            recorded = Image.open(path)
            recorded.load()
        except OSError as exc:
            raise FileNotFoundError(f"step {record.step}: the recorded screenshot {path} cannot be read ({exc}); "
                                    "the run directory is incomplete") from None
        with recorded, Image.open(io.BytesIO(observation.image)) as live:
            difference = screen_difference(recorded, live)
            if difference <= self.tolerance:
                return difference, None
            comparison = self.out_dir / f"divergence_step_{record.step:04d}.png"
            comparison.write_bytes(encode(comparison_image(recorded, live), "PNG"))
            if recorded.size != live.size:
                what = (f"the screen is {live.width}x{live.height} but the recording is "
                        f"{recorded.width}x{recorded.height}")
            else:
                what = (f"{difference:.1%} of the screen differs from the recording "
                        f"(tolerance {self.tolerance:.1%})")
        message = (f"replay diverged before step {record.step} ({'; '.join(describe(a) for a in record.actions)}): "
                   f"{what}. Metric: {METRIC}. Side by side: {comparison}. Bring the desktop to the recorded "
                   "state first, or raise --tolerance.")
        return difference, Divergence(step=record.step, difference=difference, tolerance=self.tolerance,
                                      message=message, comparison=comparison)


def executed_actions(record: StepRecord) -> list[Action]:
    """The actions that actually ran in a recorded step (none when it was skipped or unparseable)."""
    if not record.actions or (record.results and all(r.skipped for r in record.results)):
        return []
    if not record.results and record.result.skipped:
        return []  # stopped before anything ran
    if record.results:
        return list(record.actions[: len(record.results)])
    return list(record.actions)
