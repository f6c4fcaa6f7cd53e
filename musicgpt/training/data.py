"""Training data: the corpus a run reads, random crops from its shards, augmented on the fly, prefetched.

Each document is read as [BOS] + tokens + [EOS]; a `Conditioner` (musicgpt.training.conditioning) may
put control tokens before a crop or cut it for infilling. A training batch is a pure function of
(seed, rank, batch index): a resumed run, or one rank of a distributed run, asks for the same
index and gets the same crops, so the "data position" to checkpoint is a single integer and a
background thread can prepare batches ahead without touching any shared random state.
"""

from __future__ import annotations

import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from musicgpt.corpus.prepare import prepare
from musicgpt.corpus.shards import Split, open_split, read_manifest, verify
from musicgpt.device import Dist
from musicgpt.errors import MusicGPTError
from musicgpt.tokens.augment import make_augmenter
from musicgpt.tokens.base import PerformanceEvents, Tokenizer
from musicgpt.tokens.registry import load_tokenizer

IGNORE_INDEX = -100  # target id that the loss skips (padding past a document's end)

# (ids, rng) -> augmented ids; see `make_augmenter`.
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Specials:
    """The ids the loader adds around documents."""

    pad: int = 0
    bos: int = 1
    eos: int = 2


class CropSampler:
    """Batches of random `context + 1`-token crops; batch `index` depends only on (seed, rank, index)."""

    def __init__(
        self,
        split: Split,
        context: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        augment: Augment | None = None,
        specials: Specials = Specials(),
        stretch_margin: float = 0.0,
        conditioner=None,
    ) -> None:
        lengths = split.lengths
        if split.n_docs == 0 or lengths.sum() == 0:
            raise MusicGPTError("training split is empty: no documents to crop from")
        self.split, self.context, self.batch_size = split, context, batch_size
        self.seed, self.rank, self.augment, self.specials = seed, rank, augment, specials
        self.conditioner = conditioner if conditioner is not None and conditioner.active else None
        # Crops are uniform over token positions: a document is chosen by its extended length.
        extended = lengths + 2  # BOS and EOS
        self._cumulative = np.cumsum(extended)
        # Time stretch can merge time shifts; read enough raw tokens that the crop stays full.
        self._raw_len = int((context + 1) * (1.0 + 2.0 * stretch_margin)) + 16

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of batch `index` on this rank."""
        return np.random.default_rng([self.seed, self.rank, index])

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets, both (batch_size, context) int64; padded targets are IGNORE_INDEX."""
        rng = self.rng(index)
        need = self.context + 1
        rows = np.full((self.batch_size, need), self.specials.pad, dtype=np.int64)
        valid = np.zeros((self.batch_size, need), dtype=bool)
        for b in range(self.batch_size):
            seq = self._crop(rng, need)
            rows[b, : len(seq)] = seq
            valid[b, : len(seq)] = True
        x = rows[:, :-1]  # (B, L)
        y = np.where(valid[:, 1:], rows[:, 1:], IGNORE_INDEX)  # (B, L)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    def _crop(self, rng: np.random.Generator, need: int) -> np.ndarray:
        point = int(rng.integers(self._cumulative[-1]))
        d = int(np.searchsorted(self._cumulative, point, side="right"))
        doc = self.split.doc(d)
        extended_len = len(doc) + 2
        start = int(rng.integers(max(1, extended_len - need + 1)))  # position in [BOS] + doc + [EOS]
        raw_start = max(0, start - 1)
        raw_len = self._raw_len
        while True:
            raw = np.asarray(doc[raw_start : raw_start + raw_len], dtype=np.int64)
            body = self.augment(raw, rng) if self.augment is not None else raw
            at_end = raw_start + raw_len >= len(doc)
            if at_end or len(body) + (start == 0) >= need:
                break
            raw_len *= 2  # a strong stretch merged many time shifts; read more
        if self.conditioner is not None:
            return self.conditioner.shape(body, d, start == 0, at_end, need, rng)
        parts = [[self.specials.bos]] if start == 0 else []
        parts.append(body)
        if at_end:
            parts.append([self.specials.eos])
        return np.concatenate(parts).astype(np.int64)[:need]


