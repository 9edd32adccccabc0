"""Servers started with a reasoning parser move the thinking out of ``content``: the client puts it back.

vLLM 0.32 names the field ``reasoning``; older versions ``reasoning_content``; without a parser the markers
arrive inside ``content``. All three give the same reply.
"""
from __future__ import annotations

import json

import pytest

from agent.models.vllm import VLLMClient
from tests.fault_server import Fault, FaultServer
from tests.loopback import LoopbackServer, Reply

ANSWER = "## Action:\nClick OK.\n## Code:\n```python\npyautogui.click(x=0.5, y=0.5)\n```"
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_of_a_plain_answer_becomes_the_thinking(field):
    body = {"id": "x", "object": "chat.completion", "model": "kimi-vl-thinking-2506",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": ANSWER, field: "I see OK."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}
    with LoopbackServer([Reply(raw_body=json.dumps(body).encode())]) as server:
        reply = VLLMClient(server.base_url, retries=0).complete(HI)
    assert reply.thinking == "I see OK." and reply.summary == ANSWER and not reply.truncated


def _event(delta: dict, finish: str | None = None) -> bytes:
    body = {"id": "x", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode()


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_streamed_reasoning_is_shown_live_and_split_like_inline_markers(field):
    stream = [_event({field: "I see "}), _event({field: "OK."}),
              _event({"content": ANSWER}, "stop"), b"data: [DONE]"]  # finish_reason on the last content chunk
    seen: list[str] = []
    with FaultServer([Fault(stream=stream)]) as server:
        reply = VLLMClient(server.base_url, retries=0).complete(HI, on_delta=seen.append)
    assert reply.thinking == "I see OK." and reply.summary == ANSWER and reply.finish_reason == "stop"
    assert "".join(seen) == reply.text


def test_streamed_reasoning_cut_by_max_tokens_is_truncated():
    stream = [_event({"reasoning": "thinking and thinking"}), _event({}, "length"), b"data: [DONE]"]
    with FaultServer([Fault(stream=stream)]) as server:
        reply = VLLMClient(server.base_url, retries=0).complete(HI, stream=True)
    assert reply.truncated and reply.summary == ""


@pytest.mark.parametrize("version", ["0.32", "0.9"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("parser", [True, False], ids=["reasoning-parser", "markers-in-content"])
def test_every_way_a_server_returns_thinking_gives_the_same_reply(version, stream, parser):
    text = "◁think▷I see OK.◁/think▷" + ANSWER
    with LoopbackServer([text], vllm_version=version, reasoning_parser=parser) as server:
        reply = VLLMClient(server.base_url, retries=0).complete(HI, stream=stream)
    assert reply.text == text and reply.thinking == "I see OK." and reply.summary == ANSWER
