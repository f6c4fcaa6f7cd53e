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
KV cache that generation uses (`musicgpt.model.prefill.teacher_force`, generation's prefill: each token
sees the last n_ctx tokens, itself included), so arcs of a generated piece computed by `attend` equal
those captured while generating it.

Memory. An `AttentionRecorder` keeps every captured row until the end (generation records one row
per step and learns the notes only when the piece is finished): about L x H x row_top_k x 12 bytes
per NOTE_ON. Teacher forcing knows the whole sequence up front, so `NoteArcsStream` decodes the
notes first and aggregates each chunk's rows to note arcs as soon as the chunk is done, then drops
them: what it holds is the note arcs so far, at most notes x L x H x top_n of them in compact numpy
arrays (20 bytes per arc), plus one chunk's rows. A query note's arcs depend only on its own
NOTE_ON row and on which notes own the keys, so the result equals the whole-piece aggregation.

Surprisal. Teacher forcing also keeps, per token, its NLL -log p(token | the tokens before it) from the
chunk's logits (log_softmax in float32 of the raw logits: one float per token, not the logits); the
first token (BOS) is not predicted (NaN). A note's NLL (`note_nll`) sums its tokens of the token->note
map (NOTE_ON, the VELOCITY right before it, its NOTE_OFF); tokens not predicted count 0.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from musicgpt.arcs.format import build_arcs
from musicgpt.arcs.primer import mark_primer_notes
from musicgpt.errors import ConfigError
from musicgpt.model.prefill import PREFILL_CHUNK, teacher_force
from musicgpt.music.midi import primer_track_notes
from musicgpt.music.notes import Notes
from musicgpt.music.scores import read_notes
from musicgpt.tokens.infill import spans as infill_spans
from musicgpt.tokens.registry import tokenizer_of


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

    def end_chunk(self) -> None:
        """Called after each teacher-forced chunk: a recorder keeps its rows (see NoteArcsStream)."""

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


def note_nll(note_index: np.ndarray, token_nll: np.ndarray, n_notes: int) -> np.ndarray:
    """Per note: the sum of `token_nll` over its tokens (`note_index`, as decode_with_index gives it); NaN
    tokens (not predicted) count 0, and a note with no predicted token is NaN. (n_notes,) float64."""
    note_index, token_nll = np.asarray(note_index).reshape(-1), np.asarray(token_nll, np.float64).reshape(-1)
    mine = (note_index >= 0) & ~np.isnan(token_nll)
    total = np.bincount(note_index[mine], weights=token_nll[mine], minlength=n_notes)
    counted = np.bincount(note_index[mine], minlength=n_notes)
    return np.where(counted > 0, total, np.nan)


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


def _query_notes(tokenizer, ids: np.ndarray, note_index: np.ndarray) -> np.ndarray:
    """Per token: the note whose query row it is (its NOTE_ON), else -1."""
    return np.where(tokenizer.token_type(ids) == tokenizer.type_names.index("NOTE_ON"), note_index, -1)


def note_arcs(tokenizer, ids, recorder, n_layer: int, n_head: int) -> tuple[Any, NoteArcs]:
    """(notes, arcs between them) of the token sequence `ids` from what `recorder` captured.

    `recorder` is an AttentionRecorder (its rows are aggregated now) or a NoteArcsStream of `ids`
    (what it aggregated while teacher forcing)."""
    if isinstance(recorder, NoteArcsStream):
        return recorder.notes, recorder.result()
    ids = np.asarray(ids, np.int64)
    notes, note_index, owner, note_token = token_owners(tokenizer, ids)
    arcs = aggregate(recorder.arrays(), owner, _query_notes(tokenizer, ids, note_index), n_layer, n_head,
                     recorder.config)
    arcs.note_token = note_token
    return notes, arcs


_COLUMNS = (("query", np.int32), ("key", np.int32), ("layer", np.int16), ("head", np.int16), ("weight", np.float64))
_RESERVE = 1 << 26  # arcs reserved up front at most (1.3 GB of address space, resident only as it fills)


