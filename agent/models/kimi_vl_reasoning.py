"""A vLLM reasoning parser for Kimi-VL's ``◁think▷ ... ◁/think▷`` markers, loaded as a plugin file.

    python -m vllm.entrypoints.openai.api_server --model ... \\
        --reasoning-parser-plugin /path/to/kimi_vl_reasoning.py --reasoning-parser kimi_vl

(``kimi-cua serve --reasoning`` passes both.) The thinking then arrives in the message's ``reasoning`` field
(``reasoning_content`` on older vLLM) and ``content`` holds only the answer, streamed and not.

This file runs inside vLLM's process and virtual environment: it imports vLLM and the standard library only,
never kimi-cua. Without vLLM it still imports (kimi-cua's tests use ``ThinkSplitter``), it just registers nothing.

Kimi-VL's markers are ordinary text, not special tokens: a tokenizer may split ``◁/think▷`` over several tokens
(even mid-character, for byte-level BPE), so everything here works on decoded text, never on token ids.
The rule, identical for whole replies and streams:
  - text before the first ``◁think▷`` is content (whitespace alone before it is dropped);
  - text between it and the first ``◁/think▷`` after it is reasoning;
  - everything after that ``◁/think▷`` is content, markers included (the answer is the text after the last
    ``◁/think▷``: a client that re-joins ``◁think▷{reasoning}◁/think▷{content}`` can still find it);
  - a reply cut off inside its thinking is all reasoning, with no content;
  - ``◁/think▷`` without a ``◁think▷`` before it is plain content.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

THINK_OPEN = "◁think▷"
THINK_CLOSE = "◁/think▷"
ASSISTANT_TURN = "<|im_assistant|>"  # Kimi-VL's chat template opens each assistant turn with this token
PARSER_NAME = "kimi_vl"
# The longest a marker can be in tokens: one token per UTF-8 byte (◁ and ▷ are 3 bytes each), plus margin.
_MARKER_TOKENS = len(THINK_CLOSE.encode()) + 4


def _held_back(text: str, start: int, marker: str) -> int:
    """Length of the longest suffix of ``text[start:]`` that is a proper prefix of ``marker`` (a marker being typed)."""
    for k in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ThinkSplitter:
    """Splits a growing reply text into reasoning and content, emitting each character once.

    ``feed(text)`` takes the whole text so far and returns the (reasoning, content) that became certain since the
    previous call; a partial marker at the end is held back until the next call decides it. ``final=True`` flushes
    what is held back.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.phase = "before"  # before the opening marker -> "reasoning" -> "content"
        self.pos = 0  # text[:pos] is emitted (or dropped)
        self.content_started = False

    def feed(self, text: str, *, final: bool = False) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            if self.phase == "before":
                found = text.find(THINK_OPEN, self.pos)
                end = found if found >= 0 else len(text) - (0 if final else _held_back(text, self.pos, THINK_OPEN))
                head = text[self.pos:end]
                if self.content_started or head.strip() or (final and found < 0):
                    content.append(head)
                    self.content_started = self.content_started or bool(head)
                    self.pos = end
                if found < 0:
                    break
                self.phase, self.pos = "reasoning", found + len(THINK_OPEN)
            elif self.phase == "reasoning":
                found = text.find(THINK_CLOSE, self.pos)
                if found >= 0:
                    reasoning.append(text[self.pos:found])
                    self.phase, self.pos = "content", found + len(THINK_CLOSE)
                    continue
                end = len(text) - (0 if final else _held_back(text, self.pos, THINK_CLOSE))
                reasoning.append(text[self.pos:end])
                self.pos = end
                break
            else:
                content.append(text[self.pos:])
                self.pos = len(text)
                break
        return "".join(reasoning), "".join(content)


def split_reply(text: str) -> tuple[str | None, str | None]:
    """(reasoning, content) of a whole reply; None where a part is absent or empty."""
    splitter = ThinkSplitter()
    reasoning, content = splitter.feed(text, final=True)
    if splitter.phase == "before":
        return None, content or None
    return reasoning or None, content or None


def reasoning_ended(text: str) -> bool:
    """Whether the current assistant turn in ``text`` has closed its thinking (the newest marker is a close)."""
    turn = text.rsplit(ASSISTANT_TURN, 1)[-1]
    closed = turn.rfind(THINK_CLOSE)
    return closed >= 0 and closed > turn.rfind(THINK_OPEN)


try:  # inside vLLM: the parser itself
    from vllm.reasoning import ReasoningParser, ReasoningParserManager
except ImportError:  # imported without vLLM (kimi-cua's own tests): the text rules above are all there is
    ReasoningParser = None  # type: ignore[assignment,misc]

