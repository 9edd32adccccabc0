"""Every server fault of issue 9, injected by a real HTTP server (loopback / fault server / a killed subprocess)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path

import pytest

from agent.models.vllm import (ContextLengthExceeded, EmptyReply, RequestRefused, RetryEvent, ServerError,
                          ServerTimeout, ServerUnreachable, VLLMClient, retry_after_seconds)
from agent.loop import Agent, AgentConfig
from agent.trajectory import read_trajectory
from tests.e2e_support import DONE, ROOT, kimi_reply
from tests.fault_server import Fault, FaultServer, MemoryDesktop, chunk
from tests.loopback import LoopbackServer, Reply

OK = kimi_reply("Wait.", "computer.wait()")
HELLO = [{"role": "user", "content": "hello"}]


def client_for(server, *, retries: int = 3, events: list | None = None, **kwargs) -> VLLMClient:
    return VLLMClient(server.base_url if hasattr(server, "base_url") else server, retries=retries, backoff=0.01,
                      on_retry=events.append if events is not None else None, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- refused at start, gone mid-run ---------------------------------------------------------------------
def test_refused_connection_at_start_fails_at_once_without_retrying():
    events: list[RetryEvent] = []
    client = VLLMClient(f"http://127.0.0.1:{free_port()}/v1", retries=3, backoff=60.0, on_retry=events.append)
    with pytest.raises(ServerUnreachable, match="cannot reach the model server at http://127.0.0.1:.* pass --base-url"):
        client.complete(HELLO)  # a 60 s backoff would hang the test if it retried
    with pytest.raises(ServerUnreachable):
        client.models()
    assert events == []


class LoopbackProcess:
    """``python -m tests.loopback --script F`` as a child process that a test can kill and restart."""

    def __init__(self, script: list, tmp: Path, port: int = 0) -> None:
        self.path = tmp / f"script-{port}.json"
        self.path.write_text(json.dumps(script), encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.loopback", "--script", str(self.path),
                                      "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), line
        self.base_url = line.split()[1]
        self.port = int(self.base_url.rsplit(":", 1)[1].split("/")[0])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def test_server_killed_mid_run_gives_up_after_bounded_retries_with_a_clear_error(tmp_path):
    server = LoopbackProcess([OK, OK], tmp_path)
    events: list[RetryEvent] = []
    try:
        client = client_for(server, retries=2, events=events)
        assert client.complete(HELLO).summary.startswith("## Action")
        server.kill()
        with pytest.raises(ServerUnreachable, match="went away .* did not come back .*gave up after 3 attempts"):
            client.complete(HELLO)
    finally:
        server.kill()
    assert [e.attempt for e in events] == [1, 2]
    assert events[1].wait_s == pytest.approx(2 * events[0].wait_s)  # exponential backoff


def test_server_restarted_within_the_retry_window_lets_the_run_continue(tmp_path):
    first = LoopbackProcess([OK], tmp_path)
    restarted: list[LoopbackProcess] = []

    def restart(event: RetryEvent) -> None:
        if not restarted:
            restarted.append(LoopbackProcess([DONE], tmp_path, port=first.port))

    try:
        client = VLLMClient(first.base_url, retries=3, backoff=0.01, on_retry=restart)
        client.complete(HELLO)
        first.kill()
        reply = client.complete(HELLO)
    finally:
        first.kill()
        for p in restarted:
            p.kill()
    assert "terminate" in reply.summary


# ---- timeouts, 5xx, 429 -------------------------------------------------------------------------------
def test_a_reply_slower_than_the_timeout_is_retried_then_reported():
    with LoopbackServer([Reply(OK, delay=1.0)] * 2) as server:
        with pytest.raises(ServerTimeout, match="did not answer in time.*raise --timeout"):
            client_for(server, retries=1, timeout=0.2).complete(HELLO)
        assert len(server.requests) == 2


def test_a_slow_reply_followed_by_a_prompt_one_succeeds():
    with LoopbackServer([Reply(OK, delay=1.0), DONE]) as server:
        reply = client_for(server, retries=1, timeout=0.2).complete(HELLO)
    assert "terminate" in reply.summary


def test_a_stream_that_stalls_is_a_timeout():
    with LoopbackServer([Reply(OK, delay=1.0)] * 2) as server:
        with pytest.raises(ServerTimeout):
            client_for(server, retries=1, timeout=0.2).complete(HELLO, stream=True)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 520])
def test_server_errors_are_retried_until_an_answer_comes(status):
    events: list[RetryEvent] = []
    with LoopbackServer([Reply("boom", status=status), Reply("boom", status=status), OK]) as server:
        reply = client_for(server, events=events).complete(HELLO)
        assert len(server.requests) == 3
    assert reply.summary.startswith("## Action")
    assert f"HTTP {status}" in events[0].error


def test_server_errors_that_persist_end_in_a_server_error_naming_the_status():
    with LoopbackServer([Reply("engine dead", status=500)] * 3) as server:
        with pytest.raises(ServerError, match=r"HTTP 500 .*engine dead.*gave up after 3 attempts"):
            client_for(server, retries=2).complete(HELLO, stream=True)


def test_not_implemented_is_a_refusal_and_not_retried():
    with LoopbackServer([Reply("no", status=501), OK]) as server:
        with pytest.raises(RequestRefused) as info:
            client_for(server).complete(HELLO)
        assert len(server.requests) == 1
    assert info.value.status == 501


def test_429_waits_as_long_as_retry_after_says():
    events: list[RetryEvent] = []
    busy = Fault(Reply("slow down", status=429), headers={"Retry-After": "0.3"})
    with FaultServer([busy, OK]) as server:
        reply = client_for(server, events=events).complete(HELLO)
    assert reply.summary.startswith("## Action")
    assert [e.wait_s for e in events] == [0.3]
    assert "overloaded" in events[0].error


def test_429_without_retry_after_uses_the_backoff():
    events: list[RetryEvent] = []
    with FaultServer([Reply("slow down", status=429), OK]) as server:
        client_for(server, events=events).complete(HELLO)
    assert [e.wait_s for e in events] == [0.01]


def test_retry_after_longer_than_the_limit_gives_up_at_once_with_advice():
    busy = Fault(Reply("slow down", status=503), headers={"Retry-After": "3600"})
    with FaultServer([busy, OK]) as server:
        with pytest.raises(ServerError, match="retry after 3600 s.*try again later"):
            client_for(server, max_retry_after=60).complete(HELLO)
        assert len(server.requests) == 1


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(formatdate(1000.0 + 30, usegmt=True), now=1000.0) == pytest.approx(30.0)
    assert retry_after_seconds(formatdate(1000.0 - 30, usegmt=True), now=1000.0) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


# ---- cut streams, broken connections, malformed bodies ------------------------------------------------------
def test_a_stream_cut_in_the_middle_is_asked_again_and_the_full_reply_kept():
    long = kimi_reply("Wait for it.", "computer.wait()") + " " * 10
    deltas: list[str] = []
    with LoopbackServer([Reply(long, cut_after=48), long]) as server:
        reply = client_for(server).complete(HELLO, on_delta=deltas.append)
        assert len(server.requests) == 2
    assert reply.text == long
    assert "".join(deltas).endswith(long)  # the cut attempt's deltas came first


def test_a_stream_cut_every_time_ends_in_a_server_error():
    with LoopbackServer([Reply(OK, cut_after=16)] * 2) as server:
        with pytest.raises(ServerError, match="ended before it finished .*gave up after 2 attempts"):
            client_for(server, retries=1).complete(HELLO, stream=True)


def test_a_stream_that_finished_but_lost_its_done_marker_is_accepted():
    stream = [chunk(OK[:20]), chunk(OK[20:]), chunk(None, "stop")]
    with FaultServer([Fault(stream=stream)]) as server:
        reply = client_for(server, retries=0).complete(HELLO, stream=True)
    assert reply.text == OK and reply.finish_reason == "stop"


@pytest.mark.parametrize("garbage", [b"data: {not json", b"data: [1, 2]",
                                     b'data: {"object": "error", "message": "CUDA out of memory"}'])
def test_garbage_in_a_stream_is_retried(garbage):
    stream = [chunk("◁think▷"), garbage, chunk(None, "stop"), b"data: [DONE]"]
    events: list[RetryEvent] = []
    with FaultServer([Fault(stream=stream), OK]) as server:
        reply = client_for(server, events=events).complete(HELLO, stream=True)
    assert reply.text == OK
    assert len(events) == 1


def test_stream_chunks_with_unknown_shapes_are_ignored():
    stream = [chunk("Hi"), b'data: {"choices": "nope"}', b'data: {"choices": [7, {"delta": 3}]}',
              b": keep-alive", b"event: ping", chunk(" there"), chunk(None, "stop"), b"data: [DONE]"]
    with FaultServer([Fault(stream=stream)]) as server:
        reply = client_for(server, retries=0).complete(HELLO, stream=True)
    assert reply.text == "Hi there"


def test_a_stream_error_event_is_reported_in_the_final_error():
    stream = [b'data: {"object": "error", "message": "CUDA out of memory"}']
    with FaultServer([Fault(stream=stream)] * 2) as server:
        with pytest.raises(ServerError, match="error mid-stream: 'CUDA out of memory'"):
            client_for(server, retries=1).complete(HELLO, stream=True)


def test_a_connection_closed_without_an_answer_is_retried():
    with FaultServer([Fault(hang_up=True), OK]) as server:
        reply = client_for(server).complete(HELLO)
        assert len(server.requests) == 2
    assert reply.summary.startswith("## Action")


@pytest.mark.parametrize("body", [b"<html><body>502 Bad Gateway</body></html>", b"{\"choices\": [", b"",
                                  b'{"choices": []}', b'{"choices": [{"message": {"content": 42}}]}', b"null"])
def test_a_200_answer_that_is_not_the_promised_json_is_retried_then_reported(body):
    with LoopbackServer([Reply(raw_body=body)] * 2) as server:
        with pytest.raises(ServerError, match="gave up after 2 attempts") as info:
            client_for(server, retries=1).complete(HELLO)
    assert "Traceback" not in str(info.value)
    with LoopbackServer([Reply(raw_body=body), OK]) as server:
        assert client_for(server, retries=1).complete(HELLO).summary.startswith("## Action")


def test_usage_with_unexpected_types_does_not_break_the_reply():
    answer = {"choices": [{"message": {"content": OK}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": "many", "completion_tokens": None}}
    with LoopbackServer([Reply(raw_body=json.dumps(answer).encode())]) as server:
        reply = client_for(server, retries=0).complete(HELLO)
    assert reply.text == OK and reply.usage.prompt_tokens == 0


def test_a_stream_far_longer_than_max_tokens_is_cut_off_with_an_error():
    stream = [chunk("x" * 1000)] * 20
    with FaultServer([Fault(stream=stream)]) as server:
        with pytest.raises(ServerError, match="not honouring max_tokens"):
            client_for(server, retries=0).complete(HELLO, stream=True, max_tokens=100)


# ---- empty content, truncated thinking, context length ----------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_empty_content_is_retried(stream):
    with LoopbackServer(["", "   ", OK]) as server:
        reply = client_for(server).complete(HELLO, stream=stream)
    assert reply.summary.startswith("## Action")


def test_empty_content_every_time_is_an_empty_reply_error():
    with LoopbackServer([""] * 3) as server:
        with pytest.raises(EmptyReply, match="empty content .*chat template"):
            client_for(server, retries=2).complete(HELLO)


def test_thinking_without_an_end_marker_comes_back_marked_truncated():
    with LoopbackServer(["◁think▷" + "let me think " * 200]) as server:
        reply = client_for(server, retries=0).complete(HELLO, max_tokens=50, stream=True)
    assert reply.truncated and reply.finish_reason == "length" and reply.summary == ""


def test_a_context_length_refusal_is_not_retried_and_carries_the_limits():
    with LoopbackServer([OK], max_model_len=100) as server:
        with pytest.raises(ContextLengthExceeded) as info:
            client_for(server).complete(HELLO, max_tokens=200)
        assert len(server.requests) == 1
    assert info.value.limit == 100 and info.value.requested > 100


def test_the_loop_asks_once_more_after_truncated_thinking_then_counts_a_format_error(tmp_path):
    cut = "◁think▷" + "hmm " * 400
    with LoopbackServer([cut, cut]) as server:
        client = client_for(server, retries=0)
        config = AgentConfig(max_steps=1, max_format_errors=1, max_tokens=64, out_dir=tmp_path / "run")
        result = Agent(MemoryDesktop(), client, config).run("anything")
        requests = server.requests
    assert len(requests) == 2
    assert "cut off" in json.dumps(requests[1]["messages"][-1])
    assert result.status == "fail"
    [step] = read_trajectory(tmp_path / "run")
    assert "cut off" in step.parse_error and any("asked again once" in n for n in step.notes)


def test_a_server_that_ignores_stream_true_and_answers_with_json_still_works():
    body = {"id": "x", "object": "chat.completion", "model": "kimi-vl-thinking-2506",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "DONE"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    seen: list[str] = []
    with LoopbackServer([Reply(raw_body=json.dumps(body).encode())]) as server:
        reply = VLLMClient(server.base_url, retries=0).complete([{"role": "user", "content": "hi"}],
                                                                 on_delta=seen.append)
    assert reply.summary == "DONE" and reply.usage.prompt_tokens == 3 and seen == ["DONE"]
