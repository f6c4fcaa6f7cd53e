"""The fields of `POST /api/generate`, read into a checked `TakeRequest`.

Every field is optional; an empty value means "not given". A value that is not a number, out of its range,
or a field this server does not know is a `ConfigError` naming the field, sent back as one `error` event.
The sampling fields keep the names and meanings of `musicgpt generate`'s options (top_p is --top-p, ...), and
a take becomes the same `GenerationRequest` they do (`TakeRequest.generation_request`): the defaults are
generation's, except the take's length (DEFAULT_SECONDS). The limits here are the server's own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from musicgpt.arcs.capture import ArcsConfig
from musicgpt.errors import ConfigError
from musicgpt.generation.setup import GenerationRequest

MAX_SAMPLES = 8  # one batch; more would only slow every sample down
MAX_SECONDS = 600.0  # of new music per take
MAX_NEW_TOKENS = 50_000
DEFAULT_SECONDS = 20.0


@dataclass(frozen=True)
class TakeRequest:
    """What one take asks for, checked."""

    seconds: float | None = DEFAULT_SECONDS  # of new music (None: only max_new_tokens counts)
    max_new_tokens: int | None = None  # None: musicgpt.generate's default for `seconds`
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None  # None: drawn, and reported in the `done` event
    num_samples: int = 1
    primer_seconds: float | None = None  # use the primer's first S seconds
    primer_tokens: int | None = None  # ... or its first N tokens
    example: str | None = None  # a bundled example by name, instead of an uploaded primer
    ignore_eos: bool = False
    plain_mask: bool = False  # mask invalid tokens without handing their mass to the same type (--plain-mask)
    max_note_seconds: float | None = None  # None: generation's default
    controls: tuple[str, ...] = ()  # "name=value" each (field `control`, repeated): a model trained with controls
    guidance: float = 1.0  # classifier-free guidance towards the controls (1: off)
    infill_start: float | None = None  # regenerate the primer's notes with onsets in [infill_start, infill_end)
    infill_end: float | None = None
    primer_path: Path | None = None  # set by the server: the uploaded primer or the example's file
    primer_name: str | None = None  # how errors and the page name the primer

    def __post_init__(self):
        if self.seconds is not None and not 0 < self.seconds <= MAX_SECONDS:
            raise ConfigError(f"seconds: must lie in (0, {MAX_SECONDS:g}], got {self.seconds!r}")
        if self.max_new_tokens is not None and not 0 < self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ConfigError(f"max_new_tokens: must lie in 1..{MAX_NEW_TOKENS}, got {self.max_new_tokens!r}")
        if self.seconds is None and self.max_new_tokens is None:
            raise ConfigError("seconds or max_new_tokens: give at least one length")
        if not 1 <= self.num_samples <= MAX_SAMPLES:
            raise ConfigError(f"num_samples: must lie in 1..{MAX_SAMPLES}, got {self.num_samples!r}")
        if (self.infill_start is None) != (self.infill_end is None):
            raise ConfigError("infill_start and infill_end: give both (the span to regenerate, in seconds) or neither")
        if self.infilling and not 0 <= self.infill_start < self.infill_end:
            raise ConfigError(f"infill_start, infill_end: need 0 <= start < end, got {self.infill_start!r}, "
                              f"{self.infill_end!r}")
        if self.infilling and self.infill_end - self.infill_start > MAX_SECONDS:
            # checked before the piece is read: a span of 1e9 s would otherwise be built token by token
            raise ConfigError(f"infill_start, infill_end: a span of at most {MAX_SECONDS:g} s (a take's longest), "
                              f"got {self.infill_end - self.infill_start:g} s")
        self.generation_request()  # generation's own checks: before the take is queued, not when it starts

    @property
    def infilling(self) -> bool:
        """Whether the take regenerates a span of its primer instead of continuing it."""
        return self.infill_start is not None

    def generation_request(self, arcs: ArcsConfig | None = None) -> GenerationRequest:
        """What the take asks generation for: the primer continued, or (infill_start, infill_end) of it refilled
        (the form's length fields then do not apply: the middle takes its length from the span)."""
        length = {} if self.infilling else dict(
            seconds=self.seconds, max_new_tokens=self.max_new_tokens, primer_seconds=self.primer_seconds,
            primer_tokens=self.primer_tokens)
        return GenerationRequest(
            primer=self.primer_path, infill=(self.infill_start, self.infill_end) if self.infilling else None,
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            keep_type_mass=not self.plain_mask, seed=self.seed, num_samples=self.num_samples,
            stop_at_eos=not self.ignore_eos, max_note_seconds=self.max_note_seconds, controls=self.controls,
            guidance=self.guidance, arcs=arcs, **length)


def _number(kind: Callable[[str], Any]) -> Callable[[str, str], Any]:
    def parse(name: str, text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ConfigError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}: expected a finite number, got {text!r}")
        return value
    return parse


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {text!r}")


def _text(name: str, text: str) -> str:
    return text.strip()


PARSERS: dict[str, Callable[[str, str], Any]] = {
    "seconds": _number(float), "max_new_tokens": _number(int), "temperature": _number(float),
    "top_k": _number(int), "top_p": _number(float), "min_p": _number(float), "seed": _number(int),
    "num_samples": _number(int), "primer_seconds": _number(float), "primer_tokens": _number(int),
    "example": _text, "ignore_eos": _flag, "plain_mask": _flag, "max_note_seconds": _number(float), "control": _text,
    "guidance": _number(float), "infill_start": _number(float), "infill_end": _number(float),
}
FIELDS = tuple(PARSERS)  # what a client may send besides the `primer` file
REPEATED = {"control": "controls"}  # fields that may come more than once -> the TakeRequest tuple they fill
MAX_VALUES = 64  # text fields in one request (the form parser's cap)


def parse_fields(form: Iterable[tuple[str, str]]) -> TakeRequest:
    """A TakeRequest from (name, text) fields; unknown fields and bad values are ConfigErrors naming the field."""
    pairs = list(form.items()) if hasattr(form, "items") else list(form)
    unknown = sorted({name for name, _ in pairs} - set(PARSERS))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}; known: primer (a file), {', '.join(FIELDS)}")
    values: dict[str, Any] = {}
    for name, text in pairs:
        if text.strip() == "":
            continue
        value = PARSERS[name](name, text.strip())
        if name in REPEATED:
            values[REPEATED[name]] = (*values.get(REPEATED[name], ()), value)
        elif name in values:
            raise ConfigError(f"{name}: given more than once (only {', '.join(REPEATED)} may repeat)")
        else:
            values[name] = value
    if "seconds" not in values and "max_new_tokens" in values:
        values["seconds"] = None  # a length in tokens alone
    known = {f.name for f in fields(TakeRequest)}
    return TakeRequest(**{k: v for k, v in values.items() if k in known})
