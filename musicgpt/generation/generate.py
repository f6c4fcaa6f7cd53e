"""Generation: continue a primer (or start from nothing) with a MusicGPT, sampling under the tokenizer's grammar.

    samples = musicgpt.generate(model, "primer.mid", primer_seconds=10, seconds=30, top_p=0.95, seed=1, arcs=True)
    samples[0].to_midi("out.mid"); samples[0].arcs  # the arcs.json dict

What the model reads is [BOS] + primer + continuation. The primer is fed in chunks (prefill),
then one token per step through `Decoder` on a KV cache whose window is the model's context
(n_ctx): past it the window slides, so generation runs on for as long as asked and every step
sees the last n_ctx tokens, exactly like `model(ids, window=n_ctx)`. All samples of one call run
as one batch. Each step masks tokens the grammar forbids (see `musicgpt.generation.sampling`), samples
with one seeded generator (same seed, same settings, same model: the same samples), and stops a
sample at EOS (unless `stop_at_eos=False`, which masks EOS), at `seconds` of new music, or
after `max_new_tokens`. At the end, notes still sounding are closed with NOTE_OFFs; EOS is not
kept in `ids`.

MIDI output (`Sample.to_midi`): format 1, 120 qpm, 1000 ticks per quarter (0.5 ms per tick, as
`musicgpt.music.midi.write_midi`), two piano tracks: track "primer" with the notes whose NOTE_ON lies in
the primer, track "continuation" with the generated notes. `musicgpt.music.midi.read_midi` merges
them back into one table.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicgpt.arcs.capture import ArcsConfig, AttentionRecorder, arcs_document, query_rows, teacher_force, token_owners
from musicgpt.model.decode_step import Decoder
from musicgpt.errors import ConfigError
from musicgpt.music.midi import write_tracks
from musicgpt.music.notes import Notes
from musicgpt.generation.primer import primer_ids
from musicgpt.generation.constraints import GrammarMask, LongNoteLimit
from musicgpt.generation.sampling import GumbelNoise, SamplingConfig, make_generator, sample
from musicgpt.tokens.base import PerformanceEvents

DEFAULT_NEW_TOKENS = 1024
DEFAULT_MAX_NOTE_SECONDS = 10.0  # real piano holds 0.08% of its notes longer (ASAP, pedal folded)
TOKENS_PER_SECOND_CAP = 200  # with `seconds` alone, stop after this many tokens per second asked (real piano: ~35)


@dataclass
class Sample:
    """One generated piece: token ids, the notes they decode to, and (if asked) arcs and logits."""

    ids: np.ndarray = field(repr=False)  # (T,) int64: [BOS] + primer + continuation (+ closing NOTE_OFFs)
    primer_length: int  # tokens of [BOS] + primer at the start of `ids`
    n_generated: int  # tokens sampled by the model (closing tokens not counted)
    stop_reason: str  # "length", "seconds" or "eos"
    seed: int
    tokenizer: Any = field(repr=False)
    notes: Notes = field(repr=False)
    note_token: np.ndarray = field(repr=False)  # (N,) position of each note's NOTE_ON in ids
    arcs: dict | None = field(default=None, repr=False)  # the arcs.json dict
    logits: torch.Tensor | None = field(default=None, repr=False)  # (n_generated, vocab) float32 when asked

    @property
    def primer_notes(self) -> np.ndarray:
        """Boolean per note: does its NOTE_ON lie in the primer?"""
        return self.note_token < self.primer_length

    @property
    def seconds(self) -> float:
        """Length of the whole piece (primer + continuation) in seconds."""
        return self.notes.end_time

    def to_midi(self, path: str | os.PathLike) -> Path:
        """Write primer and continuation as two piano tracks ("primer", "continuation")."""
        path = Path(path)
        primer = self.primer_notes
        write_tracks([("primer", self.notes[primer]), ("continuation", self.notes[~primer])], path)
        return path

    def save(self, out_dir: str | os.PathLike, name: str, *, wav: bool = False,
             soundfont: str | os.PathLike | None = None) -> list[Path]:
        """Write NAME.mid, and NAME.arcs.json + NAME.html when arcs exist, and NAME.wav if asked."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [self.to_midi(out_dir / f"{name}.mid")]
        if self.arcs is not None:
            from musicgpt.arcs.format import write_arcs
            from musicgpt.viz import write_html

            write_arcs(self.arcs, out_dir / f"{name}.arcs.json")
            written.append(out_dir / f"{name}.arcs.json")
            written.append(write_html(self.arcs, out_dir / f"{name}.html", title=name))
        if wav:
            from musicgpt.music.audio import render_wav

            written.append(render_wav(written[0], out_dir / f"{name}.wav", soundfont=soundfont))
        return written


