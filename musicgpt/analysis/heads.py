"""The head atlas: what each attention head of a model does, measured over pieces, and a name for it (torch).

Rows. A piece is read as [BOS] + its tokens (at most `max_tokens` in all) and teacher-forced through
the model's sliding-window KV cache in chunks, as `musicgpt attend` does (each token sees the last
n_ctx tokens, itself included). Every attention row, per layer and head, is reduced at once to the
measures below and dropped, so memory holds one chunk's rows whatever the length of the piece.

Measures of one row (query token at position q, probabilities p_k over the keys k it sees):

    previous          p_{q-1}: the share on the token right before the query
    first             p_0: the share on the piece's first token, BOS
    self              p_q: the share on the query token itself
    same_pitch        the share on the tokens of earlier notes of the query note's pitch
    same_class        the share on the tokens of earlier notes of the same pitch class in another octave
    distance_tokens   sum_k p_k (q - k): the mean attention distance in tokens
    distance_seconds  sum_k p_k (t_q - t_k) on the piece's clock (seconds of TIME_SHIFT before each
                      token); None for tokenizers without a clock (not PerformanceEvents)
    entropy           -sum_k p_k ln p_k, in nats

Which rows are averaged (QUERIES, also written to heads.json): every token after BOS (positions
>= 1), except `first`: rows that still see BOS (positions 1 .. window - 1; past the window BOS has
slid out of view), and `same_pitch`, `same_class`: NOTE_ON rows only (only a note has a pitch).
A note's tokens are its NOTE_ON and the VELOCITY right before it, as in the attention arcs, and the
query's own note is never an "earlier note". A piece's measure is the mean over its rows; the
atlas's is the mean over pieces (each piece counts once, whatever its length).

Names (THRESHOLDS, also written to heads.json). A head's pattern is the first that holds of:

    previous-token head   previous   >= 0.5
    first-token head      first      >= 0.5
    self head             self       >= 0.5
    same-pitch head       same_pitch >= 0.25
    local                 distance_tokens <= 16 (and none of the above)
    broad                 entropy >= ln 64 (the row is at least as spread as uniform over 64 tokens)

where the four shares compete among themselves: of those at or above their threshold, the largest
(relative to its threshold) names the head. A head that meets none is unnamed (None).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicgpt.analysis import MAX_TOKENS, PATTERN_TOKENS
from musicgpt.arcs.capture import token_owners
from musicgpt.model.prefill import PREFILL_CHUNK, teacher_force
from musicgpt.errors import ConfigError, MusicGPTError
from musicgpt.tokens.base import PerformanceEvents
from musicgpt.viz.heads import HEADS_VERSION, MEASURES, validate_heads
from musicgpt.viz.inline import HeadAtlas

QUERIES = {
    "previous": "every token after BOS",
    "first": "tokens at positions 1 .. window - 1 (those that still see BOS)",
    "self": "every token after BOS",
    "same_pitch": "NOTE_ON tokens",
    "same_class": "NOTE_ON tokens",
    "distance_tokens": "every token after BOS",
    "distance_seconds": "every token after BOS",
    "entropy": "every token after BOS",
}
SHARES = {"previous": "previous-token head", "first": "first-token head", "self": "self head",
          "same_pitch": "same-pitch head"}
THRESHOLDS = {"previous": 0.5, "first": 0.5, "self": 0.5, "same_pitch": 0.25,
              "local_distance_tokens": 16.0, "broad_entropy": math.log(64)}


def name_head(measures: dict[str, float | None], thresholds: dict[str, float] | None = None) -> str | None:
    """The name of one head from its measures by the rule in the module docstring; None when none holds."""
    t = thresholds or THRESHOLDS
    passing = [(measures[m] / t[m], m) for m in SHARES if measures.get(m) is not None and measures[m] >= t[m]]
    if passing:
        return SHARES[max(passing)[1]]
    if measures["distance_tokens"] <= t["local_distance_tokens"]:
        return "local"
    if measures["entropy"] >= t["broad_entropy"]:
        return "broad"
    return None


@dataclass
class HeadMeasures:
    """Sums of the row measures of one piece, per layer and head, and how many rows each sum holds.

    An attention recorder for `musicgpt.model.prefill.teacher_force`: it takes every row of a chunk
    through `add` and reduces it at once."""

    tokenizer: Any
    ids: np.ndarray
    n_layer: int
    n_head: int
    window: int
    pattern_tokens: int = 0
    sums: dict[str, np.ndarray] = field(init=False)
    counts: dict[str, int] = field(init=False)
    pattern: np.ndarray | None = field(init=False, default=None)  # (L, H, P, P): rows 0..P-1 over keys 0..P-1

    def __post_init__(self):
        ids = self.ids = np.asarray(self.ids, np.int64).reshape(-1)
        notes, note_index, owner, _ = token_owners(self.tokenizer, ids)
        kinds = self.tokenizer.token_type(ids)
        is_on = (kinds == self.tokenizer.type_names.index("NOTE_ON")) & (note_index >= 0)
        pitch = np.asarray(notes.pitch, np.int64)
        self.query_note = torch.from_numpy(np.where(is_on, note_index, -1))
        self.query_pitch = torch.from_numpy(np.where(is_on, pitch[np.maximum(note_index, 0)] if len(pitch) else -1, -1))
        self.owner = torch.from_numpy(owner)
        self.owner_pitch = torch.from_numpy(np.where(owner >= 0, pitch[np.maximum(owner, 0)] if len(pitch) else -1, -1))
        if isinstance(self.tokenizer, PerformanceEvents):
            self.clock = torch.from_numpy(np.cumsum(self.tokenizer.seconds_per_id()[ids]))
        else:
            self.clock = None
        self.sums = {m: np.zeros((self.n_layer, self.n_head)) for m in MEASURES}
        self.counts = dict.fromkeys(MEASURES, 0)

    def add(self, positions, key_start: int, probs: torch.Tensor) -> None:
        """Rows at token `positions` (R,) as probabilities (L, R, H, n) over keys key_start … key_start+n-1."""
        positions = torch.as_tensor(np.asarray(positions, np.int64))
        p = probs.detach().float().cpu().transpose(1, 2)  # (L, H, R, n), reduced on the CPU whatever the model's device
        n = p.shape[-1]
        if self.pattern_tokens and self.pattern is None and key_start == 0 and int(positions[0]) == 0:
            k = min(self.pattern_tokens, n, len(positions))
            self.pattern = p[:, :, :k, :k].numpy().copy()
        keep = positions >= 1  # BOS's row is all on itself
        p, positions = p[:, :, keep], positions[keep]
        if not len(positions):
            return
        col = positions - key_start  # the query's own column
        if (col < 1).any() or (col >= n).any():
            raise ValueError("HeadMeasures: a row's key range does not hold the query and its predecessor")
        rows = p.shape[2]
        self._add("self", p.gather(-1, col.view(1, 1, rows, 1).expand(*p.shape[:2], rows, 1))[..., 0], rows)
        self._add("previous", p.gather(-1, (col - 1).view(1, 1, rows, 1).expand(*p.shape[:2], rows, 1))[..., 0], rows)
        sees_bos = positions < self.window
        if key_start == 0 and sees_bos.any():
            self._add("first", p[:, :, sees_bos, 0], int(sees_bos.sum()))
        # q - sum_k p_k k, with positions and clocks counted from the first key (small numbers for float32)
        self._add("distance_tokens", col.float() - p @ torch.arange(n, dtype=p.dtype), rows)
        if self.clock is not None:
            clock = self.clock[key_start : key_start + n] - self.clock[key_start]
            self._add("distance_seconds", clock[col].float() - p @ clock.float(), rows)
        self._add("entropy", -torch.special.xlogy(p, p).sum(-1), rows)
        on = self.query_note[positions] >= 0
        if on.any():
            q_note, q_pitch = self.query_note[positions][on], self.query_pitch[positions][on]
            k_note, k_pitch = self.owner[key_start : key_start + n], self.owner_pitch[key_start : key_start + n]
            other_note = (k_note[None, :] >= 0) & (k_note[None, :] != q_note[:, None])  # (R_on, n)
            same = other_note & (k_pitch[None, :] == q_pitch[:, None])
            octave = other_note & (k_pitch[None, :] % 12 == q_pitch[:, None] % 12) & (k_pitch[None, :] != q_pitch[:, None])
            p_on = p[:, :, on]
            self._add("same_pitch", (p_on * same).sum(-1), int(on.sum()))
            self._add("same_class", (p_on * octave).sum(-1), int(on.sum()))

    def _add(self, measure: str, values: torch.Tensor, rows: int) -> None:
        self.sums[measure] += values.to(torch.float64).sum(-1).numpy()
        self.counts[measure] += rows

    def end_chunk(self) -> None:
        """Called after each chunk (every row is reduced as it comes)."""

    def means(self) -> dict[str, np.ndarray | None]:
        """Per measure, (L, H) means over the rows counted; None where no row counted (or no clock)."""
        return {m: (self.sums[m] / self.counts[m] if self.counts[m] else None) for m in MEASURES}


@torch.no_grad()
def piece_measures(model, tokenizer, ids, *, chunk: int = PREFILL_CHUNK, pattern_tokens: int = 0) -> HeadMeasures:
    """Teacher-force `ids` (starting with BOS) through `model` and reduce every attention row (see the docstring)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    cfg = model.config
    cache = model.new_cache()
    acc = HeadMeasures(tokenizer, ids, cfg.n_layer, cfg.n_head, cache.window, pattern_tokens)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        teacher_force(model, torch.from_numpy(ids)[None].to(device), cache, [acc], np.ones((1, len(ids)), bool),
                      chunk=max(chunk, pattern_tokens))
    finally:
        model.train(was_training)
    return acc


