"""Every usage mistake is one line on stderr (``kimi-cua: <problem>; <what to do>``) and exit 2, found before any
server probe or Xvfb start (issue 19, "Errors"). The commands run in this process through ``main()``."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.cli import main as cli_main
from agent.cli.main import main
from agent.trajectory import RunInfo
from tests.loopback import LoopbackServer
from tests.mounts import tmpfs

# Nothing listens here: a command that probed the server first would fail with "cannot reach", not our message.
DEAD = "http://127.0.0.1:9/v1"


def cli(args: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def one_line(code: int, lines: list[str], *expected: str) -> str:
    assert code == 2, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("kimi-cua: ") and "; " in line, line
    assert "Traceback" not in line and "cannot reach" not in line, line
    for text in expected:
        assert text in line, line
    return line


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "plain-file"
    path.write_text("x")
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A recorded run: run.json and no steps."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(RunInfo(task="open the editor", base_url=DEAD, model="m").model_dump_json())
    return out


# ---- the table, one row (or more) each ----------------------------------------------------------
TABLE = [
    (["run", "x", "--out", "/proc/x"], ["cannot write /proc/x", "--out"]),
    (["run", "x", "--out", "{file}/x"], ["cannot write", "is a file", "--out"]),
    (["run", "x", "--out", "{file}"], ["is a file", "--out"]),
    (["run", "x", "--launch", "nonexistent-program"], ["nonexistent-program", "not found"]),
    (["run", "x", "--launch", "xterm 'unclosed"], ["--launch", "quotes"]),
    (["run", "x", "--max-steps", "0"], ["--max-steps", "at least 1"]),
    (["run", "x", "--max-steps", "-1"], ["--max-steps", "at least 1"]),
    (["run", "x", "--max-images", "0"], ["--max-images", "at least 1"]),
    (["run", "x", "--timeout", "-5"], ["--timeout", "more than 0"]),
    (["eval", "screenspot", "{data}", "--out", "/proc/x"], ["cannot write /proc/x", "--out"]),
    (["eval", "screenspot-make", "/proc/x"], ["cannot write /proc/x", "OUT"]),
    (["serve", "--baseline", "--port", "99999"], ["--port", "99999", "1-65535"]),
    (["guest", "--port", "0"], ["--port", "1-65535"]),
    (["run", "--resume", "{corrupt_run}"], ["run.json", "not a readable run record"]),
]


@pytest.mark.parametrize("args,expected", TABLE, ids=[" ".join(a) for a, _ in TABLE])
def test_table_row_is_one_line_and_exit_2(args, expected, a_file, dataset, tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "run.json").write_text('{"task": 5, "steps": "many"')
    values = {"{file}": str(a_file), "{data}": str(dataset), "{corrupt_run}": str(corrupt)}
    args = [values.get(a, a.replace("{file}", str(a_file))) for a in args]
    if args[0] == "run" or args[:2] == ["eval", "screenspot"]:
        args += ["--base-url", DEAD]
    code, lines = cli(args, capsys)
    one_line(code, lines, *expected)


def test_a_read_only_out_is_refused_before_the_server_probe(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        code, lines = cli(["run", "x", "--out", str(mount / "run"), "--base-url", DEAD], capsys)
        one_line(code, lines, f"cannot write {mount / 'run'}", "read-only", "--out")
        code, lines = cli(["eval", "screenspot-make", str(mount / "data")], capsys)
        one_line(code, lines, "read-only")


# ---- the "Also" list ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["99999x99999", "0x0", "big", "1920x", "-5x100"])
@pytest.mark.parametrize("command", [["run", "x", "--env", "virtual", "--base-url", DEAD],
                                     ["replay", "{run}", "--env", "virtual"], ["doctor", "--env", "virtual"],
                                     ["eval", "local", "builtin", "--base-url", DEAD]])
def test_bad_sizes_are_refused_by_argparse(command, size, run_dir, capsys):
    args = [str(run_dir) if a == "{run}" else a for a in command] + [f"--size={size}"]
    code, lines = cli(args, capsys)
    one_line(code, lines, "--size", "1920x1080")


def test_limit_below_one_is_refused(dataset, capsys):
    code, lines = cli(["eval", "screenspot", str(dataset), "--out", str(dataset / "o"), "--limit", "-1",
                       "--base-url", DEAD], capsys)
    one_line(code, lines, "--limit", "at least 1")


def test_resume_with_another_task_is_refused(run_dir, capsys):
    code, lines = cli(["run", "--resume", str(run_dir), "another task"], capsys)
    one_line(code, lines, "open the editor", "another task", "--resume")


def test_resume_of_a_folder_without_run_json(tmp_path, capsys):
    code, lines = cli(["run", "--resume", str(tmp_path)], capsys)
    one_line(code, lines, "no run.json")


def test_corrupt_trajectory_line_is_one_line(run_dir, capsys):
    (run_dir / "trajectory.jsonl").write_text('{"step": "one", "screenshot": 3}\n{"step": 2}\n')
    code, lines = cli(["run", "--resume", str(run_dir)], capsys)
    line = one_line(code, lines, "trajectory.jsonl:1", "not a valid step record")
    assert len(line) < 400


def test_a_run_without_a_task(capsys):
    code, lines = cli(["run", "--base-url", DEAD], capsys)
    one_line(code, lines, "TASK")


def test_virtual_display_must_be_a_display_number(capsys):
    code, lines = cli(["run", "x", "--env", "virtual", "--display", "nope", "--base-url", DEAD], capsys)
    one_line(code, lines, "--display nope")


@pytest.mark.parametrize("command,prog", [(["run", "x"], "run"), (["eval", "local", "builtin"], "eval local"),
                                          (["doctor"], "doctor"), (["serve"], "serve"), (["replay", "DIR"], "replay"),
                                          (["parse"], "parse")])
def test_unknown_flags_print_the_subcommands_usage(command, prog, capsys):
    code, lines = cli([*command, "--no-such-flag"], capsys)
    assert code == 2
    assert lines[0].startswith(f"usage: kimi-cua {prog} "), lines
    assert lines[-1] == f"kimi-cua: unrecognized arguments: --no-such-flag; see kimi-cua {prog} --help"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("kimi-cua ")


@pytest.mark.parametrize("flag", ["--coords", "--mode"])
def test_parse_takes_coords_and_the_old_mode(flag, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("click(x=0.5, y=0.5)"))
    capsys.readouterr()
    assert main(["parse", "--width", "100", "--height", "100", flag, "pixels"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["at"] == {"x": 1, "y": 1}  # pixel 0.5 of the image, to the nearest pixel (auto would give 50, 50)
    assert "--mode" not in subprocess_help(["parse"])


def subprocess_help(command: list[str]) -> str:
    parser = cli_main.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[command[0]]
    return sub.format_help()


def test_an_unexpected_error_is_one_line_naming_the_log_and_debug(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something inside broke\nsecond line")

    real = cli_main.build_parser

    def parser_with_a_bug():
        parser = real()
        parser.set_defaults(handler=broken)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", parser_with_a_bug)
    code, lines = cli([], capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "unexpected error RuntimeError: something inside broke" in lines[0] and "--debug" in lines[0]
    log = lines[0].split("the traceback is in ", 1)[1].split(";")[0]
    assert "Traceback" in Path(log).read_text()
    Path(log).unlink()
    code, lines = cli(["--debug"], capsys)
    assert code == 1 and any("Traceback" in line for line in lines)


# ---- the wrong server ------------------------------------------------------------------------------------
class _WebPage(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"<!DOCTYPE HTML>\n<html><head><title>Error response</title></head>\n<body>404</body></html>\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WebPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("command", [["run", "x"], ["eval", "local", "builtin"]])
def test_another_http_server_is_not_an_openai_server(command, web_server, tmp_path, capsys):
    code, lines = cli([*command, "--base-url", web_server + "/v1", "--out", str(tmp_path / "o"), "--retries", "0"]
                      if command[0] == "run" else [*command, "--base-url", web_server + "/v1", "--out",
                                                   str(tmp_path / "o")], capsys)
    one_line(code, lines, "is not an OpenAI-compatible server", "check --base-url (port, /v1)")


@pytest.mark.parametrize("model", [None, "kimi-vl-thinking-2506"])
def test_a_base_url_without_v1_is_not_blamed_on_model(model, tmp_path, capsys):
    with LoopbackServer(["DONE"]) as server:
        root = server.base_url.removesuffix("/v1")
        args = ["run", "x", "--base-url", root, "--out", str(tmp_path / "o"), "--retries", "0"]
        code, lines = cli(args + (["--model", model] if model else []), capsys)
    line = one_line(code, lines, "not an OpenAI-compatible server", f"did you mean {root}/v1?")
    assert "--model" not in line


def test_eval_local_probes_the_server_before_any_task(tmp_path, capsys):
    code, lines = cli(["eval", "local", "builtin", "--base-url", DEAD, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(lines) == 1 and "cannot reach the model server" in lines[0], lines
    assert not (tmp_path / "o").exists()
