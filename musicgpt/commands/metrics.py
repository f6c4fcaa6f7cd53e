"""`musicgpt metrics GENERATED [REFERENCE_DIR] [--copies TRAIN_DATA]`: mgeval-style comparison of two folders of
MIDI files, and/or a copy check of the generated pieces against training data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
forms:
  musicgpt metrics GENERATED REFERENCE_DIR                      compare two sets (mgeval-style table, plots)
  musicgpt metrics GENERATED --copies TRAIN_DATA                copy check only
  musicgpt metrics --copies TRAIN_DATA GENERATED                the same
  musicgpt metrics GENERATED REFERENCE_DIR --copies TRAIN_DATA  both

copy check: for each generated piece, the longest run of successive notes with the same pitches and the same
onset intervals (onsets rounded to --copy-grid; chords lowest pitch first) as a stretch of one training piece,
which piece, and where in both. Transposed or time-stretched copies do not match. A run longer than
--copy-threshold notes is flagged COPY in the table and listed under "copies" in metrics.json. Runs shorter
than 4 notes are not searched (shown as <4). TRAIN_DATA is a folder of MIDI files, or a `musicgpt prepare`
folder, whose --split is decoded with its tokenizer.json: exactly the notes a model was trained on. A generated
file's "primer" track (what `generate` writes) is left out: only the music the model wrote can be a copy.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt metrics`."""
    from musicgpt.metrics.copies import COPY_GRID, COPY_THRESHOLD

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("compare generated MIDI against reference MIDI with musical statistics, and/or check it "
                          "for runs of notes copied from training data")
    parser.epilog = EPILOG
    parser.add_argument("generated", type=Path, metavar="GENERATED",
                        help="folder of generated .mid/.midi files (searched recursively), or one MIDI file")
    parser.add_argument("reference", type=Path, metavar="REFERENCE_DIR", nargs="?",
                        help="folder of reference .mid/.midi files (searched recursively) for the set comparison; "
                             "may be left out when --copies is given")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write metrics.json (and, with REFERENCE_DIR, kde.png, histograms.png and "
                             "transitions.png) here")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use only the first N files of GENERATED and REFERENCE_DIR, in sorted path order")
    parser.add_argument("--no-sustain", action="store_true",
                        help="ignore the sustain pedal when reading MIDI (for files whose pedal is never lifted)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    copies = parser.add_argument_group("copy check")
    copies.add_argument("--copies", type=Path, metavar="TRAIN_DATA",
                        help="check the generated pieces for runs copied from TRAIN_DATA: a folder of MIDI files "
                             "or a `musicgpt prepare` output folder")
    copies.add_argument("--split", choices=("train", "valid", "test"),
                        help="the split of a prepared TRAIN_DATA to check against (default: train)")
    copies.add_argument("--copy-threshold", type=int, default=COPY_THRESHOLD, metavar="N",
                        help=f"flag a piece that shares a run of more than N notes (default {COPY_THRESHOLD}; "
                             "two performances of one composition in ASAP share at most 13)")
    copies.add_argument("--copy-grid", type=float, default=COPY_GRID, metavar="S",
                        help=f"round onsets to S seconds before comparing intervals (default {COPY_GRID:g}, the "
                             "tokenizer's time step)")


def run(args: argparse.Namespace) -> int:
    """Compute what was asked, print the tables, write metrics.json (and plots) if --out."""
    from musicgpt.errors import MusicGPTError

    if args.reference is None and args.copies is None:
        raise MusicGPTError("metrics: nothing to do: give REFERENCE_DIR (set comparison), --copies TRAIN_DATA "
                            "(copy check), or both")
    if args.split is not None and args.copies is None:
        raise MusicGPTError("metrics: --split chooses the split of a prepared --copies folder; --copies is missing")
    settings = {"limit": args.limit, "sustain": not args.no_sustain}
    document: dict = {}
    comparison = generated = None
    if args.reference is not None:
        comparison, generated, reference = _compare(args, settings)
        from musicgpt.metrics.report import report_json

        document = report_json(comparison, generated, reference, settings)
    if args.copies is not None:
        check = _copy_check(args, settings)
        if comparison is not None:
            print()
        print(check.table())
        document = document or _copies_only_json(check, settings)
        document["copies"] = check.to_dict()
    if args.out is None:
        print("\n(pass --out DIR to write metrics.json" + (" and the plots)" if comparison is not None else ")"))
        return 0

    from musicgpt.metrics.report import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    written = [write_json(document, args.out / "metrics.json")]
    if comparison is not None:
        from musicgpt.metrics.plots import plot_histograms, plot_kde, plot_transitions

        title = (f"generated: {args.generated} ({len(generated.pieces)} pieces)   "
                 f"reference: {args.reference} ({len(reference.pieces)} pieces)")
        written += [
            plot_kde(comparison, args.out / "kde.png", title),
            plot_histograms(comparison, args.out / "histograms.png", title),
            plot_transitions(comparison, args.out / "transitions.png", title),
        ]
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def _compare(args: argparse.Namespace, settings: dict):
    """Features of both sets, the comparison table printed."""
    from musicgpt.metrics.folder import folder_features
    from musicgpt.metrics.report import format_table
    from musicgpt.metrics.sets import compare_features

    generated = folder_features(args.generated, progress=not args.quiet, **settings)
    reference = folder_features(args.reference, progress=not args.quiet, **settings)
    for folder in (generated, reference):
        for path, reason in folder.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    comparison = compare_features(generated.pieces, reference.pieces)
    print(format_table(comparison, len(generated.pieces), len(reference.pieces)))
    return comparison, generated, reference


def _copy_check(args: argparse.Namespace, settings: dict):
    """The generated pieces' longest runs shared with --copies."""
    from musicgpt.metrics.copies import check_copies, midi_training_set, prepared_training_set
    from musicgpt.metrics.folder import folder_notes

    generated = folder_notes(args.generated, progress=not args.quiet, **settings)
    for path, reason in generated.skipped:
        if args.reference is None:  # the comparison already said so
            print(f"skipped {path}: {reason}", file=sys.stderr)
    if (args.copies / "manifest.json").is_file():
        training = prepared_training_set(args.copies, args.split or "train")
    elif args.split is not None:
        from musicgpt.errors import MusicGPTError

        raise MusicGPTError(f"{args.copies}: --split needs a `musicgpt prepare` folder (no manifest.json here)")
    else:
        training = midi_training_set(args.copies, sustain=settings["sustain"], progress=not args.quiet)
    for name, reason in training.skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return check_copies(generated, training, threshold=args.copy_threshold, grid=args.copy_grid,
                        progress=not args.quiet)


def _copies_only_json(check, settings: dict) -> dict:
    """metrics.json without a set comparison: the generated set, the settings, then "copies"."""
    from musicgpt.metrics.report import REPORT_VERSION

    generated = check.generated
    return {
        "version": REPORT_VERSION,
        "generated": {"directory": str(generated.directory), "files": [str(p) for p in generated.files],
                      "skipped": [{"path": str(p), "reason": r} for p, r in generated.skipped]},
        "settings": settings,
    }
