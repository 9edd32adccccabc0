"""The context budget: what a request carries, every trimming branch, calibration and recovery from refusals.

Requests that must be accepted or refused are sent over real HTTP to the loopback server, which enforces
max_model_len and the images-per-prompt limit with its own stand-in tokenizer.
"""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import pytest
from PIL import Image

from agent.budget import BudgetExceeded, ContextBudget
from agent.models.vllm import ContextLengthExceeded, TooManyImages, VLLMClient, classify_refusal
from agent.reply import ModelReply
from agent.history import CONDENSED_HEADER, CurrentView, HistoryError, Turn
from tests.loopback import LoopbackServer
from tests.models.test_vllm_faults import OVERFLOWS

SYSTEM = "You operate a Linux desktop. Answer with ## Action: and ## Code:."
TASK = "Task: open the text editor and write a haiku about context windows."
SUMMARY = "## Action: click the editor icon\n## Code:\n```python\npyautogui.click(x=0.12, y=0.34)\n```"


@lru_cache(maxsize=None)
def png(width: int, height: int, shade: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade % 256, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def turn(tmp_path: Path, step: int, width: int = 1280, height: int = 720, *, summary: str = SUMMARY,
         user_text: str | None = None) -> Turn:
    path = tmp_path / f"step_{step:03d}.png"
    if not path.exists():
        path.write_bytes(png(width, height, step % 8))
    return Turn(step=step, screenshot=path, mime="image/png", image_width=width, image_height=height,
                user_text=f"Step {step}: here is the screen." if user_text is None else user_text,
                summary=summary, action_text=f"click ({step}, {2 * step})")


def current(width: int = 1280, height: int = 720, shade: int = 255) -> CurrentView:
    return CurrentView(image=png(width, height, shade), mime="image/png", width=width, height=height,
                       user_text="Here is the current screen. What is the next action?")


def build(budget: ContextBudget, turns: list[Turn], view: CurrentView | None = None):
    return budget.build(system=SYSTEM, task_text=TASK, turns=turns, current=view or current())


def image_count(messages: list[dict]) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list)
               for part in m["content"] if part["type"] == "image_url")


def texts(message: dict) -> list[str]:
    content = message["content"]
    return [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]


