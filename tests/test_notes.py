import numpy as np
import pytest

from musicgpt.music.notes import Notes


def test_from_unsorted_sorts_by_start_then_pitch():
    n = Notes.from_unsorted([1.0, 0.0, 0.0], [2.0, 1.0, 0.5], [60, 64, 48], [80, 90, 100])
    assert n.start.tolist() == [0.0, 0.0, 1.0]
    assert n.pitch.tolist() == [48, 64, 60]
    assert n.velocity.tolist() == [100, 90, 80]
    assert n.end.tolist() == [0.5, 1.0, 2.0]


def test_length_mismatch_is_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        Notes([0.0], [1.0, 2.0], [60], [64])


def test_until_cuts_and_drops():
    n = Notes([0.0, 1.0, 3.0], [2.0, 4.0, 5.0], [60, 62, 64], [64, 64, 64])
    cut = n.until(2.5)
    assert len(cut) == 2 and cut.end.tolist() == [2.0, 2.5]
    assert Notes.empty().end_time == 0.0 and len(Notes.concat([])) == 0


def test_indexing_returns_notes():
    n = Notes(np.arange(4.0), np.arange(4.0) + 1, [60, 61, 62, 63], [1, 2, 3, 4])
    assert n[1:3].pitch.tolist() == [61, 62]
    assert n[n.pitch > 61].velocity.tolist() == [3, 4]
    assert n[-1].pitch.tolist() == [63]
