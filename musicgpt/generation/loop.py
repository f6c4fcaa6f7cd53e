"""Generation: continue a primer (or start from nothing) with a MusicGPT, sampling under the tokenizer's grammar.

    samples = musicgpt.generate(model, "primer.mid", primer_seconds=10, seconds=30, top_p=0.95, seed=1, arcs=True)
    samples[0].to_midi("out.mid"); samples[0].arcs  # the arcs.json dict

What the model reads is [BOS] + primer + continuation. The primer is fed in chunks (prefill),
then one token per step through `Decoder` on a KV cache whose window is the model's context
(n_ctx): past it the window slides, so generation runs on for as long as asked and every step
sees the last n_ctx tokens, exactly like `model(ids, window=n_ctx)`; a steered prompt's CONTROL header
stays in the window (`pinned_header`): [header] + the last n_ctx - len(header) tokens. All samples of one call run
as one batch. Each step masks tokens the grammar forbids (`musicgpt.generation.constraints`), samples
with one seeded generator (same seed, same settings, same model: the same samples; see
`musicgpt.generation.sampling`), and stops a sample at EOS (unless `stop_at_eos=False`, which masks
EOS), at `seconds` of new music, or after `max_new_tokens`. At the end, notes still sounding are
closed with NOTE_OFFs; EOS is not kept in `ids`. Each token's NLL under the model (log_softmax of the
step's raw logits, before temperature, filters and masks; the primer's from the prefill) is kept:
`Sample.token_nll` and, summed over each note's tokens, `Sample.note_nll` (arcs.json's "nll").

`generate` and `infill` (musicgpt.generation.infilling) hand their arguments to
`musicgpt.generation.setup`, the one place that turns them into the prompt and `GenerationSettings`,
and run a `Generation`: the state of one batch (cache, grammar, clocks, sequences) that `step()`
advances by one token per unfinished sample, so a caller (the studio, a duet) can also drive it step by
step and watch the notes appear.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch

from musicgpt.arcs.capture import ArcsConfig, AttentionRecorder, arcs_document, note_nll, query_rows, token_owners
from musicgpt.errors import ConfigError
from musicgpt.generation.constraints import GrammarMask, LongNoteLimit, TimeLimit
from musicgpt.generation.guidance import Guidance
from musicgpt.generation.sample import Sample
from musicgpt.generation.sampling import GumbelNoise, make_generator, sample
from musicgpt.generation.setup import (DEFAULT_CHUNK, DEFAULT_MAX_NOTE_SECONDS, GenerationRequest, GenerationSettings,
                                       Plan, load_model_and_tokenizer, pinned_header, prepare, shift_seconds)
from musicgpt.model.decode_step import Decoder
from musicgpt.model.prefill import teacher_force
from musicgpt.tokens.base import Tokenizer
from musicgpt.tokens.infill import timeline

__all__ = ["generate", "Generation", "run"]


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
             progress: bool = False, threads: int | None = 1, chunk: int = DEFAULT_CHUNK,
             device: str | torch.device | None = None,
             max_note_seconds: float | None = DEFAULT_MAX_NOTE_SECONDS, keep_type_mass: bool = True,
             controls: dict[str, str] | list[str] | None = None, guidance: float = 1.0,
             follow_primer: bool = True) -> list[Sample]:
    """Continue `primer` (a MIDI/MusicXML/ABC path, Notes, token ids or None) and return `num_samples` Samples.

    primer_seconds / primer_tokens: use the primer's first S seconds / N tokens. With neither, a primer
    longer than the model's context is cut to its first n_ctx - 1 tokens ([BOS] + primer fills the
    context) with a `PrimerCutWarning` that says how much was kept.
    model: a MusicGPT, or a checkpoint directory, a training run directory (its best/, else its latest
    checkpoint), 'bundled' or None for the bundled model. Length: `max_new_tokens`
    and/or `seconds` of new music (default 1024 tokens). Sampling: temperature (0 = greedy), top_k,
    top_p, min_p. seed: None draws one (kept in `Sample.seed`). max_note_seconds: a note that has
    sounded this long is ended at the next step (None or 0: never; see `LongNoteLimit`).
    keep_type_mass: the grammar mask hands the mass it removes to the allowed tokens of the same
    event type (see `musicgpt.generation.sampling.sample`); False masks plainly. controls: {name: value}
    or ["name=value", ...] (a model trained with them: `musicgpt generate --list-controls`), read before
    [BOS]; guidance: classifier-free guidance scale G (1: off; see `musicgpt.generation.guidance`). arcs:
    capture attention and attach the arcs.json dict. threads: CPU threads while generating (1 is fastest for one sequence; None
    leaves torch's setting).
    """
    model, tokenizer = load_model_and_tokenizer(model, tokenizer, device)
    request = GenerationRequest(
        primer=primer, primer_seconds=primer_seconds, primer_tokens=primer_tokens, seconds=seconds,
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        keep_type_mass=keep_type_mass, seed=seed, num_samples=num_samples, stop_at_eos=stop_at_eos,
        max_note_seconds=max_note_seconds or 0.0, controls=controls, guidance=guidance, follow_primer=follow_primer,
        arcs=(arcs_config or ArcsConfig()) if arcs else None, return_logits=return_logits, chunk=chunk)
    return run(model, tokenizer, prepare(model, tokenizer, request, stacklevel=3), progress=progress, threads=threads)


def run(model, tokenizer: Tokenizer, plan: Plan, *, progress: bool = False, threads: int | None = 1) -> list[Sample]:
    """Generate a prepared plan to its end (eval mode, `threads` CPU threads) and return its raw samples."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads: a whole number >= 1 (or None: leave torch's), got {threads!r}")
    with _eval_threads(model, threads if next(model.parameters()).device.type == "cpu" else None):
        return _run(Generation.from_plan(model, tokenizer, plan), progress)


