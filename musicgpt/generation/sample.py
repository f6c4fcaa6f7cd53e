"""`Sample`: one generated piece (token ids, notes, arcs) and how it is written: MIDI, arcs.json, WAV.

MIDI output (`Sample.to_midi`): format 1, 120 qpm, 1000 ticks per quarter (0.5 ms per tick, as
`musicgpt.music.midi.write_midi`), two piano tracks: track "primer" with the notes whose NOTE_ON lies in
the primer, track "continuation" with the generated notes (an infilled piece: "piece", the notes kept,
and "infill", the notes written into the gap). `musicgpt.music.midi.read_midi` merges them back into one
table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicgpt.music.midi import write_tracks
from musicgpt.music.notes import Notes

__all__ = ["Sample"]


@dataclass
class Sample:
    """One generated piece: token ids, the notes they decode to, the model's NLL of each token and note, and
    (if asked) arcs and logits."""

    ids: np.ndarray = field(repr=False)  # (T,) int64: [BOS] + primer + continuation (+ closing NOTE_OFFs)
    primer_length: int  # tokens of [BOS] + primer at the start of `ids`
    n_generated: int  # tokens sampled by the model (closing tokens not counted)
    stop_reason: str  # "length", "seconds", "eos" or "end" (an infilled middle reached END)
    seed: int
    tokenizer: Any = field(repr=False)
    notes: Notes = field(repr=False)
    note_token: np.ndarray = field(repr=False)  # (N,) position of each note's NOTE_ON in ids
    arcs: dict | None = field(default=None, repr=False)  # the arcs.json dict
    logits: torch.Tensor | None = field(default=None, repr=False)  # (n_generated, vocab) float32 when asked
    # (T,) per token of ids: -log p(token | the tokens before it) in nats under the model's own distribution
    # (log_softmax of its raw logits in float32, before temperature, top-k/p, min-p and the grammar mask);
    # NaN where the model did not predict the token (BOS, the closing NOTE_OFFs)
    token_nll: np.ndarray | None = field(default=None, repr=False)
    # (N,) per note: the sum of token_nll over its tokens (NOTE_ON, the VELOCITY right before it, its
    # NOTE_OFF), tokens not predicted counting 0: the note's surprisal, arcs.json's "nll"
    note_nll: np.ndarray | None = field(default=None, repr=False)
    infill: tuple[float, float] | None = None  # (START, END) seconds: the gap this sample filled (musicgpt.infill)

    @property
    def primer_notes(self) -> np.ndarray:
        """Boolean per note: does its NOTE_ON lie in the primer?"""
        return self.note_token < self.primer_length

    @property
    def seconds(self) -> float:
        """Length of the whole piece (primer + continuation) in seconds."""
        return self.notes.end_time

    def to_midi(self, path: str | os.PathLike) -> Path:
        """Write primer and continuation as two piano tracks ("primer", "continuation"; infilled: "piece", "infill")."""
        path = Path(path)
        primer = self.primer_notes
        names = ("piece", "infill") if self.infill else ("primer", "continuation")
        write_tracks([(names[0], self.notes[primer]), (names[1], self.notes[~primer])], path)
        return path

    def to_wav(self, path: str | os.PathLike, *, soundfont: str | os.PathLike | None = None,
               sample_rate: int = 44100) -> Path:
        """Render the piece to a WAV file (`musicgpt.music.audio`: AudioError where no renderer exists)."""
        import tempfile

        from musicgpt.music.audio import render_wav

        with tempfile.TemporaryDirectory(prefix="musicgpt-wav-") as tmp:
            midi = self.to_midi(Path(tmp) / "piece.mid")
            return render_wav(midi, path, soundfont=soundfont, sample_rate=sample_rate)

    def save(self, out_dir: str | os.PathLike, name: str, *, wav: bool = False,
             soundfont: str | os.PathLike | None = None) -> list[Path]:
        """Write NAME.mid, NAME.arcs.json when arcs exist, and NAME.wav if asked (the viewer page is
        musicgpt.viz's: `write_html(sample.arcs, ...)`)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [self.to_midi(out_dir / f"{name}.mid")]
        if self.arcs is not None:
            from musicgpt.arcs.format import write_arcs  # loads only when arcs are written

            write_arcs(self.arcs, out_dir / f"{name}.arcs.json")
            written.append(out_dir / f"{name}.arcs.json")
        if wav:
            from musicgpt.music.audio import render_wav

            written.append(render_wav(written[0], out_dir / f"{name}.wav", soundfont=soundfont))
        return written
