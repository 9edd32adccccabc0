"""The in-process transformers backend, proven offline on a tiny randomly initialised LLaVA built here.

Nothing is downloaded: the tokenizer is a character-level vocabulary built with `tokenizers`, the image
processor is CLIP's with a 28-pixel input, and the model has one layer of width 32.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the transformers backend needs: pip install 'kimi-cua[transformers]'")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from agent.models.vllm import image_part  # noqa: E402
from agent.models.transformers import BackendError, TransformersClient, to_processor_messages  # noqa: E402

SPECIALS = ["<unk>", "<|im_end|>", "<pad>", "<image>", "<|im_system|>", "<|im_user|>", "<|im_assistant|>",
            "<|im_middle|>"]
# Kimi-VL's chat-template shape (no newlines between parts), with LLaVA's image placeholder.
TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if loop.first and m['role'] != 'system' -%}<|im_system|>system<|im_middle|>You are a helpful assistant"
    "<|im_end|>{%- endif -%}"
    "<|im_{{ m['role'] }}|>{{ m['role'] }}<|im_middle|>"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for p in m['content'] -%}{%- if p['type'] == 'image' -%}<image>{%- else -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}<|im_end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}"
)
IMAGE_TOKENS = 4  # a 28x28 input cut into 14-px patches, CLS dropped ("default" feature strategy)


def build_tiny_llava(directory: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    vocab: dict[str, int] = {}
    for token in SPECIALS + [chr(c) for c in range(32, 127)] + ["◁", "▷", "\n", "é", "ü"]:
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[3:]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", chat_template=TEMPLATE,
        image_token="<image>", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llava")
    build_tiny_llava(directory)
    return directory


@pytest.fixture(scope="module")
def client(model_dir) -> TransformersClient:
    return TransformersClient(model_dir, variant="thinking-2506", served_name="tiny-llava")


def png(color: str, size: tuple[int, int] = (56, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def user(text: str, *images: bytes) -> dict:
    return {"role": "user", "content": [*(image_part(i, "image/png") for i in images), {"type": "text", "text": text}]}


def test_usage_counts_the_templated_prompt_with_each_image_expanded(client):
    reply = client.complete([user("click OK", png("red"))], temperature=0, max_tokens=6)
    templated = ("<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
                 "<|im_user|>user<|im_middle|><image>click OK<|im_end|><|im_assistant|>assistant<|im_middle|>")
    expected = len(client.tokenizer(templated, add_special_tokens=False).input_ids) - 1 + IMAGE_TOKENS
    assert reply.usage.prompt_tokens == expected
    assert 1 <= reply.usage.completion_tokens <= 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model == "tiny-llava" and reply.latency_ms > 0
    assert reply.finish_reason in ("stop", "length")
    if reply.finish_reason == "length":
        assert reply.usage.completion_tokens == 6


def test_greedy_decoding_is_repeatable_and_sampling_follows_the_seed(client):
    messages = [user("where is the button?", png("blue"))]
    first = client.complete(messages, temperature=0, max_tokens=12)
    assert client.complete(messages, temperature=0, max_tokens=12).text == first.text
    seeded = [client.complete(messages, max_tokens=12, extra={"seed": 7, "top_k": 20}).text for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_streamed_deltas_add_up_to_the_reply(client):
    deltas: list[str] = []
    messages = [user("stream please", png("green"))]
    reply = client.complete(messages, temperature=0, max_tokens=16, stream=True, on_delta=deltas.append)
    assert reply.text and len(deltas) > 1
    assert "".join(deltas) == reply.text
    assert client.complete(messages, temperature=0, max_tokens=16).text == reply.text


def test_data_url_images_reach_the_processor_in_order(client):
    messages = [
        {"role": "system", "content": "You operate a desktop."},
        user("first", png("red")),
        {"role": "assistant", "content": "◁think▷look◁/think▷## Action:\nwait"},
        user("second", png("blue")),
    ]
    inputs = client.encode(messages)
    pixels = inputs["pixel_values"]
    assert tuple(pixels.shape) == (2, 3, 28, 28)
    red, blue = pixels[0].mean(dim=(1, 2)), pixels[1].mean(dim=(1, 2))
    assert red[0] > red[2] and blue[2] > blue[0]  # channel order R, G, B survives decoding
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(client.tokenizer.convert_tokens_to_ids("<image>")) == 2 * IMAGE_TOKENS


def test_openai_messages_become_chat_template_parts():
    converted, images = to_processor_messages([
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [image_part(png("red")), {"type": "text", "text": "hi"}]},
    ])
    assert converted[0] == {"role": "system", "content": "sys"}
    assert [p["type"] for p in converted[1]["content"]] == ["image", "text"]
    assert len(images) == 1 and images[0].size == (56, 40) and images[0].mode == "RGB"


def test_a_remote_image_url_is_refused_with_a_reason(client):
    with pytest.raises(BackendError, match="base64 data: URLs"):
        client.complete([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.invalid/x.png"}}]}])


def test_a_prompt_longer_than_the_model_context_is_refused(client):
    assert client.max_model_len() == 512
    with pytest.raises(BackendError, match="more than the model's 512"):
        client.complete([user("x" * 600)], max_tokens=4)


def test_a_path_without_a_model_says_how_to_get_one(tmp_path):
    with pytest.raises(BackendError, match="not a model directory.*--model DIR"):
        TransformersClient(tmp_path)


def test_variant_defaults_and_model_listing_match_the_server_client(client):
    assert client.defaults.temperature == 0.8
    assert [(m.id, m.max_model_len) for m in client.models()] == [("tiny-llava", 512)]
    assert client.model == "tiny-llava" and client.base_url.startswith("transformers:")
