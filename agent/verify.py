"""``--verify-done``: a DONE stands only when the model, asked again, clearly says the task is complete.

When the model answers DONE, a fresh screenshot is taken and the model is asked in a short fresh context (no system
prompt, no history: the task, that screenshot and ``prompts/verify_done.txt``) whether the task is complete and why.
A clear yes ends the run with done; a no, or an answer that is neither, goes back to the model as the next step's note
(with the checker's reason) and the run goes on. The check is recorded in the step (``StepRecord.verification``).
"""
from __future__ import annotations

import re
import time

import prompts
from agent.models.vllm import ModelClient, image_part
from agent.reply import ModelReply
from agent.trajectory import DoneVerification
from envs.base import Observation

TEMPLATE = "verify_done"
# "## Verdict: yes", "Verdict: **No**", "VERDICT - yes"; the first yes/no after the heading decides.
_VERDICT = re.compile(r"verdict\W{0,6}(yes|no)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W{0,4}(yes|no)\b", re.IGNORECASE)  # an answer that starts with the word itself
_REASON = re.compile(r"reason\s*[:\-]*\s*(.+)", re.IGNORECASE | re.DOTALL)


def verify_messages(task: str, observation: Observation, answer: str | None = None) -> list[dict]:
    """The checker's whole request: one user message with the screenshot and the question."""
    text = prompts.render(TEMPLATE, task=task, answer=f"\nThe agent's answer: {answer}" if answer else "")
    return [{"role": "user", "content": [image_part(observation.image, observation.mime),
                                         {"type": "text", "text": text}]}]


def read_verdict(reply: ModelReply) -> tuple[str, str]:
    """(verdict, reason) from the checker's reply: "yes" or "no" only when it says so clearly, else "unclear"."""
    summary = (reply.summary or "").strip()
    if reply.truncated or not summary:
        return "unclear", "the check was cut off before its answer" if reply.truncated else "the check gave no answer"
    found = _VERDICT.search(summary) or _BARE.search(summary)
    verdict = found.group(1).lower() if found else "unclear"
    reason_match = _REASON.search(summary[found.end():] if found else summary)
    reason = reason_match.group(1) if reason_match else (summary[found.end():] if found else summary)
    reason = " ".join(reason.replace("#", " ").split()).strip(" .:-")
    if verdict == "yes" and re.search(r"\bverdict\W{0,6}no\b", summary, re.IGNORECASE):
        verdict = "unclear"  # both answers given: not a clear yes
    return verdict, reason[:500] or "(no reason given)"


def check_done(client: ModelClient, task: str, observation: Observation, *, answer: str | None = None,
               max_tokens: int | None = None, temperature: float | None = None) -> DoneVerification:
    """Ask the model whether ``task`` is complete on ``observation``'s screen (screenshot file name left for the
    caller)."""
    started = time.perf_counter()
    reply = client.complete(verify_messages(task, observation, answer), temperature=temperature,
                            max_tokens=max_tokens, stream=False)
    verdict, reason = read_verdict(reply)
    return DoneVerification(verdict=verdict, reason=reason, accepted=verdict == "yes", response=reply.text,
                            usage=reply.usage, model_ms=round((time.perf_counter() - started) * 1000, 3))


def overturned_note(verification: DoneVerification) -> str:
    """What the model is told at the next step when its DONE was not accepted."""
    if verification.verdict == "no":
        why = f"the task is not complete yet: {verification.reason}"
    else:
        why = f"it could not confirm that the task is complete ({verification.reason})"
    return (f"You answered that the task is done, but a check of the current screen says {why}. Continue with the "
            "task, and answer done only once the screen shows it is complete.")
