"""The layout's one rule (README "Layout"): imports flow one way,
cli -> evals -> debug -> the loop -> safety/budget -> models/hooks/trajectory -> envs -> actions; nothing imports a
place above its own. Read from the source with ast, every module of agent/, envs/ and actions/."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# rank of each place; a module may import only places of its own rank or lower
RANKS = {
    "actions": 0,
    "envs": 1, "prompts": 1,
    "agent.models": 2, "agent.hooks": 2, "agent.trajectory": 2, "agent.tokens": 2, "agent.reply": 2,
    "agent.history": 2,
    "agent.safety": 3, "agent.budget": 3,
    "agent.loop": 4, "agent.verify": 4, "agent.zoom": 4,
    "agent.debug": 5,
    "agent.evals": 6,
    "agent.cli": 7,
    # the entry point and the one-release alias of the old import path sit on top by design
    "agent.__main__": 8, "agent.osworld_agent": 8,
}


def rank(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return RANKS[".".join(parts[:n])]
    return None


def modules() -> list[tuple[str, Path]]:
    found = []
    for top in ("agent", "envs", "actions"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found.append((name.removesuffix(".__init__"), path))
    return found


def imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_every_module_has_a_place():
    assert [name for name, _ in modules() if rank(name) is None and name != "agent"] == []


def test_imports_flow_one_way():
    upward = [f"{name} imports {target}" for name, path in modules() for target in imported(path)
              if rank(name) is not None and rank(target) is not None and rank(target) > rank(name)]
    assert upward == []


def test_the_rule_is_enforced_not_vacuous():
    # the scan sees a real import of each kind: the CLI imports evals, the loop imports models
    assert any(t.startswith("agent.evals") for t in imported(ROOT / "agent" / "cli" / "eval_screenspot.py"))
    assert any(t.startswith("agent.models") for t in imported(ROOT / "agent" / "loop.py"))
    assert rank("agent.cli.run") > rank("agent.evals.screenspot") > rank("agent.loop") > rank("envs.desktop")
