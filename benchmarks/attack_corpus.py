"""The attack corpus against the safety policy and the sandbox; prints JSON counts.

    python benchmarks/attack_corpus.py              # end to end: both passes (about 1-3 minutes on 2 cores)
    python benchmarks/attack_corpus.py --offline    # the policy alone, no display (seconds)

End to end (tests/safety/corpus_runner.py): every attempt of tests/safety/attack_corpus.py is typed by
``kimi-cua run --unattended`` into a real bash in xterm on Xvfb (display :76, port 8186) with the default
policy; the same corpus, side by side, with the policy off and ``--sandbox`` on (two lanes: :77/8187, :78/8189);
the policy pass starts with a benign session (ls, cd, cat, mkdir, echo > file, git status, rm one file, python3
script.py).

Counts: attempts; blocked (denied outright); confirmed (needs confirmation: refused, unattended); allowed;
destructive_outcomes (a watched file changed, a stub of sudo/shutdown/... ran, downloaded code ran);
sandbox_changes_outside (policy off, --sandbox on); false_confirmations (benign lines that asked).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.safety.attack_corpus import ATTEMPTS, BENIGN, Attempt  # noqa: E402
from tests.safety.corpus_runner import judge_offline, policy_pass, sandbox_pass, summary  # noqa: E402


def offline() -> dict:
    start = time.perf_counter()
    verdicts = [(a, *judge_offline(a)) for a in ATTEMPTS]
    benign_effect, benign_rule = judge_offline(Attempt("benign", "benign", BENIGN))
    return {
        "mode": "offline (policy only)",
        "attempts": len(verdicts),
        "blocked": sum(effect == "deny" for _, effect, _ in verdicts),
        "confirmed": sum(effect == "confirm" for _, effect, _ in verdicts),
        "allowed": [a.id for a, effect, _ in verdicts if effect == "allow"],
        "false_confirmations": 0 if benign_effect == "allow" else 1,
        "benign_rule": benign_rule,
        "seconds": round(time.perf_counter() - start, 2),
    }


def end_to_end() -> dict:
    work = Path(tempfile.mkdtemp(prefix="kca-bench-"))
    results: dict[str, object] = {}

    def run(name, fn, *args, **kwargs):
        try:
            results[name] = fn(*args, **kwargs)
        except BaseException as exc:
            results[name] = exc

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=("policy", policy_pass, ATTEMPTS, work / "policy"),
                                kwargs={"display": 76, "port": 8186, "benign": True}),
               threading.Thread(target=run, args=("sandbox", sandbox_pass, ATTEMPTS, work / "sandbox"),
                                kwargs={"lanes": [(77, 8187), (78, 8189)]})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, value in results.items():
        if isinstance(value, BaseException):
            raise value
    policy, policy_info = results["policy"]
    sandboxed, sandbox_info = results["sandbox"]
    report = summary(policy, sandboxed)
    report.update({"mode": "end to end", "seconds": round(time.perf_counter() - start, 1),
                   "policy_pass_seconds": policy_info["seconds"], "sandbox_pass_seconds": sandbox_info["seconds"],
                   "benign_effects": policy_info["benign_effects"], "work": str(work)})
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offline", action="store_true", help="judge with the policy alone (no display)")
    args = parser.parse_args()
    report = offline() if args.offline else end_to_end()
    print(json.dumps(report, indent=2))
    bad = report.get("destructive_outcomes", 0) or report.get("sandbox_changes_outside", 0) or \
        report.get("false_confirmations", 0) or report.get("allowed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
