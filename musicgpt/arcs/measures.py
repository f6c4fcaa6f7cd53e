"""Measures of "this past note shaped that note": attention, norm, rollout (cheap) and influence (the reference).

Every measure scores, for a query note, the earlier notes of its context, per layer and head where it has
them. The query row of a note is its NOTE_ON's row, as the arcs have always been (docs/arcs-format.md);
a key note's score is the sum over its tokens (its NOTE_ON and the VELOCITY before it), as `aggregate` sums.

    attention  the softmax weight A[h, q, j] (the arcs as they were)
    norm       A[h, q, j] * ||v_j W_O^h||, the size of what key j adds to the head's output through the
               output projection (Kobayashi et al. 2020), as shares of the row's total
    rollout    attention propagated down through the layers with the residual (Abnar and Zuidema 2020):
               R_l = (A_l + I) / 2 @ R_{l-1} with A_l the head mean; layer l head h is
               (A_l^h + I) / 2 @ R_{l-1}, so the head mean of the last layer is the whole rollout
    influence  how much the query note's tokens' NLL rises when one past note is hidden
               (`musicgpt.arcs.influence`); no layers or heads

Influence on demand for one note (`note_influence`) and for a whole piece (`influence_arcs`) scores only the
past notes a cheap measure ranks highest; `remeasure` turns a document's arcs into another measure's, and
`with_measures` gives one document the arcs of several (arcs.json's "measures", the viewer's measure switch).

Every cheap measure's row sums to 1 over the keys (shares), as attention does, so any of them fits
arcs.json's weights. For a piece longer than n_ctx tokens the cheap measures beyond `attention` are
computed over segments (see `measure_stream`).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import Tensor

from musicgpt.arcs.capture import ArcsConfig, NoteArcs, NoteArcsStream, attend_notes, query_rows
from musicgpt.arcs.format import (DEFAULT_MEASURE, MEASURES, ArcsDocument,  # noqa: F401 (DEFAULT_MEASURE: re-exported)
                                  document_measure, document_measures, validate_arcs)
from musicgpt.arcs.forward import Trace, trace
from musicgpt.arcs.influence import Maps, QueryContext, influence, piece_maps, query_context
from musicgpt.errors import ConfigError
from musicgpt.model.prefill import token_nll_of

CHEAP = ("attention", "norm", "rollout")


def check_measure(name: str, what: str = "measure") -> str:
    """`name` when it is a measure, else a ConfigError naming `what` (the flag) and the choices."""
    if name not in MEASURES:
        raise ConfigError(f"{what}: unknown measure {name!r}; choose one of {', '.join(MEASURES)}")
    return name


def check_measures(names: str, what: str = "--measure") -> list[str]:
    """The measures of a comma-separated list ("attention,norm"), each once, in order; a ConfigError naming `what`
    for an unknown or repeated one."""
    out = [check_measure(name.strip(), what) for name in names.split(",")]
    if len(set(out)) < len(out):
        raise ConfigError(f"{what}: a measure is named twice in {names!r}")
    return out


def arc_rows(arcs: NoteArcs) -> list[dict]:
    """The arcs of `arcs` as arcs.json dicts, weights rounded as `build_arcs` rounds them (4 significant digits)."""
    arcs.weight = np.minimum(1.0, [float(f"{w:.4g}") for w in arcs.weight.tolist()])
    return arcs.as_dict_rows()


def rollout_matrices(mean_probs: list[Tensor]) -> list[Tensor]:
    """R_l for every layer: (T, T) each, R_l = (A_l + I) / 2 @ R_{l-1}, R_{-1} = I."""
    eye = torch.eye(mean_probs[0].shape[-1], dtype=torch.float64)
    out, below = [], eye
    for a in mean_probs:
        below = (0.5 * a.double() + 0.5 * eye) @ below
        out.append(below)
    return out


def token_scores(tr: Trace, rows, measure: str) -> Tensor:
    """Scores (L, H, R, T) of the query rows `rows` (positions, as given to `trace`) over every key token."""
    rows = torch.as_tensor(np.asarray(rows, np.int64))
    attention = torch.stack(tr.row_probs).double()  # (L, H, R, T)
    if measure == "attention":
        return attention
    if measure == "norm":
        weighted = attention * torch.stack(tr.value_norms).double()[:, :, None, :]  # (L, H, R, T)
        return weighted / weighted.sum(-1, keepdim=True).clamp_min(1e-30)
    if measure == "rollout":
        t = attention.shape[-1]
        own = torch.zeros(len(rows), t, dtype=torch.float64)
        own[torch.arange(len(rows)), rows] = 1.0  # (R, T): the query's own row of I
        below = [torch.eye(t, dtype=torch.float64), *rollout_matrices(tr.mean_probs)[:-1]]
        return torch.stack([(0.5 * attention[l] + 0.5 * own) @ below[l] for l in range(len(below))])
    raise ConfigError(f"measure: {measure!r} has no token scores (cheap measures: {', '.join(CHEAP)})")


def note_scores(scores: Tensor, owner: np.ndarray, query_note: np.ndarray, n_notes: int) -> np.ndarray:
    """(L, H, R, N): per query row the sum of `scores` (L, H, R, T) over each note's tokens (`owner`, -1: no
    note); the query's own note gets NaN."""
    owner = np.asarray(owner)
    l, h, r, t = scores.shape
    out = np.zeros((l, h, r, n_notes + 1))
    index = np.where(owner[:t] >= 0, owner[:t], n_notes)  # tokens of no note go to a spare column
    np.add.at(out, (slice(None), slice(None), slice(None), index), scores.numpy())
    out = out[..., :n_notes]
    for i, q in enumerate(np.asarray(query_note)):
        if q >= 0:
            out[:, :, i, q] = np.nan
    return out


