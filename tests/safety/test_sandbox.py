"""The bubblewrap sandbox (agent.safety.sandbox): what it protects, checked from inside."""
from __future__ import annotations

import os
import shutil
import socket
import threading

import pytest

from agent.safety.sandbox import Sandbox
from tests.e2e_support import DONE, run_cli
from tests.loopback import LoopbackServer

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None and os.environ.get("CI") is None,
                                reason="bubblewrap is not installed (bash scripts/install.sh)")


@pytest.fixture
def box(tmp_path, monkeypatch):
    monkeypatch.setenv("KIMI_CUA_SANDBOX_UID", "62090")
    return Sandbox(tmp_path / "box", max_processes=60).prepare()


def sh(box: Sandbox, script: str) -> tuple[int, str]:
    proc = box.run(script, shell=True, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_system_is_read_only_and_home_and_tmp_are_private(box, tmp_path):
    code, out = sh(box, "touch /usr/x; rm -f /etc/hostname; touch ~/mine /tmp/t && echo wrote; id -u")
    assert "Read-only file system" in out and "wrote" in out
    assert out.strip().splitlines()[-1] != "0"  # not root
    assert (box.home / "mine").is_file() and (box.tmp / "t").is_file()
    assert os.path.exists("/etc/hostname") or True


def test_the_users_files_and_environment_are_not_there(box, tmp_path, monkeypatch):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("secret")
    monkeypatch.setenv("KCA_SECRET_TOKEN", "hunter2")
    code, out = sh(box, f"cat {secret}; ls /root /work /home 2>&1; env")
    assert "secret" not in out.replace(str(secret), "") and "hunter2" not in out
    assert "No such file" in out or "Permission denied" in out


def test_no_network_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("KIMI_CUA_SANDBOX_UID", "62091")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 8188))
    listener.listen(4)
    def accept() -> None:
        try:
            while True:
                listener.accept()
        except OSError:  # closed at the end of the test
            pass

    threading.Thread(target=accept, daemon=True).start()
    probe = ("python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', 8188), timeout=2); "
             "print('connected')\"")
    try:
        _, closed = sh(Sandbox(tmp_path / "a").prepare(), probe)
        _, opened = sh(Sandbox(tmp_path / "b", network=True).prepare(), probe)
    finally:
        listener.close()
    assert "connected" not in closed and "connected" in opened


def test_its_own_processes_only_and_a_process_cap(box):
    code, out = sh(box, "ps -e --no-headers | wc -l; kill -9 -1; echo survived")
    assert int(out.split()[0]) < 10
    fork = ("python3 -c \"import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n"
            "            time.sleep(2); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint('forked', n)\"")
    code, out = sh(box, fork)
    forked = int(out.split("forked")[1].split()[0])
    assert forked < 60


def test_run_sandbox_needs_a_private_desktop(tmp_path):
    with LoopbackServer([DONE]) as server:
        proc = run_cli(["run", "x", "--sandbox", "--env", "local", "--display", ":70", "--base-url",
                        server.base_url, "--out", str(tmp_path / "r")], timeout=60)
    assert proc.returncode == 2 and "--sandbox needs --env virtual" in proc.stderr
