"""arcs.json: a valid file passes, and every schema violation is caught with a message naming it."""

import copy
import json
from pathlib import Path

import pytest

from musicgpt.arcs.format import (
    ARCS_VERSION,
    ArcsFormatError,
    build_arcs,
    read_arcs,
    round_nll,
    validate_arcs,
    write_arcs,
)
from musicgpt.arcs.primer import mark_primer_notes
from musicgpt.arcs.select import select_arcs
from musicgpt.errors import MusicGPTError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def small() -> dict:
    return read_arcs(FIXTURES / "arcs_small.json")


def tiny() -> dict:
    notes = [
        {"pitch": 60, "start": 0.0, "end": 0.5, "velocity": 80, "token": 2, "primer": True},
        {"pitch": 64, "start": 0.5, "end": 1.0, "velocity": 70, "token": 6, "primer": True},
        {"pitch": 67, "start": 1.0, "end": 1.5, "velocity": 90, "token": 10, "primer": False},
    ]
    arcs = [
        {"query": 2, "key": 0, "layer": 0, "head": 1, "weight": 0.5},
        {"query": 2, "key": 1, "layer": 0, "head": 1, "weight": 0.25},
        {"query": 1, "key": 0, "layer": 1, "head": 0, "weight": 1.0},
    ]
    return build_arcs(notes, arcs, n_layer=2, n_head=2, model={"n_layer": 2}, tokenizer={"type": "performance"})


def test_fixtures_are_valid_and_realistic(small):
    assert small["version"] == ARCS_VERSION == 1
    assert len(small["notes"]) == 72 and len(small["arcs"]) > 1000
    primer = [n["primer"] for n in small["notes"]]
    assert any(primer) and not all(primer)
    assert {a["head"] for a in small["arcs"]} == set(range(small["n_head"]))
    read_arcs(FIXTURES / "arcs_tiny.json")


def test_build_sets_ids_rounds_and_keeps_extra_keys():
    d = build_arcs(
        [{"pitch": 60, "start": 0.1234567891, "end": 1, "velocity": 80, "token": 0, "primer": False}],
        [{"query": 0, "key": 0, "layer": 0, "head": 0, "weight": 0.000012345678}],
        n_layer=1, n_head=1, seed=7,
    )
    assert d["notes"][0]["id"] == 0 and d["notes"][0]["start"] == 0.123457
    assert d["arcs"][0]["weight"] == 1.235e-05  # 4 significant digits, never rounded to 0
    assert d["seed"] == 7 and d["model"] == {} and d["tokenizer"] == {}


def test_round_nll_is_what_build_stores():
    """The studio streams surprisal through round_nll: it must equal the note's "nll" in the file."""
    raw = [3.21749, 0.000123456, 12.34567, 0.0, None]
    notes = [{"pitch": 60, "start": float(i), "end": i + 0.5, "velocity": 80, "token": i, "primer": False, "nll": x}
             for i, x in enumerate(raw)]
    stored = [n["nll"] for n in build_arcs(notes, [], n_layer=1, n_head=1)["notes"]]
    assert stored == [round_nll(x) for x in raw] == [3.217, 0.0001235, 12.35, 0.0, None]


def test_write_read_roundtrip(tmp_path, small):
    path = tmp_path / "sub" / "piece.arcs.json"
    write_arcs(small, path)
    assert read_arcs(path) == small
    assert json.loads(path.read_text()) == small
    assert not list(path.parent.glob("*.tmp"))
    assert (path.stat().st_mode & 0o777) != 0o600


def test_write_refuses_invalid_and_leaves_no_file(tmp_path):
    d = tiny()
    d["arcs"][0]["weight"] = 1.5
    with pytest.raises(ArcsFormatError, match=r"bad\.json \(not written\): arcs\[0\] has weight 1\.5"):
        write_arcs(d, tmp_path / "bad.json")
    assert not list(tmp_path.iterdir())