# ---- what a request carries -----------------------------------------------------------------------------------------
def test_short_history_is_sent_whole_with_the_task_opening_the_first_user_message(tmp_path: Path) -> None:
    turns = [turn(tmp_path, s) for s in (1, 2)]
    built = build(ContextBudget(), turns)
    roles = [m["role"] for m in built.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    first = built.messages[1]["content"]
    assert first[0] == {"type": "text", "text": TASK}
    assert first[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert built.messages[2]["content"] == SUMMARY
    assert image_count(built.messages) == 3
    record = built.record
    assert (record.images_sent, record.turns_with_image, record.dropped_images, record.turns_condensed) == (3, 2, 0, 0)
    assert not record.trimmed


def test_without_history_the_current_message_carries_the_task(tmp_path: Path) -> None:
    built = build(ContextBudget(), [])
    assert [m["role"] for m in built.messages] == ["system", "user"]
    assert texts(built.messages[1])[0] == TASK
    assert image_count(built.messages) == 1


def test_requests_between_trims_extend_the_previous_request_unchanged(tmp_path: Path) -> None:
    budget = ContextBudget()
    turns: list[Turn] = []
    previous = None
    for step in range(1, 6):
        view = CurrentView(image=png(1280, 720, step), mime="image/png", width=1280, height=720,
                           user_text=f"Step {step}: here is the screen.")
        built = build(budget, turns, view)
        if previous is not None:
            assert built.messages[:len(previous.messages)] == previous.messages  # vLLM can reuse the whole prefix
        previous = built
        turns.append(turn(tmp_path, step))


# ---- trimming branches ----------------------------------------------------------------------------------------------
def test_oldest_screenshots_drop_in_one_chunk_when_tokens_run_out(tmp_path: Path) -> None:
    budget = ContextBudget(max_model_len=16384, reply_reserve=2048, margin=256, trim_chunk=0.25)
    turns = [turn(tmp_path, s) for s in range(1, 30)]
    built = build(budget, turns)
    record = built.record
    assert record.trimmed and "tokens" in record.trim_reasons[0]
    one_image = 1196 + 5  # a 1280x720 screenshot for Thinking-2506, with its wrapper
    floor = budget.budget_tokens * 0.75  # a chunk (trim_chunk) below the limit, not further
    assert floor <= record.estimated_prompt_tokens < floor + one_image
    assert record.turns_with_image == image_count(built.messages) - 1
    assert record.first_image_step == turns[record.dropped_images].step  # the newest screenshots stay
    assert record.turns_condensed == 0  # text still fits: only screenshots went
    # the next steps fit without moving the cut again
    again = build(budget, turns + [turn(tmp_path, 30)])
    assert not again.record.trimmed and again.record.first_image_step == record.first_image_step


def test_image_count_limit_drops_the_oldest_screenshots_in_a_chunk(tmp_path: Path) -> None:
    budget = ContextBudget(max_images=10)
    turns = [turn(tmp_path, s, 280, 280) for s in range(1, 13)]
    built = build(budget, turns)
    assert built.record.trimmed and "max_images" in built.record.trim_reasons[0]
    assert image_count(built.messages) == built.record.images_sent == 9  # 10 minus a chunk of 1
    assert built.record.first_image_step == 5


def test_text_is_condensed_into_a_list_of_past_actions_when_it_no_longer_fits(tmp_path: Path) -> None:
    long_summary = "## Action: scroll down to find the option\n" + "reasoning " * 300
    budget = ContextBudget(max_model_len=16384, reply_reserve=2048, margin=256, keep_recent_images=2,
                           text_share=1.0)  # the plain order: all older screenshots first, then text
    turns = [turn(tmp_path, s, 560, 560, summary=long_summary) for s in range(1, 25)]
    built = build(budget, turns)
    record = built.record
    assert record.turns_condensed > 0 and record.condensed_omitted == 0
    assert record.turns_with_image == 2 and record.dropped_images == len(turns) - 2
    first_user = texts(built.messages[1])
    assert first_user[0] == TASK and first_user[1].startswith(CONDENSED_HEADER)
    for condensed in turns[:record.turns_condensed]:
        assert f"step {condensed.step}: {condensed.action_text}" in first_user[1]
    kept_summaries = [m["content"] for m in built.messages if m["role"] == "assistant"]
    assert len(kept_summaries) == len(turns) - record.turns_condensed
    assert record.estimated_prompt_tokens <= budget.budget_tokens


def test_text_of_turns_without_screenshot_is_condensed_beyond_its_share(tmp_path: Path) -> None:
    wordy = "## Action: type the text\n" + "notes " * 150
    turns = [turn(tmp_path, s, 1280, 720, summary=wordy) for s in range(1, 60)]
    shared = build(ContextBudget(max_model_len=65536, text_share=0.1), turns).record
    literal = build(ContextBudget(max_model_len=65536, text_share=1.0), turns).record
    assert shared.turns_condensed > 0
    assert literal.turns_condensed == 0  # text_share=1: text is only condensed when it alone does not fit
    assert shared.turns_with_image > literal.turns_with_image  # condensing old text kept more screenshots


def test_recent_screenshots_go_only_when_nothing_else_is_left(tmp_path: Path) -> None:
    # room for the fixed parts and about one more 1080p screenshot
    budget = ContextBudget(max_model_len=9000, reply_reserve=1024, margin=256, keep_recent_images=3)
    turns = [turn(tmp_path, s, 1920, 1080, summary="ok") for s in range(1, 6)]
    record = build(budget, turns, current(1920, 1080)).record
    assert record.emergency
    assert record.turns_with_image < 3
    assert record.estimated_prompt_tokens <= budget.budget_tokens


def test_condensed_lines_are_omitted_only_when_the_list_itself_does_not_fit(tmp_path: Path) -> None:
    budget = ContextBudget(max_model_len=6000, reply_reserve=1024, margin=256)
    turns = [turn(tmp_path, s, 1920, 1080, summary="ok") for s in range(1, 400)]
    built = build(budget, turns, current(1920, 1080))
    record = built.record
    assert record.emergency and record.condensed_omitted > 0
    assert record.turns_condensed == len(turns)  # every earlier turn is a line at most
    block = texts(built.messages[1])[1]
    assert f"({record.condensed_omitted} earlier steps omitted)" in block
    assert f"step {turns[-1].step}:" in block and f"step {turns[0].step}:" not in block
    assert record.estimated_prompt_tokens <= budget.budget_tokens


def test_fixed_parts_that_cannot_fit_are_refused_with_advice(tmp_path: Path) -> None:
    budget = ContextBudget(max_model_len=3000, reply_reserve=512, margin=64)
    with pytest.raises(BudgetExceeded, match="raise --max-context"):
        build(budget, [turn(tmp_path, 1)], current(1920, 1080))


def test_a_context_without_room_for_a_prompt_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="reply reserve"):
        ContextBudget(max_model_len=8192, reply_reserve=8192)


def test_a_new_episode_starts_with_the_whole_history_again(tmp_path: Path) -> None:
    budget = ContextBudget(max_images=4)
    long_run = [turn(tmp_path, s, 280, 280) for s in range(1, 10)]
    assert build(budget, long_run).record.dropped_images > 0
    build(budget, [])  # the loop's reset: empty history
    assert build(budget, long_run[:2]).record.dropped_images == 0


def test_an_unreadable_screenshot_is_reported(tmp_path: Path) -> None:
    missing = turn(tmp_path, 1).model_copy(update={"screenshot": tmp_path / "gone.png"})
    with pytest.raises(HistoryError, match="gone.png"):
        build(ContextBudget(), [missing])


def test_turns_out_of_order_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="increasing step order"):
        build(ContextBudget(), [turn(tmp_path, 2), turn(tmp_path, 1)])


