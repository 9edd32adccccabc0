"""Our agent behind OSWorld's agent interface: ``reset()`` and ``predict(instruction, obs)``.

OSWorld's runners disagree on the shape of ``predict``: ``lib_run_single.run_single_example`` (``run.py``,
``run_multienv.py`` and most ``run_multienv_*.py``) unpacks ``response, actions``; ``run_single_example_kimi``
(``run_multienv_kimi_k25.py``) and the OpenCUA runner unpack ``response, actions, info_dict`` and read
``info_dict.get("action")`` and ``agent.last_step_info`` (token counts, request time). ``KimiCuaOSWorldAgent``
returns the pair; ``KimiCuaKimiRunnerAgent`` (or ``predict_info=True``) returns the triple. ``reset`` takes
every signature the runners use: ``reset()``, ``reset(logger)``, ``reset(logger, vm_ip=...)``,
``reset(vm_ip=...)``, ``reset(logger, result_dir=...)``.

Built on the same loop pieces as ``kimi-cua run`` (prompts, parser, context budget): ``Agent.decide`` does the
model call and parsing; this class turns the typed actions (screen pixels) into OSWorld's action strings with
``actions.codegen.osworld_action`` - pyautogui code generated from typed values, or WAIT / DONE / FAIL.
Model text never reaches the VM. Screenshots of the episode are kept in ``work_dir`` (the history reads
earlier screenshots from disk), with a ``steps.jsonl`` of what was decided.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from actions.codegen import osworld_action
from actions.coords import Monitor
from agent.models.vllm import ModelClient, VLLMClient
from actions.types import Fail
from agent.hooks import StepContext
from agent.loop import Agent, AgentConfig, Decision
from envs.base import Observation, ScreenGeometry
from envs.osworld_client import png_size


class KimiCuaOSWorldAgent:
    """``agent = KimiCuaOSWorldAgent(base_url="http://localhost:8000/v1")``; OSWorld's runners call the rest."""

    action_space = "pyautogui"
    predict_info = False  # True: predict returns (response, actions, info_dict)

    def __init__(
        self,
        base_url: str = "http://localhost:8000/v1",
        model: str | None = None,
        *,
        api_key: str | None = None,
        config: AgentConfig | None = None,
        client: ModelClient | None = None,
        screen_size: tuple[int, int] | None = None,
        work_dir: Path | str | None = None,
        predict_info: bool | None = None,
    ) -> None:
        """``screen_size``: the VM's input size when it differs from the screenshot's (HiDPI); default: equal.
        ``predict_info``: return ``(response, actions, info_dict)`` (the Kimi and OpenCUA runners) instead of
        ``(response, actions)``; default: the class's ``predict_info``."""
        if predict_info is not None:
            self.predict_info = predict_info
        self.client = client or VLLMClient(base_url, model=model, api_key=api_key)
        self.config = config or AgentConfig(stream=False)
        self.screen_size = screen_size
        self._work_root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="kimi-cua-osworld-"))
        self._agent = Agent(None, self.client, self.config)
        self._episode = 0
        self._step = 0
        self._dir = self._work_root
        self.last_step_info: dict[str, Any] = {}  # run_single_example_kimi reads it after every predict

    def reset(self, _logger: Any = None, vm_ip: str | None = None, **_: Any) -> None:
        """Start a new episode: forget the history (OSWorld passes a logger, the VM address, a result folder;
        all unused)."""
        self._agent.reset()
        if self._agent.safety is not None:
            self._agent.safety.reset()  # a fresh VM: no terminal line, no shell state
        self.last_step_info = {}
        self._episode += 1
        self._step = 0
        self._dir = self._work_root / f"episode_{self._episode:04d}"
        self._dir.mkdir(parents=True, exist_ok=True)

    def observation(self, obs: dict[str, Any]) -> Observation:
        """An OSWorld observation (``{"screenshot": PNG bytes, ...}``) as ours."""
        image = obs.get("screenshot")
        if not isinstance(image, (bytes, bytearray)) or not bytes(image).startswith(b"\x89PNG"):
            raise ValueError("OSWorld observation has no PNG screenshot (obs['screenshot'] must be PNG bytes; "
                             "run OSWorld with --observation_type screenshot)")
        width, height = png_size(bytes(image))
        screen_w, screen_h = self.screen_size or (width, height)
        monitor = Monitor(width=screen_w, height=screen_h, scale=width / screen_w)
        geometry = ScreenGeometry(monitor=monitor, screen_width=screen_w, screen_height=screen_h, monitors=[monitor])
        return Observation(image=bytes(image), mime="image/png", width=width, height=height, geometry=geometry)

    def predict(self, instruction: str, obs: dict[str, Any]) -> Any:
        """One model call. Returns the raw reply and OSWorld actions (plus an info dict with ``predict_info``).

        When the reply did not parse there are no actions in the pair form (the generic runner goes on to the
        next step and the next prompt tells the model why); the triple form returns ``["WAIT"]`` instead,
        because the Kimi runner ends the episode on an empty action list."""
        if self._step == 0 and self._episode == 0:
            self.reset()
        self._step += 1
        observation = self.observation(obs)
        shot = self._dir / f"step_{self._step:03d}.png"
        shot.write_bytes(observation.image)
        started = time.perf_counter()
        decision = self._decide_safely(instruction, observation)
        request_time = time.perf_counter() - started
        actions = [osworld_action(a) for a in decision.actions]
        self._agent.remember(self._step, shot, observation, decision, decision.actions)
        self._log(decision, actions)
        response = decision.reply.text if decision.reply else ""
        if decision.parse_error:
            response = f"{response}\n\n[kimi-cua: answer not usable: {decision.parse_error}]"
        usage = decision.reply.usage if decision.reply else None
        self.last_step_info = {
            "request_time": round(request_time, 3),
            "input_tokens": usage.prompt_tokens if usage else 0,
            "output_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": (usage.total_tokens or usage.prompt_tokens + usage.completion_tokens) if usage else 0,
        }
        if not self.predict_info:
            return response, actions
        summary = decision.reply.summary if decision.reply else ""
        info = {"action": natural_language_action(summary), "thinking": decision.reply.thinking if decision.reply
                else "", "summary": summary, "parse_error": decision.parse_error,
                "typed_actions": [a.model_dump(mode="json") for a in decision.actions], **self.last_step_info}
        return response, actions or ["WAIT"], info

    def _decide_safely(self, instruction: str, observation: Observation) -> Decision:
        """``decide``, then the action policy, as ``kimi-cua run --unattended`` applies it: what needs
        confirmation is refused and the model is asked again with the reason; after the last refusal the step
        does nothing (a "stop" rule ends the episode with FAIL)."""
        policy = self._agent.safety
        tries = policy.config.max_refusals_per_step if policy is not None else 1
        for attempt in range(tries):
            decision = self._agent.decide(instruction, observation, self._step)
            if policy is None or not decision.actions:
                return decision
            context = StepContext(step=self._step, max_steps=self.config.max_steps, observation=observation,
                                  reply=decision.reply, actions=decision.actions, parse_error=decision.parse_error,
                                  screenshot_path=str(self._dir / f"step_{self._step:03d}.png"))
            verdict = policy.review(context)
            if verdict is None or verdict.verdict == "execute":
                policy.commit(decision.actions)
                return decision
            decision.notes.append(f"{verdict.verdict}: {verdict.reason}")
            if verdict.verdict == "retry" and attempt + 1 < tries:
                if verdict.hint:
                    self._agent.add_hint(verdict.hint)
                continue
            decision.actions = [Fail(reason=verdict.reason)] if verdict.verdict == "stop" else []
            return decision
        return decision

    def _log(self, decision: Decision, actions: list[str]) -> None:
        record = {"step": self._step, "time": time.time(), "actions": actions,
                  "typed_actions": [a.model_dump(mode="json") for a in decision.actions],
                  "parse_error": decision.parse_error, "summary": decision.reply.summary if decision.reply else "",
                  "usage": decision.reply.usage.model_dump() if decision.reply else None}
        with open(self._dir / "steps.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


_ACTION_LINE = re.compile(r"^\s*#{1,4}\s*Action\s*:?\s*(.*)$", re.IGNORECASE | re.MULTILINE)


def natural_language_action(summary: str) -> str:
    """The answer's ``## Action:`` line (what the model says it does), or "" when it has none."""
    match = _ACTION_LINE.search(summary or "")
    if not match:
        return ""
    line = match.group(1).strip()
    if line:
        return line
    rest = summary[match.end():].strip().splitlines()
    return rest[0].strip() if rest and not rest[0].lstrip().startswith(("#", "```")) else ""


class KimiCuaKimiRunnerAgent(KimiCuaOSWorldAgent):
    """For OSWorld's Kimi runner (``run_multienv_kimi_k25.py`` -> ``run_single_example_kimi``) and the OpenCUA
    runner: ``predict`` returns ``(response, actions, info_dict)``."""

    predict_info = True
