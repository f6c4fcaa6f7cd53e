"""Infilling: regenerate the notes whose onsets fall in [START, END) of a piece, keeping everything else.

    samples = musicgpt.infill(model, "piece.mid", 12.0, 20.0, seed=1, num_samples=4)
    samples[0].to_midi("out.mid")

The model (one trained with infilling tokens: `data.infill_rate` > 0) reads
`[CONTROL*] INFILL_SUFFIX suffix INFILL_PREFIX [BOS] prefix GAP` (`musicgpt.tokens.infill`) and writes the
middle. The sampler's clock holds it to the gap: no TIME_SHIFT may run past END, the middle ends when
its clock reaches END, and notes still sounding there are closed at END. The prompt (what of the piece
fits in the context) and the settings are built by `musicgpt.generation.setup`, as for `generate`: the
same sampling arguments mean the same there.

The piece written back (`Sample.notes`) is the input's own notes before START and from END on, exact
to the input's timing (not re-quantized), and the new notes in between: the MIDI's two tracks are
"piece" and "infill". A kept note still sounding when a new note of its pitch begins is cut there, so
the file never holds two overlapping notes of one pitch. `Sample.arcs` is what the model read and
wrote, its notes marked prefix / middle / suffix; middle notes may attend to suffix notes, which
start later but were read first.
"""

from __future__ import annotations

import numpy as np

from musicgpt.arcs.capture import ArcsConfig
from musicgpt.generation.loop import run
from musicgpt.generation.sample import Sample
from musicgpt.generation.setup import DEFAULT_CHUNK, GenerationRequest, Plan, load_model_and_tokenizer, prepare
from musicgpt.music.notes import Notes
from musicgpt.tokens import infill as fim

__all__ = ["infill", "finished", "infilled_sample", "assemble"]


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
           top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, keep_type_mass: bool = True,
           max_note_seconds: float | None = None, seed: int | None = None, num_samples: int = 1,
           arcs: bool = False, arcs_config: ArcsConfig | None = None, progress: bool = False,
           threads: int | None = 1, chunk: int = DEFAULT_CHUNK, device=None) -> list[Sample]:
    """Regenerate the notes of `piece` (a MIDI/MusicXML/ABC path or Notes) with onsets in [start, end) seconds.

    model: a MusicGPT (it reads with the tokenizer it carries unless `tokenizer` is given), a checkpoint or
    run directory, 'bundled' or None. Sampling, keep_type_mass, seed, controls and guidance as in
    `musicgpt.generate`; max_note_seconds: end a note that has sounded this long (None or 0: no limit, the
    gap bounds it). Returns `num_samples` Samples (see the module docstring).
    """
    model, tokenizer = load_model_and_tokenizer(model, tokenizer, device)
    request = GenerationRequest(
        primer=piece, infill=(float(start), float(end)), temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, keep_type_mass=keep_type_mass, max_note_seconds=max_note_seconds, seed=seed,
        num_samples=num_samples, controls=controls, guidance=guidance,
        arcs=(arcs_config or ArcsConfig()) if arcs else None, chunk=chunk)
    plan = prepare(model, tokenizer, request)
    return finished(plan, run(model, tokenizer, plan, progress=progress, threads=threads))


def finished(plan: Plan, samples: list[Sample]) -> list[Sample]:
    """The samples of a plan as the user gets them: an infilling plan's made whole pieces (`infilled_sample`),
    a continuation's as they are."""
    if plan.infill is None:
        return samples
    return [infilled_sample(sample, plan.piece, *plan.infill) for sample in samples]


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
