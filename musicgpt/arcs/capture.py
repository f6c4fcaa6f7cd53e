"""Attention arcs over notes: capture attention rows sparsely, aggregate them to notes, teacher-force a piece.

Capture. Only rows whose query token is a NOTE_ON are kept (the query of a note is its NOTE_ON,
and no other row ever becomes an arc). Each kept row, per layer and head, keeps its `row_top_k`
heaviest keys (or, with row_top_k=None, every key of at least `row_threshold`), so memory grows
linearly with the length of the piece whatever the window.

Aggregation. A note owns its NOTE_ON token and the VELOCITY token right before it (the tokenizer's
token->note map, restricted to those two types). For each query note, layer and head, the weight
on an earlier note is the sum of the kept attention on that note's tokens; a note's arcs to itself
are left out; the `top_n` heaviest key notes of at least `min_weight` are kept.

Teacher forcing. `attend` runs a piece through the model in chunks over the same sliding-window
KV cache that generation uses (each token sees the last n_ctx tokens, itself included), so arcs
of a generated piece computed by `attend` equal those captured while generating it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from musicgpt.arcs.format import build_arcs
from musicgpt.errors import ConfigError


@dataclass(frozen=True)
class ArcsConfig:
    """How much attention to keep: per token row while capturing, per note when aggregating."""

    row_top_k: int | None = 64  # per query token, layer and head: the k heaviest keys (None: all above threshold)
    row_threshold: float = 0.0  # per query token: drop keys lighter than this
    top_n: int = 6  # per query note, layer and head: the N heaviest earlier notes
    min_weight: float = 0.01  # drop note arcs lighter than this

    def __post_init__(self):
        if self.row_top_k is not None and (int(self.row_top_k) != self.row_top_k or self.row_top_k < 1):
            raise ConfigError(f"arcs row_top_k: must be a positive integer or None, got {self.row_top_k!r}")
        if not 0.0 <= self.row_threshold < 1.0:
            raise ConfigError(f"arcs row_threshold: must lie in [0, 1), got {self.row_threshold!r}")
        if int(self.top_n) != self.top_n or self.top_n < 1:
            raise ConfigError(f"arcs top_n: must be a positive integer, got {self.top_n!r}")
        if not 0.0 <= self.min_weight <= 1.0:
            raise ConfigError(f"arcs min_weight: must lie in [0, 1], got {self.min_weight!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AttentionRecorder:
    """Sparse attention rows of query tokens: (query position, layer, head, key position, weight)."""

    def __init__(self, config: ArcsConfig | None = None):
        self.config = config or ArcsConfig()
        self._parts: list[tuple] = []

    def add(self, positions, key_start: int, probs: Tensor) -> None:
        """Rows at token `positions` (R,), probabilities (L, R, H, n) over keys key_start … key_start+n-1."""
        cfg = self.config
        probs = probs.detach().float()
        positions = np.asarray(positions, np.int64).reshape(-1)
        if cfg.row_top_k is not None:
            k = min(cfg.row_top_k, probs.shape[-1])
            values, index = torch.topk(probs, k, dim=-1, sorted=False)  # (L, R, H, k)
            self._parts.append(("topk", positions, np.full(len(positions), key_start), values.cpu(), index.cpu()))
        else:
            probs = probs.cpu()
            l, r, h, key = torch.nonzero(probs > cfg.row_threshold, as_tuple=True)
            self._parts.append(("coo", positions[r.numpy()], l, h, key + key_start, probs[l, r, h, key]))

    def __len__(self) -> int:
        return sum(len(p[1]) for p in self._parts)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every kept entry as flat arrays: query, layer, head, key (token positions) and weight."""
        cols: dict[str, list[np.ndarray]] = {name: [] for name in ("query", "layer", "head", "key", "weight")}
        by_k: dict[int, list[tuple]] = {}
        for part in self._parts:
            if part[0] == "topk":  # rows with the same k are stacked: one pass per k, not per row
                by_k.setdefault(part[3].shape[-1], []).append(part)
            else:
                _, queries, l, h, key, w = part
                for name, v in zip(("query", "layer", "head", "key", "weight"), (queries, l, h, key, w)):
                    cols[name].append(v if isinstance(v, np.ndarray) else v.numpy())
        for k, parts in by_k.items():
            positions = np.concatenate([p[1] for p in parts])
            key_start = np.concatenate([p[2] for p in parts])
            values = torch.cat([p[3] for p in parts], dim=1).numpy()  # (L, R, H, k)
            index = torch.cat([p[4] for p in parts], dim=1).numpy()
            n_layer, n_rows, n_head, _ = values.shape
            layer, row, head, _ = np.indices(values.shape).reshape(4, -1)
            cols["query"].append(positions[row])
            cols["layer"].append(layer)
            cols["head"].append(head)
            cols["key"].append(index.reshape(-1) + key_start[row])
            cols["weight"].append(values.reshape(-1))
        out = {name: (np.concatenate(v) if v else np.zeros(0)) for name, v in cols.items()}
        for name in ("query", "layer", "head", "key"):
            out[name] = out[name].astype(np.int64)
        out["weight"] = out["weight"].astype(np.float64)
        keep = out["weight"] > max(self.config.row_threshold, 0.0)
        return {name: v[keep] for name, v in out.items()}


