"""The bubblewrap sandbox (agent.safety.sandbox): what it protects, checked from inside."""
from __future__ import annotations

import json
import os
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

from agent.safety.bridge import PortBridge
from agent.safety.sandbox import Sandbox
from tests.e2e_support import DONE, run_cli
from tests.loopback import LoopbackServer
from tests.osworld_support import free_port, require_osworld, use_test_displays

PROJECT = Path(__file__).resolve().parents[2]

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


class Listener:
    """A TCP listener on the host's loopback (a port of the test range) that counts the connections it gets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(8)
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
        except OSError:  # closed at the end of the test
            pass

    def probe(self) -> str:
        """A command that prints ``connected`` or ``blocked``, trying this listener."""
        return ("python3 -c \"import socket\ntry:\n    socket.create_connection(('127.0.0.1', %d), timeout=3)\n"
                "    print('connected')\nexcept OSError:\n    print('blocked')\"" % self.port)

    def close(self) -> None:
        self.sock.close()


def test_no_network_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("KIMI_CUA_SANDBOX_UID", "62091")
    listener = Listener()
    try:
        _, closed = sh(Sandbox(tmp_path / "a").prepare(), listener.probe())
        _, opened = sh(Sandbox(tmp_path / "b", network=True).prepare(), listener.probe())
    finally:
        listener.close()
    assert "blocked" in closed and "connected" not in closed and "connected" in opened


def test_the_bridge_reaches_a_port_inside_while_nothing_inside_connects_out(tmp_path, monkeypatch):
    """agent.safety.bridge: a server inside a sandbox without network answers on the host's 127.0.0.1 (as the guest
    of ``eval local`` does for OSWorld's worker), and a program beside it still cannot reach the host."""
    monkeypatch.setenv("KIMI_CUA_SANDBOX_UID", "62092")
    listener = Listener()
    port = free_port()
    bridge = PortBridge([port], uid=62092).start()
    box = Sandbox(tmp_path / "box", writable=[bridge.folder], read_only=[PROJECT],
                  env={"PYTHONPATH": str(PROJECT)}).prepare()
    (box.home / "index.html").write_text("inside")
    server = box.popen(bridge.wrap(["/bin/sh", "-c", f"{listener.probe()} > ~/probe.txt; "
                                    f"exec python3 -m http.server --bind 127.0.0.1 {port}"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = ""
        for _ in range(100):
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=5).text
                break
            except httpx.HTTPError:
                server.poll()
                assert server.returncode is None, "the sandboxed server exited"
                threading.Event().wait(0.1)
    finally:
        server.terminate()
        server.wait(10)
        bridge.close()
        listener.close()
    assert body == "inside"
    assert (box.home / "probe.txt").read_text().strip() == "blocked" and listener.accepted == 0
    assert not bridge.folder.exists()


def test_the_bridge_never_follows_a_symlink_planted_in_its_folder(tmp_path):
    """The bridge's folder is writable inside the sandbox: a symlink there to one of the host's unix sockets must
    not join the host's 127.0.0.1 port to that socket."""
    host_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_socket.bind(str(tmp_path / "host.sock"))
    host_socket.listen(4)
    host_socket.settimeout(1.5)
    port = free_port()
    with PortBridge([port]) as bridge:
        os.symlink(tmp_path / "host.sock", bridge.folder / f"{port}.sock")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            try:
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                assert client.recv(100) == b""  # closed: nothing joined
            except ConnectionResetError:
                pass
        with pytest.raises(TimeoutError):
            host_socket.accept()
    host_socket.close()


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


# ---- eval local's sandbox ------------------------------------------------------------------------------------
def no_network_task(probe: str) -> dict:
    """A task whose setup command and launched program each try ``probe``; scored by what they printed."""
    return {
        "id": "no-network", "instruction": "nothing",
        "config": [{"type": "execute", "parameters": {"command": f"{probe} > ~/executed.txt", "shell": True}},
                   {"type": "launch", "parameters": {"command": f"{probe} > ~/launched.txt.part && "
                                                                "mv ~/launched.txt.part ~/launched.txt", "shell": True}},
                   {"type": "execute_with_verification", "parameters": {
                       "command": ["true"], "verification": {"command_success": "test -s ~/launched.txt"},
                       "max_wait_time": 20}}],
        "evaluator": {"func": "exact_match",
                      "result": {"type": "vm_command_line", "shell": True,
                                 "command": 'printf %s "$(cat ~/executed.txt)-$(cat ~/launched.txt)"'},
                      "expected": {"type": "rule", "rules": {"expected": "blocked-blocked"}}}}


def test_eval_local_task_commands_have_no_network_and_the_evaluation_still_works(tmp_path, osworld_workers):
    """``eval local``'s default sandbox: a task's setup command and launched program cannot open a TCP connection to
    a listener on the host's loopback, while OSWorld's worker still sets the task up and scores it through the
    guest (bridged). With ``sandbox_network`` the same task reaches the listener (and so fails)."""
    from agent.evals.local_run import run_local_suite
    from agent.evals.local_tasks import load_tasks
    from agent.evals.osworld import LocalRunOptions
    from tests.osworld_support import PORTS

    require_osworld()
    use_test_displays()
    listener = Listener()
    (tmp_path / "tasks" / "os").mkdir(parents=True)
    (tmp_path / "tasks" / "os" / "no-network.json").write_text(json.dumps(no_network_task(listener.probe())))
    items = load_tasks(tmp_path / "tasks")
    runner = lambda instruction, display, out: ("done", 1, None)  # noqa: E731  (the agent is not the point here)
    outcomes = {}
    try:
        for network in (False, True):
            options = LocalRunOptions(out_dir=tmp_path / f"out-{network}", sandbox=True, sandbox_network=network,
                                      port_range=(PORTS.start, PORTS.stop - 1), chromium_port=PORTS.stop - 1,
                                      vlc_port=PORTS.stop - 2, task_timeout=120)
            accepted = listener.accepted
            [result] = run_local_suite(items, options, runner=runner, workers=osworld_workers)
            home = tmp_path / f"out-{network}" / "os" / "no-network" / "home"
            outcomes[network] = (result.status, result.score, result.error, listener.accepted - accepted,
                                 (home / "executed.txt").read_text().strip(), (home / "launched.txt").read_text().strip())
    finally:
        listener.close()
    assert outcomes[False] == ("success", 1.0, None, 0, "blocked", "blocked"), outcomes[False]
    assert outcomes[True][:2] == ("fail", 0.0) and outcomes[True][3:] == (2, "connected", "connected"), outcomes[True]


def test_a_project_copy_under_tmp_in_a_venv_launches_its_apps_in_the_sandbox(tmp_path):
    """A CI clone lives in ``mktemp -d`` (under /tmp, which the sandbox replaces with a private one) with its own
    virtual environment: the guest's sandboxed launch path (``/setup/launch`` of ``python -m envs.apps.tk_editor``)
    shows the editor's window, and the guest's ``python`` is still the venv's."""
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    use_test_displays()
    root = Path(tempfile.mkdtemp(prefix="kca-copy-", dir="/tmp"))
    try:
        copy = root / "c"
        for name in ("actions", "agent", "envs", "prompts"):
            shutil.copytree(PROJECT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
        [packages] = (venv / "lib").glob("python3*/site-packages")
        # The copy first (as an editable install of it), then this interpreter's packages (it may be a venv itself).
        (packages / "kimi_cua_copy.pth").write_text("\n".join([str(copy), *site.getsitepackages()]) + "\n")
        driver = textwrap.dedent(f"""
            import os, subprocess, sys, time
            from pathlib import Path
            import agent, httpx
            assert agent.__file__.startswith({str(copy)!r}), agent.__file__
            from agent.evals.local_run import GuestProcess, _guest_popen, _sandboxed_popen
            from agent.evals.osworld import LocalRunOptions
            from envs.xvfb import VirtualDisplay
            task = Path({str(tmp_path / "task")!r}); home = task / "home"; home.mkdir(parents=True)
            (home / "notes.txt").write_text("")
            options = LocalRunOptions(out_dir=task, chromium_port={free_port()}, vlc_port={free_port()})
            port = {free_port()}
            with VirtualDisplay(800, 600, launcher=_sandboxed_popen(options, task, home)) as vd:
                popen, bridge = _guest_popen(options, task, home, port)
                guest = GuestProcess(vd.display, home, port, popen=popen, log=task / "guest.log")
                try:
                    prefix = httpx.post(guest.url + "/execute", json={{"command": ["python", "-c",
                                        "import sys; print(sys.prefix)"]}}, timeout=60).json()
                    print("PREFIX", prefix["output"].strip())
                    httpx.post(guest.url + "/setup/launch", json={{"command": ["python", "-m", "envs.apps.tk_editor",
                               "~/notes.txt"]}}, timeout=60).raise_for_status()
                    found, deadline = "", time.monotonic() + 30
                    while not found and time.monotonic() < deadline:
                        time.sleep(0.3)
                        found = subprocess.run(["xdotool", "search", "--name", "Editor - notes.txt"],
                                               env=dict(os.environ, DISPLAY=vd.display), capture_output=True,
                                               text=True).stdout.strip()
                    print("WINDOW", bool(found))
                finally:
                    guest.close()
                    if bridge is not None:
                        bridge.close()
        """)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DISPLAY", "VIRTUAL_ENV")}
        proc = subprocess.run([str(venv / "bin" / "python"), "-c", driver], capture_output=True, text=True,
                              timeout=180, cwd=root, env=env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert "WINDOW True" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert f"PREFIX {root / 'venv'}" in proc.stdout, proc.stdout
