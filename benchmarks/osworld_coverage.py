"""Which kinds of OSWorld tasks ``kimi-cua eval local`` can set up and score, which not, and why (JSON).

Static: it reads the installed desktop-env wheel (.venv-osworld) - the names its worker reports, and the source of
every metric, getter and setup method - and classifies each by what it needs beyond our guest: an app, Chrome's
DevTools port, VLC's HTTP interface, AT-SPI, an account, the live internet, OCR weights. "local": runs on a machine
with the network and the apps (scripts/install.sh --osworld-apps); "local_offline": also without the network.

    python benchmarks/osworld_coverage.py [--tasks OSWORLD/evaluation_examples/examples] [--out coverage.json]

With ``--tasks`` it also runs eval local's preflight on real task files (downloads assumed reachable: this is about
the machine and the task kinds, not the network of the moment) and counts per domain.
"""
from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.evals import local_tasks as lt  # noqa: E402
from agent.evals.local_run import load_inventory  # noqa: E402
from agent.evals.osworld_code import osworld_python  # noqa: E402

DOMAIN_APPS = {"chrome": "google-chrome", "gimp": "gimp", "libreoffice_calc": "libreoffice",
               "libreoffice_impress": "libreoffice", "libreoffice_writer": "libreoffice", "multi_apps": None,
               "os": None, "thunderbird": "thunderbird", "vlc": "vlc", "vs_code": "code"}
DOMAIN_NOTES = {
    "chrome": "Debian's chromium under the name google-chrome; tasks start it with --remote-debugging-port=1337 and "
              "socat 9222->1337 (socat is installed by --osworld-apps); tasks behind a Google login are unsupported",
    "vs_code": "VS Code is not packaged in Debian: install `code` yourself or these tasks are unsupported",
    "thunderbird": "tasks download a prepared Thunderbird profile (the model hub) into HOME",
    "vlc": "getters read VLC's HTTP interface (vlc_port 8080, password 'password'), which the task's launch command "
           "or a downloaded vlcrc must enable; Debian's vlc refuses to run as root, so --osworld-apps puts a `vlc` in "
           "/usr/local/bin that runs as root too",
    "os": "some tasks use sudo with {CLIENT_PASSWORD} or change system settings; under eval local they run as you, "
          "with a private HOME and session bus (task files are trusted code)",
}


def _functions(package: Path) -> dict[str, str]:
    """name -> source of every top-level function in the package's modules."""
    found: dict[str, str] = {}
    for file in sorted(package.glob("*.py")):
        text = file.read_text(encoding="utf-8")
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef):
                found[node.name] = ast.get_source_segment(text, node) or ""
    return found


def _setup_methods(file: Path) -> dict[str, str]:
    text = file.read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef) and node.name == "SetupController":
            return {n.name[1:-len("_setup")]: ast.get_source_segment(text, n) or "" for n in node.body
                    if isinstance(n, ast.FunctionDef) and n.name.startswith("_") and n.name.endswith("_setup")}
    return {}


def classify_getter(name: str, source: str) -> dict:
    for table, kind in ((lt.NEEDS_ACCOUNT_GETTER, "account"), (lt.NEEDS_ATSPI_GETTER, "at-spi"),
                        (lt.NEEDS_NETWORK_GETTER, "live internet")):
        if name in table:
            return {"local": False, "local_offline": False, "needs": kind, "why": table[name]}
    needs = []
    if "chromium_port" in source or "connect_over_cdp" in source:
        needs.append("google-chrome with its DevTools port (playwright connect_over_cdp)")
    if "vlc_port" in source:
        needs.append("VLC's HTTP interface")
    if "requests.get(" in source and "env.vm_ip" not in source and "cloud" in name:
        needs.append("an HTTP download")
    return {"local": True, "local_offline": "an HTTP download" not in needs, "needs": needs or ["the guest's routes"]}


def classify_metric(name: str, source: str, easyocr_stub: bool) -> dict:
    if name in lt.NEEDS_OCR_METRIC and easyocr_stub:
        return {"local": False, "local_offline": False, "needs": "ocr", "why": lt.NEEDS_OCR_METRIC[name]}
    needs = []
    if "requests." in source:
        needs.append("an HTTP request")
    if "subprocess" in source:
        needs.append("a program on this machine")
    return {"local": True, "local_offline": "an HTTP request" not in needs,
            "needs": needs or ["nothing: a function of the fetched values/files"]}


def classify_setup(name: str, source: str) -> dict:
    for table, kind in ((lt.NEEDS_ACCOUNT_SETUP, "account"), (lt.NOT_IMPLEMENTED_SETUP, "not implemented"),
                        (lt.NEEDS_NETWORK_SETUP, "live internet")):
        if name in table:
            return {"local": False, "local_offline": False, "needs": kind, "why": table[name]}
    needs = []
    if "connect_over_cdp" in source:
        needs.append("google-chrome with its DevTools port")
    if name == "download":
        needs.append("the file over HTTP, or already in --cache-dir")
    if name == "open":
        needs.append("the app for the file type (libreoffice, gimp, vlc, google-chrome; else xdg-open)")
    return {"local": True, "local_offline": name != "download", "needs": needs or ["the guest's routes"]}


def report(tasks: Path | None) -> dict:
    python = osworld_python()
    site = next(python.parent.parent.glob("lib/python*/site-packages"))
    wheel = site / "desktop_env"
    inventory = load_inventory()
    metric_src = _functions(wheel / "evaluators" / "metrics")
    getter_src = _functions(wheel / "evaluators" / "getters")
    setup_src = _setup_methods(wheel / "controllers" / "setup.py")
    metrics = {m: classify_metric(m, metric_src.get(m, ""), inventory.easyocr_stub) for m in inventory.metrics}
    getters = {g: classify_getter(g, getter_src.get(f"get_{g}", "")) for g in inventory.getters}
    setup = {s: classify_setup(s, setup_src.get(s, "")) for s in inventory.setup}
    domains = {d: {"app": app, "installed_here": app is None or shutil.which(app) is not None,
                   "note": DOMAIN_NOTES.get(d, "")} for d, app in DOMAIN_APPS.items()}
    out = {
        "desktop_env": str(wheel), "easyocr_stub": inventory.easyocr_stub,
        "summary": {kind: {"total": len(table), "local": sum(v["local"] for v in table.values()),
                           "local_offline": sum(v["local_offline"] for v in table.values()),
                           "not_local": sorted(k for k, v in table.items() if not v["local"])}
                    for kind, table in (("metrics", metrics), ("getters", getters), ("setup", setup))},
        "domains": domains, "metrics": metrics, "getters": getters, "setup": setup,
    }
    if tasks:
        problems: list[lt.LoadProblem] = []
        items = lt.load_tasks(tasks, problems)
        by_domain: dict[str, Counter] = defaultdict(Counter)
        reasons: Counter = Counter()
        for item in items:
            why = lt.preflight(item, inventory, cache_dir=Path("/nonexistent"), reachable=lambda url: None)
            by_domain[item.domain]["runnable" if why is None else "unsupported"] += 1
            if why:
                reasons[why.split(",")[0][:120]] += 1
        out["tasks"] = {"loaded": len(items), "bad_files": len(problems), "by_domain": by_domain,
                        "unsupported_reasons": reasons.most_common()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=Path, help="OSWorld's evaluation_examples/examples (optional)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = parser.parse_args()
    text = json.dumps(report(args.tasks), indent=1, default=dict)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
