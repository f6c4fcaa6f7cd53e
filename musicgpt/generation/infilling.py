"""Infilling: regenerate the notes whose onsets fall in [START, END) of a piece, keeping everything else.

    samples = musicgpt.infill(model, "piece.mid", 12.0, 20.0, seed=1, num_samples=4)
    samples[0].to_midi("out.mid")

The model (one trained with infilling tokens: `data.infill_rate` > 0) reads
`[CONTROL*] INFILL_SUFFIX suffix INFILL_PREFIX [BOS] prefix GAP` (`musicgpt.tokens.infill`) and writes the
middle. The sampler's clock holds it to the gap: no TIME_SHIFT may run past END, the middle ends when
its clock reaches END, and notes still sounding there are closed at END. What fits in the context:
room for the middle (about 60 tokens a second of gap, at least 64, at most half the context), the
rest shared by the prefix (its last tokens, 60%) and the suffix (its first tokens, 40%), a short side
leaving its room to the other.

The piece written back (`Sample.notes`) is the input's own notes before START and from END on, exact
to the input's timing (not re-quantized), and the new notes in between: the MIDI's two tracks are
"piece" and "infill". A kept note still sounding when a new note of its pitch begins is cut there, so
the file never holds two overlapping notes of one pitch. `Sample.arcs` is what the model read and
wrote, its notes marked prefix / middle / suffix; middle notes may attend to suffix notes, which
start later but were read first.
"""

from __future__ import annotations

import os

import numpy as np

from musicgpt.errors import ConfigError
from musicgpt.generation.loop import (_eval_threads, _run, Generation, GenerationSettings, TOKENS_PER_SECOND_CAP,
                                      control_header, load_model_and_tokenizer)
from musicgpt.generation.sample import Sample
from musicgpt.generation.sampling import SamplingConfig
from musicgpt.arcs.capture import ArcsConfig
from musicgpt.music.notes import Notes
from musicgpt.music.scores import read_notes
from musicgpt.tokens import infill as fim

__all__ = ["infill", "infill_prompt", "infilled_sample", "assemble"]

MIDDLE_TOKENS_PER_SECOND = 60  # room kept for the middle (dense piano writes ~35-50 tokens a second)
PREFIX_SHARE = 0.6


