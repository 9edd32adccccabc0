"""A tiny random-weight checkpoint of Kimi-VL's real architecture (``KimiVLForConditionalGeneration``), built locally.

vLLM serves it with ``--load-format dummy --trust-remote-code`` (no weights, no download). What is real: the model code
(vLLM's ``kimi_vl.py`` + ``moonvit.py`` + DeepSeek-V2/V3 MLA+MoE text model), the config classes, the image token
rule, the chat layout and the special tokens. What is ours: the image processor and processor (written from the rule
in REFERENCE.md section 1, loaded through ``auto_map``), a small byte-level BPE tokenizer trained here, and tiny
sizes. Kimi's MLA dimensions are kept (kv_lora_rank 512, qk_nope 128, qk_rope 64, v 128): vLLM's CPU MLA kernel
rejects tiny head sizes.

``build(outdir, in_token_limit=4096)`` needs ``tokenizers`` (and nothing from this project): run it with the
``.venv-vllm`` python, ``python -m tests.tiny_kimi_vl OUTDIR [--in-token-limit N]``. Importing this module needs
nothing beyond the standard library (``source_hash``, the constants and ``num_image_tokens`` work anywhere).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODEL_NAME = "tiny-kimi-vl"
PATCH_SIZE = 14
MERGE_KERNEL = (2, 2)
BPE_VOCAB_SIZE = 1024  # byte-level BPE merges learned from CORPUS below (256 bytes + merges)

# Kimi-VL's special tokens, in the order of their real ids (163584.. in the real tokenizer); here they follow the BPE
# vocabulary. `<|media_pad|>` is the image placeholder (config.media_placeholder_token_id).
SPECIAL_TOKENS = [
    "[BOS]", "[EOS]",
    "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>",
    "<|media_start|>", "<|media_content|>", "<|media_end|>", "<|media_pad|>",
    "[PAD]",
]
# Thinking markers: ordinary (non-special) added tokens, so they survive skip_special_tokens and appear as plain text
# in the decoded output, as with the real model.
THINK_TOKENS = ["◁think▷", "◁/think▷"]
EOS_TOKEN = "<|im_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant"
MEDIA_BLOCK = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"

# Kimi-VL's layout, no newlines between parts; a default system prompt when none is given. vLLM sees the loop over
# message['content'] and passes OpenAI-style parts ({"type": "image"} / {"type": "text", "text": ...}).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and messages[0]['role'] != 'system' -%}"
    "{{- '<|im_system|>system<|im_middle|>" + DEFAULT_SYSTEM + "<|im_end|>' -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{- '<|im_system|>' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<|im_user|>' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<|im_assistant|>' -}}"
    "{%- else -%}{{- '<|im_system|>' -}}{%- endif -%}"
    "{{- message['role'] -}}{{- '<|im_middle|>' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- elif message['content'] is not none -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or content['type'] == 'image_url' -%}"
    "{{- '" + MEDIA_BLOCK + "' -}}"
    "{%- elif content['type'] == 'text' -%}"
    "{{- content['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_assistant|>assistant<|im_middle|>' -}}{%- endif -%}"
)

_CORPUS_TEXT = """\
You are a helpful assistant. You are a GUI agent. You are given a task and a screenshot of the screen.
Please observe the screenshot, please locate the following elements with action and point.
## Action: Click the Save button in the toolbar to save the document.
## Code:
```python
pyautogui.click(x=0.5, y=0.5)
```
◁think▷The user wants me to open the settings. I see a gear icon in the top right corner.◁/think▷
## Action: Type the file name and press enter.
## Code:
```python
pyautogui.write('report.txt')
pyautogui.press('enter')
pyautogui.hotkey('ctrl', 's')
pyautogui.scroll(-5)
pyautogui.doubleClick(x=0.25, y=0.75)
pyautogui.moveTo(x=0.125, y=0.875)
computer.wait()
computer.terminate(status="success", answer="done")
```
The quick brown fox jumps over the lazy dog. What is shown in this image? Describe the image in one sentence.
Open the browser, search for the weather, and tell me the temperature in the city today.
user assistant system image Thought: Toolcall: click(x=0.365, y=0.317) {"bbox_2d": [0.28, 0.50, 0.52, 0.70]}
"""


def _corpus() -> list[str]:
    lines = _CORPUS_TEXT.splitlines()
    # Numbers and coordinates the agent prompts are full of, deterministically.
    for i in range(200):
        x, y = (i * 37) % 1000 / 1000, (i * 61) % 1000 / 1000
        lines.append(f"pyautogui.click(x={x}, y={y})  # step {i} of the task, element {i * 7 % 13}")
    # The chat layout's words (role names, "image" of the media block) become single tokens, as in Kimi's tokenizer.
    lines += ["system", "user", "assistant", "image"] * 100
    return lines * 3


def num_image_tokens(width: int, height: int, in_token_limit: int = 4096) -> int:
    """The image token rule (same as the model dir's image processor and vLLM's get_num_image_tokens)."""
    p = PATCH_SIZE
    if (width // p) * (height // p) > in_token_limit:
        s = math.sqrt(in_token_limit / ((width // p) * (height // p)))
        width, height = int(width * s), int(height * s)
    unit = MERGE_KERNEL[0] * p
    width += (-width) % unit
    height += (-height) % unit
    return (height // unit) * (width // unit)


def source_hash() -> str:
    """A key over this package's source: a cached build is reused while the builder is unchanged."""
    digest = hashlib.sha256()
    for path in sorted(HERE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _train_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def build(outdir: str | Path, in_token_limit: int = 4096) -> Path:
    """Write the tiny checkpoint into ``outdir`` (created; existing files are overwritten). Returns the path."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + THINK_TOKENS}

    text_config = {
        # DeepSeek-V3-style MLA + MoE, as in Kimi-VL-A3B (model_type deepseek_v3 upstream), shrunk.
        "model_type": "deepseek_v3",
        "vocab_size": vocab_size,
        "hidden_size": 256,
        "intermediate_size": 512,
        "moe_intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "n_shared_experts": 1,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_layer_freq": 1,
        "first_k_dense_replace": 1,
        "routed_scaling_factor": 2.446,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": True,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 800000.0,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": ids["[BOS]"],
        "eos_token_id": ids[EOS_TOKEN],
        "pad_token_id": ids["[PAD]"],
    }
    vision_config = {
        "model_type": "moonvit",
        "patch_size": PATCH_SIZE,
        "init_pos_emb_height": 64,
        "init_pos_emb_width": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "hidden_size": 64,
        "intermediate_size": 128,
        "merge_kernel_size": list(MERGE_KERNEL),
    }
    config = {
        "architectures": ["KimiVLForConditionalGeneration"],
        "model_type": "kimi_vl",
        "text_config": text_config,
        "vision_config": vision_config,
        "ignore_index": -100,
        "media_placeholder_token_id": ids["<|media_pad|>"],
        "pad_token_id": ids["[PAD]"],
        "bos_token_id": ids["[BOS]"],
        "eos_token_id": ids[EOS_TOKEN],
        "torch_dtype": "bfloat16",
        "tiny_kimi_vl": {"source_hash": source_hash(), "in_token_limit": in_token_limit},
    }
    auto_map = {
        "AutoImageProcessor": "image_processing_kimi_vl.KimiVLImageProcessor",
        "AutoProcessor": "processing_kimi_vl.KimiVLProcessor",
    }
    preprocessor = {
        "auto_map": auto_map,
        "image_processor_type": "KimiVLImageProcessor",
        "processor_class": "KimiVLProcessor",
        "patch_size": PATCH_SIZE,
        "in_token_limit": in_token_limit,
        "merge_kernel_size": list(MERGE_KERNEL),
        "pad_input": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "[BOS]",
        "eos_token": EOS_TOKEN,
        "pad_token": "[PAD]",
        "unk_token": None,
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    files = {
        "config.json": config,
        "preprocessor_config.json": preprocessor,
        "processor_config.json": {"auto_map": {"AutoProcessor": auto_map["AutoProcessor"]},
                                  "processor_class": "KimiVLProcessor"},
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": {"bos_token": "[BOS]", "eos_token": EOS_TOKEN, "pad_token": "[PAD]"},
        "generation_config.json": {"bos_token_id": ids["[BOS]"], "eos_token_id": ids[EOS_TOKEN],
                                   "pad_token_id": ids["[PAD]"]},
        "tiny_kimi_vl.json": {"token_ids": ids, "vocab_size": vocab_size, "in_token_limit": in_token_limit,
                              "source_hash": source_hash(), "model_name": MODEL_NAME},
    }
    for name, data in files.items():
        (out / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    for name in ("image_processing_kimi_vl.py", "processing_kimi_vl.py"):
        shutil.copyfile(HERE / name, out / name)
    return out
