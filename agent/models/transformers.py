"""In-process model backend: load a vision-language model with transformers and answer like the vLLM client.

Loading follows the Kimi-VL model card (``trust_remote_code``, bf16 where the GPU supports it,
``device_map="auto"``); the OpenAI-format messages the agent builds (text parts and base64 data-URL
images) become the processor's chat-template input. ``complete`` has the same signature and returns the
same ``ModelReply`` as ``agent.models.vllm.VLLMClient.complete``, so every command can use either.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.models.vllm import VARIANTS, ServedModel, ServerError, VariantDefaults
from agent.reply import ModelReply, Usage, make_reply

INSTALL_HINT = "pip install 'kimi-cua[transformers]'"
# Generation options a request may carry in ``extra`` that map one-to-one onto ``generate`` keywords.
_GENERATE_KEYS = {"top_p", "top_k", "min_p", "repetition_penalty", "no_repeat_ngram_size"}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


class BackendError(ServerError):
    """The in-process model cannot load or answer; the message says what to do."""


def decode_data_url(url: str) -> Any:
    """A PIL image from a ``data:image/...;base64,...`` URL."""
    from PIL import Image, UnidentifiedImageError

    if not url.startswith("data:") or ";base64," not in url:
        raise BackendError("the transformers backend reads images only from base64 data: URLs "
                           f"(got {url[:40]!r}); build image parts with agent.models.vllm.image_part")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise BackendError(f"an image in the request cannot be decoded: {exc}") from None
    return image.convert("RGB")


def to_processor_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI chat messages -> (chat-template messages, images in order of appearance).

    Image parts become ``{"type": "image", "image": <PIL image>}`` as the model card's example writes
    them; string contents stay strings (every chat template accepts them).
    """
    converted: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise BackendError(f"unsupported message role {role!r}; use system, user or assistant")
        if isinstance(content, str) or content is None:
            converted.append({"role": role, "content": content or ""})
            continue
        parts: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            elif kind == "image_url":
                url = part["image_url"]["url"] if isinstance(part.get("image_url"), dict) else part.get("image_url")
                image = decode_data_url(str(url))
                images.append(image)
                parts.append({"type": "image", "image": image})
            else:
                raise BackendError(f"unsupported content part type {kind!r}; use text or image_url")
        converted.append({"role": role, "content": parts})
    return converted, images


class _DeltaStreamer:
    """Receives token ids from ``generate`` and hands newly decoded text to ``on_delta``."""

    def __init__(self, decode: Callable[[list[int]], str], on_delta: Callable[[str], None], stop_ids: set[int]) -> None:
        self.decode, self.on_delta, self.stop_ids = decode, on_delta, stop_ids
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False
        self.stopped = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first passes the whole prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.stopped or token in self.stop_ids:
                self.stopped = True
                continue
            self.ids.append(int(token))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
            return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.on_delta(text[len(self.sent):])
            self.sent = text

    def end(self) -> None:
        text = self.decode(self.ids)
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.on_delta(text[len(self.sent):])
            self.sent = text