def _broken(edit) -> dict:
    d = copy.deepcopy(tiny())
    edit(d)
    return d


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(version=2), r"unsupported version 2 \(this musicgpt reads arcs.json version 1\)"),
        (lambda d: d.pop("version"), r"missing 'version'"),
        (lambda d: d.pop("notes"), r"missing top-level key 'notes'"),
        (lambda d: d.update(n_head=0), r"'n_head' must be a positive integer, got 0"),
        (lambda d: d.update(model=[]), r"'model' must be an object"),
        (lambda d: d["notes"][1].update(id=5), r"notes\[1\] has id 5; ids must be 0, 1, 2"),
        (lambda d: d["notes"][1].update(id=True), r"notes\[1\] has id True"),
        (lambda d: d["notes"][0].pop("token"), r"notes\[0\] is missing 'token'"),
        (lambda d: d["notes"][0].update(pitch=128), r"notes\[0\] has pitch 128"),
        (lambda d: d["notes"][0].update(velocity=0), r"notes\[0\] has velocity 0"),
        (lambda d: d["notes"][0].update(end=-1.0), r"notes\[0\] has end -1.0"),
        (lambda d: d["notes"][0].update(start=float("nan")), r"notes\[0\] has start nan"),
        (lambda d: d["notes"][2].update(start=0.2, end=0.3), r"notes\[2\] starts at 0.2 s, before notes\[1\]"),
        (lambda d: d["notes"][2].update(token=6), r"notes\[2\] has token 6, already used"),
        (lambda d: d["notes"][2].update(primer=1), r"notes\[2\] has primer 1; expected true or false"),
        (lambda d: d["arcs"][0].update(query=3), r"arcs\[0\] has query 3; expected a note id 0..2"),
        (lambda d: d["arcs"][0].update(key=-1), r"arcs\[0\] has key -1"),
        (lambda d: d["arcs"][0].update(key="1"), r"arcs\[0\] has key '1'"),
        (lambda d: d["arcs"][0].update(layer=2), r"arcs\[0\] has layer 2; expected 0..1 \(n_layer = 2\)"),
        (lambda d: d["arcs"][0].update(head=-1), r"arcs\[0\] has head -1"),
        (lambda d: d["arcs"][0].update(weight=0.0), r"arcs\[0\] has weight 0.0; expected a number in \(0, 1\]"),
        (lambda d: d["arcs"][0].update(weight=1.0001), r"arcs\[0\] has weight 1.0001"),
        (lambda d: d["arcs"][0].update(weight=-0.2), r"arcs\[0\] has weight -0.2"),
        (lambda d: d["arcs"][0].pop("head"), r"arcs\[0\] is missing 'head'"),
        (lambda d: d["arcs"][2].update(query=0, key=1), r"arcs\[2\]: key note 1 starts at 0.5 s, after its query note 0"),
        (lambda d: d["arcs"].append(dict(d["arcs"][0])), r"arcs\[3\] repeats query 2, key 0, layer 0, head 1"),
        (lambda d: d["arcs"][1].update(weight=0.75), r"arcs\[1\]: the weights of query 2, layer 0, head 1 sum to 1.2500"),
    ],
)
def test_each_violation_is_named(edit, message):
    with pytest.raises(ArcsFormatError, match=r"^my\.arcs\.json: " + message):
        validate_arcs(_broken(edit), source="my.arcs.json")


def test_top_level_must_be_object():
    with pytest.raises(ArcsFormatError, match="expected a JSON object at the top level, got list"):
        validate_arcs([])


def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ArcsFormatError, match=r"nope\.json: no such file"):
        read_arcs(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1,\n "notes": [}')
    with pytest.raises(ArcsFormatError, match=r"bad\.json: not valid JSON \(line 2, column"):
        read_arcs(bad)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**tiny(), "version": 0}))
    with pytest.raises(MusicGPTError, match=r"old\.json: unsupported version 0"):
        read_arcs(old)


