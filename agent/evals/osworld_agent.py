"""Our agent behind OSWorld's agent interface: ``reset()`` and ``predict(instruction, obs) -> (response, actions)``.

Built on the same loop pieces as ``kimi-cua run`` (prompts, parser, context budget): ``Agent.decide`` does the
model call and parsing; this class turns the typed actions (screen pixels) into OSWorld's action strings with
``actions.codegen.osworld_action`` - pyautogui code generated from typed values, or WAIT / DONE / FAIL.
Model text never reaches the VM. Screenshots of the episode are kept in ``work_dir`` (the history reads
earlier screenshots from disk), with a ``steps.jsonl`` of what was decided.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from actions.codegen import osworld_action
from actions.coords import Monitor
from agent.models.vllm import ModelClient, VLLMClient
from agent.loop import Agent, AgentConfig, Decision
from envs.base import Observation, ScreenGeometry
from envs.osworld_client import png_size


class KimiCuaOSWorldAgent:
    """``agent = KimiCuaOSWorldAgent(base_url="http://localhost:8000/v1")``; OSWorld's runners call the rest."""

    action_space = "pyautogui"

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
    ) -> None:
        """``screen_size``: the VM's input size when it differs from the screenshot's (HiDPI); default: equal."""
        self.client = client or VLLMClient(base_url, model=model, api_key=api_key)
        self.config = config or AgentConfig(stream=False)
        self.screen_size = screen_size
        self._work_root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="kimi-cua-osworld-"))
        self._agent = Agent(None, self.client, self.config)
        self._episode = 0
        self._step = 0
        self._dir = self._work_root

    def reset(self, _logger: Any = None, vm_ip: str | None = None, **_: Any) -> None:
        """Start a new episode: forget the history (OSWorld passes a logger and the VM address; unused)."""
        self._agent.reset()
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

    def predict(self, instruction: str, obs: dict[str, Any]) -> tuple[str, list[str]]:
        """One model call. Returns the raw reply and OSWorld actions; no actions when the reply did not parse
        (the next prompt tells the model why)."""
        if self._step == 0 and self._episode == 0:
            self.reset()
        self._step += 1
        observation = self.observation(obs)
        shot = self._dir / f"step_{self._step:03d}.png"
        shot.write_bytes(observation.image)
        decision = self._agent.decide(instruction, observation, self._step)
        actions = [osworld_action(a) for a in decision.actions]
        self._agent.remember(self._step, shot, observation, decision, decision.actions)
        self._log(decision, actions)
        response = decision.reply.text if decision.reply else ""
        if decision.parse_error:
            response = f"{response}\n\n[kimi-cua: answer not usable: {decision.parse_error}]"
        return response, actions

    def _log(self, decision: Decision, actions: list[str]) -> None:
        record = {"step": self._step, "time": time.time(), "actions": actions,
                  "typed_actions": [a.model_dump(mode="json") for a in decision.actions],
                  "parse_error": decision.parse_error, "summary": decision.reply.summary if decision.reply else "",
                  "usage": decision.reply.usage.model_dump() if decision.reply else None}
        with open(self._dir / "steps.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