class NoteArcsStream:
    """Note arcs of a known token sequence, aggregated chunk by chunk while teacher forcing it.

    It takes each chunk's rows through `add` (like an AttentionRecorder); `end_chunk` aggregates them
    to note arcs and drops them. Memory: the notes and per-token maps (O(tokens)), the note arcs so
    far (int32 query and key, int16 layer and head, float64 weight: 20 bytes an arc; at most
    notes x n_layer x n_head x top_n arcs), and one chunk's rows (at most chunk x n_layer x n_head x
    row_top_k entries). The arcs go into arrays reserved for that bound (pages become resident as
    they fill; past `_RESERVE` arcs they grow by doubling), so nothing is concatenated at the end.
    `result()` equals `aggregate` over every row of the piece at once, order included.
    """

    def __init__(self, tokenizer, ids, n_layer: int, n_head: int, config: ArcsConfig | None = None):
        ids = np.asarray(ids, np.int64).reshape(-1)
        self.config = config or ArcsConfig()
        self.n_layer, self.n_head = int(n_layer), int(n_head)
        self.notes, self.note_index, self.owner, self.note_token = token_owners(tokenizer, ids)
        self.query_note = _query_notes(tokenizer, ids, self.note_index)
        self.token_nll = np.full(len(ids), np.nan)  # filled by teacher_force(..., token_nll=...)
        queried = self.query_note[self.query_note >= 0]
        # A note has one NOTE_ON row in anything a tokenizer writes; should two rows share a note, their
        # weights add up, so the rows are kept to the end (no streaming) and aggregated together.
        self.streaming = len(np.unique(queried)) == len(queried)
        keys = min(self.config.top_n, max(len(self.notes) - 1, 0), self.config.row_top_k or len(self.notes))
        self.bound = len(queried) * self.n_layer * self.n_head * keys  # arcs at most
        self.rows = AttentionRecorder(self.config)  # the current chunk's rows
        self._arrays: list[np.ndarray] = [np.zeros(0, dtype) for _, dtype in _COLUMNS]  # the note arcs, reserved
        self.n_arcs = 0
        self._sorted = True

    def note_nll(self) -> np.ndarray:
        """Per note: the NLL of its tokens (see `note_nll`), from `token_nll`."""
        return note_nll(self.note_index, self.token_nll, len(self.notes))

    def add(self, positions, key_start: int, probs: Tensor) -> None:
        """Rows at token `positions`, as AttentionRecorder.add."""
        self.rows.add(positions, key_start, probs)

    def end_chunk(self) -> None:
        """Aggregate the rows taken since the last call to note arcs and drop them."""
        if self.streaming:
            self._flush()

    def _flush(self) -> None:
        if not len(self.rows):
            return
        arcs = aggregate(self.rows.arrays(), self.owner, self.query_note, self.n_layer, self.n_head, self.config)
        self.rows = AttentionRecorder(self.config)
        n, end = self.n_arcs, self.n_arcs + len(arcs)
        if end > len(self._arrays[0]):
            capacity = max(end, 2 * len(self._arrays[0]), min(self.bound, _RESERVE))
            grown = [np.empty(capacity, dtype) for _, dtype in _COLUMNS]
            for new, old in zip(grown, self._arrays):
                new[:n] = old[:n]
            self._arrays = grown
        for array, (name, _) in zip(self._arrays, _COLUMNS):
            array[n:end] = getattr(arcs, name)
        if len(arcs) and n and self._arrays[0][n - 1] > arcs.query[0]:
            self._sorted = False  # a time step written out of pitch order straddled the chunk boundary
        self.n_arcs = end

    def result(self) -> NoteArcs:
        """The note arcs of every row taken, sorted by query note, layer, head, then heaviest first (views of
        the stream's arrays)."""
        self._flush()
        columns = [array[: self.n_arcs] for array in self._arrays]
        if not self._sorted:
            # Every arc of a query note comes from its one row (one chunk), and each chunk's arcs are in
            # order: a stable sort by query note puts the chunks' arcs in order.
            order = np.argsort(columns[0], kind="stable")
            for column in columns:
                column[:] = column[order]
            self._sorted = True
        return NoteArcs(*columns, note_token=self.note_token)


def note_document(notes, arcs: NoteArcs, tokenizer, model_config, config: ArcsConfig, primer_length: int = 0,
                  primer_mask: np.ndarray | None = None, nll: np.ndarray | None = None,
                  parts: list[str] | None = None, **extra: Any) -> dict:
    """The arcs.json dict (validated) of decoded `notes` and their `arcs`; primer notes as in `arcs_document`;
    `nll` (per note, NaN: unknown) becomes each note's "nll", `parts` each note's "part" (infilling)."""
    primer = arcs.note_token < primer_length if primer_mask is None else np.asarray(primer_mask, bool)
    note_rows = [{"pitch": int(notes.pitch[i]), "start": float(notes.start[i]), "end": float(notes.end[i]),
                  "velocity": int(notes.velocity[i]), "token": int(arcs.note_token[i]),
                  "primer": bool(primer[i])} for i in range(len(notes))]
    extra.setdefault("measure", "attention")  # these arcs are attention (other measures: musicgpt.arcs.measures)
    for row, part in zip(note_rows, parts or ()):
        row["part"] = part
    if nll is not None:
        for row, value in zip(note_rows, np.asarray(nll, np.float64).tolist()):
            row["nll"] = None if math.isnan(value) else value
    return build_arcs(note_rows, arcs.as_dict_rows(), n_layer=model_config.n_layer, n_head=model_config.n_head,
                      model=model_config.to_dict(), tokenizer=tokenizer.to_dict(), arcs_params=config.to_dict(),
                      **extra)


