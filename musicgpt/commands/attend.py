"""`musicgpt attend [CKPT] FILE.mid`: attention arcs over the notes of an existing piece (teacher forcing).

Writes DIR/NAME.arcs.json and the viewer DIR/NAME.html; each note carries its surprisal ("nll": the
model's NLL of the note's tokens, in nats; see `musicgpt.arcs.format`), and the summary line the mean
NLL per predicted token. A file written by `musicgpt generate` keeps its primer/continuation split:
notes of a track named "primer" are marked as primer notes; in any other file every note is the
piece's, and the viewer and `view --png` label them "piece"
(`musicgpt.arcs.format.document_kind`: no primer notes and "source" "musicgpt attend ...").
`--heads heads.json` (a head atlas of the same model, `musicgpt heads`) adds its head names.

Long pieces: the whole piece is read (cut it with --seconds or --tokens), in chunks, with a
progress bar. Attention rows are aggregated to note arcs chunk by chunk
(`musicgpt.arcs.capture.NoteArcsStream`), and arcs.json is written from those arrays a block of
lines at a time, so memory is bounded by the note arcs kept (20 bytes an arc, at most notes x
layers x heads x --top-n), not by the token rows. The viewer page embeds at most --html-max-arcs
arcs (the heaviest): an hour of dense piano has some 18 million arcs, a 1 GB arcs.json, more than
a browser page holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from musicgpt.commands._args import output_folder, positive_int
from musicgpt.commands._checkpoint_arg import add_checkpoint_argument, model_of

HTML_MAX_ARCS = 1_000_000  # about 17 MB of page; a 5-minute piece of dense piano has some 1.5 million arcs


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt attend`."""
    add_checkpoint_argument(parser)
    parser.add_argument("file", type=Path, metavar="FILE", help="a MIDI, MusicXML (.xml/.musicxml/.mxl) or ABC file")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: next to FILE)")
    cut = parser.add_mutually_exclusive_group()
    cut.add_argument("--seconds", type=float, metavar="S", help="only the first S seconds of the piece (default: all)")
    cut.add_argument("--tokens", type=int, metavar="N", help="only the first N tokens of the piece (default: all)")
    parser.add_argument("--top-n", type=int, default=6, metavar="N",
                        help="per note, layer and head: keep the N heaviest earlier notes (default 6)")
    parser.add_argument("--min-weight", type=float, default=0.01, metavar="W", help="drop arcs lighter than W (default 0.01)")
    parser.add_argument("--row-top-k", type=int, default=64, metavar="K",
                        help="per token, layer and head: keep the K heaviest keys (default 64)")
    parser.add_argument("--measure", default=None, metavar="NAME[,NAME...]",
                        help="what the arcs measure: attention, norm, rollout or influence (default: "
                             "musicgpt.arcs.format.DEFAULT_MEASURE; see docs/arcs-format.md); several, comma-"
                             "separated: one file with the arcs of each (the first drawn first, the viewer switches; "
                             "held in memory as dicts, unlike one measure's)")
    parser.add_argument("--influence-candidates", type=int, default=16, metavar="N",
                        help="--measure influence: per note, hide only the N past notes attention ranks highest "
                             "(default 16; 0: every past note, slow)")
    parser.add_argument("--html-max-arcs", type=int, default=HTML_MAX_ARCS, metavar="N",
                        help=f"the viewer page embeds at most N arcs, the heaviest (default {HTML_MAX_ARCS:,}; "
                             "arcs.json keeps them all); 0: no page")
    parser.add_argument("--heads", type=Path, metavar="HEADS.json",
                        help="a head atlas of the same model (musicgpt heads): its head names go into arcs.json "
                             "and the viewer's model view")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help="CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Teacher-force the piece, write arcs.json and the HTML viewer."""
    import torch

    from musicgpt.arcs.capture import ArcsConfig, NoteArcs, attend_notes, note_document, primer_track_mask
    from musicgpt.arcs.format import write_arcs, write_arcs_columns
    from musicgpt.errors import ConfigError
    from musicgpt.generation.primer import primer_ids
    from musicgpt.music.scores import read_notes
    from musicgpt.viz import write_html

    from musicgpt.arcs.format import DEFAULT_MEASURE
    from musicgpt.arcs.influence import piece_maps
    from musicgpt.arcs.measures import arc_rows, check_measures, influence_arcs, measure_stream

    source = args.file
    measures = check_measures(args.measure or DEFAULT_MEASURE, "--measure")
    measure = measures[0]
    if args.influence_candidates < 0:
        raise ConfigError(f"--influence-candidates: must be >= 0 (0: every past note), got {args.influence_candidates}")
    if args.html_max_arcs < 0:
        raise ConfigError(f"--html-max-arcs: must be >= 0 (0: no page), got {args.html_max_arcs}")
    config = ArcsConfig(row_top_k=args.row_top_k, top_n=args.top_n, min_weight=args.min_weight)
    atlas = None
    if args.heads is not None:
        from musicgpt.viz.heads import read_heads

        atlas = read_heads(args.heads)  # before the model runs: a bad file fails at once
    out = output_folder(args.out or source.parent)  # before the work: a file in the way is said now
    model, tokenizer = model_of(args)
    notes = read_notes(source)
    ids = np.r_[tokenizer.bos_id, primer_ids(notes, tokenizer, seconds=args.seconds, tokens=args.tokens)]
    primer_mask = primer_track_mask(tokenizer, ids, source)
    extra = {}
    if atlas is not None:
        from musicgpt.viz.heads import head_names_for

        extra["head_names"] = head_names_for(atlas, {"n_layer": model.config.n_layer, "n_head": model.config.n_head,
                                                     "model": model.config.to_dict()}, source=str(args.heads))
    if args.threads:
        torch.set_num_threads(args.threads)
    by_measure, stream = {}, None
    for m in measures:
        if m == "influence":
            by_measure[m] = influence_arcs(model, ids, piece_maps(tokenizer, ids), config, progress=not args.quiet,
                                           candidates=args.influence_candidates or None)
            continue
        made = (measure_stream(model, ids, tokenizer, m, config=config, progress=not args.quiet) if m != "attention"
                else attend_notes(model, ids, tokenizer, config=config, progress=not args.quiet))
        by_measure[m], stream = made.result(), stream or made
    if stream is None:  # influence alone: attention's pass gives the notes and each note's surprisal
        stream = attend_notes(model, ids, tokenizer, config=config, progress=not args.quiet)
    arcs = by_measure[measure]
    no_arcs = NoteArcs(*(np.zeros(0, np.int64) for _ in range(5)), note_token=arcs.note_token)
    doc = note_document(stream.notes, no_arcs, tokenizer, model.config, config, primer_mask=primer_mask,
                        nll=stream.note_nll(), source=f"musicgpt attend {source.name}", measure=measure,
                        **extra)  # notes (with their surprisal) and header, validated; arcs follow
    mean_nll = float(np.nanmean(stream.token_nll)) if len(stream.token_nll) > 1 else float("nan")
    del stream
    arcs_path, html_path = out / f"{source.stem}.arcs.json", out / f"{source.stem}.html"
    if len(measures) > 1:  # one file with every measure's arcs (the viewer switches between them)
        doc = dict(doc, arcs=arc_rows(arcs), measures={m: arc_rows(by_measure[m]) for m in measures[1:]})
        write_arcs(doc, arcs_path)
    else:
        write_arcs_columns(doc, arcs, arcs_path)  # rounds arcs.weight in place to what the file holds
    n_arcs, written = len(arcs), [str(arcs_path)]
    if args.html_max_arcs and len(measures) > 1:
        page = dict(doc, arcs=_page_rows(arcs, args.html_max_arcs // len(measures)),
                    measures={m: _page_rows(by_measure[m], args.html_max_arcs // len(measures)) for m in measures[1:]})
        write_html(page, html_path, title=source.name)
        written.append(str(html_path))
    elif args.html_max_arcs:
        if n_arcs > args.html_max_arcs:
            keep, cut = _heaviest(arcs.weight, args.html_max_arcs)
            print(f"note: the viewer page holds the {int(keep.sum()):,} heaviest of {n_arcs:,} arcs (weight > "
                  f"{cut:.4g}); {arcs_path.name} has them all (--html-max-arcs)", file=sys.stderr)
            arcs = NoteArcs(*(getattr(arcs, name)[keep] for name in ("query", "key", "layer", "head", "weight")))
            del keep  # the page's arcs only from here on
        page = dict(doc, arcs=arcs.as_dict_rows())
        del arcs
        write_html(page, html_path, title=source.name)
        written.append(str(html_path))
    print(f"wrote {', '.join(written)} ({len(doc['notes'])} notes, {n_arcs} arcs by {measure}"
          + "".join(f", {len(by_measure[m])} by {m}" for m in measures[1:]) + ", "
          f"{doc['n_layer']} layers x {doc['n_head']} heads, NLL {mean_nll:.4f} nats a token)")
    return 0


def _page_rows(arcs, limit: int) -> list[dict]:
    """The arcs a viewer page of several measures embeds: at most `limit` (>= 1) of `arcs`, the heaviest."""
    if len(arcs) > max(1, limit):
        keep, _ = _heaviest(arcs.weight, max(1, limit))
        arcs = type(arcs)(*(getattr(arcs, name)[keep] for name in ("query", "key", "layer", "head", "weight")))
    return arcs.as_dict_rows()


def _heaviest(weight: np.ndarray, limit: int) -> tuple[np.ndarray, float]:
    """(bool per arc: heavier than the (limit+1)-th heaviest, that weight): at most `limit` arcs, the heaviest."""
    cut = float(np.partition(weight, len(weight) - limit - 1)[len(weight) - limit - 1])
    return weight > cut, cut
