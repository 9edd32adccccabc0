"""``python -m tests.tiny_kimi_vl OUTDIR [--in-token-limit N]``: build the tiny Kimi-VL checkpoint (needs tokenizers)."""
from __future__ import annotations

import argparse
import sys
import time

from tests.tiny_kimi_vl import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tiny_kimi_vl", description=__doc__)
    parser.add_argument("outdir")
    parser.add_argument("--in-token-limit", type=int, default=4096,
                        help="image processor in_token_limit (Instruct 4096, Thinking-2506 16384)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    out = build(args.outdir, in_token_limit=args.in_token_limit)
    print(f"tiny_kimi_vl: built {out} in {time.monotonic() - start:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