def test_only_screenshots_in_the_window_stay_cached(tmp_path: Path) -> None:
    budget = ContextBudget(max_images=5)
    turns = [turn(tmp_path, s, 280, 280) for s in range(1, 40)]
    built = build(budget, turns)
    assert len(budget._images) == built.record.turns_with_image <= 4


# ---- calibration and refusals over HTTP -----------------------------------------------------------------------------
def test_an_episode_against_the_enforcing_server_is_never_refused_and_fills_the_budget(tmp_path: Path) -> None:
    with LoopbackServer(lambda body: "## Action: wait\n## Code:\n```python\ncomputer.wait()\n```",
                        max_model_len=16384, max_images=64) as server:
        client = VLLMClient(server.base_url, retries=0)
        budget = ContextBudget(max_model_len=16384, reply_reserve=1024, margin=256)
        turns: list[Turn] = []
        fills = []
        for step in range(1, 31):
            built = build(budget, turns)
            reply = client.complete(built.messages, max_tokens=budget.reply_reserve)
            assert reply.usage.prompt_tokens <= built.record.estimated_prompt_tokens  # the estimate is pessimistic
            budget.observe_usage(built.record, reply.usage.prompt_tokens)
            assert built.record.actual_prompt_tokens == reply.usage.prompt_tokens
            fills.append(reply.usage.prompt_tokens / budget.budget_tokens)
            turns.append(turn(tmp_path, step))
        client.close()
    assert server.refusals == []
    assert budget.calibration.scale < 1.0  # learned that the server counts fewer text tokens than estimated
    assert min(fills[15:]) >= 0.8


class Undercount:
    """A tokenizer that counts 1 token per ``chars`` characters: wrong, so the server refuses."""

    def __init__(self, chars: float) -> None:
        self.name, self.chars = f"undercount/{chars}", chars

    def count(self, text: str) -> int:
        return int(len(text) / self.chars)


# Each vLLM wording of an overflow, made by the loopback from a history our undercounting tokenizer thinks fits.
# (version, tokenizer chars per token, turns, image side, summary characters, the wording the server answers)
LENGTH_REFUSALS = [
    ("0.9", 50, 15, 560, 4200, "requested"),  # prompt + max_tokens refused, exact count "(X in the messages"
    ("0.32", 50, 11, 1280, 1500, "input-length"),  # text fits, screenshots push it over: exact count
    ("0.32", 4.5, 12, 280, 4200, "input-tokens"),  # text alone over: "at least max_model_len + 1", a lower bound
]


@pytest.mark.parametrize("version, chars, n, side, summary_chars, wording", LENGTH_REFUSALS,
                         ids=[f"{r[0]}-{r[5]}" for r in LENGTH_REFUSALS])
