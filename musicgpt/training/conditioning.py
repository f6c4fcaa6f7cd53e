"""What a training crop is told before its music: control headers (with dropout) and fill-in-the-middle crops.

`Conditioner.shape` turns a crop of one document's (augmented) tokens into the sequence the model
learns from:

- plain:  [CONTROL*] [BOS if the crop starts the piece] music [EOS if it ends it]
- infill: [CONTROL*] INFILL_SUFFIX suffix INFILL_PREFIX [BOS] prefix GAP middle   (`musicgpt.tokens.infill`)

Controls: `composer` from the manifest (the document's metadata; absent or rare: `unknown`), the
computed ones (`density`, `dynamics`) measured on the crop's own music. With probability
`uncond_rate` a crop gets none, otherwise each is left out with probability `control_dropout`: the
model learns p(music), p(music | some controls) and p(music | all), which classifier-free guidance
needs. A share `infill_rate` of crops is cut for infilling at two random times: the middle takes
16 tokens up to half of what the crop has room for, and the prefix and suffix share the rest at a
random ratio, so the model sees long and short contexts on both sides, and empty ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from musicgpt.errors import CheckpointError, ConfigError
from musicgpt.model.vocab import with_vocabulary
from musicgpt.tokens import infill
from musicgpt.tokens.base import Tokenizer
from musicgpt.tokens.controls import UNKNOWN, computed_values, controls_vocabulary
from musicgpt.tokens.performance import PerformanceTokenizer

__all__ = ["Conditioner", "run_tokenizer", "trained_composers", "token_sources", "carry_over", "doc_composers",
           "control_rows", "prompt_tuning_rows", "composer_headers"]

MIN_MIDDLE = 16  # tokens


def run_tokenizer(data_tokenizer: Tokenizer, manifest: dict, data_config) -> Tokenizer:
    """The tokenizer a run trains with: the corpus's, plus the CONTROL and infilling tokens the config asks for."""
    if not data_config.controls and data_config.infill_rate == 0:
        return data_tokenizer
    if not isinstance(data_tokenizer, PerformanceTokenizer):
        raise ConfigError(f"data.controls / data.infill_rate: need performance tokens, the corpus has "
                          f"{data_tokenizer.type!r} tokens")
    params = {**data_tokenizer.params(), "infill": data_config.infill_rate > 0,
              "controls": controls_vocabulary(data_config.controls, trained_composers(manifest, data_config))}
    return PerformanceTokenizer(**params)


def trained_composers(manifest: dict, data_config) -> list[str]:
    """The composers with at least data.composer_min_files training files (the rest train as `unknown`)."""
    counts = Counter(s.get("composer") for s in manifest.get("sources", []) if s.get("split") == "train")
    return [c for c, n in counts.items() if c and n >= data_config.composer_min_files]


def doc_composers(manifest: dict, split: str) -> list[str | None]:
    """Per document of a split (its index in the shards), the composer the manifest records, or None."""
    sources = [s for s in manifest.get("sources", []) if s.get("split") == split]
    out: list[str | None] = [None] * (max((s["doc"] for s in sources), default=-1) + 1)
    for s in sources:
        out[s["doc"]] = s.get("composer")
    return out


def control_rows(tokenizer: Tokenizer) -> list[int]:
    """The ids of the CONTROL tokens (empty without controls)."""
    mask = tokenizer.type_masks().get("CONTROL")
    return [] if mask is None else np.flatnonzero(mask).tolist()


def prompt_tuning_rows(tokenizer: Tokenizer, init_from: str | None, names: Collection[str]) -> list[int]:
    """The rows finetune.trainable = 'controls' tunes: a trained model's CONTROL tokens of the controls `names`
    (data.controls: those the crops are told; kept controls no crop is told would have nothing to learn from)."""
    rows = [i for i in control_rows(tokenizer) if tokenizer.control_of(i)[0] in names]
    if init_from is None or not rows:
        kept = ", ".join(getattr(tokenizer, "controls", None) or ())
        raise ConfigError("finetune.trainable = 'controls' tunes the control tokens of a trained model: it needs "
                          + ("--init-from CHECKPOINT" if init_from is None else
                             "data.controls" + (f" (the checkpoint's: {kept})" if kept else "")))
    return rows


def composer_headers(tokenizer: Tokenizer, manifest: dict, split: str, docs) -> list[np.ndarray] | None:
    """Per document of `docs` (that split's Split), the header telling its composer (`unknown` if none recorded).

    None without a composer control or without documents: what prompt tuning is evaluated on."""
    if docs is None or "composer" not in (getattr(tokenizer, "controls", None) or {}):
        return None
    composers = doc_composers(manifest, split)
    composers += [None] * (docs.n_docs - len(composers))
    return [tokenizer.header({"composer": c or UNKNOWN}) for c in composers[: docs.n_docs]]


def token_sources(old: Tokenizer, new: Tokenizer) -> np.ndarray:
    """Per id of `new`, the id of `old` that names the same token, or -1 (a token `old` lacks)."""
    if isinstance(old, PerformanceTokenizer) and isinstance(new, PerformanceTokenizer):
        base = ("time_step", "max_shift_steps", "velocity_bins")
        if any(old.params()[k] != new.params()[k] for k in base):
            raise ConfigError(f"the tokenizers differ in {', '.join(k for k in base if old.params()[k] != new.params()[k])}: "
                              "a checkpoint's embeddings carry over only to the same events")
    elif old.to_dict() != new.to_dict():
        raise ConfigError("the tokenizers differ and are not both performance tokenizers")
    names = {old.token_name(i): i for i in range(old.vocab_size)}
    return np.asarray([names.get(new.token_name(i), -1) for i in range(new.vocab_size)], np.int64)


