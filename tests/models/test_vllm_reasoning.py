"""Servers started with a reasoning parser move the thinking out of ``content``: the client puts it back."""
from __future__ import annotations

import json

from agent.models.vllm import VLLMClient
from tests.fault_server import Fault, FaultServer
from tests.loopback import LoopbackServer, Reply

ANSWER = "## Action:\nClick OK.\n## Code:\n```python\npyautogui.click(x=0.5, y=0.5)\n```"


def test_reasoning_content_of_a_plain_answer_becomes_the_thinking():
    body = {"id": "x", "object": "chat.completion", "model": "kimi-vl-thinking-2506",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": ANSWER, "reasoning_content": "I see OK."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}
    with LoopbackServer([Reply(raw_body=json.dumps(body).encode())]) as server:
        reply = VLLMClient(server.base_url, retries=0).complete([{"role": "user", "content": "hi"}])
    assert reply.thinking == "I see OK." and reply.summary == ANSWER and not reply.truncated


def _event(delta: dict, finish: str | None = None) -> bytes:
    body = {"id": "x", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode()


def test_streamed_reasoning_is_shown_live_and_split_like_inline_markers():
    stream = [_event({"reasoning_content": "I see "}), _event({"reasoning_content": "OK."}),
              _event({"content": ANSWER}), _event({}, "stop"), b"data: [DONE]"]
    seen: list[str] = []
    with FaultServer([Fault(stream=stream)]) as server:
        reply = VLLMClient(server.base_url, retries=0).complete([{"role": "user", "content": "hi"}],
                                                                 on_delta=seen.append)
    assert reply.thinking == "I see OK." and reply.summary == ANSWER
    assert "".join(seen) == reply.text


def test_streamed_reasoning_cut_by_max_tokens_is_truncated():
    stream = [_event({"reasoning_content": "thinking and thinking"}), _event({}, "length"), b"data: [DONE]"]
    with FaultServer([Fault(stream=stream)]) as server:
        reply = VLLMClient(server.base_url, retries=0).complete([{"role": "user", "content": "hi"}], stream=True)
    assert reply.truncated and reply.summary == ""
