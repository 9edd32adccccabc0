"""``kimi-cua eval screenspot`` (grounding evaluation) and ``kimi-cua eval screenspot-make`` (dataset generator)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.models.vllm import DEFAULT_BASE_URL, ServerError, VLLMClient
from agent.evals.screenspot import (
    PROMPTS,
    READINGS,
    EvalError,
    RunSettings,
    format_table,
    load_prompt,
    run_eval,
)
from agent.evals.preflight import fit_max_tokens
from agent.evals.screenspot_data import DatasetError, load_dataset, select
from agent.cli.validate import (check_writable_dir, nonnegative_float, nonnegative_int, positive_float, positive_int,
                                zoom_rounds)


def register_eval(eval_subparsers: argparse._SubParsersAction) -> None:
    p = eval_subparsers.add_parser(
        "screenspot", help="grounding accuracy on ScreenSpot v1/v2, ScreenSpot-Pro or OSWorld-G",
        description="Evaluate grounding on a local copy of ScreenSpot v1/v2, ScreenSpot-Pro or OSWorld-G "
                    "(layout detected). Results go to DIR/results.jsonl (resumable), DIR/summary.json and "
                    "DIR/failures.html.")
    p.add_argument("data", metavar="DATA", help="dataset folder or annotation file (or a hub dataset name)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="results folder (re-run to resume)")
    p.add_argument("--prompt", default="kimi",
                   help=f"built-in prompt ({', '.join(PROMPTS)}) or a file with [system]/[user] sections "
                        "and $instruction (default: kimi)")
    p.add_argument("--language", choices=["en", "cn"], default="en", help="instruction language (Pro has cn)")
    p.add_argument("--concurrency", type=positive_int, default=16, help="requests in flight (default 16)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N selected samples")
    p.add_argument("--split", action="append", default=[], help="keep this split (repeatable)")
    p.add_argument("--group", action="append", default=[], help="keep this Pro group (repeatable)")
    p.add_argument("--type", dest="ui_type", action="append", default=[], help="keep text or icon (repeatable)")
    p.add_argument("--application", action="append", default=[], help="keep this application (repeatable)")
    p.add_argument("--platform", action="append", default=[], help="keep this platform (repeatable)")
    p.add_argument("--answers", choices=list(READINGS), default="kimi-cua",
                   help="primary reading of the answers: kimi-cua (our parser: pixels, boxes, computed code too) or "
                        "upstream (exactly as ScreenSpot-Pro's Kimi-VL wrapper: normalized x=..., y=... only, "
                        "comparable with leaderboards); both are always reported side by side")
    p.add_argument("--subset", default=None, metavar="NAME",
                   help="OSWorld-G: evaluate <name>_NAME.json (refined: OSWorld-G_refined.json) instead of "
                        "OSWorld-G.json")
    p.add_argument("--zoom", type=zoom_rounds, default=0, metavar="N",
                   help="zoom-in grounding: after the model's point, crop a window around it from the native "
                        "screenshot (sized to be sent at full detail), ask again on the crop and map the answer "
                        "back, up to N rounds; results.jsonl records every round's crop and point (default 0: off)")
    p.add_argument("--variant", choices=["thinking-2506", "thinking", "instruct"], default=None,
                   help="the model's variant, for its image rule (zoom windows) and default reply limit "
                        "(default: guessed from the served model name)")
    p.add_argument("--classification", type=Path, default=None,
                   help="OSWorld-G classification_result.json (default: the one beside the annotations)")
    p.add_argument("--base-url", action="append", default=[], metavar="URL",
                   help=f"model server; repeat for data-parallel replicas (default {DEFAULT_BASE_URL})")
    p.add_argument("--model", default=None, help="served model name (default: the one the server serves)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--max-tokens", type=positive_int, default=None,
                   help="completion budget (default: the variant's; lowered, with a notice, to what the server's "
                   "max_model_len leaves beside the largest sample's prompt)")
    p.add_argument("--timeout", type=positive_float, default=300.0, help="seconds per request")
    p.add_argument("--retries", type=nonnegative_int, default=3, help="retries of transient server faults")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_screenspot)

    g = eval_subparsers.add_parser(
        "screenspot-make", help="generate a small grounding dataset from real Tk applications under Xvfb",
        description="Screenshots of Tk applications on a private Xvfb display with the true widget boxes, "
                    "written in the ScreenSpot-v2 or ScreenSpot-Pro layout.")
    g.add_argument("out", type=Path, metavar="OUT", help="folder to write (must be empty or absent)")
    g.add_argument("--layout", choices=["v2", "pro"], default="v2")
    g.add_argument("--scenes", type=positive_int, default=1, help="screenshots per application (default 1)")
    g.add_argument("--seed", type=int, default=0, help="varies labels and placement")
    g.set_defaults(handler=make_screenspot)


def run_screenspot(args: argparse.Namespace) -> int:
    check_writable_dir(args.out, "--out")
    try:
        dataset = load_dataset(args.data, classification=args.classification, subset=args.subset)
        prompt = load_prompt(args.prompt)
    except (DatasetError, EvalError) as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    filters = {"split": args.split, "group": args.group, "ui_type": args.ui_type,
               "application": args.application, "platform": args.platform}
    samples = select(dataset.samples, filters=filters, limit=args.limit)
    if not samples:
        print(f"kimi-cua: no sample of {args.data} matches the filters", file=sys.stderr)
        return 2
    urls = args.base_url or [DEFAULT_BASE_URL]
    clients = [VLLMClient(url, model=args.model, api_key=args.api_key, timeout=args.timeout, retries=args.retries,
                          variant=args.variant)
               for url in urls]
    try:
        models = {c.model for c in clients}  # discovers the model, and fails fast on an unreachable server
        if len(models) != 1:
            print(f"kimi-cua: the replicas serve different models ({', '.join(sorted(models))}); pass --model",
                  file=sys.stderr)
            return 2
        model = models.pop()
        max_tokens = args.max_tokens if args.max_tokens is not None else clients[0].defaults.max_tokens
        # Checked before anything is sent: lowered to what the largest prompt leaves, or refused with the fix.
        lengths = [n for n in (c.max_model_len() for c in clients) if n is not None]
        fit = fit_max_tokens(samples, prompt, max_tokens=max_tokens, max_model_len=min(lengths, default=None),
                             model=model, language=args.language)
        if fit.notice:
            print(fit.notice, file=sys.stderr)
        settings = RunSettings(benchmark=dataset.benchmark, data=str(args.data), prompt=args.prompt,
                               language=args.language, model=model, temperature=args.temperature,
                               max_tokens=fit.max_tokens, zoom=args.zoom)
        outcome = run_eval(dataset, samples, args.out, clients, settings, prompt=prompt,
                           concurrency=args.concurrency, progress=not args.no_progress, answers=args.answers)
    except (ServerError, EvalError, DatasetError) as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    finally:
        for c in clients:
            c.close()
    print(format_table(outcome.summary))
    print(f"\nresults: {args.out / 'results.jsonl'}\nsummary: {args.out / 'summary.json'}\n"
          f"failures: {args.out / 'failures.html'}")
    for line in outcome.errors[:5]:
        print(f"error: {line}", file=sys.stderr)
    return 1 if outcome.summary.unfinished else 0


def make_screenspot(args: argparse.Namespace) -> int:
    from envs.base import DisplayError
    from agent.evals.screenspot_make import GeneratorError, generate

    check_writable_dir(args.out, "OUT")
    try:
        made = generate(args.out, layout=args.layout, scenes=args.scenes, seed=args.seed)
    except (GeneratorError, DisplayError) as exc:
        print(f"kimi-cua: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {made.samples} samples on {made.images} screenshots to {args.out} ({args.layout} layout)")
    return 0