def arcs_document(tokenizer, ids, recorder, model_config, primer_length: int = 0,
                  primer_mask: np.ndarray | None = None, nll: np.ndarray | None = None, **extra: Any) -> dict:
    """The arcs.json dict (validated) of a piece: notes with their NOTE_ON positions, arcs, model and tokenizer.

    A note is a primer note when its NOTE_ON lies in the first `primer_length` tokens, or where
    `primer_mask` (bool per decoded note) says so. `recorder`: as in `note_arcs`. `nll`: each note's NLL
    (default: a NoteArcsStream's `note_nll()`, else none).
    """
    notes, arcs = note_arcs(tokenizer, ids, recorder, model_config.n_layer, model_config.n_head)
    if nll is None and isinstance(recorder, NoteArcsStream):
        nll = recorder.note_nll()
    spans = infill_spans(tokenizer, ids)  # an infilling sequence: say which notes are prefix, middle, suffix
    parts = None if spans is None else [spans.part_of(int(t)) for t in arcs.note_token]
    return note_document(notes, arcs, tokenizer, model_config, recorder.config, primer_length, primer_mask, nll,
                         parts, **extra)


def query_rows(tokenizer, ids) -> np.ndarray:
    """Boolean per token: is it a NOTE_ON (a row the arcs need)?"""
    return tokenizer.token_type(np.asarray(ids, np.int64)) == tokenizer.type_names.index("NOTE_ON")


def attend_notes(model, ids, tokenizer, *, config: ArcsConfig | None = None, chunk: int = PREFILL_CHUNK,
                 progress: bool = False) -> NoteArcsStream:
    """Teacher-force `ids` (starting with BOS) and aggregate as it goes; the stream holds notes and arcs,
    and each token's NLL (`token_nll`, NaN for BOS) and each note's (`note_nll()`).

    Memory stays bounded by the arcs kept (see NoteArcsStream), whatever the length. progress: a tqdm
    bar over tokens on stderr.
    """
    from tqdm.auto import tqdm

    ids = np.asarray(ids, np.int64).reshape(-1)
    stream = NoteArcsStream(tokenizer, ids, model.config.n_layer, model.config.n_head, config)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(ids), unit="tok", desc="attend", disable=not progress, leave=False, dynamic_ncols=True,
               file=sys.stderr)
    try:
        device = next(model.parameters()).device
        teacher_force(model, torch.from_numpy(ids)[None].to(device), model.new_cache(), [stream],
                      query_rows(tokenizer, ids)[None], chunk=chunk, progress=bar.update,
                      token_nll=stream.token_nll[None])
    finally:
        bar.close()
        model.train(was_training)
    return stream


def primer_track_mask(tokenizer, ids, source) -> np.ndarray | None:
    """Bool per note of `ids` (as decoded): is it a note of the "primer" track of the MIDI file `source` (as
    `musicgpt generate` writes it)? None when `source` has no such track (every note is then the piece's)."""
    primer = primer_track_notes(source) if isinstance(source, (str, os.PathLike)) else None
    if primer is None:
        return None
    notes, primer = tokenizer.decode(ids), tokenizer.encode(primer).notes  # both rounded as the model reads them
    return mark_primer_notes(notes.start, notes.pitch, primer.start, primer.pitch, tokenizer.time_step)


def attend(model, piece, tokenizer=None, *, config: ArcsConfig | None = None, primer_length: int = 0,
           primer_mask: np.ndarray | None = None, chunk: int = PREFILL_CHUNK, progress: bool = False, **extra: Any) -> dict:
    """Arcs (the arcs.json dict) of a piece, by teacher forcing through the model.

    piece: token ids starting with BOS (what the model reads, as `musicgpt generate` writes it), Notes, or a
    MIDI/MusicXML/ABC file; a MIDI file written by `musicgpt generate` keeps its primer/continuation split (the
    notes of its "primer" track are marked as primer notes, as `musicgpt attend` marks them). tokenizer: default
    the one the model carries. Primer notes otherwise as in `arcs_document`; each note's "nll" is its surprisal
    (see `note_nll`). Rows are aggregated chunk by chunk (`attend_notes`); the dict itself holds every arc as a
    Python dict (a long piece: write it with `musicgpt attend`, which streams).
    """
    tokenizer = tokenizer if tokenizer is not None else tokenizer_of(model)
    if isinstance(piece, (str, os.PathLike, Notes)):
        notes = read_notes(piece) if isinstance(piece, (str, os.PathLike)) else piece
        ids = np.r_[tokenizer.bos_id, tokenizer.encode(notes).ids].astype(np.int64)
        if primer_mask is None and not primer_length:
            primer_mask = primer_track_mask(tokenizer, ids, piece)
        extra.setdefault("source", f"musicgpt attend {Path(piece).name}" if not isinstance(piece, Notes)
                         else "musicgpt attend")
    else:
        ids = piece
    stream = attend_notes(model, ids, tokenizer, config=config, chunk=chunk, progress=progress)
    return arcs_document(tokenizer, ids, stream, model.config, primer_length, primer_mask, **extra)
