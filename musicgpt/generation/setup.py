"""Generation set up in one place: what a user asks for (Python, the CLI, the studio's form, a duet) becomes
the prompt the model reads and the `GenerationSettings` a `Generation` runs.

    request = GenerationRequest(primer="song.mid", seconds=20, seed=1, controls={"density": "high"})
    plan = prepare(model, tokenizer, request)       # checked against the model and its tokenizer
    Generation.from_plan(model, tokenizer, plan)    # musicgpt.generation.loop

Every default lives here. A request continues its primer ([CONTROL*] [BOS] primer), or, with
`infill=(START, END)`, regenerates the primer's notes with onsets in [START, END) and keeps the rest
(`infill_prompt`; the span begins inside the piece and ends at most INFILL_PAST_END_SECONDS past it, and the
prompt is built from the tokens it keeps, whatever the span's times). Both kinds take the same sampling
settings; an infilled middle is held to its gap by the sampler's clock, so it takes its length from the gap
(a length in seconds or tokens, or a primer cut, is refused) and never ends at EOS. `max_note_seconds`
defaults to 10 s for a continuation and to no limit for an infilled middle (the gap bounds it); given, it
holds for both.

"Follow the primer" (`follow_primer`, on by default): a model that knows the computed controls (density,
dynamics; `musicgpt.tokens.controls`) reads the primer's own values of those the request does not give as its
CONTROL header, so it continues at the primer's density and loudness (bench/continuation.py: 16 held-out primers
x 2 seeds, summary share within the real spread 0.528 against 0.506 without, density 0.56 against 0.41).
`follow_primer=False` turns it off; an infilled middle and a request without a primer are not affected.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from musicgpt.arcs.capture import ArcsConfig
from musicgpt.errors import ConfigError
from musicgpt.generation.primer import primer_ids
from musicgpt.generation.sampling import SamplingConfig
from musicgpt.model.prefill import PREFILL_CHUNK
from musicgpt.music.notes import Notes
from musicgpt.music.scores import read_notes
from musicgpt.tokens import infill as fim
from musicgpt.tokens.base import PerformanceEvents, Tokenizer
from musicgpt.tokens.controls import COMPUTED_CONTROLS, computed_values, parse_controls
from musicgpt.tokens.registry import tokenizer_of

__all__ = ["GenerationRequest", "GenerationSettings", "Plan", "prepare", "load_model_and_tokenizer", "control_header",
           "pinned_header", "infill_prompt", "check_span", "shift_seconds", "DEFAULT_NEW_TOKENS",
           "DEFAULT_MAX_NOTE_SECONDS", "TOKENS_PER_SECOND_CAP", "DEFAULT_CHUNK"]

DEFAULT_NEW_TOKENS = 1024  # with no length given
DEFAULT_MAX_NOTE_SECONDS = 10.0  # real piano holds 0.08% of its notes longer (ASAP, pedal folded)
TOKENS_PER_SECOND_CAP = 200  # with `seconds` alone, stop after this many tokens per second asked (real piano: ~35)
MIN_TOKENS_FOR_SECONDS = 256  # ... but never fewer than this
DEFAULT_CHUNK = PREFILL_CHUNK  # prefill chunk (tokens)
INFILL_SPARE_TOKENS = 64  # an infilled middle's budget: the gap at TOKENS_PER_SECOND_CAP, plus this
MIDDLE_TOKENS_PER_SECOND = 60  # room kept for an infilled middle (dense piano writes ~35-50 tokens a second)
PREFIX_SHARE = 0.6  # of the rest of the context: the prefix's share, the suffix getting the remainder
INFILL_PAST_END_SECONDS = 600.0  # an infilled span may run this far past the piece's last note (a take's cap)
SEED_LIMIT = 2**63  # seeds are 0 .. SEED_LIMIT - 1: torch's generators take 64-bit seeds


@dataclass(frozen=True)
class GenerationSettings:
    """What one generation runs with, checked and resolved (no None left to a later default)."""

    max_new_tokens: int  # tokens to sample at most per sample
    seconds: float | None  # stop a sample after this much new music (None: no limit in seconds)
    sampling: SamplingConfig
    seed: int
    num_samples: int  # the batch
    arcs: ArcsConfig | None  # capture attention arcs with these settings (None: no arcs)
    stop_at_eos: bool  # False masks EOS
    return_logits: bool  # keep the logits of every step in the samples
    chunk: int  # prefill chunk (tokens)
    max_note_seconds: float  # a note that has sounded this long is ended (0: never)
    guidance: float = 1.0  # classifier-free guidance scale (1: off)
    end_steps: int | None = None  # stop each sample when its clock reaches this many steps (an infilled middle)


@dataclass(frozen=True)
class GenerationRequest:
    """What a user asks for, as given: every front end fills one of these and `prepare` does the rest."""

    primer: Any = None  # a MIDI/MusicXML/ABC path, Notes, token ids or None (infilling: the piece)
    primer_seconds: float | None = None  # use the primer's first S seconds
    primer_tokens: int | None = None  # ... or its first N tokens (neither: as much as fits the context)
    infill: tuple[float, float] | None = None  # (START, END) seconds: regenerate that span of the primer
    seconds: float | None = None  # of new music (None: only max_new_tokens counts)
    max_new_tokens: int | None = None  # None: DEFAULT_NEW_TOKENS, or TOKENS_PER_SECOND_CAP per second asked
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    keep_type_mass: bool = True  # the grammar mask hands the mass it removes to allowed tokens of the same type
    seed: int | None = None  # None: drawn (and kept in each Sample)
    num_samples: int = 1
    stop_at_eos: bool = True  # False masks EOS
    max_note_seconds: float | None = None  # None: DEFAULT_MAX_NOTE_SECONDS, no limit when infilling; 0: never
    controls: Any = ()  # {name: value} or ["name=value", ...]
    follow_primer: bool = True  # density/dynamics controls read from the primer, where the model knows them
    guidance: float = 1.0  # classifier-free guidance towards the controls (1: off)
    arcs: ArcsConfig | None = None  # capture attention arcs (None: no arcs)
    return_logits: bool = False
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self):
        for name in ("primer_seconds", "seconds", "max_note_seconds"):
            if getattr(self, name) is not None and not _finite(getattr(self, name)):
                raise ConfigError(f"{name}: must be finite, got {getattr(self, name)!r}")
        if self.seed is not None and not (_integer(self.seed) and 0 <= self.seed < SEED_LIMIT):
            raise ConfigError(f"seed: must be an integer in 0..2**63-1, got {self.seed!r}")
        if int(self.num_samples) != self.num_samples or self.num_samples < 1:
            raise ConfigError(f"num_samples: must be a positive integer, got {self.num_samples!r}")
        if self.seconds is not None and not self.seconds > 0:
            raise ConfigError(f"seconds: must be positive, got {self.seconds!r}")
        if self.max_new_tokens is not None and (int(self.max_new_tokens) != self.max_new_tokens
                                                or self.max_new_tokens < 0):
            raise ConfigError(f"max_new_tokens: must be an integer >= 0, got {self.max_new_tokens!r}")
        if self.max_note_seconds is not None and not self.max_note_seconds >= 0:
            raise ConfigError(f"max_note_seconds: must be >= 0 (0 = no limit), got {self.max_note_seconds!r}")
        if not (isinstance(self.guidance, (int, float)) and 0 < self.guidance < float("inf")):
            raise ConfigError(f"guidance: must be a positive number (1 = off), got {self.guidance!r}")
        if self.guidance != 1 and not parse_controls(self.controls):
            raise ConfigError("guidance: steers towards controls; give some (--control NAME=VALUE) or leave it at 1")
        if int(self.chunk) != self.chunk or self.chunk < 1:
            raise ConfigError(f"chunk: must be a positive integer, got {self.chunk!r}")
        if self.primer_seconds is not None and self.primer_tokens is not None:
            raise ConfigError("primer_seconds and primer_tokens: give the primer's length one way, not both")
        if self.infill is not None:
            start, end = self.infill
            if not (_finite(start) and _finite(end)):
                raise ConfigError(f"infill: START and END must be finite, got {start!r}, {end!r}")
            if not 0 <= start < end:
                raise ConfigError(f"infill: need 0 <= START < END, got {start!r}, {end!r}")
            given = [name for name in ("primer_seconds", "primer_tokens", "seconds", "max_new_tokens")
                     if getattr(self, name) is not None]
            if given:
                raise ConfigError(f"infill: the middle takes its length from the gap and reads the whole piece; "
                                  f"drop {', '.join(given)}")
        self.sampling()  # its own checks, now rather than when the generation starts

    def sampling(self) -> SamplingConfig:
        """The sampling settings (temperature, top-k, top-p, min-p, type-preserving mask), checked."""
        return SamplingConfig(self.temperature, self.top_k, self.top_p, self.min_p, self.keep_type_mass)


@dataclass
class Plan:
    """A request made ready for one model: what it reads first, and how it generates."""

    prompt: np.ndarray  # (T,) int64: [CONTROL*] [BOS] primer, or an infilling prompt
    unconditional: np.ndarray  # (T',) the prompt without its CONTROL header (guidance's second pass)
    settings: GenerationSettings
    piece: Notes | None = field(default=None, repr=False)  # infilling: the whole piece the middle goes into
    infill: tuple[float, float] | None = None  # infilling: (START, END) seconds


def prepare(model, tokenizer: Tokenizer, request: GenerationRequest, *, stacklevel: int = 2) -> Plan:
    """The prompt and settings for `request` on `model` read with `tokenizer` (a ConfigError for what they cannot do).

    A primer longer than the context, with no length given, is cut with a `PrimerCutWarning`, raised at
    `stacklevel` as `warnings.warn` counts it from here (2: the caller of `prepare`)."""
    n_ctx = model.config.n_ctx
    shift_seconds(tokenizer, needed=request.seconds is not None)  # fail before any work
    header = control_header(tokenizer, request.controls)
    seed = random.randrange(2**31) if request.seed is None else int(request.seed)  # Python's: repeatable after set_seed
    common = dict(sampling=request.sampling(), seed=seed, num_samples=int(request.num_samples), arcs=request.arcs,
                  return_logits=request.return_logits, chunk=int(request.chunk), guidance=float(request.guidance))
    if request.infill is not None:
        start, end = float(request.infill[0]), float(request.infill[1])
        piece = read_notes(request.primer) if isinstance(request.primer, (str, os.PathLike)) else request.primer
        if not isinstance(piece, Notes):
            raise ConfigError("infill: give the piece to fill (a MIDI, MusicXML or ABC file, or Notes)")
        check_span(piece, start, end)
        prompt, unconditional, gap_steps = infill_prompt(tokenizer, piece, start, end, n_ctx, header)
        settings = GenerationSettings(
            max_new_tokens=int(gap_steps * tokenizer.time_step * TOKENS_PER_SECOND_CAP) + INFILL_SPARE_TOKENS,
            seconds=None, stop_at_eos=False, max_note_seconds=float(request.max_note_seconds or 0.0),
            end_steps=gap_steps, **common)
        return Plan(prompt, unconditional, settings, piece, (start, end))
    max_new = request.max_new_tokens
    followed = [n for n in getattr(tokenizer, "controls", None) or {} if n in COMPUTED_CONTROLS
                and request.follow_primer and n not in parse_controls(request.controls)]  # room for their tokens
    if max_new is None:
        max_new = DEFAULT_NEW_TOKENS if request.seconds is None else max(
            MIN_TOKENS_FOR_SECONDS, int(request.seconds * TOKENS_PER_SECOND_CAP))
    music = np.r_[tokenizer.bos_id, primer_ids(request.primer, tokenizer, seconds=request.primer_seconds,
                                               tokens=request.primer_tokens,
                                               max_tokens=n_ctx - 1 - len(header) - len(followed),
                                               stacklevel=stacklevel + 1)].astype(np.int64)
    if request.follow_primer:
        followed_values = primer_controls(tokenizer, music[1:])  # what the user gives wins
        header = control_header(tokenizer, {**followed_values, **parse_controls(request.controls)})
    max_note = DEFAULT_MAX_NOTE_SECONDS if request.max_note_seconds is None else request.max_note_seconds
    settings = GenerationSettings(max_new_tokens=int(max_new), seconds=request.seconds,
                                  stop_at_eos=bool(request.stop_at_eos), max_note_seconds=float(max_note or 0.0),
                                  **common)
    return Plan(np.r_[header, music].astype(np.int64), music, settings)


def check_span(piece: Notes, start: float, end: float) -> None:
    """An infilled span begins inside the piece and ends at most INFILL_PAST_END_SECONDS past its last note
    (a ConfigError otherwise: a span beyond the piece would be silence, then music from nothing)."""
    length = float(piece.end.max()) if len(piece) else 0.0
    if start >= length:
        raise ConfigError(f"infill: START {start:g} s is not inside the piece (it ends at {length:.1f} s); "
                          "the span to fill must begin before its end")
    if end > length + INFILL_PAST_END_SECONDS:
        raise ConfigError(f"infill: END {end:g} s is more than {INFILL_PAST_END_SECONDS:g} s past the piece's end "
                          f"({length:.1f} s); give END {length + INFILL_PAST_END_SECONDS:.1f} or less")


def _finite(value) -> bool:
    """Whether `value` is a real number that is not NaN or infinite (nor an integer too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _integer(value) -> bool:
    """Whether `value` is an integer (not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def load_model_and_tokenizer(model=None, tokenizer: Tokenizer | None = None, device=None) -> tuple[Any, Tokenizer]:
    """(model, tokenizer): a MusicGPT as given, or loaded from a checkpoint or run directory or 'bundled' (None),
    and the tokenizer to read it with: `tokenizer` if given, else the one the model carries (a loaded model:
    its checkpoint's), else a plain `PerformanceTokenizer` (a model built from a config)."""
    from musicgpt.model.gpt import MusicGPT

    if model is None or isinstance(model, (str, os.PathLike)):
        model = MusicGPT.from_pretrained(model, device=device or "cpu")
    elif not isinstance(model, MusicGPT):
        raise ConfigError(f"model: expected a MusicGPT, a checkpoint or run directory, or 'bundled', "
                          f"got {type(model).__name__}")
    elif device is not None:
        model = model.to(device)
    tokenizer = tokenizer if tokenizer is not None else tokenizer_of(model)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}")
    return model, tokenizer


def control_header(tokenizer: Tokenizer, controls) -> np.ndarray:
    """The CONTROL ids for `controls` ({name: value} or ["name=value", ...]), checked against the tokenizer."""
    values = parse_controls(controls)
    if not values:
        return np.zeros(0, np.int64)
    if not getattr(tokenizer, "controls", None):
        raise ConfigError("controls: this model was trained without control tokens (train with data.controls, "
                          "or use a model that has them)")
    return tokenizer.header(values)


def primer_controls(tokenizer: Tokenizer, ids: np.ndarray) -> dict[str, str]:
    """The computed controls (density, dynamics) the tokenizer knows, measured on the primer's music tokens
    (`tokens.controls.computed_values`): what "follow the primer" tells the model ({} without them or notes)."""
    known = [n for n in getattr(tokenizer, "controls", None) or {} if n in COMPUTED_CONTROLS]
    return computed_values(ids, tokenizer, known) if known and len(ids) else {}


def pinned_header(tokenizer: Tokenizer, prompt: np.ndarray) -> int:
    """The prompt's leading CONTROL tokens, which stay in the window when it slides (0 for an infilling prompt).

    Training opens every crop with its header, so past n_ctx the model reads [header][latest music] as it learned
    to; an infilling prompt's suffix block is not kept, so neither is its header."""
    if "CONTROL" not in tokenizer.type_names:
        return 0
    kinds = tokenizer.token_type(np.asarray(prompt, np.int64))
    music = kinds != tokenizer.type_code("CONTROL")
    n = int(np.argmax(music)) if music.any() else len(kinds)
    infilling = "INFILL" in tokenizer.type_names and n < len(kinds) and kinds[n] == tokenizer.type_code("INFILL")
    return 0 if infilling else n


def infill_prompt(tokenizer, notes: Notes, start: float, end: float, n_ctx: int,
                  header: np.ndarray = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """(prompt, the same without its CONTROL header, gap in steps) for filling [start, end) of `notes`.

    What fits in the context: room for the middle (MIDDLE_TOKENS_PER_SECOND of gap, at least 64, at most half
    the context), the rest shared by the prefix (its last tokens, PREFIX_SHARE) and the suffix (its first
    tokens), a short side leaving its room to the other."""
    if not getattr(tokenizer, "infill", False):
        raise ConfigError("infill: this model was not trained for infilling (its tokenizer has no INFILL tokens; "
                          "train with data.infill_rate > 0)")
    step = tokenizer.time_step
    s, e = int(round(start / step)), int(round(end / step))
    if not (0 <= start and s < e):
        raise ConfigError(f"infill: need 0 <= START < END (at least one {step * 1000:g} ms step apart), "
                          f"got {start!r}, {end!r}")
    enc = tokenizer.encode(notes)
    suffix = fim.suffix_tokens(enc.notes, e * step, tokenizer)
    gap_seconds = (e - s) * step
    middle_room = int(np.clip(gap_seconds * MIDDLE_TOKENS_PER_SECOND, 64, n_ctx // 2))
    room = n_ctx - len(header) - 4 - middle_room
    prefix, whole = fim.prefix_tail(enc.ids, tokenizer, s, room)  # no more than the prompt can keep
    n_prefix = min(len(prefix), max(int(room * PREFIX_SHARE), room - len(suffix)))
    n_suffix = min(len(suffix), room - n_prefix)
    bos = whole and n_prefix == len(prefix)  # the prefix still starts at the piece's start
    body = fim.layout(tokenizer, suffix[:n_suffix], prefix[len(prefix) - n_prefix :], gap_seconds, bos=bos)
    return np.r_[np.asarray(header, np.int64), body], body, e - s


def shift_seconds(tokenizer, needed: bool) -> np.ndarray:
    """Seconds each id moves the clock (zeros without TIME_SHIFTs: a ConfigError when a length in seconds is asked)."""
    if isinstance(tokenizer, PerformanceEvents):
        return tokenizer.seconds_per_id()
    if needed:
        raise ConfigError("seconds: this tokenizer has no TIME_SHIFT tokens; give max_new_tokens instead")
    return np.zeros(tokenizer.vocab_size)
