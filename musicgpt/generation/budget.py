"""How much memory a generation request needs, estimated before anything is allocated: the studio and the
command line refuse a request that would not fit, and say how many samples would.

Per sample (one row of the batch), float32 on the CPU:

- the KV cache: keys and values of every layer for its capacity (n_ctx + max(256, n_ctx // 2) tokens);
- the prefill's attention scores, one layer at a time: n_head x chunk x n_ctx;
- with arcs, the prefill's probabilities of every layer for a chunk and their copy while the top keys are
  taken (2 x n_layer x n_head x chunk x n_ctx), and the rows kept: n_layer x n_head x row_top_k entries of
  12 bytes (a float32 weight, an int64 key) for each query row, about QUERY_SHARE of the tokens (NOTE_ONs);
- guidance runs a second, unconditioned batch: its own KV cache and scores.

Measured on the bundled model (6 layers x 8 heads, d_model 384, n_ctx 1024) with a full 1,024-token primer
and 100 new tokens, peak RSS over a warmed-up process: 16 samples +555 MB without arcs (34.7 MB a sample;
estimated 36.7 MB), +2,264 MB with arcs (141 MB a sample; estimated 150 MB). The estimate errs a little high.
"""

from __future__ import annotations

from dataclasses import dataclass

from musicgpt.errors import ConfigError
from musicgpt.model.prefill import PREFILL_CHUNK

FLOAT = 4  # bytes of a float32
ROW_ENTRY = 12  # bytes of a kept attention entry: float32 weight and int64 key
QUERY_SHARE = 0.35  # of a piano piece's tokens, the NOTE_ONs whose attention rows the arcs keep
BUDGET_SHARE = 0.8  # of the memory available now, what one request may take (the rest: the process and others)
TYPICAL_TOKENS_PER_SECOND = 50  # dense piano writes ~35-50 tokens a second (a length in seconds stops there)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs: per sample, by part, and for the whole batch."""

    num_samples: int
    parts: dict[str, int]  # per sample: kv_cache, prefill, arcs (and guidance's share)

    @property
    def per_sample(self) -> int:
        """Bytes one sample of the batch needs."""
        return sum(self.parts.values())

    @property
    def total(self) -> int:
        """Bytes the whole batch needs."""
        return self.per_sample * self.num_samples


def estimate(config, num_samples: int, *, tokens: int, arcs_top_k: int | None = None, arcs: bool = False,
             guidance: bool = False, chunk: int = PREFILL_CHUNK) -> MemoryEstimate:
    """The memory of generating `num_samples` samples of `tokens` tokens each (primer and new) with a model of
    `config` (a GPTConfig); `arcs`: capturing attention arcs keeping `arcs_top_k` keys a row (None: all)."""
    n_ctx, n_layer, n_head = config.n_ctx, config.n_layer, config.n_head
    capacity = n_ctx + max(256, n_ctx // 2)
    kv = 2 * n_layer * config.d_model * capacity * FLOAT
    scores = n_head * min(chunk, n_ctx) * n_ctx * FLOAT
    parts = {"kv_cache": kv, "prefill": scores}
    if arcs:
        keys = n_ctx if arcs_top_k is None else min(arcs_top_k, n_ctx)
        rows = int(max(tokens, 0) * QUERY_SHARE) * n_layer * n_head * keys * ROW_ENTRY
        parts["arcs"] = 2 * n_layer * scores + rows
    if guidance:
        parts["guidance"] = kv + scores
    return MemoryEstimate(int(num_samples), parts)


def expected_tokens(prompt: int, max_new_tokens: int, seconds: float | None) -> int:
    """Tokens a sample will hold at its end: the prompt and the new ones (a length in seconds ends a piano
    piece at about TYPICAL_TOKENS_PER_SECOND, well before its token cap)."""
    new = max_new_tokens if seconds is None else min(max_new_tokens, int(seconds * TYPICAL_TOKENS_PER_SECOND) + 1)
    return int(prompt) + int(new)


def check_fits(estimate_: MemoryEstimate, available: int | None, what: str = "num_samples",
               where: str = "this machine") -> None:
    """A ConfigError naming `what` when the batch needs more than BUDGET_SHARE of `available` bytes (None:
    unknown, nothing is refused); the message says how many samples would fit."""
    if available is None:
        return
    budget = int(available * BUDGET_SHARE)
    if estimate_.total <= budget:
        return
    fits = budget // max(estimate_.per_sample, 1)
    parts = ", ".join(f"{name.replace('_', ' ')} {_mb(n)}" for name, n in estimate_.parts.items())
    raise ConfigError(f"{what} {estimate_.num_samples}: needs about {_mb(estimate_.total)} of memory "
                      f"({_mb(estimate_.per_sample)} a sample: {parts}), over the limit of {_mb(budget)} "
                      f"({BUDGET_SHARE:.0%} of the {_mb(available)} {where} has available); "
                      + (f"at most {fits} sample{'s' * (fits != 1)} fit" if fits else "not even one sample fits"))


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n < 10 * 2**30 else f"{n / 2**30:,.1f} GB"
