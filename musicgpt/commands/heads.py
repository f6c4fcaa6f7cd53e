"""`musicgpt heads [CKPT] FILES_OR_DIR ... --out DIR`: a head atlas, what every attention head does.

For every layer and head, averaged over the pieces: the attention share on the previous token, on
the first token (BOS), on itself, on earlier notes of the same pitch and of the same pitch class in
another octave, the mean attention distance in tokens and seconds, and the entropy; each head named
by its dominant pattern when one stands out. The measures, the query tokens each is averaged over and
the naming thresholds are in `musicgpt.analysis.heads` (and written into heads.json).

Writes DIR/heads.json, DIR/heads_<measure>.png (one layers x heads heatmap per measure) and
DIR/heads_patterns.png (a layers x heads grid of the attention of the first piece's opening tokens).
`musicgpt view ARCS --heads DIR/heads.json` and `musicgpt attend ... --heads DIR/heads.json` show
the names as the tooltips of the viewer's model view.

CKPT may be left out (the bundled model): a first argument that is a file, or a folder that is neither
a checkpoint nor a training run directory, is the first piece.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from musicgpt.commands._args import positive_int
from musicgpt.commands._checkpoint_arg import add_checkpoint_argument, checkpoint_of


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt heads`."""
    from musicgpt.analysis import MAX_TOKENS, PATTERN_TOKENS

    add_checkpoint_argument(parser)
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILES_OR_DIR",
                        help="MIDI, MusicXML or ABC files, or folders (their MIDI files, recursively)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, metavar="N",
                        help=f"read at most the first N tokens of each piece, BOS included (default {MAX_TOKENS})")
    parser.add_argument("--pattern-tokens", type=int, default=PATTERN_TOKENS, metavar="N",
                        help=f"tokens of the first piece drawn in heads_patterns.png (default {PATTERN_TOKENS}; 0: none)")
    parser.add_argument("--importance", action="store_true",
                        help="also each head's importance: the NLL rise when it is knocked out (L x H + 1 passes "
                             "over each piece's first --importance-tokens tokens); in heads.json and heads_importance.png")
    parser.add_argument("--importance-tokens", type=int, default=512, metavar="N",
                        help="tokens of each piece the importance reads, BOS included (default 512)")
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution (default: 150)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help="CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no line per piece on stderr")


def pieces_of(inputs: list[Path]) -> list[Path]:
    """The files named, and the MIDI files under the folders named, in the order given (folders sorted)."""
    from musicgpt.errors import MusicGPTError
    from musicgpt.music.midi import midi_files

    pieces: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = midi_files(path)
            if not found:
                raise MusicGPTError(f"{path}: no MIDI files in this folder")
            pieces.extend(found)
        elif path.is_file():
            pieces.append(path)
        else:
            raise MusicGPTError(f"{path}: no such file or folder")
    return pieces


def _piece_not_model(name) -> bool:
    """Whether the optional CKPT slot caught the first piece (`musicgpt heads a.mid b.mid`): an existing file, or
    a folder that is neither a checkpoint nor a training run directory."""
    from musicgpt import checkpoint

    if name is None or (str(name) == checkpoint.BUNDLED and not Path(name).exists()):
        return False
    path = Path(name)
    if path.is_file():
        return True
    markers = (checkpoint.CONFIG, "run.json", checkpoint.RUN_BEST, checkpoint.RUN_CHECKPOINTS)
    return path.is_dir() and not any((path / m).exists() for m in markers)


def run(args: argparse.Namespace) -> int:
    """Measure every head over the pieces; write heads.json and the PNGs."""
    import torch

    from musicgpt.analysis.heads import head_atlas
    from musicgpt.model import load_model
    from musicgpt.tokens.registry import tokenizer_of
    from musicgpt.errors import ConfigError
    from musicgpt.viz.heads import render_atlas, write_heads

    if args.max_tokens < 2:
        raise ConfigError(f"--max-tokens: must be at least 2, got {args.max_tokens}")
    if args.importance and args.importance_tokens < 2:
        raise ConfigError(f"--importance-tokens: must be at least 2, got {args.importance_tokens}")
    if args.pattern_tokens < 0:
        raise ConfigError(f"--pattern-tokens: must be >= 0, got {args.pattern_tokens}")
    if _piece_not_model(args.checkpoint):
        args.inputs, args.checkpoint = [Path(args.checkpoint), *args.inputs], None
    pieces = pieces_of(args.inputs)
    checkpoint = checkpoint_of(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = load_model(checkpoint)
    tokenizer = tokenizer_of(model)
    given = args.checkpoint if args.checkpoint is not None else args.checkpoint_option
    atlas, pattern = head_atlas(model, tokenizer, pieces, max_tokens=args.max_tokens, pattern_tokens=args.pattern_tokens,
                                checkpoint=str(given) if given is not None else "bundled", progress=not args.quiet,
                                importance_tokens=args.importance_tokens if args.importance else 0)
    json_path = write_heads(atlas, args.out / "heads.json")
    pictures = render_atlas(atlas, args.out, pattern if args.pattern_tokens else None, dpi=args.dpi)
    named = [f"L{layer} H{head} {name}" for layer, row in enumerate(atlas["names"])
             for head, name in enumerate(row) if name not in (None, "broad", "local")]
    tokens = sum(p["tokens"] for p in atlas["pieces"])
    print(f"wrote {json_path} and {len(pictures)} PNGs in {args.out} ({len(pieces)} pieces, {tokens} tokens, "
          f"{atlas['n_layer']} layers x {atlas['n_head']} heads, {time.perf_counter() - start:.1f} s)")
    print("named heads: " + (", ".join(named) if named else "none above the thresholds but 'local' and 'broad'")
          + f"; local {sum(r.count('local') for r in atlas['names'])}, broad {sum(r.count('broad') for r in atlas['names'])}, "
          f"unnamed {sum(r.count(None) for r in atlas['names'])}")
    if args.importance:
        ranked = sorted(((v, layer, head) for layer, row in enumerate(atlas["importance"]) for head, v in enumerate(row)),
                        reverse=True)[:5]
        print("most important heads (NLL rise knocked out, nats a token): " + ", ".join(
            f"L{layer} H{head} {v:+.3f} ({atlas['names'][layer][head] or 'unnamed'})" for v, layer, head in ranked))
    return 0