def test_select_arcs_filters_and_ranks(small):
    q = max(range(len(small["notes"])), key=lambda i: sum(a["query"] == i for a in small["arcs"]))
    everything = select_arcs(small, q)
    assert everything and all(a["query"] == q for a in everything)
    top1 = select_arcs(small, q, top=1)
    assert len(top1) == len({(a["layer"], a["head"]) for a in everything})
    for a in top1:
        assert a["weight"] == max(b["weight"] for b in everything if (b["layer"], b["head"]) == (a["layer"], a["head"]))
    only = select_arcs(small, q, layers=[1], heads=[2, 3], threshold=0.1)
    assert only and all(a["layer"] == 1 and a["head"] in (2, 3) and a["weight"] >= 0.1 for a in only)


def test_primer_notes_of_a_generated_file_are_found_after_a_midi_round_trip(tmp_path):
    """As `musicgpt attend` reads a file `musicgpt generate` wrote: tracks "primer" and "continuation"."""
    from musicgpt.music.midi import primer_track_notes
    from musicgpt.music.midi import read_midi, write_tracks
    from musicgpt.tokens import PerformanceTokenizer

    piece = read_midi(FIXTURES / "pop909_331.mid")
    tokenizer = PerformanceTokenizer()
    first = piece.start < 6.0
    assert 20 < first.sum() < len(piece) - 20
    write_tracks([("primer", piece[first]), ("continuation", piece[~first])], tmp_path / "sample.mid")
    notes = tokenizer.decode(tokenizer.encode(read_midi(tmp_path / "sample.mid")).ids)
    primer = tokenizer.encode(primer_track_notes(tmp_path / "sample.mid")).notes
    mask = mark_primer_notes(notes.start, notes.pitch, primer.start, primer.pitch, tokenizer.time_step)
    assert len(notes) == len(piece) and mask.tolist() == (notes.start < 6.0).tolist()
    up = mark_primer_notes(notes.start, notes.pitch, primer.start, primer.pitch + 1, tokenizer.time_step)
    assert up.sum() < mask.sum() // 2  # a transposed primer marks only notes that happen to match a primer note


def test_primer_notes_match_on_the_rounded_onset_and_the_pitch():
    starts, pitches = [0.0, 0.0, 0.5, 1.004, 1.5], [60, 64, 62, 60, 67]
    primer = mark_primer_notes(starts, pitches, [0.004, 0.496, 1.006, 2.0], [64, 62, 60, 67], 0.01)
    assert primer.tolist() == [False, True, True, False, False]  # 1.004 rounds to step 100, 1.006 to 101
    assert not mark_primer_notes(starts, pitches, [], [], 0.01).any()
    assert mark_primer_notes([], [], starts, pitches, 0.01).shape == (0,)
    for bad in ({"primer_pitches": [60]}, {"primer_pitches": [60, 128]}, {"time_step": 0.0}):
        kwargs = {"primer_starts": [0.0, 1.0], "primer_pitches": [60, 61], "time_step": 0.01, **bad}
        with pytest.raises(ValueError):
            mark_primer_notes(starts, pitches, **kwargs)


def test_a_file_from_before_the_measure_key_reads_as_attention(small):
    from musicgpt.arcs.format import MEASURES, document_measure

    raw = json.loads((FIXTURES / "arcs_small.json").read_text())
    assert "measure" not in raw  # written before arcs.json said what its weights measure
    assert document_measure(small) == "attention"
    for measure in MEASURES:
        d = dict(tiny(), measure=measure)
        validate_arcs(d)
        assert document_measure(d) == measure
    with pytest.raises(ArcsFormatError, match="'measure' must be one of 'attention', 'norm'.*got 'saliency'"):
        validate_arcs(dict(tiny(), measure="saliency"), source="x.arcs.json")