@dataclass
class NoteArcs:
    """Arcs between notes as parallel arrays (note ids index `notes` of the decoded piece)."""

    query: np.ndarray
    key: np.ndarray
    layer: np.ndarray
    head: np.ndarray
    weight: np.ndarray
    note_token: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # NOTE_ON position per note

    def __len__(self) -> int:
        return len(self.query)

    def as_dict_rows(self) -> list[dict[str, Any]]:
        """The arcs as arcs.json rows, sorted by query note, layer, head, then heaviest first."""
        cols = (self.query.tolist(), self.key.tolist(), self.layer.tolist(), self.head.tolist(), self.weight.tolist())
        return [{"query": q, "key": k, "layer": l, "head": h, "weight": w} for q, k, l, h, w in zip(*cols)]


def token_owners(tokenizer, ids) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """(notes, note of each token or -1, owner note of each token for arcs or -1, NOTE_ON position per note)."""
    ids = np.asarray(ids, np.int64)
    notes, note_index = tokenizer.decode_with_index(ids)
    kinds = tokenizer.token_type(ids)
    names = tokenizer.type_names
    is_on = kinds == names.index("NOTE_ON")
    owns = is_on | (kinds == names.index("VELOCITY"))
    owner = np.where(owns, note_index, -1)
    note_token = np.full(len(notes), -1, np.int64)
    on = np.flatnonzero(is_on & (note_index >= 0))
    note_token[note_index[on]] = on
    return notes, note_index, owner, note_token