if ReasoningParser is not None:
    try:
        from vllm.entrypoints.generate.base.protocol import DeltaMessage  # vLLM 0.2x and later
    except ImportError:
        from vllm.entrypoints.openai.protocol import DeltaMessage  # type: ignore[no-redef]  # older vLLM

    # vLLM 0.32 calls the field ``reasoning``; older versions ``reasoning_content``.
    _REASONING_FIELD = "reasoning" if "reasoning" in DeltaMessage.model_fields else "reasoning_content"

    class KimiVLReasoningParser(ReasoningParser):  # type: ignore[misc,valid-type]
        """``◁think▷ reasoning ◁/think▷ content``, found in the decoded text (see the module's rule)."""

        def __init__(self, tokenizer: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(tokenizer, *args, **kwargs)
            self._splitter = ThinkSplitter()
            self._assistant_id = self.vocab.get(ASSISTANT_TURN)

        @property
        def reasoning_start_str(self) -> str:
            return THINK_OPEN

        @property
        def reasoning_end_str(self) -> str:
            return THINK_CLOSE

        def _decode(self, ids: Sequence[int]) -> str:
            return self.model_tokenizer.decode(list(ids), skip_special_tokens=False)

        def adjust_request(self, request: Any) -> Any:
            # Keep every token's text: if a tokenizer made the markers special tokens, they must not be stripped.
            request.skip_special_tokens = False
            if hasattr(request, "spaces_between_special_tokens"):
                request.spaces_between_special_tokens = False
            return request

        # -- where reasoning ends (the structured-output gate and the stream's phase switch ask in token ids) --
        def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
            ids = list(input_ids)
            start = 0
            if self._assistant_id is not None:  # only the newest assistant turn counts (history has closed ones)
                for i in range(len(ids) - 1, -1, -1):
                    if ids[i] == self._assistant_id:
                        start = i + 1
                        break
            return reasoning_ended(self._decode(ids[start:]))

        def is_reasoning_end_streaming(self, input_ids: Sequence[int], delta_ids: Sequence[int]) -> bool:
            # Did the tokens of this step complete a closing marker? Decode only a window: constant cost per step.
            delta = len(list(delta_ids))
            if delta == 0:
                return False
            window = list(input_ids[-(delta + _MARKER_TOKENS):])
            return THINK_CLOSE in self._decode(window) and THINK_CLOSE not in self._decode(window[:-delta])

        def _close_end(self, ids: list[int]) -> int | None:
            """Index just past the token that completes the first closing marker in ``ids`` (None: no marker)."""
            if THINK_CLOSE not in self._decode(ids):
                return None
            low, high = 1, len(ids)  # the smallest k with the marker inside decode(ids[:k])
            while low < high:
                mid = (low + high) // 2
                if THINK_CLOSE in self._decode(ids[:mid]):
                    high = mid
                else:
                    low = mid + 1
            return low

        def extract_content_ids(self, input_ids: list[int]) -> list[int]:
            ids = list(input_ids)
            end = self._close_end(ids)
            if end is not None:
                return ids[end:]
            # The marker began in earlier tokens: content is what follows the token that completed its "▷".
            low, high = 0, len(ids)  # the smallest j with no "▷" in decode(ids[j:])
            while low < high:
                mid = (low + high) // 2
                if THINK_CLOSE[-1] in self._decode(ids[mid:]):
                    low = mid + 1
                else:
                    high = mid
            return ids[low:]

        def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
            ids = list(token_ids)
            if THINK_OPEN not in self._decode(ids):
                return 0
            end = self._close_end(ids)
            return len(ids) if end is None else end

        # -- the split itself, on text --
        def extract_reasoning(self, model_output: str, request: Any) -> tuple[str | None, str | None]:
            return split_reply(model_output)

        def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                        previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                        delta_token_ids: Sequence[int]) -> Any:
            if not previous_text:  # a new reply: never carry state over
                self._splitter.reset()
            reasoning, content = self._splitter.feed(current_text)
            if not reasoning and not content:
                return None
            return DeltaMessage(**{_REASONING_FIELD: reasoning or None, "content": content or None})

        def get_streaming_fallback_content(self, text: str, request: Any) -> str | None:
            """At the end of a stream: content held back because it looked like the start of ``◁think▷``."""
            if self._splitter.phase != "before":
                return None
            _, content = self._splitter.feed(text, final=True)
            return content or None

        # The names vLLM used before 0.11 (extract_reasoning_content[_streaming]).
        extract_reasoning_content = extract_reasoning
        extract_reasoning_content_streaming = extract_reasoning_streaming

    ReasoningParserManager.register_module(PARSER_NAME, module=KimiVLReasoningParser)