def test_length_refusal_is_learned_and_the_retry_is_accepted(tmp_path: Path, version, chars, n, side,
                                                             summary_chars, wording) -> None:
    wordy = ("## Action: read the page\n" + "words and more words " * 400)[:summary_chars]
    turns = [turn(tmp_path, s, side, side * 9 // 16 if side > 600 else side, summary=wordy) for s in range(1, n + 1)]
    with LoopbackServer(["ok"] * 3, max_model_len=16384, vllm_version=version) as server:
        # vLLM 0.32 may answer the retry after a refusal with images once with a 500 (its multimodal cache drift)
        client = VLLMClient(server.base_url, retries=1, backoff=0.01)
        budget = ContextBudget(max_model_len=16384, reply_reserve=1024, margin=256, counter=Undercount(chars))
        built = build(budget, turns)
        assert not built.record.trimmed  # the estimate says it fits
        with pytest.raises(ContextLengthExceeded) as refusal:
            client.complete(built.messages, max_tokens=budget.reply_reserve)
        assert refusal.value.overflow.wording == wording
        budget.tighten(refusal.value)
        retry = build(budget, turns)
        reply = client.complete(retry.messages, max_tokens=budget.reply_reserve)
        client.close()
    assert retry.record.retried_after_refusal and retry.record.refusal == refusal.value.server_message
    assert retry.record.trimmed and "server refusal" in retry.record.trim_reasons
    assert reply.usage.prompt_tokens <= budget.budget_tokens
    assert len(server.refusals) == 1 and server.clamps == []


def test_a_clamped_reply_is_learned_like_a_refusal(tmp_path: Path) -> None:
    """vLLM 0.32 does not refuse prompt + max_tokens over the limit: it cuts the reply to the room left."""
    wordy = ("## Action: read the page\n" + "words and more words " * 400)[:3000]
    turns = [turn(tmp_path, s, 560, 560, summary=wordy) for s in range(1, 9)]
    thinking = "◁think▷" + "look at the page again " * 800  # ~6000 tokens: more than the room left
    with LoopbackServer([thinking, "ok"], max_model_len=16384) as server:
        client = VLLMClient(server.base_url, retries=0)
        budget = ContextBudget(max_model_len=16384, reply_reserve=4096, margin=256, counter=Undercount(6))
        built = build(budget, turns)
        reply = client.complete(built.messages, max_tokens=budget.reply_reserve)
        assert reply.clamped and reply.finish_reason == "length"
        budget.tighten(reply)
        retry = build(budget, turns)
        again = client.complete(retry.messages, max_tokens=budget.reply_reserve)
        client.close()
    [clamp] = server.clamps
    assert clamp["prompt_tokens"] + clamp["room"] == 16384 and clamp["room"] < 4096
    assert server.refusals == []
    assert retry.record.retried_after_refusal and "reply clamped" in retry.record.refusal
    assert retry.record.trimmed and retry.record.images_sent < built.record.images_sent
    assert again.usage.prompt_tokens < reply.usage.prompt_tokens
    assert again.usage.prompt_tokens + budget.reply_reserve <= 16384  # the reserve is there now
    assert not again.clamped


@pytest.mark.parametrize("message, wording, limit, prompt, at_least, completion", OVERFLOWS,
                         ids=[o[1] + ("-at-least" if o[4] else "") for o in OVERFLOWS])
def test_tighten_learns_from_every_overflow_wording(tmp_path: Path, message, wording, limit, prompt, at_least,
                                                    completion) -> None:
    for refusal in (classify_refusal(400, message, "http://gpu/v1"), RuntimeError(message)):  # typed or not
        budget = ContextBudget(max_model_len=131072, reply_reserve=1024, margin=256)
        first = build(budget, [turn(tmp_path, s) for s in range(1, 4)])
        budget.tighten(refusal)
        assert budget.max_model_len == limit
        if prompt is not None:  # the server's count teaches the text scale
            assert budget.calibration.observations == 1
        retry = build(budget, [turn(tmp_path, s) for s in range(1, 4)])
        assert retry.record.refusal == message and retry.record.retried_after_refusal
        assert retry.record.max_model_len == limit and first.record.max_model_len == 131072


def test_tighten_learns_the_limit_from_a_max_tokens_refusal() -> None:
    budget = ContextBudget(max_model_len=131072, reply_reserve=1024, margin=256)
    budget.tighten(classify_refusal(400, "max_tokens=8192 cannot be greater than max_model_len=4096. Please request "
                                         "fewer output tokens. (parameter=max_tokens, value=8192)", "http://gpu/v1"))
    assert budget.max_model_len == 4096


def test_tighten_rejects_a_reply_that_was_not_clamped() -> None:
    with pytest.raises(TypeError, match="not clamped"):
        ContextBudget().tighten(ModelReply(text="ok", finish_reason="stop", max_tokens=100))


def test_image_count_refusal_teaches_the_server_limit(tmp_path: Path) -> None:
    turns = [turn(tmp_path, s, 280, 280) for s in range(1, 8)]
    with LoopbackServer(["ok"] * 2, max_images=4) as server:
        # vLLM 0.32 may answer the retry after a refusal with images once with a 500 (its multimodal cache drift)
        client = VLLMClient(server.base_url, retries=1, backoff=0.01)
        budget = ContextBudget(max_images=64)
        with pytest.raises(TooManyImages) as refusal:
            client.complete(build(budget, turns).messages, max_tokens=budget.reply_reserve)
        budget.tighten(refusal.value)
        retry = build(budget, turns)
        client.complete(retry.messages, max_tokens=budget.reply_reserve)
        client.close()
    assert budget.max_images == 4
    assert retry.record.images_sent <= 4 and retry.record.retried_after_refusal
    assert len(server.refusals) == 1


def test_tighten_rejects_errors_that_are_not_refusals_for_size() -> None:
    with pytest.raises(TypeError, match="context-length and image-count refusals and clamped replies"):
        ContextBudget().tighten(RuntimeError("connection reset"))