def infill_prompt(tokenizer, notes: Notes, start: float, end: float, n_ctx: int,
                  header: np.ndarray = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt, the same without its CONTROL header, gap in steps) for filling [start, end) of `notes`."""
    if not getattr(tokenizer, "infill", False):
        raise ConfigError("infill: this model was not trained for infilling (its tokenizer has no INFILL tokens; "
                          "train with data.infill_rate > 0)")
    step = tokenizer.time_step
    s, e = int(round(start / step)), int(round(end / step))
    if not (0 <= start and s < e):
        raise ConfigError(f"infill: need 0 <= START < END (at least one {step * 1000:g} ms step apart), "
                          f"got {start!r}, {end!r}")
    enc = tokenizer.encode(notes)
    prefix, _ = fim.cut(enc.ids, tokenizer, s, e)
    suffix = fim.suffix_tokens(enc.notes, e * step, tokenizer)
    gap_seconds = (e - s) * step
    middle_room = int(np.clip(gap_seconds * MIDDLE_TOKENS_PER_SECOND, 64, n_ctx // 2))
    room = n_ctx - len(header) - 4 - middle_room
    n_prefix = min(len(prefix), max(int(room * PREFIX_SHARE), room - len(suffix)))
    n_suffix = min(len(suffix), room - n_prefix)
    bos = n_prefix == len(prefix)  # the prefix still starts at the piece's start
    body = fim.layout(tokenizer, suffix[:n_suffix], prefix[len(prefix) - n_prefix :], gap_seconds, bos=bos)
    return np.r_[np.asarray(header, np.int64), body], body, e - s


def assemble(notes: Notes, middle: Notes, start: float, end: float) -> tuple[Notes, np.ndarray]:
    """(the piece: `notes` outside [start, end) and `middle` inside, no same-pitch overlap; True where kept)."""
    kept = notes[(notes.start < start) | (notes.start >= end)]
    middle = middle[(middle.start >= start) & (middle.start < end)]
    middle = Notes(middle.start, np.minimum(middle.end, end), middle.pitch, middle.velocity)
    both = Notes.concat([kept, middle])
    is_kept = np.r_[np.ones(len(kept), bool), np.zeros(len(middle), bool)][
        np.lexsort((np.r_[kept.pitch, middle.pitch], np.r_[kept.start, middle.start]))]
    end_times = both.end.copy()
    for pitch in np.unique(both.pitch):  # a sounding note ends where the next note of its pitch begins
        at = np.flatnonzero(both.pitch == pitch)
        end_times[at[:-1]] = np.minimum(end_times[at[:-1]], np.maximum(both.start[at[1:]], both.start[at[:-1]]))
    return Notes(both.start, end_times, both.pitch, both.velocity), is_kept


def infill(model=None, piece=None, start: float = 0.0, end: float = 0.0, *, tokenizer=None,
           controls: dict[str, str] | list[str] | None = None, guidance: float = 1.0, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, seed: int | None = None, num_samples: int = 1,
           arcs: bool = False, arcs_config: ArcsConfig | None = None, progress: bool = False,
           threads: int | None = 1, chunk: int = 256, device=None) -> list[Sample]:
    """Regenerate the notes of `piece` (a MIDI/MusicXML/ABC path or Notes) with onsets in [start, end) seconds.

    model: a MusicGPT, a checkpoint or run directory, 'bundled' or None. Sampling, seed, controls and
    guidance as in `musicgpt.generate`. Returns `num_samples` Samples (see the module docstring).
    """
    import random

    model, tokenizer = load_model_and_tokenizer(model, tokenizer, device)
    if piece is None:
        raise ConfigError("infill: give the piece to fill (a MIDI, MusicXML or ABC file, or Notes)")
    notes = read_notes(piece) if isinstance(piece, (str, os.PathLike)) else piece
    header = control_header(tokenizer, controls, guidance)
    prompt, unconditional, gap_steps = infill_prompt(tokenizer, notes, float(start), float(end), model.config.n_ctx,
                                                     header)
    if int(num_samples) != num_samples or num_samples < 1:
        raise ConfigError(f"num_samples: must be a positive integer, got {num_samples!r}")
    settings = GenerationSettings(
        max_new_tokens=int(gap_steps * tokenizer.time_step * TOKENS_PER_SECOND_CAP) + 64, seconds=None,
        sampling=SamplingConfig(temperature, top_k, top_p, min_p), seed=random.randrange(2**31) if seed is None else int(seed),
        num_samples=int(num_samples), arcs=(arcs_config or ArcsConfig()) if arcs else None, stop_at_eos=False,
        return_logits=False, chunk=chunk, max_note_seconds=0.0, guidance=float(guidance), end_steps=gap_steps)
    with _eval_threads(model, threads if next(model.parameters()).device.type == "cpu" else None):
        raw = _run(Generation(model, tokenizer, prompt, settings, uncond_prompt=unconditional), progress)
    start_s, end_s = float(start), float(end)
    return [infilled_sample(sample, notes, start_s, end_s) for sample in raw]


def infilled_sample(sample: Sample, notes: Notes, start: float, end: float) -> Sample:
    """A raw infilling Sample made the whole piece: the input's notes outside the gap, the model's inside."""
    tok = sample.tokenizer
    spans = fim.spans(tok, sample.ids)
    # the ids' clock starts where the kept prefix starts (a long piece's prefix is cut): move it to the piece's
    offset = start - float(tok.seconds_per_id()[sample.ids[spans.suffix[1] + 1 : spans.gap]].sum())
    written = np.flatnonzero(sample.note_token >= spans.gap)  # notes whose NOTE_ON the model wrote
    middle = sample.notes[written].shifted(offset)
    piece, kept = assemble(notes, middle, start, end)
    note_token = np.full(len(piece), -1, np.int64)  # kept notes: -1, i.e. "primer" (not written)
    note_nll = np.full(len(piece), np.nan)
    new = np.flatnonzero(~kept)  # in time order, as `middle` is
    inside = (middle.start >= start) & (middle.start < end)
    note_token[new] = sample.note_token[written][inside]
    if sample.note_nll is not None:
        note_nll[new] = sample.note_nll[written][inside]
    if sample.arcs is not None:
        for row in sample.arcs["notes"]:
            row["start"], row["end"] = round(row["start"] + offset, 6), round(row["end"] + offset, 6)
        sample.arcs["infill"] = [round(start, 6), round(end, 6)]
    sample.notes, sample.note_token, sample.note_nll, sample.infill = piece, note_token, note_nll, (start, end)
    return sample
