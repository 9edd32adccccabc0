"""The README's Python example runs as written (issue 19): the baseline grounder and a private Xvfb desktop."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Python\n"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_python_example_runs_and_prints_a_line_per_step(tmp_path):
    (tmp_path / "example.py").write_text(readme_python_block())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.setdefault("KIMI_CUA_DISPLAYS", "80-89")
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "pressed" in lines
    assert any(re.match(r"step 1 \| click \(\d+, \d+\) \| ok \| model ", line) for line in lines), lines
    assert lines[-1].startswith("done 2 runs/"), lines
    assert (tmp_path / lines[-1].split()[-1] / "trajectory.jsonl").exists()
