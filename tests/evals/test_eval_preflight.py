"""`kimi-cua eval screenspot` checks its reply limit against the server's max_model_len before sending anything.

Against the loopback here (fast, every branch); against the real vLLM in tests/models/test_serve_real_vllm.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.eval_screenspot import register_eval
from agent.evals.preflight import MIN_REPLY_TOKENS, fit_max_tokens, prompt_tokens
from agent.evals.screenspot import load_prompt
from agent.evals.screenspot_data import load_dataset
from agent.tokens import image_tokens
from tests.evals.test_screenspot import MODEL, by_instruction, pro_dataset
from tests.loopback import LoopbackServer


def run_cli(argv: list[str]) -> int:
    """`kimi-cua eval ...` through its own argument parser (the same handler agent.cli.main calls)."""
    parser = argparse.ArgumentParser(prog="kimi-cua")
    register_eval(parser.add_subparsers().add_parser("eval").add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_a_reply_limit_over_the_room_left_is_lowered_with_a_notice(tmp_path: Path, capsys) -> None:
    data, answers = pro_dataset(tmp_path / "pro")  # images of 1000x500 and 2000x1000
    with LoopbackServer(by_instruction(answers), max_model_len=4096) as server:
        code = run_cli(["eval", "screenspot", str(data), "--out", str(tmp_path / "run"), "--base-url",
                        server.base_url, "--no-progress"])
        asked = {body["max_tokens"] for body in server.requests}
    err = capsys.readouterr().err
    largest = prompt_tokens(load_dataset(data).samples[-1], load_prompt("kimi"), model=MODEL, language="en",
                            size=(2000, 1000))
    assert image_tokens(2000, 1000) == 2592 and largest > 2592
    assert code == 0 and asked == {4096 - largest}  # every request asked for what the largest prompt leaves
    assert f"lowering --max-tokens from 8192 to {4096 - largest}" in err and "max_model_len is 4096" in err
    assert "2000x1000" in err


def test_no_room_for_a_minimal_reply_exits_2_with_the_fix_before_sending(tmp_path: Path, capsys) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    with LoopbackServer(by_instruction(answers), max_model_len=2800) as server:
        code = run_cli(["eval", "screenspot", str(data), "--out", str(tmp_path / "run"), "--base-url",
                        server.base_url, "--no-progress"])
        sent = len(server.requests)
    err = capsys.readouterr().err
    assert code == 2 and sent == 0
    assert "max_model_len is 2800" in err and f"at least {MIN_REPLY_TOKENS}" in err
    assert "--max-model-len" in err and "2000x1000" in err
    assert len(err.strip().splitlines()) == 1


def test_a_limit_that_fits_is_left_alone(tmp_path: Path, capsys) -> None:
    data, answers = pro_dataset(tmp_path / "pro")
    samples = load_dataset(data).samples
    fit = fit_max_tokens(samples, load_prompt("kimi"), max_tokens=1024, max_model_len=131072, model=MODEL)
    assert fit.max_tokens == 1024 and fit.notice is None and fit.largest_image == (2000, 1000)
    unknown = fit_max_tokens(samples, load_prompt("kimi"), max_tokens=99999, max_model_len=None, model=MODEL)
    assert unknown.max_tokens == 99999  # a server that does not report max_model_len: nothing to check against
    with LoopbackServer(by_instruction(answers)) as server:  # 131072: the variant's 8192 fits
        assert run_cli(["eval", "screenspot", str(data), "--out", str(tmp_path / "run"), "--base-url",
                        server.base_url, "--no-progress", "--limit", "2"]) == 0
        assert {body["max_tokens"] for body in server.requests} == {8192}
    assert "lowering" not in capsys.readouterr().err