def measure_stream(model, ids, tokenizer, measure: str, *, config: ArcsConfig | None = None,
                   progress: bool = False) -> NoteArcsStream:
    """Note arcs (and each token's NLL) of `ids` by a cheap measure other than attention, as `attend_notes` gives
    attention's.

    A piece of at most n_ctx tokens is one segment: exact. A longer one is read in blocks of n_ctx / 2 query
    tokens, each with the n_ctx tokens up to its end as its segment: a query sees at least n_ctx / 2 tokens
    before it, as in generation's sliding window, but the tokens early in a segment lose what lies before it
    (teacher forcing through the sliding window does not), so beyond n_ctx tokens these arcs approximate.
    """
    from tqdm.auto import tqdm

    if measure not in ("norm", "rollout"):
        raise ConfigError(f"measure: measure_stream computes norm and rollout, not {measure!r}")
    ids = np.asarray(ids, np.int64).reshape(-1)
    cfg = model.config
    stream = NoteArcsStream(tokenizer, ids, cfg.n_layer, cfg.n_head, config)
    wanted = query_rows(tokenizer, ids)
    n_ctx = cfg.n_ctx
    block = len(ids) if len(ids) <= n_ctx else max(1, n_ctx // 2)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(ids), unit="tok", desc=measure, disable=not progress, leave=False, file=sys.stderr)
    try:
        for first in range(0, len(ids), block):
            end = min(first + block, len(ids))
            seg = max(0, end - n_ctx)
            rows = np.flatnonzero(wanted[first:end]) + first - seg  # segment positions of the block's NOTE_ONs
            tr = trace(model, ids[seg:end], rows)
            logits = tr.logits[first - seg :]  # rows first ... end-1 predict tokens first+1 ... end
            stop = min(end + 1, len(ids))
            stream.token_nll[first + 1 : stop] = token_nll_of(logits[: stop - first - 1],
                                                              torch.from_numpy(ids[first + 1 : stop]))
            if len(rows):
                scores = token_scores(tr, rows, measure)  # (L, H, R, T)
                stream.add(rows + seg, seg, scores.float().permute(0, 2, 1, 3))  # (L, R, H, T)
            stream.end_chunk()
            bar.update(end - first)
    finally:
        bar.close()
        model.train(was_training)
    return stream


def remeasure(model, tokenizer, doc: dict, ids, measure: str, config: ArcsConfig | None = None, *,
              candidates: int | None = 16, progress: bool = False) -> ArcsDocument:
    """The arcs.json dict `doc` of the token sequence `ids` with its arcs made by `measure` instead (notes, header
    and surprisal kept; "measure" set; a "measures" object left out). `candidates`: influence's, as
    `influence_arcs`."""
    check_measure(measure)
    config = config or ArcsConfig(**doc.get("arcs_params", {}))
    doc = {k: v for k, v in doc.items() if k != "measures"}
    if measure == "attention" and document_measure(doc) == "attention":
        return ArcsDocument(doc, measure=measure)
    if measure == "influence":
        arcs = influence_arcs(model, ids, piece_maps(tokenizer, ids), config, candidates=candidates, progress=progress)
    elif measure == "attention":
        arcs = attend_notes(model, ids, tokenizer, config=config, progress=progress).result()
    else:
        arcs = measure_stream(model, ids, tokenizer, measure, config=config, progress=progress).result()
    if len(arcs.note_token) != len(doc["notes"]):
        raise ConfigError(f"{measure}: the token ids decode to {len(arcs.note_token)} notes, the arcs document has "
                          f"{len(doc['notes'])}")
    out = ArcsDocument(doc, measure=measure, arcs=arc_rows(arcs))
    validate_arcs(out, source=f"arcs by {measure}")
    return out


def with_measures(model, tokenizer, doc: dict, ids, measures: list[str], config: ArcsConfig | None = None, *,
                  candidates: int | None = 16, progress: bool = False) -> ArcsDocument:
    """`doc` with the arcs of several measures (arcs.json's "measures"): `measures[0]`'s in "arcs", drawn first,
    the others' under "measures"; the viewer switches between them. Arcs `doc` already has are reused."""
    have = document_measures(doc)
    made = {m: have[m] if m in have else
            remeasure(model, tokenizer, doc, ids, m, config, candidates=candidates, progress=progress)["arcs"]
            for m in dict.fromkeys(check_measure(m) for m in measures)}
    first, *rest = made
    base = {k: v for k, v in doc.items() if k != "measures"}
    out = ArcsDocument(base, measure=first, arcs=made[first], **({"measures": {m: made[m] for m in rest}} if rest else {}))
    validate_arcs(out, source="arcs of several measures")
    return out


def rank_candidates(tr: Trace, ctx: QueryContext, n_notes: int, count: int | None, rank_by: str) -> np.ndarray:
    """Indices into ctx.past of the `count` past notes `rank_by` (a cheap measure, averaged over every layer and
    head: the aggregate that finds influential notes best, docs/benchmarks.md) scores highest, in order of their
    tokens; every past note when count is None."""
    if count is None or count >= len(ctx.past):
        return np.arange(len(ctx.past))
    on = len(ctx.ids) - 1
    scores = note_scores(token_scores(tr, [on], rank_by), ctx.owner, np.array([ctx.note]), n_notes)
    overall = scores[:, :, 0].mean((0, 1))[ctx.past]  # (P,)
    return np.sort(np.argsort(-overall, kind="stable")[:count])


@torch.no_grad()
def note_influence(model, ids, maps: Maps, note: int, *, candidates: int | None = 16, rank_by: str = "attention",
                   batch: int = 1) -> dict[int, float]:
    """On demand, for one query note: {past note: NLL rise in nats when it is hidden}, for the `candidates` past
    notes `rank_by` ranks highest (None: every past note; the others are not scored). batch: ablations per
    forward pass (on the CPU one at a time measured fastest: a batch recomputes rows from its earliest note)."""
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
    from tqdm.auto import tqdm

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