class Generation:
    """One batch being generated: the KV cache, per sample the grammar, clock, tokens and stop reason.

    Built from the prompt ([BOS] + primer), which it feeds to the model (prefill); then each `step()`
    samples one token per unfinished sample and feeds it back, until `done`. `samples()` closes the
    notes still sounding and returns the finished pieces.
    """

    def __init__(self, model, tokenizer: Tokenizer, prompt: np.ndarray, settings: GenerationSettings,
                 uncond_prompt: np.ndarray | None = None):
        self.model, self.tokenizer, self.prompt, self.settings = model, tokenizer, prompt, settings
        batch = settings.num_samples
        self.device = next(model.parameters()).device
        self.on_cpu = self.device.type == "cpu"
        self.shift_seconds = shift_seconds(tokenizer, needed=settings.seconds is not None)  # (V,)
        self.is_note_on = query_rows(tokenizer, np.arange(tokenizer.vocab_size))  # (V,) bool: rows the arcs need
        self.grammar = GrammarMask(tokenizer, batch, allow_eos=settings.stop_at_eos, width=model.config.vocab_size)
        self.long_notes = LongNoteLimit(tokenizer, batch, settings.max_note_seconds)
        self.time_limit = TimeLimit(tokenizer, batch, settings.end_steps)
        line = timeline(tokenizer, prompt)  # an infilling prompt's suffix has a clock of its own
        for b in range(batch):
            self.grammar.feed(b, line)
            self.long_notes.feed(b, line)
        self.recorders = [AttentionRecorder(settings.arcs) for _ in range(batch)] if settings.arcs else None
        self.cache = model.new_cache(pinned=pinned_header(tokenizer, prompt))  # controls outlast the window
        x = torch.from_numpy(prompt)[None].expand(batch, -1).contiguous().to(self.device)  # (B, T)
        queries = np.broadcast_to(self.is_note_on[prompt], (batch, len(prompt)))  # (B, T)
        prompt_nll = np.full((batch, len(prompt)), np.nan)  # BOS is not predicted
        with torch.no_grad():
            self.logits = teacher_force(model, x, self.cache, self.recorders, queries, chunk=settings.chunk,
                                        token_nll=prompt_nll)  # (B, V)
        self.token_nll = [row.tolist() for row in prompt_nll]  # per sample, one NLL per token of seqs[b]
        self.decoder = Decoder.for_model(model)
        guided = settings.guidance != 1 and uncond_prompt is not None
        self.guidance = Guidance(model, uncond_prompt, batch, settings.guidance, settings.chunk) if guided else None
        self.noise = GumbelNoise(make_generator(settings.seed), batch, model.config.vocab_size)
        self.seqs = [prompt.tolist() for _ in range(batch)]
        self.clock = np.zeros(batch)  # seconds of new music per sample
        self.reasons: list[str | None] = [None] * batch  # why each stopped: "eos", "seconds", "end", None (running)
        self.kept_logits: list[list[torch.Tensor]] = [[] for _ in range(batch)]
        self.feed = torch.zeros(batch, dtype=torch.long)  # (B,) the tokens fed each step, written through a numpy view
        self._feed_np = self.feed.numpy()
        self.n_steps = 0

    @classmethod
    def from_plan(cls, model, tokenizer: Tokenizer, plan: Plan) -> "Generation":
        """The generation of a prepared request (`musicgpt.generation.setup.prepare`), prefilled and ready to step."""
        return cls(model, tokenizer, plan.prompt, plan.settings, uncond_prompt=plan.unconditional)

    @property
    def active(self) -> list[int]:
        """The samples still being generated."""
        return [b for b in range(self.settings.num_samples) if self.reasons[b] is None]

    @property
    def done(self) -> bool:
        """Every sample has stopped, or the token budget is spent."""
        return self.n_steps >= self.settings.max_new_tokens or all(r is not None for r in self.reasons)

    @torch.no_grad()
    def step(self) -> list[int]:
        """Sample one token per active sample and feed it; returns the step's tokens per sample (B,)."""
        if self.done:
            raise RuntimeError("this generation is done: every sample stopped or the token budget is spent")
        settings, active = self.settings, self.active
        eos, pad = self.tokenizer.eos_id, self.tokenizer.pad_id
        logits = self.logits
        if logits.dtype != torch.float32 or not self.on_cpu:
            logits = logits.float().cpu()
        if settings.return_logits:
            for b in active:
                self.kept_logits[b].append(logits[b].clone())
        logp = torch.log_softmax(logits, dim=-1).numpy()  # the model's own distribution, before filters and masks
        if self.guidance is not None:
            logits = self.guidance.mix(logits)  # (B, V) what is sampled from; the NLL stays the model's own
        blocked = self.time_limit.apply(self.long_notes.apply(self.grammar.blocked, active), active)  # (B, V)
        tokens = sample(logits, settings.sampling, None, blocked=blocked,
                        noise=None if settings.sampling.greedy else self.noise.next(), types=self.grammar.types).tolist()
        self.n_steps += 1
        for b in active:
            t = tokens[b]
            if t == eos:
                self.reasons[b] = "eos"
                self.grammar.finish(b)
                continue
            self.seqs[b].append(t)
            self.token_nll[b].append(-float(logp[b, t]))
            self.grammar.push(b, t)
            self.long_notes.push(b, t)
            self.time_limit.push(b, t)
            self.clock[b] += self.shift_seconds[t]
            if settings.seconds is not None and self.clock[b] >= settings.seconds - 1e-9:
                self.reasons[b] = "seconds"
                self.grammar.finish(b)
            elif self.time_limit.reached(b):
                self.reasons[b] = "end"
                self.grammar.finish(b)
        for b in range(settings.num_samples):
            self._feed_np[b] = tokens[b] if b in active and tokens[b] != eos else pad
        capture = self.recorders is not None and [b for b in active if self.is_note_on[tokens[b]]]
        if not self.done or capture:  # the last token is fed only when its attention row is wanted
            key_start, position = self.cache.length - self.cache.n_past, self.cache.length
            header = self.cache.displaced  # the window's first keys are then the pinned CONTROL tokens: no arcs
            feed = self.feed if self.on_cpu else self.feed.to(self.device)
            if self.guidance is not None and not self.done:  # both halves in one pass: the weights read once
                self.logits, self.guidance.logits, attentions = self.decoder.step_pair(
                    feed, self.cache, self.guidance.cache, need_attention=bool(capture))
            else:
                self.logits, attentions = self.decoder.step(feed, self.cache, need_attention=bool(capture))
            if capture:
                probs = torch.stack(attentions)  # (L, B, H, n)
                for b in capture:
                    self.recorders[b].add([position], key_start + header, probs[:, b : b + 1, :, header:])
        return tokens

    def samples(self) -> list[Sample]:
        """The pieces: each sample's ids with its sounding notes closed, its notes, arcs and logits."""
        settings, tokenizer, n_prompt = self.settings, self.tokenizer, len(self.prompt)
        out = []
        for b in range(settings.num_samples):
            seq = self.seqs[b]
            closing, drop = self.grammar.closing_tokens(b, seq[n_prompt:])
            ids = np.asarray(seq[: len(seq) - drop] + closing, np.int64)
            # the closing tokens were not predicted by the model: NaN, counting 0 in the notes' sums
            token_nll = np.r_[self.token_nll[b][: len(seq) - drop], np.full(len(closing), np.nan)]
            notes, note_index, _, note_token = token_owners(tokenizer, ids)
            nll = note_nll(note_index, token_nll, len(notes))
            arcs = None
            if self.recorders is not None:
                arcs = arcs_document(tokenizer, ids, self.recorders[b], self.model.config, primer_length=n_prompt,
                                     nll=nll, source="musicgpt generate", seed=settings.seed, sample=b,
                                     sampling=asdict(settings.sampling),
                                     max_note_seconds=settings.max_note_seconds)  # the viewer tells its notes apart
            kept = self.kept_logits[b]
            out.append(Sample(ids=ids, primer_length=n_prompt, n_generated=len(seq) - n_prompt,
                              stop_reason=self.reasons[b] or "length", seed=settings.seed, tokenizer=tokenizer,
                              notes=notes, note_token=note_token, arcs=arcs, token_nll=token_nll, note_nll=nll,
                              logits=torch.stack(kept) if settings.return_logits and kept else None))
        return out


def _run(generation: Generation, progress: bool) -> list[Sample]:
    """Step a generation to its end, with a progress bar when asked."""
    settings = generation.settings
    bar = _progress_bar(settings.max_new_tokens, settings.seconds, progress)
    shown = started = time.monotonic()
    try:
        while not generation.done:
            generation.step()
            if progress and time.monotonic() - shown > 0.25:
                shown = _show_progress(bar, generation.n_steps, generation.clock, settings.seconds, started)
        if progress:
            _show_progress(bar, generation.n_steps, generation.clock, settings.seconds, started)
    finally:
        bar.close()
    return generation.samples()


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