class TransformersClient:
    """``TransformersClient("/models/Kimi-VL-A3B-Thinking-2506", variant="thinking-2506")``.

    ``device_map`` and ``dtype`` go to ``from_pretrained``; ``dtype="auto"`` picks bf16 on a GPU that
    supports it and float32 on the CPU.
    """

    def __init__(self, model_path: str | Path, variant: str = "thinking-2506", *, device_map: str | None = "auto",
                 dtype: str = "auto", served_name: str | None = None, trust_remote_code: bool = True) -> None:
        if variant not in VARIANTS:
            raise BackendError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise BackendError(f"the transformers backend needs torch and transformers ({exc}); "
                               f"install them with: {INSTALL_HINT}") from None
        path = Path(model_path)
        if not (path / "config.json").exists():
            raise BackendError(f"{model_path} is not a model directory (no config.json); download the model "
                               "first, e.g. `huggingface-cli download moonshotai/Kimi-VL-A3B-Thinking-2506 "
                               "--local-dir DIR`, and pass --model DIR")
        self.path = path
        self._variant = variant
        self._name = served_name or path.name
        self._torch = torch
        torch_dtype = self._pick_dtype(dtype)
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        model_class = self._model_class(transformers, config)
        # transformers < 4.56 names the argument torch_dtype (the Kimi-VL card's era); newer ones dtype.
        dtype_key = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"
        kwargs: dict[str, Any] = {dtype_key: torch_dtype, "trust_remote_code": trust_remote_code}
        if device_map:
            kwargs["device_map"] = device_map
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.network = model_class.from_pretrained(path, **kwargs)
        except (OSError, ValueError, ImportError) as exc:
            raise BackendError(f"cannot load the model from {path}: {exc}") from None
        self.network.eval()
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self._max_len = self._context_length(config)

    # ---- the ModelClient surface --------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The model's name, as VLLMClient.model (the torch module is ``network``)."""
        return self._name

    @property
    def base_url(self) -> str:
        return f"transformers:{self.path}"

    @property
    def variant(self) -> str:
        return self._variant

    @property
    def defaults(self) -> VariantDefaults:
        return VARIANTS[self._variant]

    def models(self) -> list[ServedModel]:
        return [ServedModel(id=self._name, max_model_len=self._max_len)]

    def max_model_len(self) -> int | None:
        return self._max_len

    def complete(self, messages: list[dict[str, Any]], *, temperature: float | None = None,
                 max_tokens: int | None = None, stream: bool = False,
                 on_delta: Callable[[str], None] | None = None,
                 extra: dict[str, Any] | None = None) -> ModelReply:
        started = time.perf_counter()
        inputs = self.encode(messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        temperature = self.defaults.temperature if temperature is None else temperature
        limit = self.defaults.max_tokens if max_tokens is None else max_tokens
        if self._max_len and prompt_len + limit > self._max_len:
            raise BackendError(f"the prompt has {prompt_len} tokens and {limit} are reserved for the reply, more "
                               f"than the model's {self._max_len}; lower --max-context / --max-images")
        stop_ids = self._stop_ids()
        options: dict[str, Any] = {"max_new_tokens": limit, "do_sample": temperature > 0}
        if temperature > 0:
            options["temperature"] = temperature
        for key, value in (extra or {}).items():
            if key in _GENERATE_KEYS:
                options[key] = value
        if extra and "seed" in extra:
            self._torch.manual_seed(int(extra["seed"]))
        streamer = _DeltaStreamer(self._decode, on_delta, stop_ids) if (on_delta is not None) else None
        with self._torch.inference_mode():
            output = self.network.generate(**inputs, **options, streamer=streamer)
        generated = [int(t) for t in output[0, prompt_len:].tolist()]
        hit_stop = next((i for i, t in enumerate(generated) if t in stop_ids), None)
        kept = generated if hit_stop is None else generated[:hit_stop]
        text = self._decode(kept)
        finish = "stop" if hit_stop is not None or len(generated) < limit else "length"
        usage = Usage(prompt_tokens=prompt_len, completion_tokens=len(generated),
                      total_tokens=prompt_len + len(generated))
        return make_reply(text, usage=usage, finish_reason=finish, model=self._name,
                          latency_ms=(time.perf_counter() - started) * 1000)

    # ---- pieces ----------------------------------------------------------------------------------------
    def encode(self, messages: list[dict[str, Any]]) -> Any:
        """Chat template + processor: the tensors ``generate`` takes, on the model's device and dtype."""
        converted, images = to_processor_messages(messages)
        try:
            prompt = self.processor.apply_chat_template(converted, add_generation_prompt=True, tokenize=False)
        except (ValueError, TypeError) as exc:
            raise BackendError(f"the processor at {self.path} has no usable chat template: {exc}") from None
        inputs = self.processor(images=images or None, text=[prompt], return_tensors="pt")
        return inputs.to(self.network.device, dtype=self.network.dtype) if hasattr(inputs, "to") else inputs

    def _decode(self, ids: list[int]) -> str:
        # Keep special tokens: Kimi-VL's thinking markers may be special tokens, as with vLLM's
        # skip_special_tokens=False; end-of-turn tokens were cut before decoding.
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.network, "generation_config", None), self.network.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if isinstance(pad, int):
            ids.add(pad)
        return ids

    def _pick_dtype(self, dtype: str) -> Any:
        torch = self._torch
        if dtype != "auto":
            if not hasattr(torch, dtype):
                raise BackendError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32")
            return getattr(torch, dtype)
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32  # bf16 matmuls on most CPUs are emulated and slow

    @staticmethod
    def _model_class(transformers: Any, config: Any) -> Any:
        """Remote-code models (Kimi-VL) register AutoModelForCausalLM; built-in VLMs use ImageTextToText."""
        auto_map = getattr(config, "auto_map", None) or {}
        if "AutoModelForCausalLM" in auto_map:
            return transformers.AutoModelForCausalLM
        return transformers.AutoModelForImageTextToText

    @staticmethod
    def _context_length(config: Any) -> int | None:
        text_config = getattr(config, "text_config", None) or config
        for source in (text_config, config):
            value = getattr(source, "max_position_embeddings", None)
            if isinstance(value, int):
                return value
        return None

    def close(self) -> None:
        self.network = None  # type: ignore[assignment]