def piece_ids(tokenizer, source, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """[BOS] + the tokens of a piece (a file or Notes), at most `max_tokens` ids in all."""
    from musicgpt.music.scores import read_notes

    notes = read_notes(source) if isinstance(source, (str, Path)) else source
    body = np.asarray(tokenizer.encode(notes).ids, np.int64)[: max_tokens - 1]
    return np.r_[tokenizer.bos_id, body]


def head_atlas(model, tokenizer, pieces: Iterable, *, max_tokens: int = MAX_TOKENS, chunk: int = PREFILL_CHUNK,
               pattern_tokens: int = PATTERN_TOKENS, checkpoint: str | None = None, importance_tokens: int = 0,
               progress: bool = False) -> tuple[dict, np.ndarray | None]:
    """(the heads.json dict, the attention pattern of the first piece's first `pattern_tokens` tokens as
    (L, H, P, P) or None) of `model` over `pieces` (file paths or Notes). Measures and names as in the
    module docstring; each piece is cut to `max_tokens` tokens, BOS included. importance_tokens > 0: also each
    head's importance (`musicgpt.analysis.importance`) over the pieces' first `importance_tokens` tokens."""
    if max_tokens < 2:
        raise ConfigError(f"heads max_tokens: must be at least 2 (BOS and one token), got {max_tokens}")
    if chunk < 1:
        raise ConfigError(f"heads chunk: must be at least 1, got {chunk}")
    missing = [t for t in ("NOTE_ON", "VELOCITY") if t not in tokenizer.type_names]
    if missing:
        raise ConfigError(f"heads: the tokenizer ({tokenizer.to_dict().get('type', type(tokenizer).__name__)}) has no "
                          f"{missing[0]} tokens; the head atlas reads performance-event tokens (as attention arcs do)")
    cfg = model.config
    per_piece, pattern, excerpt = [], None, None
    pieces = list(pieces)
    if not pieces:
        raise MusicGPTError("heads: no pieces to measure")
    for i, source in enumerate(pieces):
        ids = piece_ids(tokenizer, source, max_tokens)
        if len(ids) < 2:
            raise MusicGPTError(f"{source}: no notes to measure")
        acc = piece_measures(model, tokenizer, ids, chunk=chunk, pattern_tokens=pattern_tokens if i == 0 else 0)
        if i == 0:
            pattern, excerpt = acc.pattern, ids[:pattern_tokens]
        means = acc.means()
        per_piece.append({"file": str(getattr(source, "name", source)) if isinstance(source, Path) else str(source),
                          "tokens": int(len(ids)), "rows": dict(acc.counts),
                          "measures": {m: (None if v is None else _rounded(v)) for m, v in means.items()}})
        if progress:
            print(f"heads: {per_piece[-1]['file']} ({len(ids)} tokens)", file=sys.stderr)
    measures = {}
    for m in MEASURES:
        values = [p["measures"][m] for p in per_piece if p["measures"][m] is not None]
        measures[m] = _rounded(np.mean(np.array(values), axis=0)) if values else None
    names = [[name_head({m: (None if measures[m] is None else measures[m][layer][head]) for m in MEASURES})
              for head in range(cfg.n_head)] for layer in range(cfg.n_layer)]
    atlas = {
        "format": "musicgpt-heads", "version": HEADS_VERSION,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "model": cfg.to_dict(), "tokenizer": tokenizer.to_dict(), "checkpoint": checkpoint,
        "max_tokens": int(max_tokens), "window": int(model.new_cache().window),
        "queries": dict(QUERIES), "averaged": "mean over each piece's rows, then mean over pieces",
        "thresholds": dict(THRESHOLDS), "rule": _RULE,
        "measures": measures, "names": names, "pieces": per_piece,
        "excerpt": [tokenizer.token_name(int(t)) for t in excerpt] if excerpt is not None else [],
    }
    if importance_tokens > 0:
        from musicgpt.analysis.importance import RULE, head_importance

        found = head_importance(model, [piece_ids(tokenizer, p, importance_tokens) for p in pieces])
        atlas.update(importance=_rounded(found["importance"]), importance_rule=RULE,
                     importance_tokens=int(importance_tokens), importance_base_nll=round(found["base_nll"], 6))
    validate_heads(atlas)
    return HeadAtlas(atlas, pattern), pattern  # the dict, shown as the layers x heads grid in a notebook


_RULE = ("a head is named by the largest of previous, first, self and same_pitch (relative to its threshold) "
         "among those at or above their thresholds; else 'local' when distance_tokens <= local_distance_tokens; "
         "else 'broad' when entropy >= broad_entropy; else unnamed (null)")


def _rounded(values: np.ndarray) -> list[list[float]]:
    return [[float(f"{v:.6g}") for v in row] for row in np.asarray(values, np.float64)]
