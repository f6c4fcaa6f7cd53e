"""Training crops, evaluation windows and the prefetching stream, on small hand-made shards."""

import numpy as np
import pytest

from musicgpt.corpus.shards import Split
from musicgpt.training.data import (
    IGNORE_INDEX,
    BatchStream,
    CropSampler,
    Specials,
    batch_windows,
    valid_windows,
    windows,
)
from musicgpt.errors import MusicGPTError

S = Specials()


def make_split(lengths, seed=0) -> Split:
    """Documents of the given lengths; token values 10.. encode (doc, position) so crops can be traced."""
    docs = [np.arange(n, dtype=np.uint16) % 200 + 10 + 0 * d for d, n in enumerate(lengths)]
    tokens = np.concatenate(docs) if docs else np.zeros(0, np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Split(tokens, offsets)


def test_crops_are_contiguous_document_slices():
    split = make_split([300, 50, 1000])
    sampler = CropSampler(split, context=64, batch_size=16, seed=3)
    for index in range(20):
        x, y = sampler.batch(index)
        assert x.shape == y.shape == (16, 64) and x.dtype == np.int64
        for row_x, row_y in zip(x, y):
            # Targets are inputs shifted by one wherever both are real tokens.
            real = row_y != IGNORE_INDEX
            assert np.array_equal(row_x[1:][real[:-1]], row_y[:-1][real[:-1]])
            body = row_x[row_x >= 10]
            # Document tokens are consecutive positions (mod 200) of one document.
            assert np.all((np.diff(body.astype(int)) - 1) % 200 == 0)
            # BOS only at the very start, EOS only right after the last token of a document.
            assert S.bos not in row_x[1:]
            if S.eos in row_y:
                end = int(np.argmax(row_y == S.eos))
                assert np.all(row_y[end + 1 :] == IGNORE_INDEX)


def test_short_documents_are_padded_and_masked():
    split = make_split([10])
    x, y = CropSampler(split, context=32, batch_size=2, seed=0).batch(0)
    expected = np.concatenate([[S.bos], np.arange(10) + 10, [S.eos]])
    assert np.array_equal(x[0, :12], expected[:12])
    assert np.all(x[0, 12:] == S.pad)
    assert np.array_equal(y[0, :11], expected[1:])
    assert np.all(y[0, 11:] == IGNORE_INDEX)


def test_batches_depend_only_on_seed_rank_and_index():
    split = make_split([500, 700])
    a = CropSampler(split, context=32, batch_size=4, seed=7, rank=0)
    b = CropSampler(split, context=32, batch_size=4, seed=7, rank=0)
    other_rank = CropSampler(split, context=32, batch_size=4, seed=7, rank=1)
    assert np.array_equal(a.batch(5)[0], b.batch(5)[0])
    assert not np.array_equal(a.batch(5)[0], a.batch(6)[0])
    assert not np.array_equal(a.batch(5)[0], other_rank.batch(5)[0])


def test_crops_cover_documents_in_proportion_to_length():
    split = Split(np.concatenate([np.full(900, 10), np.full(100, 11)]).astype(np.uint16), np.array([0, 900, 1000]))
    x, _ = CropSampler(split, context=8, batch_size=2000, seed=1).batch(0)
    share = np.mean(x[:, -1] == 11)  # last input token decides the document (crops never span two)
    assert 0.06 < share < 0.14


def test_augment_hook_is_applied_with_the_batch_rng():
    split = make_split([400])

    def plus_one(ids, rng):
        assert isinstance(rng, np.random.Generator)
        return ids + 1

    x, _ = CropSampler(split, context=16, batch_size=8, seed=0, augment=plus_one).batch(0)
    plain, _ = CropSampler(split, context=16, batch_size=8, seed=0).batch(0)
    body = plain >= 10
    assert np.array_equal(x[body], plain[body] + 1)


def test_augment_that_shortens_reads_more_tokens():
    split = make_split([2000])
    halve = lambda ids, rng: ids[::2]  # noqa: E731  (a stretch that merges half the events)
    x, y = CropSampler(split, context=64, batch_size=8, seed=0, augment=halve).batch(0)
    full_rows = (y != IGNORE_INDEX).all(axis=1) | (y == S.eos).any(axis=1)
    assert full_rows.all()


def test_empty_split_is_an_error():
    with pytest.raises(MusicGPTError, match="empty"):
        CropSampler(make_split([]), context=8, batch_size=1, seed=0)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_stream_yields_batches_in_order_from_start(prefetch):
    split = make_split([300, 300])
    sampler = CropSampler(split, context=16, batch_size=2, seed=0)
    stream = BatchStream(sampler, start=5, prefetch=prefetch)
    try:
        for index in range(5, 12):
            x, y = next(stream)
            assert np.array_equal(x.numpy(), sampler.batch(index)[0])
        assert stream.next_index == 12
    finally:
        stream.close()


def test_stream_reraises_loader_errors():
    class Broken(CropSampler):
        def batch(self, index):
            raise RuntimeError("disk on fire")

    stream = BatchStream(Broken(make_split([100]), 8, 1, 0), prefetch=2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(stream)
    stream.close()


@pytest.mark.parametrize("length,stride", [(16, 16), (16, 5), (7, 7), (50, 1)])
def test_windows_score_every_token_once_with_enough_context(length, stride):
    split = make_split([3, 16, 17, 40, 100])
    seen = {}
    for d in range(split.n_docs):
        doc = split.doc(d)
        seq = np.concatenate([[S.bos], doc])
        scored = []
        for i, (window, n_scored) in enumerate(windows(Split(doc, np.array([0, len(doc)])), length, stride)):
            assert 2 <= len(window) <= length + 1 and 1 <= n_scored <= len(window) - 1
            scored.extend(window[1:][-n_scored:].tolist())
            if i > 0:  # later windows are full and give each new target >= length - stride of context
                assert len(window) == length + 1
                assert length - n_scored >= length - stride
        assert scored == seq[1:].tolist()
        seen[d] = len(scored)
    assert sum(seen.values()) == split.n_tokens


def test_windows_are_full_length_when_the_document_allows():
    split = make_split([100])
    items = list(windows(split, 32, 32))
    assert all(len(w) == 33 for w, _ in items)
    assert sum(n for _, n in items) == 100


def test_batch_windows_masks_unscored_targets():
    split = make_split([40])
    items = list(windows(split, 16, 4))
    batches = list(batch_windows(iter(items), batch_size=3, length=16))
    assert sum(len(x) for x, _ in batches) == len(items)
    n_scored = sum(int((y != IGNORE_INDEX).sum()) for _, y in batches)
    assert n_scored == 40


def test_valid_windows_subset_is_fixed_and_spread():
    split = make_split([1000] * 5)
    all_items = valid_windows(split, 32, 0)
    some = valid_windows(split, 32, 10)
    assert len(some) == 10 and len(all_items) == len(list(windows(split, 32)))
    assert [w.tolist() for w, _ in some] == [w.tolist() for w, _ in valid_windows(split, 32, 10)]
    assert some[0][0].tolist() == all_items[0][0].tolist() and some[-1][0].tolist() == all_items[-1][0].tolist()


def test_bad_stride_is_an_error():
    with pytest.raises(MusicGPTError, match="stride"):
        list(windows(make_split([10]), 8, 9))
