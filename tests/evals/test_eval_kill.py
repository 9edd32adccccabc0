"""An evaluation killed with SIGKILL mid-way resumes with no sample lost or duplicated."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from PIL import Image

from tests.e2e_support import ROOT, cli
from tests.loopback import LoopbackServer


def make_pro_dataset(root: Path, n: int) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "app_linux").mkdir(parents=True)
    Image.new("RGB", (400, 300), (200, 200, 200)).save(root / "images" / "app_linux" / "shot.png")
    rows = [{"id": f"s{i}", "img_filename": "app_linux/shot.png", "bbox": [100, 100, 200, 200], "img_size": [400, 300],
             "instruction": f"target {i}", "group": "Dev", "platform": "linux", "application": "app",
             "ui_type": "text" if i % 2 else "icon"} for i in range(n)]
    (root / "annotations" / "app_linux.json").write_text(json.dumps(rows))
    return root


def ids(results: Path) -> list[str]:
    return [json.loads(line)["id"] for line in results.read_text().splitlines() if line.strip()]


def test_a_killed_screenspot_eval_resumes_without_losing_or_duplicating_samples(tmp_path):
    n = 40
    data = make_pro_dataset(tmp_path / "data", n)
    out = tmp_path / "out"
    answer = "◁think▷ok◁/think▷pyautogui.click(x=0.375, y=0.5)"  # inside the box for every sample
    with LoopbackServer(lambda request: answer, latency=0.15) as server:
        command = cli() + ["eval", "screenspot", str(data), "--out", str(out), "--base-url", server.base_url,
                           "--concurrency", "2", "--no-progress"]
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        results = out / "results.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not results.exists() or len(ids(results)) < 8):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        done_before = len(set(ids(results)))
        assert 8 <= done_before < n, "the kill must land mid-way for this test to mean anything"
        again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    final = ids(results)
    assert sorted(final) == sorted(f"s{i}" for i in range(n))  # every sample once: none lost, none twice
    summary = json.loads((out / "summary.json").read_text())
    assert json.dumps(summary).count('"num_total": 40') >= 1
