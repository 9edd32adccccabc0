"""Our OSWorld guest (envs/osworld_guest.py) driven by desktop-env 1.0.2's OWN PythonController, SetupController and
getters (in .venv-osworld) on an Xvfb desktop, every route they call; downloads come from a local HTTP server."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.evals.local_tasks import APPS_DIR
from envs.osworld_client import OSWorldServerClient
from envs.osworld_guest import Guest, GuestConfig, GuestServer
from envs.xvfb import VirtualDisplay
from tests.osworld_support import FileServer, free_port, require_osworld, use_test_displays

DRIVER = Path(__file__).with_name("osworld_routes_driver.py")


@pytest.fixture(scope="module")
def desktop():
    use_test_displays()
    with VirtualDisplay(1024, 768) as vd:
        yield vd


def test_desktop_env_controllers_and_getters_drive_our_guest(desktop, tmp_path):
    python = require_osworld()
    served = tmp_path / "served"
    served.mkdir()
    (served / "data.txt").write_text("downloaded ✓\n", encoding="utf-8")
    for n in (1, 2):
        (served / f"tab{n}.html").write_text(f"<title>Tab {n}</title>tab {n}")
    home, cache = tmp_path / "home", tmp_path / "cache"
    cache.mkdir()
    (home / ".config" / "vlc").mkdir(parents=True)
    (home / ".config" / "vlc" / "vlcrc").write_text("[core]\n")
    editor = str(APPS_DIR / "tk_editor.py")
    chrome = shutil.which("chromium") or shutil.which("google-chrome")
    chromium_port = free_port()
    config = GuestConfig(display=desktop.display, home=home, home_alias="/home/user", open_timeout=40,
                         openers={".txt": ["python", editor]})
    with FileServer(served) as files, GuestServer(config, port=free_port()) as guest:
        request = {"port": guest.port, "home": str(home), "cache": str(cache), "chromium_port": chromium_port,
                   "download_url": f"{files.url}/data.txt", "editor": editor, "display": desktop.display}
        if chrome:
            request["chrome"] = [chrome, "--no-sandbox", f"--remote-debugging-port={chromium_port}",
                                 "--user-data-dir=~/chrome-profile", "--no-first-run", "--disable-gpu",
                                 "--no-default-browser-check", "--password-store=basic"]
            request["tab_urls"] = [f"{files.url}/tab1.html", f"{files.url}/tab2.html"]
        (tmp_path / "request.json").write_text(json.dumps(request))
        done = subprocess.run([str(python), str(DRIVER), str(tmp_path / "request.json")], capture_output=True,
                              text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout)
        downloads = list(files.requests)
    failures = {k: v for k, v in out.items() if isinstance(v, dict) and "exception" in v}
    assert not failures, json.dumps(failures, indent=1)[:4000]

    # setup: files land in the private HOME (/home/user is mapped onto it), placeholders substituted as upstream
    assert (home / "Desktop" / "data.txt").read_text(encoding="utf-8") == "downloaded ✓\n"
    assert (home / "up" / "local.bin").read_bytes() == bytes(range(256)) * 40
    assert (home / "placeholders.txt").read_text() == "1024x768 512 384 secret-pw\n"
    assert (cache / "exec.out").read_text() == "out\n" and (cache / "exec.err").read_text() == "err\n"
    assert (home / "flag").exists() and (home / "commanded").exists()  # `until` re-ran the command
    assert "Editor - data.txt" in out["windows_after_open"]  # /setup/open_file waited for the window
    assert downloads.count("/data.txt") == 2  # the download setup (then cached) and get_cloud_file
    # the controller's routes
    assert out["screenshot"]["png"] and out["screenshot"]["bytes"] > 1000
    assert base64.b64decode(out["file"]) == bytes(range(256)) * 40 and out["missing_file"] is None
    assert out["execute"]["returncode"] == 0 and out["execute"]["output"].split()[0] == str(home)
    assert "Size(width=1024, height=768)" in out["execute"]["output"]
    assert out["run_python"]["status"] == "success" and out["run_python"]["output"].strip() == "py 3"
    assert out["run_bash"]["returncode"] == 4 and out["run_bash"]["output"].split() == [str(home), str(home / "up")]
    assert out["platform"] == "Linux" and out["screen_size"] == {"width": 1024, "height": 768}
    assert out["window_size"] and out["window_size"]["width"] > 100
    assert out["wallpaper"] == 256 * 40
    assert out["desktop_path"] == str(home / "Desktop")
    assert out["directory_tree"] == {"type": "directory", "name": "up", "children": [{"type": "file",
                                                                                      "name": "local.bin"}]}
    assert out["accessibility_tree"] is None and out["terminal"] is None  # no AT-SPI here: answered, not hung
    if shutil.which("ffmpeg"):
        assert out["recording"] > 0
    # getters
    assert out["get_vm_command_line"] == "1024x768 512 384 secret-pw\n"
    assert "No such file" in out["get_vm_command_error"]
    assert Path(out["get_vm_file"]).read_text(encoding="utf-8") == "downloaded ✓\n"
    assert out["get_vm_file_multi"][0] and out["get_vm_file_multi"][1] is None
    assert out["get_list_directory"]["children"][0]["name"] == "local.bin"
    assert out["get_vm_screen_size"] == {"width": 1024, "height": 768}
    assert Path(out["get_cloud_file"]).read_text(encoding="utf-8") == "downloaded ✓\n"
    assert Path(out["get_vlc_config"]).read_text() == "[core]\n"
    if chrome:
        assert out["chrome_open_tabs"] is True
        urls = sorted(tab["url"] for tab in out["get_open_tabs_info"])  # CDP lists tabs in no fixed order
        assert urls == request["tab_urls"], out["get_open_tabs_info"]


def test_our_client_and_unknown_routes(desktop, tmp_path):
    with GuestServer(GuestConfig(display=desktop.display, home=tmp_path), port=free_port()) as guest:
        client = OSWorldServerClient(guest.base_url)
        assert client.screen_size() == (1024, 768) and client.platform() == "Linux"
        assert client.cursor_position() is not None and client.accessibility_tree() is None
        assert client.run(["bash", "-c", "echo $HOME"]).output.strip() == str(tmp_path)
        import httpx

        assert httpx.get(f"{guest.base_url}/nope").status_code == 404
        assert httpx.get(f"{guest.base_url}/execute").status_code == 405
        bad = httpx.post(f"{guest.base_url}/execute", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["status"] == "error"
        assert httpx.post(f"{guest.base_url}/file", data={"file_path": "/nonexistent"}).status_code == 404
        client.close()


def test_kimi_cua_run_drives_a_guest_over_http(desktop, tmp_path):
    """`kimi-cua run --env osworld --osworld-url URL`: the agent sees /screenshot and acts through /execute only."""
    from tests.e2e_support import kimi_reply, run_cli
    from tests.loopback import LoopbackServer

    home = tmp_path / "home"
    with GuestServer(GuestConfig(display=desktop.display, home=home), port=free_port()) as guest:
        client = OSWorldServerClient(guest.base_url)
        client.run(["bash", "-c", "touch ~/notes.txt"])
        launched = httpx_post(f"{guest.base_url}/setup/launch",
                              {"command": ["python", str(APPS_DIR / "tk_editor.py"), "~/notes.txt"]})
        assert launched == 200
        verified = httpx_post(f"{guest.base_url}/setup/execute_with_verification",
                              {"command": ["true"], "verification": {"window_exists": "Editor - notes.txt"},
                               "max_wait_time": 30})
        assert verified == 200
        # the editor sits at +40+40, 800x500 on a 1024x768 screen: (0.4, 0.4) is in its text area
        policy = [kimi_reply("Click into the text.", "pyautogui.click(x=0.4, y=0.4)"),
                  kimi_reply("Type.", "pyautogui.write('Buy <milk>')"),
                  kimi_reply("Save.", "pyautogui.hotkey('ctrl', 's')"),
                  kimi_reply("Done.", "computer.terminate(status='success')")]
        with LoopbackServer(policy) as server:
            done = run_cli(["run", "Write Buy <milk> and save", "--env", "osworld", "--osworld-url", guest.base_url,
                            "--base-url", server.base_url, "--max-steps", "6", "--out", str(tmp_path / "run")],
                           env_display="", timeout=240)
        client.close()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (home / "notes.txt").read_text() == "Buy <milk>"


def test_launched_programs_print_to_the_guest_stderr_only_when_asked(tmp_path, capfd):
    """``eval local`` starts the guest with --app-output, so an app that does not start leaves its reason in the task's
    guest.log; by default (OSWorld's server does the same) launched programs' output is discarded."""
    program = ["sh", "-c", "echo out-line; echo err-line >&2"]
    for app_output in (True, False):
        guest = Guest(GuestConfig(display=":0", home=tmp_path / f"home-{app_output}", app_output=app_output))
        assert guest.launch(program).wait(timeout=30) == 0
        guest.close()
        printed = capfd.readouterr()
        if app_output:
            assert "kimi-cua guest: launched sh -c" in printed.err and "out-line" in printed.err, printed
            assert "err-line" in printed.err and "out-line" not in printed.out, printed
        else:
            assert "line" not in printed.err + printed.out, printed


def httpx_post(url: str, body: dict) -> int:
    import httpx

    return httpx.post(url, json=body, timeout=60).status_code
