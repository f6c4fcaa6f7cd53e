"""Influence: how much a query note's tokens' NLL rises when one past note is hidden from the model.

The query note's tokens are the ones the arcs give it (its NOTE_ON and the VELOCITY right before it); its
NLL is -log p of each given everything before it, summed. A past note is hidden by masking: every
position keeps its token and its place, and no later token may attend to the hidden note's tokens (its
VELOCITY, NOTE_ON and, if it came before the query, its NOTE_OFF), in any layer. Masking, not removal:
removing the tokens would move every later token closer to everything before it (relative attention reads
those distances), take the note's VELOCITY away from the notes after it that share it, and leave its
NOTE_OFF ending nothing, so the change would mix "this note is gone" with "the piece around it changed".
What masking costs: the model never saw a context with holes in it.

The context of a query note is the n_ctx tokens up to its NOTE_ON (all of them for a note within the first
n_ctx tokens: what teacher forcing sees). Costs: one run of the context, then per hidden note the rows from
its first token to the query (positions before it cannot change: `musicgpt.arcs.forward` reuses them), in
batches of `batch` hidden notes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from musicgpt.arcs.capture import token_owners
from musicgpt.arcs.forward import Trace, run, trace
from musicgpt.errors import ConfigError


@dataclass
class QueryContext:
    """A query note in its context: the segment of tokens, the targets, and the past notes' tokens."""

    ids: np.ndarray  # (T,) the segment: tokens offset ... of the piece, ending with the query's NOTE_ON
    offset: int  # the segment's first position in the piece
    note: int  # the query note
    targets: np.ndarray  # segment positions of the query note's tokens (VELOCITY?, NOTE_ON)
    past: np.ndarray  # the past notes (ids), in order of their first token
    tokens: list[np.ndarray]  # per past note: its segment positions before the first target
    owner: np.ndarray  # (T,) per segment position: the note whose arcs it counts for, -1: none


@dataclass
class Maps:
    """The token -> note maps of a piece (token_owners), computed once for all its query notes."""

    notes: object
    note_index: np.ndarray
    owner: np.ndarray
    note_token: np.ndarray


def piece_maps(tokenizer, ids) -> Maps:
    """token_owners of `ids` as a Maps."""
    return Maps(*token_owners(tokenizer, np.asarray(ids, np.int64)))


def query_context(ids, maps: Maps, note: int, n_ctx: int) -> QueryContext:
    """The context of query `note` (see the module docstring) and the tokens of each past note in it."""
    ids = np.asarray(ids, np.int64)
    if not 0 <= note < len(maps.note_token) or maps.note_token[note] < 0:
        raise ConfigError(f"influence: note {note} is not a note of the piece (0..{len(maps.note_token) - 1})")
    on = int(maps.note_token[note])
    offset = max(0, on + 1 - n_ctx)
    targets = np.flatnonzero(maps.owner[offset : on + 1] == note)  # (VELOCITY,) NOTE_ON
    first = int(targets.min())
    before = maps.note_index[offset : offset + first]
    past = [n for n in dict.fromkeys(before[before >= 0].tolist()) if n != note and maps.note_token[n] >= offset]
    tokens = [np.flatnonzero(before == n) for n in past]
    return QueryContext(ids[offset : on + 1], offset, note, targets, np.asarray(past, np.int64), tokens,
                        maps.owner[offset : on + 1])


def targets_nll(logits: torch.Tensor, ids: np.ndarray, targets: np.ndarray, start: int = 0) -> np.ndarray:
    """Per batch row: the summed NLL of tokens ids[targets] from logits (B, R, V) of rows start ... ."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, R, V)
    rows = torch.as_tensor(targets - 1 - start)
    picked = logp[:, rows, torch.as_tensor(ids[targets])]  # (B, len(targets))
    return (-picked.sum(-1)).double().numpy()


def masked_nll(model, ctx: QueryContext, tr: Trace, masks: list[np.ndarray], *, batch: int = 8) -> np.ndarray:
    """The query note's NLL with each set of segment positions in `masks` hidden, (len(masks),). Rows before a
    set's first position are the unmasked run's; sets with similar first positions share a batch (`_groups`)."""
    last = int(ctx.targets.max())  # rows up to last - 1 predict the targets
    ids = torch.as_tensor(ctx.ids[:last])
    firsts = np.array([int(m.min()) for m in masks], np.int64)
    out = np.empty(len(masks))
    for group in _groups(firsts, last, batch):
        start = int(firsts[group].min())
        key_mask = torch.zeros(len(group), last, dtype=torch.bool)
        for row, j in enumerate(group):
            key_mask[row, torch.as_tensor(masks[j])] = True
        prefix = ([k[:, :start] for k in tr.keys], [v[:, :start] for v in tr.values])
        got = run(model, ids[None].expand(len(group), -1), start=start, prefix=prefix, key_mask=key_mask)
        out[group] = targets_nll(got["logits"], ctx.ids, ctx.targets, start)
    return out


def _groups(firsts: np.ndarray, last: int, batch: int, waste: float = 0.25) -> list[np.ndarray]:
    """Mask sets in batches of at most `batch`, nearest first; a set joins a batch only while the rows the batch
    computes (its size times the rows from its earliest first position) exceed the rows its sets need alone by
    at most `waste` (a far note beside near ones would make every one of them recompute from the far one)."""
    groups: list[list[int]] = []
    need = 0
    for j in np.argsort(-firsts, kind="stable").tolist():
        rows = last - int(firsts[j])
        if groups and len(groups[-1]) < batch and (len(groups[-1]) + 1) * rows <= (1 + waste) * (need + rows):
            groups[-1].append(j)
            need += rows
        else:
            groups.append([j])
            need = rows
    return [np.asarray(g, np.int64) for g in groups]


def base_nll(ctx: QueryContext, tr: Trace) -> float:
    """The query note's NLL with nothing hidden, from the unmasked run."""
    return float(targets_nll(tr.logits[None], ctx.ids, ctx.targets)[0])


@torch.no_grad()
def influence(model, ctx: QueryContext, tr: Trace | None = None, candidates=None, *, batch: int = 8) -> np.ndarray:
    """NLL rise (nats) of the query note when each past note in `candidates` (indices into ctx.past; default all)
    is hidden: (len(candidates),). Positive: the note helped predict the query."""
    tr = tr if tr is not None else trace(model, ctx.ids, [len(ctx.ids) - 1])
    chosen = np.arange(len(ctx.past)) if candidates is None else np.asarray(candidates, np.int64)
    if not len(chosen):
        return np.zeros(0)
    return masked_nll(model, ctx, tr, [ctx.tokens[i] for i in chosen], batch=batch) - base_nll(ctx, tr)

