"""musicgpt.tokens.performance: pinned vocabulary, exact encodings, round trips, total decoding, grammar, files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgpt.errors import ConfigError
from musicgpt.music.midi import Notes, read_midi, write_midi
from musicgpt.tokens import Encoding, PerformanceTokenizer, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
REAL = sorted(FIXTURES.glob("*.mid"))
TOK = PerformanceTokenizer()


def test_pinned_vocabulary():
    assert TOK.vocab_size == 391
    assert TOK.ranges == {"PAD": (0, 1), "BOS": (1, 1), "EOS": (2, 1), "NOTE_ON": (3, 128),
                          "NOTE_OFF": (131, 128), "TIME_SHIFT": (259, 100), "VELOCITY": (359, 32)}
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id) == (0, 1, 2)
    assert (TOK.note_on(0), TOK.note_on(60), TOK.note_on(127)) == (3, 63, 130)
    assert (TOK.note_off(0), TOK.note_off(127)) == (131, 258)
    assert (TOK.time_shift(1), TOK.time_shift(100)) == (259, 358)
    assert (TOK.velocity(0), TOK.velocity(31)) == (359, 390)
    assert np.array_equal(TOK.note_on(np.array([21, 108])), [24, 111])
    with pytest.raises(ValueError):
        TOK.time_shift(0)
    with pytest.raises(ValueError):
        TOK.note_on(128)


def test_token_types_and_masks_partition_the_vocabulary():
    types = TOK.token_type(np.arange(-1, 392))
    assert types[0] == -1 and types[-1] == -1
    assert list(TOK.type_names) == ["PAD", "BOS", "EOS", "NOTE_ON", "NOTE_OFF", "TIME_SHIFT", "VELOCITY"]
    masks = TOK.type_masks()
    assert np.array_equal(sum(m.astype(int) for m in masks.values()), np.ones(391, int))
    for k, (name, (first, count)) in enumerate(TOK.ranges.items()):
        assert masks[name].sum() == count and masks[name][first] and np.all(types[1 + first:1 + first + count] == k)
    assert TOK.token_name(63) == "NOTE_ON_60" and TOK.token_name(283) == "TIME_SHIFT_25"
    assert TOK.token_name(2) == "EOS" and TOK.token_name(999) == "UNKNOWN_999"


def test_velocity_bins():
    v = np.arange(1, 128)
    bins = TOK.velocity_to_bin(v)
    assert bins.min() == 0 and bins.max() == 31 and np.all(bins == (v - 1) // 4)
    assert np.all(TOK.velocity_to_bin(TOK.bin_to_velocity(np.arange(32))) == np.arange(32))
    assert list(TOK.bin_to_velocity([0, 1, 31])) == [3, 7, 127]


def test_exact_encoding_of_a_small_example():
    # C4 and E4 together at 0 s (E4 louder), C4 re-struck at 1.5 s, everything ends at 2.05 s
    notes = Notes.from_unsorted([0.0, 0.0, 1.5], [1.5, 2.05, 2.05], [64, 60, 60], [100, 40, 40])
    enc = TOK.encode(notes)
    names = [TOK.token_name(t) for t in enc.ids]
    assert names == ["VELOCITY_9", "NOTE_ON_60", "VELOCITY_24", "NOTE_ON_64",
                     "TIME_SHIFT_100", "TIME_SHIFT_50", "NOTE_OFF_60", "NOTE_OFF_64", "VELOCITY_9", "NOTE_ON_60",
                     "TIME_SHIFT_55", "NOTE_OFF_60"]
    assert list(enc.note_index) == [0, 0, 1, 1, -1, -1, 0, 1, 2, 2, -1, 2]
    assert enc.notes.start.tolist() == [0.0, 0.0, 1.5] and enc.notes.end[0] == 1.5


def test_encoding_rules_min_duration_merge_and_negative_times():
    notes = Notes.from_unsorted([-0.5, 0.101, 0.104, 0.2], [0.3, 0.101, 0.3, 0.2], [50, 60, 60, 70], [10, 20, 90, 30])
    enc = TOK.encode(notes)
    out = enc.notes
    assert out.start.tolist() == [0.0, 0.1, 0.2]  # negative start clipped, the two C4 in one step merged
    assert np.allclose(out.end, [0.3, 0.3, 0.21])  # merged keeps the latest end; zero length -> one step
    assert out.velocity.tolist() == [TOK.bin_to_velocity(2), TOK.bin_to_velocity(22), TOK.bin_to_velocity(7)]
    assert sorted(enc.source_index.tolist()) == [0, 1, 3] or sorted(enc.source_index.tolist()) == [0, 2, 3]


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_round_trip_real_fixture(path):
    notes = read_midi(path)
    enc = TOK.encode(path)
    assert np.array_equal(enc.ids, TOK.encode(notes).ids)
    decoded, index = TOK.decode_with_index(enc.ids)
    for name in ("start", "end", "pitch", "velocity"):
        assert np.array_equal(getattr(decoded, name), getattr(enc.notes, name))
    assert np.array_equal(index, enc.note_index)
    # Notes lost are only same-pitch onsets within one 10 ms step (merged), e.g. POP909 track doublings.
    lost = np.setdiff1d(np.arange(len(notes)), enc.source_index)
    kept = set(zip(decoded.pitch.tolist(), np.rint(decoded.start / 0.01).astype(int).tolist()))
    assert all((int(notes.pitch[i]), int(np.rint(notes.start[i] / 0.01))) in kept for i in lost)
    assert len(lost) <= 0.02 * len(notes)
    src = notes[enc.source_index]
    assert np.abs(decoded.start - src.start).max() <= 0.005 + 1e-9
    # Offsets: within one step, except notes shorter than half a step (they last one step): 1.5 steps.
    long = src.duration >= 0.005
    assert np.abs(decoded.end - src.end)[long].max() <= 0.010 + 1e-9
    assert np.abs(decoded.end - src.end).max() <= 0.015 + 1e-9
    # A merged note takes the loudest velocity of its group; every other note keeps its bin.
    lost_keys = {(int(notes.pitch[i]), int(np.rint(notes.start[i] / 0.01))) for i in lost}
    merged = np.array([key in lost_keys for key in zip(decoded.pitch.tolist(),
                                                        np.rint(decoded.start / 0.01).astype(int).tolist())])
    assert np.array_equal(TOK.velocity_to_bin(decoded.velocity)[~merged], TOK.velocity_to_bin(src.velocity)[~merged])
    assert np.all(enc.note_index[TOK.token_type(enc.ids) == 5] == -1)
    assert np.all(enc.note_index[TOK.token_type(enc.ids) != 5] >= 0)
    assert enc.ids.max() < TOK.vocab_size and enc.ids.min() >= 3
    assert TOK.grammar(canonical=True).accepts(enc.ids)


def test_decoded_notes_survive_write_and_read_exactly(tmp_path):
    enc = TOK.encode(REAL[0])
    write_midi(enc.notes, tmp_path / "d.mid")
    assert np.array_equal(TOK.encode(tmp_path / "d.mid", sustain=False).ids, enc.ids)


def test_random_tables_round_trip_and_match_the_canonical_grammar():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 50))
        start = rng.uniform(0, 4, n) * (1 if rng.random() < 0.5 else 0.05)
        notes = Notes.from_unsorted(start, start + rng.exponential(0.4, n) * (rng.random(n) < 0.9),
                                    rng.integers(55, 62, n), rng.integers(1, 128, n))
        enc = TOK.encode(notes)
        decoded, index = TOK.decode_with_index(enc.ids)
        assert np.array_equal(decoded.start, enc.notes.start) and np.array_equal(decoded.end, enc.notes.end)
        assert np.array_equal(decoded.velocity, enc.notes.velocity) and np.array_equal(index, enc.note_index)
        assert np.array_equal(TOK.encode(decoded).ids, enc.ids)
        assert TOK.grammar(canonical=True).accepts(enc.ids)


def test_decode_is_total_on_random_ids():
    rng = np.random.default_rng(1)
    for _ in range(200):
        ids = rng.integers(-5, 400, int(rng.integers(0, 300)))
        ids = ids[ids != TOK.eos_id]
        notes, index = TOK.decode_with_index(ids)
        assert len(index) == len(ids)
        assert np.all(notes.end > notes.start) and np.all(np.diff(notes.start) >= 0)
        assert np.all(notes.end - notes.start <= 1e9)
        for pitch in np.unique(notes.pitch):
            mine = notes[notes.pitch == pitch]
            assert np.all(mine.end[:-1] <= mine.start[1:] + 1e-9)
        assert set(index[index >= 0].tolist()) == set(range(len(notes)))


def test_decoding_rules():
    t = TOK
    ids = [t.bos_id, t.note_off(40),  # NOTE_OFF with nothing sounding: ignored
           t.note_on(60),  # no VELOCITY yet: velocity 64
           t.time_shift(10), t.velocity(20), t.note_on(60),  # re-strike ends the first C4 at 0.1 s
           t.note_on(62), t.note_off(62),  # zero length: dropped
           t.time_shift(50), t.note_off(60), t.note_on(72),  # 72 never closed: ends at the last token
           t.time_shift(30), t.eos_id, t.note_on(80), t.time_shift(100)]  # after EOS: ignored
    notes, index = t.decode_with_index(ids)
    assert notes.pitch.tolist() == [60, 60, 72]
    assert np.allclose(notes.start, [0.0, 0.1, 0.6]) and np.allclose(notes.end, [0.1, 0.6, 0.9])
    assert notes.velocity.tolist() == [64, t.bin_to_velocity(20), t.bin_to_velocity(20)]
    assert index.tolist() == [-1, -1, 0, -1, 1, 1, -1, -1, -1, 1, 2, -1, -1, -1, -1]


def test_unclosed_note_is_capped_at_max_duration():
    ids = [TOK.note_on(60)] + [TOK.time_shift(100)] * 20
    notes = TOK.decode(ids)
    assert np.allclose(notes.end, [TOK.max_unclosed_duration])
    assert np.allclose(TOK.decode([TOK.note_on(60)]).end, [0.01])  # at least one step


def _close(grammar, ids):
    while grammar.sounding.any() or grammar.after_velocity:
        mask = grammar.allowed()
        offs = np.flatnonzero(mask[131:259])
        token = TOK.note_on(int(np.flatnonzero(mask[3:131])[0])) if grammar.after_velocity else \
            TOK.note_off(int(offs[0])) if len(offs) else TOK.time_shift(100)
        grammar.push(token)
        ids.append(token)
    return ids


def test_sequences_sampled_under_the_canonical_grammar_are_encoder_outputs():
    rng = np.random.default_rng(2)
    for _ in range(30):
        grammar, ids = TOK.grammar(canonical=True), []
        for _ in range(int(rng.integers(1, 120))):
            mask = grammar.allowed()
            mask[[TOK.eos_id, TOK.bos_id]] = False
            token = int(rng.choice(np.flatnonzero(mask)))
            grammar.push(token)
            ids.append(token)
        ids = _close(grammar, ids)
        while ids and TOK.token_type(ids[-1]) == 5:  # trailing silence is not encoded
            ids.pop()
        assert TOK.encode(TOK.decode(ids)).ids.tolist() == ids


def test_free_grammar_never_loses_a_note():
    rng = np.random.default_rng(3)
    grammar, ids = TOK.grammar(), []
    for _ in range(400):
        mask = grammar.allowed()
        mask[TOK.eos_id] = False
        token = int(rng.choice(np.flatnonzero(mask)))
        grammar.push(token)
        ids.append(token)
    assert len(TOK.decode(ids)) == sum(TOK.token_type(ids) == 3)
    grammar.push(TOK.eos_id)
    assert np.flatnonzero(grammar.allowed()).tolist() == [TOK.pad_id]


def test_save_load_and_dispatch(tmp_path):
    tok = PerformanceTokenizer(time_step=0.008, velocity_bins=16)
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    data = json.loads(path.read_text())
    assert data["type"] == "performance" and data["vocab_size"] == tok.vocab_size
    assert load_tokenizer(path) == tok and load_tokenizer(tmp_path) == tok
    assert PerformanceTokenizer.load(path).to_dict() == tok.to_dict()
    assert tok.fingerprint() != TOK.fingerprint()
    path.write_text(json.dumps({**data, "type": "nonsense"}))
    with pytest.raises(ConfigError, match="unknown tokenizer type"):
        load_tokenizer(path)
    path.write_text(json.dumps({**data, "vocab_size": 5}))
    with pytest.raises(ConfigError, match="vocab_size"):
        load_tokenizer(path)
    path.write_text(json.dumps({**data, "colour": 5}))
    with pytest.raises(ConfigError, match="colour"):
        load_tokenizer(path)
    with pytest.raises(ConfigError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")


def test_empty_notes_encode_to_nothing():
    enc = TOK.encode(Notes.empty())
    assert isinstance(enc, Encoding) and len(enc) == 0 and len(TOK.decode(enc.ids)) == 0


def test_module_prints_layout_and_fails_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "musicgpt.tokens"], capture_output=True, text=True, check=True)
    assert "NOTE_ON" in out.stdout and "3..130" in out.stdout and "391" in out.stdout
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "musicgpt.tokens", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "bad.mid: empty file" in out.stderr and "Traceback" not in out.stderr


# ---- miditok backend ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["MIDILike", "REMI", "TSD"])
def test_miditok_backend_round_trip_and_save(scheme, tmp_path):
    from musicgpt.tokens.miditok import MiditokTokenizer

    tok = MiditokTokenizer(scheme)
    notes = read_midi(REAL[0])
    enc = tok.encode(REAL[0])
    assert len(enc.notes) == len(notes) and (enc.source_index >= 0).all()
    half_grid = tok.seconds_per_beat / tok.ticks_per_beat / 2
    assert np.abs(enc.notes.start - notes.start[enc.source_index]).max() <= half_grid + 1e-9
    assert np.array_equal(enc.notes.pitch, notes.pitch[enc.source_index])
    names = [tok.token_name(t) for t in enc.ids]
    for i, name in enumerate(names):
        if name.startswith(("NoteOn", "Pitch_", "NoteOff")):
            assert enc.note_index[i] >= 0 and enc.notes.pitch[enc.note_index[i]] == int(name.split("_")[1])
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path) == tok and load_tokenizer(tmp_path).vocab_size == tok.vocab_size
    assert isinstance(tok.decode(np.random.default_rng(0).integers(-5, 500, 300)), Notes)  # total


def test_miditok_backend_honours_tempo(tmp_path):
    import miditok

    from midi_factory import make_midi, note
    from musicgpt.tokens.miditok import MiditokTokenizer

    events = []
    for i in range(120):  # 120 beats at 100 qpm, then faster: 60 s and more
        events += note(48 + (i * 7) % 36, i * 480, i * 480 + 400, 90)
    path = make_midi(tmp_path / "tempo100.mid", [events], tempos=[(0, 600_000), (30 * 480, 450_000), (90 * 480, 700_000)])
    truth = read_midi(path)
    tok = MiditokTokenizer("MIDILike")
    enc = tok.encode(path)
    error = np.abs(enc.notes.start - truth.start[enc.source_index])
    assert len(enc.notes) == len(truth) and error.max() <= tok.seconds_per_beat / tok.ticks_per_beat / 2 + 1e-9
    # miditok fed the file directly counts beats at 120 qpm: seconds off, the reason for re-timing
    plain = miditok.MIDILike(miditok.TokenizerConfig(use_time_signatures=False))
    naive = plain.decode(plain(path)).tracks[0].notes.numpy()
    naive_start = np.sort(naive["time"] / plain.time_division * 0.5)
    assert np.abs(naive_start - np.sort(truth.start)).max() > 5.0


def test_miditok_unknown_scheme():
    from musicgpt.tokens.miditok import MiditokTokenizer

    with pytest.raises(ConfigError, match="unknown"):
        MiditokTokenizer("Octuple")
