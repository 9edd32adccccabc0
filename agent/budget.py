"""The context budget: which part of the history goes into the next request, and a record of what was left out.

Policy (one ``ContextBudget`` per episode; it remembers where the history is cut):
- always kept: system prompt, task (opening the first user message), current screenshot and user text, and the
  summaries of the turns that are not condensed (earlier thinking is never sent);
- nothing moves while the request fits, so consecutive requests share their prefix (vLLM's prefix cache);
- when it does not fit (tokens or images), it is cut until it fits and then a chunk more, as long as the
  request stays above ``1 - trim_chunk`` of the limit that overflowed (budget use stays high, and the
  following requests share the new prefix); what goes, oldest first: image-less turns' text beyond
  ``text_share`` of the budget (condensed), then screenshots older than the last ``keep_recent_images`` turns,
  then the text of those older turns (condensed to one line per action);
- only if that is not enough (a tiny context): the recent screenshots, the recent turns, then the oldest
  condensed lines go, just as far as needed;
- if the fixed parts alone do not fit, ``BudgetExceeded`` says so instead of sending a request bound to fail.
"""
from __future__ import annotations

import bisect
import time

from pydantic import BaseModel, Field

from agent.models.vllm import (ContextLengthExceeded, MaxTokensTooLarge, Overflow, TooManyImages, image_limit_of,
                               parse_overflow)
from agent.history import (CONDENSED_HEADER, CurrentView, HistoryError, ImageCache, Layout, Turn, TurnCosts,
                           omitted_note, render_messages)
from agent.reply import ModelReply
from agent.tokens import (GENERATION_PROMPT_TOKENS, IMAGE_WRAPPER_TOKENS, MESSAGE_OVERHEAD_TOKENS, Calibration,
                          EstimatingCounter, TextCounter, image_tokens)


class BudgetRecord(BaseModel):
    """What one request carried and what it left out; saved with each step of the trajectory."""

    estimated_prompt_tokens: int
    budget_tokens: int
    images_sent: int
    turns_total: int
    turns_with_image: int
    turns_condensed: int  # turns reduced to a line in the condensed list (or omitted from it)
    dropped_images: int  # earlier screenshots not sent
    retried_after_refusal: bool = False
    condensed_omitted: int = 0  # condensed lines dropped too (only when even the list did not fit)
    estimated_image_tokens: int = 0
    estimated_text_tokens: int = 0  # before calibration
    text_scale: float = 1.0  # calibration applied to the text estimate
    max_model_len: int = 0
    reply_reserve: int = 0
    max_images: int = 0
    first_image_step: int | None = None  # oldest earlier step whose screenshot was sent
    trimmed: bool = False  # the cut moved in this build (the request prefix changed)
    trim_reasons: list[str] = Field(default_factory=list)
    emergency: bool = False  # recent screenshots/turns or condensed lines had to go
    refusal: str | None = None  # the server refusal (or clamped reply) this build reacts to
    reply_clamped: str | None = None  # the server cut this request's reply short of max_tokens for lack of room
    actual_prompt_tokens: int | None = None  # usage.prompt_tokens, filled by observe_usage
    counter: str = "estimate"
    build_ms: float = 0.0


class BuiltRequest(BaseModel):
    messages: list[dict]
    record: BudgetRecord


class BudgetExceeded(ValueError):
    """Even the parts that are always sent do not fit the context."""




