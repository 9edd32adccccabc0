"""Runs the real agent loop against the REAL vLLM with scripted replies (a child process of
tests/test_agent_real_vllm.py).

``python -m tests.agent_real_vllm_driver REQUEST.json`` with DISPLAY set to the Xvfb desktop the Tk target app
(tests/apps/target_app.py) runs on. REQUEST holds ``base_url``, ``max_model_len`` (the server's, to size the script;
the agent is not told), ``out`` (run directory), ``state`` (the app's state file), ``width``/``height`` (the screen),
``task`` and the agent settings (``config``). A child process
because pyautogui binds to the display it was first imported on, and the test session may have imported it for
another display.

The replies are scripted through vLLM's own structured outputs: every request of step N carries
``structured_outputs: {"choice": [REPLY_N]}``, so the random-weight model answers exactly REPLY_N, and the reply still
goes through vLLM's tokenizer, detokenizer, streaming and usage. Which step a request belongs to is read from the
request itself (the step prompt, "Step N of at most M"), so a retry after a refusal gets the same reply.

Besides the run directory's trajectory, ``OUT/attempts.jsonl`` gets one line per request the agent made: its step,
how many images it carried, and either the usage of the reply or the refusal (type and the server's own message);
``OUT/retries.jsonl`` one line per transient fault the client retried.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.loop import Agent, AgentConfig
from agent.models.vllm import RequestRefused, RetryEvent, VLLMClient
from agent.reply import ModelReply
from agent.tokens import image_tokens
from envs.desktop import LocalDesktop
from tests.e2e_support import DONE, centre, kimi_reply

_STEP_RE = re.compile(r"Step (\d+) of at most \d+")
# Kimi-VL writes Chinese as readily as English. Here it is also what makes a long scripted reply cost the same in the
# completion as in the next prompt: the tiny tokenizer has no merges for CJK, so each character is its three UTF-8 bytes
# whichever way it is tokenized, while an English text constrained by a choice comes back in ~25% more (shorter)
# tokens than the prompt's tokenization of it, and would fill the context as a clamped reply before it could overflow.
FILLER = "窗口上方有一个按钮，下面是文本框和发送按钮，再下面是编号的列表。"
FILLER_TOKENS = 96  # 32 characters x 3 bytes


def step_of(messages: list[dict[str, Any]]) -> int:
    """The step a request is for: the newest "Step N of at most M" prompt in it."""
    for message in reversed(messages):
        content = message.get("content")
        texts = [content] if isinstance(content, str) else [
            p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
        for text in reversed(texts):
            if m := _STEP_RE.search(text or ""):
                return int(m.group(1))
    raise ValueError("no step prompt in the request")


def images_in(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")


class ScriptedClient:
    """A ``VLLMClient`` whose every request is constrained to the reply scripted for its step.

    ``script(step, messages)`` gives the reply; it may call ``probe(messages)`` (the prompt tokens the server counts for
    the request, asked with max_tokens=1 outside the agent's view) to size it.
    """

    def __init__(self, inner: VLLMClient, script: Callable[[int, list[dict[str, Any]]], str], log: Path) -> None:
        self.inner = inner
        self.script = script
        self.log = log

    def __getattr__(self, name: str) -> Any:  # model, base_url, variant, max_model_len ...
        return getattr(self.inner, name)

    def _write(self, entry: dict[str, Any]) -> None:
        with self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> ModelReply:
        step = step_of(messages)
        answer = self.script(step, messages)
        extra = {**(kwargs.pop("extra", None) or {}), "structured_outputs": {"choice": [answer]}}
        entry: dict[str, Any] = {"step": step, "images": images_in(messages), "max_tokens": kwargs.get("max_tokens")}
        try:
            reply = self.inner.complete(messages, extra=extra, **kwargs)
        except RequestRefused as refusal:
            self._write({**entry, "refused": type(refusal).__name__, "status": refusal.status,
                         "server_message": refusal.server_message})
            raise
        self._write({**entry, "usage": reply.usage.model_dump(), "finish_reason": reply.finish_reason,
                     "exact": reply.text == answer})
        return reply

    def probe(self, messages: list[dict[str, Any]]) -> int:
        reply = self.inner.complete(messages, max_tokens=4, temperature=0.0,
                                    extra={"structured_outputs": {"choice": ["ok"]}})  # never an empty reply
        return reply.usage.prompt_tokens


# Step 1's reply is FILLER * k + the rest; k is chosen from the real size of step 1's prompt (P1), so the plan holds
# if the prompts change: the reply must leave room after it (P1 + reply <= max_model_len) and step 2's prompt must
# not fit (P1 + summary + step 1's user text + a screenshot > max_model_len). Measured with the tiny tokenizer: the
# reply costs 96 k + ~134 tokens (its English part and thinking come back in a few more tokens than they cost in a
# prompt), the prompt grows by 96 k + 91 (the rest of the summary, step 1's user text, the message and image wrappers)
# + the screenshot's tokens. k puts both edges of that window (~480 tokens for 800x500) ~240 tokens away.
REPLY_EXTRA, HISTORY_EXTRA = 134, 91


def filler_repeats(prompt_tokens: int, max_model_len: int, screenshot_tokens: int) -> int:
    window = screenshot_tokens + HISTORY_EXTRA - REPLY_EXTRA  # overflow + room left, whatever k is
    return max(1, round((max_model_len - prompt_tokens - REPLY_EXTRA - window / 2) / FILLER_TOKENS))


def main() -> int:
    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    out = Path(request["out"])
    out.mkdir(parents=True, exist_ok=True)
    state_path = Path(request["state"])
    size = (request["width"], request["height"])
    plan: dict[str, int] = {}

    def boxes() -> dict[str, Any]:
        return json.loads(state_path.read_text(encoding="utf-8"))

    def script(step: int, messages: list[dict[str, Any]]) -> str:
        state = boxes()
        if step == 1:  # the long one: its summary fills the context at step 2
            if not plan:
                plan["prompt_tokens"] = client.probe(messages)
                plan["filler_repeats"] = filler_repeats(plan["prompt_tokens"], request["max_model_len"],
                                                        image_tokens(*size, request["in_token_limit"]))
                (out / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
            x, y = centre(state["boxes"]["button"], size)
            return kimi_reply(f"{FILLER * plan['filler_repeats']}Click the 'Press me' button.",
                              f"pyautogui.click(x={x}, y={y})")
        if step == 2:
            x, y = centre(state["boxes"]["entry"], size)
            return kimi_reply("Click the text field and type hello.",
                              f"pyautogui.click(x={x}, y={y})\npyautogui.write('hello')")
        if step == 3:
            return kimi_reply("Send the text with Enter.", "pyautogui.press('enter')")
        if step == 4:
            x, y = centre(state["visible_items"]["Item 03"], size)
            return kimi_reply("Select Item 03 in the list.", f"pyautogui.click(x={x}, y={y})")
        return DONE

    def on_retry(event: RetryEvent) -> None:
        with (out / "retries.jsonl").open("a", encoding="utf-8") as f:
            f.write(event.model_dump_json() + "\n")

    inner = VLLMClient(request["base_url"], retries=3, backoff=0.2, timeout=600, on_retry=on_retry)
    client = ScriptedClient(inner, script, out / "attempts.jsonl")
    config = AgentConfig(out_dir=out / "run", **request["config"])
    with LocalDesktop() as env:
        result = Agent(env, client, config).run(request["task"])
    inner.close()
    (out / "result.json").write_text(result.model_dump_json(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
