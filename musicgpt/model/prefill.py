"""Prefill: feed token ids into a KV cache in chunks, keeping what the callers ask for on the way.

A cache with pinned tokens (a CONTROL header) takes chunks only while they fit its window; past it, where each
token's window is [header][its latest tokens], one token at a time, exactly as the decode step reads it.

Generation reads its prompt this way before the first step, guidance its unconditional prompt, and the
arcs (`musicgpt.arcs.capture.attend`) and the head atlas teacher-force whole pieces with it, so all of them
see exactly the windows the decode step sees. Per chunk it can hand the attention rows of chosen query
positions to recorders (any object with `add(positions, key_start, probs)` and `end_chunk()`: the arcs
room's `AttentionRecorder` and `NoteArcsStream`, the head atlas's accumulator) and keep each token's NLL.
The model knows token ids only: which rows are wanted (the NOTE_ONs, say) is the caller's to say.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["teacher_force", "token_nll_of", "PREFILL_CHUNK"]

PREFILL_CHUNK = 256  # tokens fed per forward pass: attention maps of 256 x n_ctx per head stay small


def token_nll_of(logits: Tensor, targets: Tensor) -> np.ndarray:
    """-log p(target) per row: log_softmax in float32 of logits (..., V), picked at targets (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (-logp.gather(-1, targets[..., None].to(logp.device))[..., 0]).cpu().numpy()


@torch.no_grad()
def teacher_force(model, ids: Tensor, cache, recorders: list | None = None, queries: np.ndarray | None = None,
                  chunk: int = PREFILL_CHUNK, progress=None, token_nll: np.ndarray | None = None) -> Tensor:
    """Feed ids (B, T) into `cache` in chunks; record the attention rows marked in `queries` (B, T).

    `recorders` (one per sequence: AttentionRecorder or NoteArcsStream) get each chunk's rows, then
    `end_chunk()`. `progress(n)` is called with the tokens of each chunk fed. `token_nll`, a (B, T) float
    array, gets -log p(ids[:, t] | what came before) for t >= 1 from the chunks' logits (t = 0 is predicted
    by logits from before this call: left as is). Returns the logits of the last position, (B, vocab).
    Positions count from the cache's length.
    """
    b, t = ids.shape
    logits = None
    start = 0
    while start < t:
        size = chunk
        if getattr(cache, "pinned", 0):  # past the window the pinned header is re-placed before every token
            room = cache.window - 1 - cache.length
            size = min(chunk, room) if room > 0 else 1
        part = ids[:, start : start + size]
        first = cache.length
        key_start = cache.length - cache.n_past
        rows = None if recorders is None else [np.flatnonzero(queries[i, start : start + size]) for i in range(b)]
        want = rows is not None and any(len(r) for r in rows)
        out = model(part, cache=cache, return_attention=want)
        if token_nll is not None:  # row j predicts token j + 1; the previous chunk's last row this chunk's first
            if logits is not None:
                token_nll[:, start] = token_nll_of(logits, part[:, 0])
            token_nll[:, start + 1 : start + part.shape[1]] = token_nll_of(out.logits[:, :-1], part[:, 1:])
        logits = out.logits[:, -1]
        if want:
            probs = torch.stack(out.attentions)  # (L, B, H, Lq, n)
            for i, r in enumerate(rows):
                if len(r):
                    recorders[i].add(first + r, key_start, probs[:, i][:, :, torch.from_numpy(r)].transpose(1, 2))
            del out, probs
        for recorder in recorders or ():
            recorder.end_chunk()
        if progress is not None:
            progress(part.shape[1])
        start += part.shape[1]
    return logits
