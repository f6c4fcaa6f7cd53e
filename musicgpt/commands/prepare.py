"""`musicgpt prepare SOURCE_DIR --out OUT_DIR`: tokenize a MIDI corpus into shards with a manifest."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt prepare`."""
    from musicgpt.corpus.recipes import RECIPES

    parser.add_argument("source", metavar="SOURCE_DIR", help="folder holding the corpus")
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder (created; re-runs are incremental)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="dataset recipe (default: detected from the folder)")
    parser.add_argument("--ratios", default="0.9,0.05,0.05", metavar="TRAIN,VALID,TEST",
                        help="split ratios for hashed splits (default 0.9,0.05,0.05; maestro uses its own split)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--tokenizer", metavar="JSON", help="tokenizer.json to use (default: PerformanceTokenizer())")
    parser.add_argument("--composer-from", choices=("metadata", "folder", "none"), default="metadata",
                        help="where each file's composer (the composer control) comes from: the corpus's metadata "
                             "(ASAP, MAESTRO, GiantMIDI names, a folder's metadata.csv; default), the first folder "
                             "below SOURCE_DIR (folder recipe), or none")
    parser.add_argument("--no-sustain", action="store_true", help="ignore the sustain pedal (CC64)")
    parser.add_argument("--force", action="store_true", help="re-tokenize every file, ignoring the previous run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Prepare the corpus and print a summary; skipped files do not make the run fail."""
    from musicgpt.errors import ConfigError
    from musicgpt.corpus.prepare import prepare
    from musicgpt.tokens.registry import load_tokenizer

    try:
        ratios = [float(x) for x in args.ratios.split(",")]
    except ValueError:
        raise ConfigError(f"--ratios: expected three numbers like 0.9,0.05,0.05, got {args.ratios!r}") from None
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    result = prepare(args.source, args.out, recipe=args.recipe, ratios=ratios, tokenizer=tokenizer,
                     jobs=args.jobs, sustain=not args.no_sustain, force=args.force, progress=not args.quiet,
                     composer_from=args.composer_from)
    print(result.summary())
    return 0