def load_model_and_tokenizer(model=None, tokenizer=None, device: str | torch.device | None = None):
    """(model, tokenizer): a MusicGPT as given, or a checkpoint directory (None: the bundled model)."""
    from musicgpt.model.gpt import MusicGPT

    if model is None or isinstance(model, (str, os.PathLike)):
        from musicgpt.model.gpt import load_checkpoint

        model, saved = load_checkpoint(model, device=device or "cpu")
        tokenizer = tokenizer or saved
    elif not isinstance(model, MusicGPT):
        raise ConfigError(f"model: expected a MusicGPT or a checkpoint directory, got {type(model).__name__}")
    elif device is not None:
        model = model.to(device)
    if tokenizer is None:
        from musicgpt.tokens.performance import PerformanceTokenizer

        tokenizer = PerformanceTokenizer()
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}")
    return model, tokenizer


@contextmanager
def _eval_threads(model, threads: int | None):
    """Eval mode (no dropout) and, on CPU, `threads` intra-op threads; both restored afterwards."""
    was_training, old_threads = model.training, torch.get_num_threads()
    model.eval()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)


def generate(model=None, primer=None, *, tokenizer=None, max_new_tokens: int | None = None,
             seconds: float | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             min_p: float = 0.0, seed: int | None = None, num_samples: int = 1, arcs: bool = False,
             arcs_config: ArcsConfig | None = None, primer_seconds: float | None = None,
             primer_tokens: int | None = None, stop_at_eos: bool = True, return_logits: bool = False,
             progress: bool = False, threads: int | None = 1, chunk: int = 256,
             device: str | torch.device | None = None,
             max_note_seconds: float | None = DEFAULT_MAX_NOTE_SECONDS, keep_type_mass: bool = True) -> list[Sample]:
    """Continue `primer` (a MIDI/MusicXML/ABC path, Notes, token ids or None) and return `num_samples` Samples.

    model: a MusicGPT, or a checkpoint directory, or None for the bundled model. Length: `max_new_tokens`
    and/or `seconds` of new music (default 1024 tokens). Sampling: temperature (0 = greedy), top_k,
    top_p, min_p. seed: None draws one (kept in `Sample.seed`). max_note_seconds: a note that has
    sounded this long is ended at the next step (None or 0: never; see `LongNoteLimit`).
    keep_type_mass: the grammar mask hands the mass it removes to the allowed tokens of the same
    event type (see `musicgpt.generation.sampling.sample`); False masks plainly. arcs:
    capture attention and attach the arcs.json dict. threads: CPU threads while generating (1 is fastest for one sequence; None
    leaves torch's setting).
    """
    model, tokenizer = load_model_and_tokenizer(model, tokenizer, device)
    sampling = SamplingConfig(temperature, top_k, top_p, min_p, keep_type_mass)
    if int(num_samples) != num_samples or num_samples < 1:
        raise ConfigError(f"num_samples: must be a positive integer, got {num_samples!r}")
    if seconds is not None and not seconds > 0:
        raise ConfigError(f"seconds: must be positive, got {seconds!r}")
    if max_note_seconds is not None and not max_note_seconds >= 0:
        raise ConfigError(f"max_note_seconds: must be >= 0 (0 = no limit), got {max_note_seconds!r}")
    if max_new_tokens is None:
        max_new_tokens = DEFAULT_NEW_TOKENS if seconds is None else max(256, int(seconds * TOKENS_PER_SECOND_CAP))
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens: must be an integer >= 0, got {max_new_tokens!r}")
    shift_seconds = _shift_seconds(tokenizer, needed=seconds is not None)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    prompt = np.r_[tokenizer.bos_id, primer_ids(primer, tokenizer, seconds=primer_seconds, tokens=primer_tokens)]
    with _eval_threads(model, threads if next(model.parameters()).device.type == "cpu" else None):
        return _run(model, tokenizer, prompt.astype(np.int64), int(max_new_tokens), seconds, sampling, int(seed),
                    int(num_samples), (arcs_config or ArcsConfig()) if arcs else None, stop_at_eos, return_logits,
                    progress, chunk, shift_seconds, max_note_seconds or 0.0)


def _shift_seconds(tokenizer, needed: bool) -> np.ndarray:
    """Seconds each id moves the clock (zeros without TIME_SHIFTs: a ConfigError when a length in seconds is asked)."""
    if isinstance(tokenizer, PerformanceEvents):
        return tokenizer.seconds_per_id()
    if needed:
        raise ConfigError("seconds: this tokenizer has no TIME_SHIFT tokens; give max_new_tokens instead")
    return np.zeros(tokenizer.vocab_size)