def carry_over(model, old: Tokenizer, new: Tokenizer, what: str, seed: int = 0):
    """(the model on `new`'s vocabulary: rows of the same tokens kept, new ones added; a one-line note)."""
    try:
        source = token_sources(old, new)
    except ConfigError as exc:
        raise CheckpointError(f"{what}: its tokenizer does not fit this run's ({exc})") from None
    added = sorted({new.token_name(i).split("_")[0] for i in np.flatnonzero(source < 0)})
    note = (f"{int((source < 0).sum())} token embeddings added ({', '.join(added) or 'none'}), "
            f"{int((source >= 0).sum())} carried over")
    dropped = sorted(set(range(old.vocab_size)) - set(source[source >= 0].tolist()))
    if dropped:  # tokens `new` lacks: their rows go
        note += f", {len(dropped)} dropped ({', '.join(sorted({old.token_name(i).split('_')[0] for i in dropped}))})"
    return with_vocabulary(model, source, seed=seed), note


@dataclass
class Conditioner:
    """Shapes crops of one split into plain or infilling sequences with control headers (see the module)."""

    tokenizer: Tokenizer
    composers: list[str | None]  # per document
    control_dropout: float = 0.3
    uncond_rate: float = 0.2
    infill_rate: float = 0.0
    controls: Collection[str] | None = None  # the controls crops are told (data.controls); None: all the tokenizer's

    @property
    def names(self) -> tuple[str, ...]:
        """The controls a crop's header may tell, in the tokenizer's order (not those a fine-tune only keeps)."""
        kept = getattr(self.tokenizer, "controls", None) or ()
        return tuple(n for n in kept if self.controls is None or n in self.controls)

    @property
    def active(self) -> bool:
        """Whether crops get anything beyond BOS/EOS."""
        return bool(self.names) or (self.infill_rate > 0 and getattr(self.tokenizer, "infill", False))

    def header(self, doc: int, music: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The CONTROL ids of a crop of document `doc` whose music is `music`, after dropout."""
        tok, names = self.tokenizer, self.names
        if not names or rng.random() < self.uncond_rate:
            return np.zeros(0, np.int64)
        values = computed_values(music, tok, names)
        if "composer" in names:
            composer = self.composers[doc] if doc < len(self.composers) else None
            values["composer"] = composer or UNKNOWN
        kept = {name: v for name, v in values.items() if rng.random() >= self.control_dropout}
        return tok.header(kept)

    def shape(self, body: np.ndarray, doc: int, starts: bool, ends: bool, need: int,
              rng: np.random.Generator) -> np.ndarray:
        """At most `need` ids for one crop: `body` is its music (from the piece's start when `starts`)."""
        tok = self.tokenizer
        header = self.header(doc, body[:need], rng)
        if self.infill_rate > 0 and rng.random() < self.infill_rate and len(body) > 4 * MIN_MIDDLE:
            return self._infill(body, header, starts, need, rng)
        parts = [header, [tok.bos_id] if starts else [], body]
        if ends:
            parts.append([tok.eos_id])
        return np.concatenate(parts).astype(np.int64)[:need]

    def _infill(self, body: np.ndarray, header: np.ndarray, starts: bool, need: int,
                rng: np.random.Generator) -> np.ndarray:
        """A fill-in-the-middle crop of `body` (see the module docstring)."""
        tok = self.tokenizer
        room = need - len(header) - 4  # two sentinels, GAP, maybe BOS
        window = body[: need]
        time = infill.clock_steps(window, tok)
        n_middle = int(rng.integers(MIN_MIDDLE, max(MIN_MIDDLE + 1, min(room // 2, len(window) // 2))))
        first = int(rng.integers(0, max(1, len(window) - n_middle)))
        start_step = int(time[first])
        end_step = int(time[min(first + n_middle, len(window) - 1)])
        if end_step <= start_step:  # a chord's worth of tokens in one time step: make the gap one step long
            end_step = start_step + 1
        prefix, middle = infill.cut(window, tok, start_step, end_step)
        notes = tok.decode(window)
        suffix = infill.suffix_tokens(notes, end_step * tok.time_step, tok)
        middle = middle[: room - 2 * MIN_MIDDLE] if len(middle) > room - 2 * MIN_MIDDLE else middle
        rest = room - len(middle)
        n_suffix = min(len(suffix), int(rest * rng.uniform(0.1, 0.7)))
        n_prefix = min(len(prefix), rest - n_suffix)
        n_suffix = min(len(suffix), rest - n_prefix)  # a short prefix leaves more room to the suffix
        bos = starts and n_prefix == len(prefix)
        kept_prefix = prefix[len(prefix) - n_prefix :]
        gap = (end_step - start_step) * tok.time_step
        prompt = infill.layout(tok, suffix[:n_suffix], kept_prefix, gap, header, bos=bos)
        return np.concatenate([prompt, middle]).astype(np.int64)[:need]
