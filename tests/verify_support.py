"""Scripted model answers for --verify-done runs, shared by the loopback and the real-vLLM tests.

The task: "turn the screen blue" on an in-memory desktop (tests.fault_server.MemoryDesktop) that starts white; a click
paints it blue. The agent answers DONE too early (step 1); the checker, which really looks at the screenshot it is sent
(the request's image is decoded), says no while the screen is white and yes once it is blue; the agent clicks only
when its prompt carries the checker's reason, then answers DONE again.
"""
from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

from PIL import Image

from tests.e2e_support import DONE, kimi_reply

TASK = "Turn the screen blue."
NOT_YET = "The screen is still white, not blue."
CHECK_NO = f"◁think▷The screenshot is white.◁/think▷## Verdict:\nno\n## Reason:\n{NOT_YET}"
CHECK_YES = "◁think▷The screenshot is blue.◁/think▷## Verdict:\nyes\n## Reason:\nThe whole screen is blue."
CLICK = kimi_reply("Click to paint the screen.", "pyautogui.click(x=0.5, y=0.5)")
_STEP = re.compile(r"Step (\d+) of at most \d+")


def texts(messages: list[dict[str, Any]]) -> list[str]:
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        else:
            out += [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
    return out


def images(messages: list[dict[str, Any]]) -> list[Image.Image]:
    found = []
    for message in messages:
        for part in message.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                data = part["image_url"]["url"].split(",", 1)[1]
                found.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    return found


def is_check(messages: list[dict[str, Any]]) -> bool:
    return any("has just said the task is done" in t for t in texts(messages))


def answer(messages: list[dict[str, Any]]) -> str:
    """The scripted reply to one request of the agent (a step, or the check of a DONE)."""
    if is_check(messages):
        shot = images(messages)[-1]
        return CHECK_YES if shot.getpixel((0, 0)) == (0, 0, 255) else CHECK_NO
    prompt = "\n".join(texts(messages[-1:]))
    step = int(_STEP.findall(prompt)[-1])
    if step == 1:
        return DONE  # too early: the screen is still white
    if NOT_YET in prompt:
        return CLICK  # the checker's reason reached the model
    return DONE


def paint_blue(desktop, action) -> None:
    if action.type == "click":
        desktop.image = desktop.paint("blue")


def check_run(result, steps, out_dir, check_requests: list[list[dict[str, Any]]]) -> None:
    """The DONE at step 1 was overturned, the click ran, the DONE at step 3 was confirmed."""
    assert result.status == "done" and result.steps == 3, result
    assert [s.action.type for s in steps] == ["done", "click", "done"]
    first, _, last = steps
    v1, v3 = first.verification, last.verification
    assert (v1.asked, v1.verdict, v1.accepted, v1.reason) == (True, "no", False, NOT_YET.rstrip("."))
    assert (v3.asked, v3.verdict, v3.accepted) == (True, "yes", True)
    assert steps[1].verification is None
    assert (out_dir / v1.screenshot).is_file() and v1.screenshot == "step_0001_verify.png"
    assert "verify_ms" in first.timings and v1.usage.completion_tokens > 0
    # a short fresh context: one user message, the task and one (fresh) screenshot, no system prompt, no history
    assert len(check_requests) == 2
    for messages in check_requests:
        assert [m["role"] for m in messages] == ["user"] and len(images(messages)) == 1
        assert TASK in texts(messages)[0] and "Step " not in texts(messages)[0]
    # the reason went back to the model at step 2
    assert NOT_YET in steps[1].user_text and "answer done only once the screen shows it is complete" in steps[1].user_text
    info = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == "done" and info["config"]["verify_done"] is True