@torch.no_grad()
def _run(model, tokenizer, prompt: np.ndarray, max_new: int, seconds: float | None, sampling: SamplingConfig,
         seed: int, batch: int, arcs_config: ArcsConfig | None, stop_at_eos: bool, return_logits: bool,
         progress: bool, chunk: int, shift_seconds: np.ndarray, max_note_seconds: float) -> list[Sample]:
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    is_note_on = query_rows(tokenizer, np.arange(tokenizer.vocab_size))
    grammar = GrammarMask(tokenizer, batch, allow_eos=stop_at_eos, width=model.config.vocab_size)
    long_notes = LongNoteLimit(tokenizer, batch, max_note_seconds)
    for b in range(batch):
        grammar.feed(b, prompt)
        long_notes.feed(b, prompt)
    recorders = [AttentionRecorder(arcs_config) for _ in range(batch)] if arcs_config else None
    cache = model.new_cache()
    x = torch.from_numpy(prompt)[None].expand(batch, -1).contiguous().to(device)
    queries = np.broadcast_to(is_note_on[prompt], (batch, len(prompt)))
    logits = teacher_force(model, x, cache, recorders, queries, chunk=chunk)
    decoder = Decoder.for_model(model)
    noise = GumbelNoise(make_generator(seed), batch, model.config.vocab_size)
    seqs = [prompt.tolist() for _ in range(batch)]
    clock = np.zeros(batch)  # seconds of new music per sample
    reasons: list[str | None] = [None] * batch
    kept_logits: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    feed = torch.zeros(batch, dtype=torch.long)  # the tokens fed each step, written through a numpy view
    feed_np = feed.numpy()
    on_cpu = device.type == "cpu"
    bar = _progress_bar(max_new, seconds, progress)
    shown = started = time.monotonic()
    n_steps = 0
    try:
        for step in range(max_new):
            active = [b for b in range(batch) if reasons[b] is None]
            if not active:
                break
            if logits.dtype != torch.float32 or not on_cpu:
                logits = logits.float().cpu()
            if return_logits:
                for b in active:
                    kept_logits[b].append(logits[b].clone())
            tokens = sample(logits, sampling, None, blocked=long_notes.apply(grammar.blocked, active),
                            noise=None if sampling.greedy else noise.next(), types=grammar.types).tolist()
            n_steps += 1
            for b in active:
                t = tokens[b]
                if t == eos:
                    reasons[b] = "eos"
                    grammar.finish(b)
                    continue
                seqs[b].append(t)
                grammar.push(b, t)
                long_notes.push(b, t)
                clock[b] += shift_seconds[t]
                if seconds is not None and clock[b] >= seconds - 1e-9:
                    reasons[b] = "seconds"
                    grammar.finish(b)
            for b in range(batch):
                feed_np[b] = tokens[b] if b in active and tokens[b] != eos else pad
            capture = recorders is not None and [b for b in active if is_note_on[tokens[b]]]
            last = step == max_new - 1 or all(r is not None for r in reasons)
            if not last or capture:  # the last token is fed only when its attention row is wanted
                key_start, position = cache.length - cache.n_past, cache.length
                logits, attentions = decoder.step(feed if on_cpu else feed.to(device), cache,
                                                  need_attention=bool(capture))
                if capture:
                    probs = torch.stack(attentions)  # (L, B, H, n)
                    for b in capture:
                        recorders[b].add([position], key_start, probs[:, b : b + 1])
            if progress and time.monotonic() - shown > 0.25:
                shown = _show_progress(bar, n_steps, clock, seconds, started)
        if progress:
            _show_progress(bar, n_steps, clock, seconds, started)
    finally:
        bar.close()
    samples = []
    for b in range(batch):
        n_generated = len(seqs[b]) - len(prompt)
        closing, drop = grammar.closing_tokens(b, seqs[b][len(prompt):])
        ids = np.asarray(seqs[b][: len(seqs[b]) - drop] + closing, np.int64)
        notes, _, _, note_token = token_owners(tokenizer, ids)
        arcs = None
        if recorders is not None:
            arcs = arcs_document(tokenizer, ids, recorders[b], model.config, primer_length=len(prompt),
                                 source="musicgpt generate", seed=seed, sample=b, sampling=asdict(sampling))
        samples.append(Sample(ids=ids, primer_length=len(prompt), n_generated=n_generated,
                              stop_reason=reasons[b] or "length", seed=seed, tokenizer=tokenizer, notes=notes,
                              note_token=note_token, arcs=arcs,
                              logits=torch.stack(kept_logits[b]) if return_logits and kept_logits[b] else None))
    return samples


def _progress_bar(max_new: int, seconds: float | None, enabled: bool):
    """A bar over seconds of music when a length in seconds is asked (its rate is then the real-time factor), else over tokens."""
    from tqdm.auto import tqdm

    if seconds:  # fractional seconds of music: show them with one decimal, not as raw floats
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
        return tqdm(total=seconds, unit="s", desc="generating", disable=not enabled, leave=False,
                    dynamic_ncols=True, bar_format=fmt)
    return tqdm(total=max_new, unit="tok", desc="generating", disable=not enabled, leave=False, dynamic_ncols=True)


def _show_progress(bar, n_tokens: int, clock: np.ndarray, seconds: float | None, started: float) -> float:
    """Move the bar and show tokens/s and seconds of music written; returns the time shown."""
    now = time.monotonic()
    rate = n_tokens / max(now - started, 1e-9)
    if seconds:
        bar.update(min(float(clock.max()), seconds) - bar.n)
        bar.set_postfix_str(f"{n_tokens} tok, {rate:.0f} tok/s", refresh=False)
    else:
        bar.update(n_tokens - bar.n)
        bar.set_postfix_str(f"music {clock.max():.1f} s, {rate:.0f} tok/s", refresh=False)
    return now