def aggregate(entries: dict[str, np.ndarray], owner: np.ndarray, query_note: np.ndarray, n_layer: int,
              n_head: int, config: ArcsConfig) -> NoteArcs:
    """Token-level entries -> per (query note, layer, head) the top_n key notes by summed weight."""
    q = query_note[entries["query"]]
    k = owner[entries["key"]]
    keep = (q >= 0) & (k >= 0) & (q != k)
    q, k = q[keep], k[keep]
    layer, head, w = entries["layer"][keep], entries["head"][keep], entries["weight"][keep]
    n_notes = max(int(owner.max(initial=-1)) + 1, int(query_note.max(initial=-1)) + 1, 1)
    group = (q * n_layer + layer) * n_head + head
    combined, inverse = np.unique(group * n_notes + k, return_inverse=True)
    sums = np.bincount(inverse.reshape(-1), weights=w, minlength=len(combined))
    group, k = combined // n_notes, combined % n_notes
    order = np.lexsort((k, -sums, group))  # per group heaviest first, ties: lower key first
    group, k, sums = group[order], k[order], sums[order]
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1] if len(group) else np.zeros(0, np.int64)
    rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    keep = (rank < config.top_n) & (sums >= max(config.min_weight, 1e-12))
    group, k, sums = group[keep], k[keep], np.minimum(sums[keep], 1.0)
    head = group % n_head
    layer = (group // n_head) % n_layer
    return NoteArcs(query=group // (n_head * n_layer), key=k, layer=layer, head=head, weight=sums)


def note_arcs(tokenizer, ids, recorder: AttentionRecorder, n_layer: int, n_head: int) -> tuple[Any, NoteArcs]:
    """(notes, arcs between them) of the token sequence `ids` from what `recorder` captured."""
    notes, note_index, owner, note_token = token_owners(tokenizer, ids)
    kinds = tokenizer.token_type(np.asarray(ids, np.int64))
    query_note = np.where(kinds == tokenizer.type_names.index("NOTE_ON"), note_index, -1)
    arcs = aggregate(recorder.arrays(), owner, query_note, n_layer, n_head, recorder.config)
    arcs.note_token = note_token
    return notes, arcs


def arcs_document(tokenizer, ids, recorder: AttentionRecorder, model_config, primer_length: int = 0,
                  primer_mask: np.ndarray | None = None, **extra: Any) -> dict:
    """The arcs.json dict (validated) of a piece: notes with their NOTE_ON positions, arcs, model and tokenizer.

    A note is a primer note when its NOTE_ON lies in the first `primer_length` tokens, or where
    `primer_mask` (bool per decoded note) says so.
    """
    notes, arcs = note_arcs(tokenizer, ids, recorder, model_config.n_layer, model_config.n_head)
    primer = arcs.note_token < primer_length if primer_mask is None else np.asarray(primer_mask, bool)
    note_rows = [{"pitch": int(notes.pitch[i]), "start": float(notes.start[i]), "end": float(notes.end[i]),
                  "velocity": int(notes.velocity[i]), "token": int(arcs.note_token[i]),
                  "primer": bool(primer[i])} for i in range(len(notes))]
    arc_rows = arcs.as_dict_rows()
    return build_arcs(note_rows, arc_rows, n_layer=model_config.n_layer, n_head=model_config.n_head,
                      model=model_config.to_dict(), tokenizer=tokenizer.to_dict(),
                      arcs_params=recorder.config.to_dict(), **extra)


def query_rows(tokenizer, ids) -> np.ndarray:
    """Boolean per token: is it a NOTE_ON (a row the arcs need)?"""
    return tokenizer.token_type(np.asarray(ids, np.int64)) == tokenizer.type_names.index("NOTE_ON")


@torch.no_grad()
def teacher_force(model, ids: Tensor, cache, recorders: list[AttentionRecorder] | None = None,
                  queries: np.ndarray | None = None, chunk: int = 256) -> Tensor:
    """Feed ids (B, T) into `cache` in chunks; record the attention rows marked in `queries` (B, T).

    Returns the logits of the last position, (B, vocab). Positions count from the cache's length.
    """
    b, t = ids.shape
    logits = None
    for start in range(0, t, chunk):
        part = ids[:, start : start + chunk]
        first = cache.length
        key_start = cache.length - cache.n_past
        rows = None if recorders is None else [np.flatnonzero(queries[i, start : start + chunk]) for i in range(b)]
        want = rows is not None and any(len(r) for r in rows)
        out = model(part, cache=cache, return_attention=want)
        logits = out.logits[:, -1]
        if want:
            probs = torch.stack(out.attentions)  # (L, B, H, Lq, n)
            for i, r in enumerate(rows):
                if len(r):
                    recorders[i].add(first + r, key_start, probs[:, i][:, :, torch.from_numpy(r)].transpose(1, 2))
    return logits


def attend(model, ids, tokenizer, *, config: ArcsConfig | None = None, primer_length: int = 0,
           primer_mask: np.ndarray | None = None, chunk: int = 256, **extra: Any) -> dict:
    """Arcs (the arcs.json dict) of an existing token sequence, by teacher forcing through the model.

    `ids` is what the model reads, starting with BOS (as `musicgpt generate` writes it); primer
    notes as in `arcs_document`.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    recorder = AttentionRecorder(config)
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache()
        device = next(model.parameters()).device
        teacher_force(model, torch.from_numpy(ids)[None].to(device), cache, [recorder],
                      query_rows(tokenizer, ids)[None], chunk=chunk)
    finally:
        model.train(was_training)
    return arcs_document(tokenizer, ids, recorder, model.config, primer_length, primer_mask, **extra)
