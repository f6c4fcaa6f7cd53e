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
    set's first position are the unmasked run's; sets with similar first positions share a batch."""
    last = int(ctx.targets.max())  # rows up to last - 1 predict the targets
    ids = torch.as_tensor(ctx.ids[:last])
    firsts = np.array([int(m.min()) for m in masks], np.int64)
    order = np.argsort(-firsts, kind="stable")  # nearest first: the cheapest batches together
    out = np.empty(len(masks))
    for i in range(0, len(order), batch):
        group = order[i : i + batch]
        start = int(firsts[group].min())
        key_mask = torch.zeros(len(group), last, dtype=torch.bool)
        for row, j in enumerate(group):
            key_mask[row, torch.as_tensor(masks[j])] = True
        prefix = ([k[:, :start] for k in tr.keys], [v[:, :start] for v in tr.values])
        got = run(model, ids[None].expand(len(group), -1), start=start, prefix=prefix, key_mask=key_mask)
        out[group] = targets_nll(got["logits"], ctx.ids, ctx.targets, start)
    return out


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


def rank_candidates(tr: Trace, ctx: QueryContext, n_notes: int, count: int | None, rank_by: str) -> np.ndarray:
    """Indices into ctx.past of the `count` past notes `rank_by` (a cheap measure, the last layer's head mean,
    as the viewer draws) scores highest, in order of their tokens; every past note when count is None."""
    from musicgpt.arcs.measures import note_scores, token_scores

    if count is None or count >= len(ctx.past):
        return np.arange(len(ctx.past))
    on = len(ctx.ids) - 1
    scores = note_scores(token_scores(tr, [on], rank_by), ctx.owner, np.array([ctx.note]), n_notes)
    viewer = scores[-1, :, 0].mean(0)[ctx.past]  # (P,)
    return np.sort(np.argsort(-viewer, kind="stable")[:count])


@torch.no_grad()
def note_influence(model, ids, maps: Maps, note: int, *, candidates: int | None = 16, rank_by: str = "attention",
                   batch: int = 8) -> dict[int, float]:
    """On demand, for one query note: {past note: NLL rise in nats when it is hidden}, for the `candidates` past
    notes `rank_by` ranks highest (None: every past note; the others are not scored)."""
    ctx = query_context(ids, maps, note, model.config.n_ctx)
    tr = trace(model, ctx.ids, [len(ctx.ids) - 1])
    chosen = rank_candidates(tr, ctx, len(maps.note_token), candidates, rank_by)
    rises = influence(model, ctx, tr, chosen, batch=batch)
    return {int(ctx.past[i]): float(r) for i, r in zip(chosen, rises)}


def influence_arcs(model, ids, maps: Maps, config, *, candidates: int | None = 16, rank_by: str = "attention",
                   progress: bool = False):
    """NoteArcs of every query note by influence: per note the past notes that raise its NLL when hidden, as shares
    of the rises (negative rises dropped), the `config.top_n` largest of at least `config.min_weight`. Influence
    has no layers or heads: every arc is at the last layer, head 0."""
    import sys

    from tqdm.auto import tqdm

    from musicgpt.arcs.capture import NoteArcs

    cols: dict[str, list] = {"query": [], "key": [], "weight": []}
    queries = [n for n in range(len(maps.note_token)) if maps.note_token[n] >= 0]
    for note in tqdm(queries, unit="note", desc="influence", disable=not progress, leave=False, file=sys.stderr):
        rises = note_influence(model, ids, maps, note, candidates=candidates, rank_by=rank_by)
        if not rises:
            continue
        keys = np.array(list(rises), np.int64)
        gain = np.maximum(np.array(list(rises.values())), 0.0)
        if gain.sum() <= 0:
            continue
        share = gain / gain.sum()
        order = np.lexsort((keys, -share))[: config.top_n]
        order = order[share[order] >= max(config.min_weight, 1e-12)]
        cols["query"].extend([note] * len(order))
        cols["key"].extend(keys[order].tolist())
        cols["weight"].extend(share[order].tolist())
    n = len(cols["query"])
    return NoteArcs(query=np.array(cols["query"], np.int64), key=np.array(cols["key"], np.int64),
                    layer=np.full(n, model.config.n_layer - 1, np.int64), head=np.zeros(n, np.int64),
                    weight=np.array(cols["weight"], np.float64), note_token=maps.note_token)