class ContextBudget:
    def __init__(self, *, max_model_len: int = 131072, max_images: int = 64, reply_reserve: int = 8192,
                 margin: int = 1024, in_token_limit: int = 16384, counter: TextCounter | None = None,
                 keep_recent_images: int = 3, trim_chunk: float = 0.1, text_share: float = 0.25) -> None:
        if max_images < 1:
            raise ValueError(f"max_images={max_images}: at least the current screenshot must be sent")
        if not 0 <= trim_chunk < 1 or not 0 <= text_share <= 1:
            raise ValueError(f"trim_chunk={trim_chunk} and text_share={text_share} must be fractions in [0, 1)")
        self.max_model_len = max_model_len
        self.max_images = max_images
        self.reply_reserve = reply_reserve
        self.margin = margin
        self.in_token_limit = in_token_limit
        self.counter = counter or EstimatingCounter()
        self.keep_recent_images = keep_recent_images
        self.trim_chunk = trim_chunk
        self.text_share = text_share
        self.calibration = Calibration()
        self._costs = TurnCosts(self.counter, in_token_limit)
        self._images = ImageCache()
        self._cut = (0, 0, 0)  # first step kept in the condensed list / as a full turn / with its screenshot
        self._last_step: int | None = None
        self._last_record: BudgetRecord | None = None
        self._force_trim = False
        self._refusal: str | None = None
        self._fixed_counts: dict[str, int] = {}
        self._check_room()

    def _count_fixed(self, text: str) -> int:
        """Counts the texts sent every step (system prompt, task ...) once."""
        tokens = self._fixed_counts.get(text)
        if tokens is None:
            if len(self._fixed_counts) > 32:
                self._fixed_counts.clear()
            tokens = self._fixed_counts[text] = self.counter.count(text)
        return tokens

    @property
    def budget_tokens(self) -> int:
        """Prompt tokens a request may use: max_model_len - reply reserve - margin."""
        return self.max_model_len - self.reply_reserve - self.margin

    def _check_room(self) -> None:
        if self.budget_tokens <= 0:
            raise ValueError(f"max_model_len={self.max_model_len} leaves no room for a prompt after the reply reserve "
                             f"({self.reply_reserve}) and margin ({self.margin}); raise --max-context or lower the "
                             "reply reserve")

    def reset(self) -> None:
        """Start a new episode (calibration is kept: it describes the server, not the episode)."""
        self._cut = (0, 0, 0)
        self._last_step = None
        self._images.clear()
        self._costs.clear()

    # ---- building -----------------------------------------------------------------------------------------------
    def build(self, *, system: str, task_text: str, turns: list[Turn], current: CurrentView) -> BuiltRequest:
        started = time.perf_counter()
        steps = [t.step for t in turns]
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise HistoryError(f"turns must be in increasing step order without repeats; got steps {steps[:20]}...")
        if not turns or (self._last_step is not None and steps[-1] < self._last_step):
            self.reset()  # a new episode
        n = len(turns)
        costs = [self._costs.of(t) for t in turns]
        self._costs.retain(set(steps))
        text_ps, image_ps, line_ps = [0], [0], [0]
        for cost in costs:
            text_ps.append(text_ps[-1] + cost.text)
            image_ps.append(image_ps[-1] + cost.image)
            line_ps.append(line_ps[-1] + cost.line)
        count = self._count_fixed
        fixed_text = (GENERATION_PROMPT_TOKENS + (MESSAGE_OVERHEAD_TOKENS + count(system) if system else 0)
                      + count(task_text) + MESSAGE_OVERHEAD_TOKENS + count(current.user_text))
        fixed_image = image_tokens(current.width, current.height, self.in_token_limit) + IMAGE_WRAPPER_TOKENS
        header = count(CONDENSED_HEADER) + 1
        note = count(omitted_note(max(n, 1))) + 1

        def totals(o: int, c: int, f: int) -> tuple[int, int, int]:
            f = max(f, c)
            text = fixed_text + text_ps[n] - text_ps[c] + line_ps[c] - line_ps[o]
            text += (header if c else 0) + (note if o else 0)
            return fixed_image + image_ps[n] - image_ps[f], text, 1 + n - f

        def fits(cut: tuple[int, int, int], max_tokens: int, max_images: int) -> bool:
            image, text, images = totals(*cut)
            return images <= max_images and self.calibration.estimate(image, text) <= max_tokens

        o, c, f = (bisect.bisect_left(steps, s) for s in self._cut)
        c, f = max(o, c), max(o, c, f)
        budget, limit = self.budget_tokens, self.max_images
        reasons: list[str] = []
        image, text, images = totals(o, c, f)
        if images > limit:
            reasons.append(f"{images} images > max_images {limit}")
        if self.calibration.estimate(image, text) > budget:
            reasons.append(f"~{self.calibration.estimate(image, text)} tokens > budget {budget}")
        if self._force_trim:
            reasons.append("server refusal")
        emergency = False
        if reasons:
            protected = max(0, n - self.keep_recent_images)

            def next_cut(cut: tuple[int, int, int]) -> tuple[int, int, int] | None:
                """The next thing to give up in normal operation, oldest first."""
                o_, c_, f_ = cut
                if c_ < f_ and text_ps[f_] - text_ps[c_] > self.text_share * budget:
                    return o_, c_ + 1, f_  # image-less turns beyond their share of the budget: condense
                if f_ < protected:
                    return o_, c_, f_ + 1  # an older screenshot
                if c_ < protected:
                    return o_, c_ + 1, max(f_, c_ + 1)  # an older turn's text
                return None

            cut = (o, c, f)
            while not fits(cut, budget, limit) and (following := next_cut(cut)) is not None:
                cut = following
            o, c, f = cut
            while not fits((o, c, f), budget, limit) and f < n:
                emergency, f = True, f + 1
            while not fits((o, c, f), budget, limit) and c < n:
                emergency, c = True, c + 1
            while not fits((o, c, f), budget, limit) and o < c:
                emergency, o = True, o + 1
            if not fits((o, c, f), budget, limit):
                image, text, images = totals(o, c, f)
                raise BudgetExceeded(
                    f"the system prompt, task and current screenshot alone need "
                    f"~{self.calibration.estimate(image, text)} tokens ({image} for the image) but the budget is "
                    f"{budget} (max_model_len {self.max_model_len} - reply reserve {self.reply_reserve} - margin "
                    f"{self.margin}); raise --max-context (vLLM --max-model-len), lower the reply reserve, or send "
                    "smaller screenshots")
            if not emergency:  # cut a chunk more, so the next requests share this prefix
                token_floor = (1 - self.trim_chunk) * budget
                image_floor = limit - max(1, round(self.trim_chunk * limit))
                by_images = images > limit  # what overflowed before the cut decides the chunk

                def keeps_enough(cut: tuple[int, int, int]) -> bool:
                    image_, text_, images_ = totals(*cut)
                    if by_images:
                        return images_ >= image_floor
                    return self.calibration.estimate(image_, text_) >= token_floor

                cut = (o, c, f)
                while (following := next_cut(cut)) is not None and keeps_enough(following):
                    cut = following
                o, c, f = cut
            image, text, images = totals(o, c, f)
        f = max(f, c)
        after = (steps[-1] + 1) if n else 0
        self._cut = tuple(steps[i] if i < n else after for i in (o, c, f))  # type: ignore[assignment]
        self._last_step = steps[-1] if n else None
        messages = render_messages(system=system, task_text=task_text, turns=turns, current=current,
                                   layout=Layout(omitted=o, condensed=c, first_image=f), images=self._images)
        record = BudgetRecord(
            estimated_prompt_tokens=self.calibration.estimate(image, text), budget_tokens=budget,
            images_sent=images, turns_total=n, turns_with_image=n - f, turns_condensed=c, dropped_images=f,
            retried_after_refusal=self._refusal is not None, condensed_omitted=o, estimated_image_tokens=image,
            estimated_text_tokens=text, text_scale=round(self.calibration.scale, 4),
            max_model_len=self.max_model_len, reply_reserve=self.reply_reserve, max_images=limit,
            first_image_step=steps[f] if f < n else None, trimmed=bool(reasons), trim_reasons=reasons,
            emergency=emergency, refusal=self._refusal, counter=self.counter.name,
            build_ms=round((time.perf_counter() - started) * 1000, 3))
        self._force_trim, self._refusal = False, None
        self._last_record = record
        return BuiltRequest(messages=messages, record=record)

    # ---- learning from the server -------------------------------------------------------------------------------
    def observe_usage(self, record: BudgetRecord, prompt_tokens: int) -> None:
        """Calibrate the text estimate with the server's ``usage.prompt_tokens`` for the request ``record`` built."""
        if prompt_tokens <= 0:
            return  # the server did not report usage
        record.actual_prompt_tokens = prompt_tokens
        self.calibration.observe(image_tokens=record.estimated_image_tokens, text_tokens=record.estimated_text_tokens,
                                 prompt_tokens=prompt_tokens)

    def tighten(self, refusal: Exception | ModelReply) -> None:
        """Learn from a refusal for size, or from a reply the server clamped; the next ``build`` trims harder and
        records why.

        Accepted: ``ContextLengthExceeded`` in any of vLLM's wordings (0.9.1 .. 0.32: the limit, and the prompt's
        token count where the message has it), ``TooManyImages``, ``MaxTokensTooLarge`` (the limit), any exception
        whose message is one of those refusals, and a ``ModelReply`` that is ``clamped`` (finish_reason "length"
        short of max_tokens: prompt + reply filled the context, so ``max_model_len`` is at most their sum).
        """
        if isinstance(refusal, ModelReply):
            self._learn_clamp(refusal)
            return
        message = str(getattr(refusal, "server_message", "") or refusal)
        image_limit = refusal.limit if isinstance(refusal, TooManyImages) else image_limit_of(message)
        overflow = refusal.overflow if isinstance(refusal, ContextLengthExceeded) else parse_overflow(message)
        if isinstance(refusal, ContextLengthExceeded) and overflow.limit is None and refusal.limit:
            overflow = overflow.model_copy(update={"limit": refusal.limit})
        if isinstance(refusal, MaxTokensTooLarge):
            overflow = Overflow(wording="max-tokens", limit=refusal.max_model_len)
        if image_limit is None and overflow is None:
            raise TypeError(f"tighten() learns from context-length and image-count refusals and clamped replies "
                            f"only; got {type(refusal).__name__}: {message}")
        if image_limit is not None:
            self.max_images = max(1, min(self.max_images, int(image_limit)))
        if overflow is not None:
            self._learn_limit(overflow.limit)
            prompt = overflow.prompt_tokens
            if isinstance(refusal, MaxTokensTooLarge):
                pass  # the prompt was never counted: nothing to calibrate
            elif prompt is not None and self._last_record is not None:
                self.calibration.observe(image_tokens=self._last_record.estimated_image_tokens,
                                         text_tokens=self._last_record.estimated_text_tokens, prompt_tokens=prompt)
                if overflow.prompt_at_least:
                    # vLLM 0.32 stops counting a text prompt at max_model_len + 1: the real count may be far
                    # larger. The boost lasts until the next reply's usage gives a real count.
                    self.calibration.boost(1.5)
            else:
                self.calibration.boost(1.25)  # the server did not say by how much: be markedly more careful
        self._force_trim = True
        self._refusal = message

    def _learn_limit(self, limit: int | None) -> None:
        if limit is None:
            return
        self.max_model_len = min(self.max_model_len, int(limit))
        if self.budget_tokens <= 0:
            self.reply_reserve = max(256, self.max_model_len // 4)

    def _learn_clamp(self, reply: ModelReply) -> None:
        if not reply.clamped:
            raise TypeError(f"tighten() got a reply that was not clamped (finish_reason={reply.finish_reason}, "
                            f"{reply.usage.completion_tokens} of max_tokens={reply.max_tokens})")
        prompt, completion = reply.usage.prompt_tokens, reply.usage.completion_tokens
        if prompt > 0:
            self._learn_limit(prompt + completion)
            if self._last_record is not None:
                self.calibration.observe(image_tokens=self._last_record.estimated_image_tokens,
                                         text_tokens=self._last_record.estimated_text_tokens, prompt_tokens=prompt)
        else:
            self.calibration.boost(1.25)
        self._force_trim = True
        self._refusal = (f"reply clamped by the server: {completion} of max_tokens={reply.max_tokens} tokens after a "
                         f"{prompt}-token prompt (finish_reason length)")
