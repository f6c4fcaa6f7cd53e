"""`python -m musicgpt.tokens [--tokenizer PATH] [FILE.mid ...]`: print a vocabulary layout, or tokenize files in brief."""

from __future__ import annotations

import argparse
import sys

from musicgpt.errors import MusicGPTError
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.tokens.registry import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    """The layout, or each file's tokens in brief."""
    parser = argparse.ArgumentParser(prog="python -m musicgpt.tokens",
                                     description="Print the vocabulary layout, or tokenize MIDI files.")
    parser.add_argument("files", nargs="*", help="MIDI files to tokenize (prints counts and the first tokens)")
    parser.add_argument("--show", type=int, default=24, help="how many leading tokens to print per file")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="a tokenizer.json, or a folder holding one (a checkpoint, a prepared corpus): its layout, "
                             "with the controls and infilling tokens of a steerable model (default: the plain one)")
    args = parser.parse_args(argv)
    try:
        tokenizer = PerformanceTokenizer() if args.tokenizer is None else load_tokenizer(args.tokenizer)
        if not args.files:
            print(tokenizer.layout() if isinstance(tokenizer, PerformanceTokenizer) else repr(tokenizer))
            return 0
        for path in args.files:
            enc = tokenizer.encode(path)
            head = " ".join(tokenizer.token_name(t) for t in enc.ids[: args.show])
            print(f"{path}: {len(enc.notes)} notes, {len(enc.ids)} tokens, {enc.notes.end_time:.2f} s")
            print(f"  {head}{' ...' if len(enc.ids) > args.show else ''}")
    except MusicGPTError as exc:
        print(f"python -m musicgpt.tokens: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
