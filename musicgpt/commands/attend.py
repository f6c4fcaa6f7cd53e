"""`musicgpt attend [CKPT] FILE.mid`: attention arcs over the notes of an existing piece (teacher forcing).

Writes DIR/NAME.arcs.json and the viewer DIR/NAME.html. A file written by `musicgpt generate`
keeps its primer/continuation split: notes of a track named "primer" are marked as primer notes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt attend`."""
    parser.add_argument("checkpoint", nargs="?", type=Path, metavar="CKPT",
                        help="checkpoint directory (default: the bundled model)")
    parser.add_argument("file", type=Path, metavar="FILE", help="a MIDI, MusicXML (.xml/.musicxml/.mxl) or ABC file")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: next to FILE)")
    cut = parser.add_mutually_exclusive_group()
    cut.add_argument("--seconds", type=float, metavar="S", help="only the first S seconds of the piece")
    cut.add_argument("--tokens", type=int, metavar="N", help="only the first N tokens of the piece")
    parser.add_argument("--top-n", type=int, default=6, metavar="N",
                        help="per note, layer and head: keep the N heaviest earlier notes (default 6)")
    parser.add_argument("--min-weight", type=float, default=0.01, metavar="W", help="drop arcs lighter than W (default 0.01)")
    parser.add_argument("--row-top-k", type=int, default=64, metavar="K",
                        help="per token, layer and head: keep the K heaviest keys (default 64)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: torch's)")


def primer_track_notes(path: Path):
    """Notes of the track named "primer" (as `musicgpt generate` writes), or None."""
    from musicgpt.music.midi import is_midi_path, read_midi

    if not is_midi_path(path):
        return None
    try:
        from symusic import Score

        names = [t.name for t in Score(str(path)).tracks]
    except Exception:
        return None
    if "primer" not in names:
        return None
    return read_midi(path, tracks=[names.index("primer")], allow_empty=True)


def run(args: argparse.Namespace) -> int:
    """Teacher-force the piece, write arcs.json and the HTML viewer."""
    import torch

    from musicgpt.arcs.capture import ArcsConfig, attend
    from musicgpt.arcs.format import write_arcs
    from musicgpt.generation.loop import load_model_and_tokenizer
    from musicgpt.generation.primer import primer_ids
    from musicgpt.music.scores import read_notes
    from musicgpt.viz import write_html

    source = args.file
    config = ArcsConfig(row_top_k=args.row_top_k, top_n=args.top_n, min_weight=args.min_weight)
    model, tokenizer = load_model_and_tokenizer(args.checkpoint)
    notes = read_notes(source)
    ids = np.r_[tokenizer.bos_id, primer_ids(notes, tokenizer, seconds=args.seconds, tokens=args.tokens)]
    primer_mask = _primer_mask(tokenizer, ids, primer_track_notes(source))
    if args.threads:
        torch.set_num_threads(args.threads)
    d = attend(model, ids, tokenizer, config=config, primer_mask=primer_mask,
               source=f"musicgpt attend {source.name}")
    out = args.out or source.parent
    out.mkdir(parents=True, exist_ok=True)
    arcs_path, html_path = out / f"{source.stem}.arcs.json", out / f"{source.stem}.html"
    write_arcs(d, arcs_path)
    write_html(d, html_path, title=source.name)
    print(f"wrote {arcs_path}, {html_path} ({len(d['notes'])} notes, {len(d['arcs'])} arcs, "
          f"{d['n_layer']} layers x {d['n_head']} heads)")
    return 0


def _primer_mask(tokenizer, ids: np.ndarray, primer_notes) -> np.ndarray | None:
    """Bool per decoded note: is it (same time step, same pitch) a note of the primer track? None: no such track."""
    if primer_notes is None:
        return None
    notes = tokenizer.decode(ids)
    quantized = tokenizer.encode(primer_notes).notes
    step = tokenizer.time_step
    primer = set(zip(np.rint(quantized.start / step).astype(int).tolist(), quantized.pitch.tolist()))
    return np.array([(int(s), int(p)) in primer for s, p in zip(np.rint(notes.start / step), notes.pitch)], bool)
