"""The text rules of the Kimi-VL reasoning parser plugin (agent/models/kimi_vl_reasoning.py), without vLLM.

The plugin inside a real vLLM is proven in tests/models/test_serve_real_vllm.py; here every way a stream can be cut
into deltas must give exactly the whole-reply split.
"""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.models import kimi_vl_reasoning as plugin
from agent.models.kimi_vl_reasoning import ThinkSplitter, reasoning_ended, split_reply

PLUGIN_FILE = Path(plugin.__file__)


def stream(text: str, cuts: list[int]) -> tuple[str, str]:
    """Feed ``text`` in pieces ending at ``cuts`` (as vLLM's frontend does), then flush like its stream end."""
    splitter = ThinkSplitter()
    reasoning, content = [], []
    for end in [*cuts, len(text)]:
        r, c = splitter.feed(text[:end])
        reasoning.append(r)
        content.append(c)
    if splitter.phase == "before":  # get_streaming_fallback_content
        content.append(splitter.feed(text, final=True)[1])
    return "".join(reasoning), "".join(content)


@pytest.mark.parametrize("text, reasoning, content", [
    ("◁think▷a◁/think▷b", "a", "b"),
    ("◁think▷The button is top left.◁/think▷click(x=0.1, y=0.2)", "The button is top left.", "click(x=0.1, y=0.2)"),
    ("\n ◁think▷a◁/think▷b", "a", "b"),  # whitespace before the thinking is dropped
    ("click(x=0.5, y=0.5)", None, "click(x=0.5, y=0.5)"),  # Instruct: no thinking at all
    ("◁think▷cut off in the middle", "cut off in the middle", None),
    ("◁think▷a◁/think▷b◁/think▷c", "a", "b◁/think▷c"),  # later markers stay in the content
    ("x◁/think▷y", None, "x◁/think▷y"),  # a close without an open is plain text
    ("◁think▷◁/think▷b", None, "b"),
    ("◁think▷a◁/think▷", "a", None),
    ("◁thin", None, "◁thin"),  # a partial marker at the very end of a whole reply is text
])
def test_a_whole_reply_splits_into_reasoning_and_content(text, reasoning, content):
    assert split_reply(text) == (reasoning, content)


@pytest.mark.parametrize("text", [
    "◁think▷a◁/think▷b",
    "  ◁think▷two words◁/think▷click(x=0.1, y=0.2)",
    "◁think▷a ◁ b ▷ c◁/thin◁/think▷◁think▷d",
    "no thinking ◁ here ▷",
    "◁think▷cut off ◁/thi",
])
def test_every_way_of_cutting_a_stream_gives_the_whole_reply_split(text):
    whole = tuple(part or "" for part in split_reply(text))
    if text.endswith("◁/thi"):  # cut off inside a partial closing marker: the stream holds those characters back
        whole = (whole[0].removesuffix("◁/thi"), whole[1])
    for n in (1, 2):
        for cuts in itertools.combinations(range(1, len(text)), n):
            assert stream(text, list(cuts)) == whole, cuts
    assert stream(text, list(range(1, len(text)))) == whole  # one character per delta


@given(st.lists(st.sampled_from(["◁think▷", "◁/think▷", "◁", "▷", "/", "think", "a", " ", "\n", "é"]), max_size=12),
       st.lists(st.integers(min_value=1, max_value=60), max_size=8))
def test_streams_and_whole_replies_agree_on_any_text(pieces, raw_cuts):
    text = "".join(pieces)
    cuts = sorted({c for c in raw_cuts if c < len(text)})
    reasoning, content = stream(text, cuts)
    whole_r, whole_c = split_reply(text)
    assert content == (whole_c or "")
    held = plugin._held_back(text, 0, plugin.THINK_CLOSE)  # a cut-off stream may hold a partial marker back
    assert reasoning in {whole_r or "", (whole_r or "")[:len(whole_r or "") - held]}


def test_reasoning_ends_with_a_close_after_the_newest_open_in_the_current_turn():
    assert reasoning_ended("◁think▷a◁/think▷b")
    assert not reasoning_ended("◁think▷a")
    assert not reasoning_ended("")
    # an earlier turn's closed thinking in the prompt does not end the new turn's thinking
    assert not reasoning_ended("<|im_assistant|>assistant<|im_middle|>◁think▷x◁/think▷y<|im_end|>"
                               "<|im_user|>user<|im_middle|>next<|im_end|><|im_assistant|>assistant<|im_middle|>")
    assert not reasoning_ended("◁think▷a◁/think▷b◁think▷c")


def test_the_plugin_file_imports_nothing_of_kimi_cua():
    tree = ast.parse(PLUGIN_FILE.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "collections", "typing", "vllm"}, imported