class BatchStream:
    """Batches `start`, `start + 1`, ... of a sampler as torch tensors, prepared by a background thread."""

    def __init__(self, sampler: CropSampler, start: int = 0, prefetch: int = 4, pin_memory: bool = False) -> None:
        self.sampler, self.next_index, self.pin_memory = sampler, start, pin_memory
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        if prefetch > 0:
            self._queue = queue.Queue(maxsize=prefetch)
            self._thread = threading.Thread(target=self._fill, args=(start,), daemon=True)
            self._thread.start()

    def _make(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.sampler.batch(index)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _fill(self, index: int) -> None:
        while not self._stop.is_set():
            try:
                item = (index, self._make(index))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                item = (index, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item[1], BaseException):
                return
            index += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._queue is None:
            batch = self._make(self.next_index)
        else:
            index, batch = self._queue.get()
            assert index == self.next_index
            if isinstance(batch, BaseException):
                raise batch
        self.next_index += 1
        return batch

    def close(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._queue is not None:
            self._thread.join(timeout=5)


def windows(
    split: Split,
    length: int,
    stride: int | None = None,
    specials: Specials = Specials(),
    headers: list[np.ndarray] | None = None,
) -> Iterator[tuple[np.ndarray, int]]:
    """Evaluation windows over every document, each token scored exactly once.

    Yields (window, n_scored): `window` holds up to `length + 1` ids of [BOS] + doc (inputs are
    window[:-1], targets window[1:]); only the last `n_scored` targets are new and count. With
    stride S < length every scored token after the first window sees at least length - S tokens
    of context. `headers[d]`: CONTROL ids that open every window of document d (as in training,
    where every crop starts with its controls); they take room from the window and are not scored.
    """
    stride = length if stride is None else stride
    if not 0 < stride <= length:
        raise MusicGPTError(f"stride must be in 1..{length} (the window length), got {stride}")
    if headers is not None:
        for d in range(split.n_docs):
            header = np.asarray(headers[d], np.int64)
            inner = length - len(header)
            if inner < 1:
                raise MusicGPTError(f"a window of {length} tokens has no room after {len(header)} control tokens")
            one = Split(split.doc(d), np.array([0, split.lengths[d]], np.int64))
            for window, n_scored in windows(one, inner, min(stride, inner), specials):
                yield np.r_[header, window], n_scored
        return
    for d in range(split.n_docs):
        seq = np.concatenate([[specials.bos], np.asarray(split.doc(d), dtype=np.int64)])
        n_targets = len(seq) - 1
        scored_until = 0  # targets [0, scored_until) are done
        end = min(length, n_targets)
        while scored_until < n_targets:
            begin = max(0, end - length)  # the last window is moved back so that it is full too
            yield seq[begin : end + 1], end - scored_until  # targets [begin, end)
            scored_until = end
            end = min(end + stride, n_targets)


def batch_windows(
    items: Iterator[tuple[np.ndarray, int]], batch_size: int, length: int, pad: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stack windows into (inputs, targets) batches of shape (B, length); unscored targets are IGNORE_INDEX."""
    xs, ys = [], []
    for window, n_scored in items:
        x = np.full(length, pad, dtype=np.int64)
        y = np.full(length, IGNORE_INDEX, dtype=np.int64)
        n = len(window) - 1
        x[:n] = window[:-1]
        y[n - n_scored : n] = window[1:][n - n_scored :]
        xs.append(x)
        ys.append(y)
        if len(xs) == batch_size:
            yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            xs, ys = [], []
    if xs:
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def valid_windows(split: Split, length: int, limit: int, specials: Specials = Specials(),
                  headers: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, int]]:
    """A fixed, evenly spread subset of `limit` non-overlapping windows for evaluation during training."""
    items = list(windows(split, length, length, specials, headers))
    if limit <= 0 or len(items) <= limit:
        return items
    keep = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in keep]


# ---- the corpus of a run ---------------------------------------------------------------------------

def resolve_data(path: str | Path, run_dir: Path, workers: int, d: Dist) -> Path:
    """A prepared corpus directory, its shards checked against its manifest: `path` itself, or RUN_DIR/data
    prepared from a MIDI folder."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        out = path
    elif not path.is_dir():
        raise MusicGPTError(f"--data {path}: no such directory (want a `musicgpt prepare` output or a MIDI folder)")
    else:
        out = run_dir / "data"
        if d.main and not (out / "manifest.json").is_file():
            print(f"preparing {path} into {out}", file=sys.stderr)
            print(prepare(path, out, jobs=workers).summary(), file=sys.stderr)
        if d.enabled:
            dist.barrier()
    if not verify(out) and d.main:
        print(f"note: {out} was prepared before shards were checksummed; its shards are not verified "
              "(run `musicgpt prepare` into it again to record checksums)", file=sys.stderr)
    return out


def load_data_tokenizer(data_dir: Path) -> Tokenizer:
    """The tokenizer a prepared corpus was made with."""
    path = data_dir / "tokenizer.json"
    if not path.is_file():
        raise MusicGPTError(f"{data_dir}: tokenizer.json is missing (not a `musicgpt prepare` output?)")
    return load_tokenizer(path)


def specials_of(tokenizer: Tokenizer) -> Specials:
    """PAD/BOS/EOS ids of a tokenizer."""
    return Specials(pad=tokenizer.pad_id, bos=tokenizer.bos_id, eos=tokenizer.eos_id)


def make_augment(tokenizer: Tokenizer, transpose: int, stretch: float) -> Augment | None:
    """On-the-fly augmentation for performance tokens; None (with a note) for other tokenizers."""
    if transpose == 0 and stretch == 0:
        return None
    if not isinstance(tokenizer, PerformanceEvents):
        print(f"note: no augmentation for {tokenizer.type!r} tokens (performance tokens only)", file=sys.stderr)
        return None
    return make_augmenter(tokenizer, transpose=transpose, stretch=stretch)


def optional_split(data_dir: Path, split: str) -> Split | None:
    """A split of a prepared corpus, or None when the corpus has no documents in it (no validation, say).

    A split the manifest lists but whose files are missing or broken is an error, not None.
    """
    if read_manifest(data_dir).get("splits", {}).get(split, {}).get("n_docs", 0) == 0:
        return None
    s = open_split(data_dir, split)
    return s if s.n_tokens > 0 else None
