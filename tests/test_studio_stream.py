"""The studio's live notes and arcs (musicgpt.studio.tracker, stream, sse): what a Generation streams while it runs
equals the finished samples' arcs.json, notes and arcs and surprisal alike; the tracker reads tokens as the decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from musicgpt.arcs.capture import ArcsConfig
from musicgpt.arcs.format import validate_arcs
from musicgpt.generation.loop import Generation, GenerationSettings
from musicgpt.generation.primer import primer_ids
from musicgpt.generation.sampling import SamplingConfig
from musicgpt.studio.sse import encode, to_json
from musicgpt.studio.stream import LiveGeneration
from musicgpt.studio.tracker import NoteTracker
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import PRIMER, tiny_model

TOK = PerformanceTokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def streamed(model, primer, seed: int, num_samples: int = 2, max_new: int = 300, arcs: ArcsConfig | None = None):
    """(events as the client parses them, the finished samples) of one generation followed live."""
    ids = primer_ids(primer, TOK, seconds=4) if primer is not None else np.zeros(0, np.int64)
    prompt = np.r_[TOK.bos_id, ids].astype(np.int64)
    settings = GenerationSettings(max_new, None, SamplingConfig(), seed, num_samples, arcs or ArcsConfig(), True,
                                  False, 256, 10.0)
    events, samples = follow(Generation(model, TOK, prompt, settings))
    return [(name, json.loads(to_json(data))) for name, data in events], samples


def follow(generation: Generation) -> tuple[list, list]:
    """Run a generation to its end as the studio does: (its live events, the finished samples)."""
    live = LiveGeneration(generation)
    events = live.start()
    while not generation.done:
        generation.step()
        events += live.after_step()
    samples = generation.samples()
    return events + live.finish(samples), samples


def final_state(events, b: int):
    """The last version of each note of sample b, and each note's arcs as (key, layer, head, weight) rows."""
    notes, arcs, order = {}, {}, []
    for name, d in events:
        if d["sample"] != b:
            continue
        if name == "note":
            if d.get("dropped"):
                notes.pop(d["id"])
            else:
                notes[d["id"]] = d
        else:
            assert d["query"] in notes, "a note's arcs come after the note"
            arcs[d["query"]] = list(zip(d["key"], d["layer"], d["head"], d["weight"]))
            order.append(d["query"])
    return notes, arcs, order


@pytest.mark.parametrize("primer, seed", [(PRIMER, 1), (None, 2), (PRIMER, 3)])
def test_streamed_notes_and_arcs_equal_the_finished_arcs_json(model, primer, seed):
    events, samples = streamed(model, primer, seed)
    for b, sample in enumerate(samples):
        doc = sample.arcs
        validate_arcs(doc)
        notes, arcs, _ = final_state(events, b)
        by_token = {n["token"]: n for n in doc["notes"]}
        assert set(notes) == set(by_token) and len(notes) > 10
        for token, note in by_token.items():
            got = notes[token]
            assert {k: got[k] for k in ("pitch", "velocity", "start", "end", "primer")} == \
                {k: note[k] for k in ("pitch", "velocity", "start", "end", "primer")}
            assert got["surprisal"] == note["nll"]
        token_of = [n["token"] for n in doc["notes"]]
        want: dict[int, list] = {}
        for a in doc["arcs"]:  # arcs.json order: by query note, layer, head, heaviest first
            want.setdefault(token_of[a["query"]], []).append((token_of[a["key"]], a["layer"], a["head"], a["weight"]))
        assert {q: rows for q, rows in arcs.items() if rows} == want


def test_generated_notes_come_twice_sounding_then_ended_and_in_token_order(model):
    events, samples = streamed(model, PRIMER, 5, num_samples=1)
    first: dict[int, dict] = {}
    for name, d in events:
        if name == "note" and not d["primer"]:
            first.setdefault(d["id"], d)
    assert first and all(d["end"] is None for d in first.values())  # announced when the NOTE_ON is sampled
    _, _, order = final_state(events, 0)
    new = [q for q in order if not q < samples[0].primer_length]
    assert new == sorted(new)  # arcs of generated notes arrive in the order they are written


def test_primer_and_open_primer_notes(model):
    events, samples = streamed(model, PRIMER, 7, num_samples=1, max_new=40)
    primer = [d for name, d in events[: 2 * int(samples[0].primer_notes.sum())] if name == "note"]
    assert primer and all(d["primer"] for d in primer)
    open_at_cut = [d["id"] for d in primer if d["end"] is None]
    later = {d["id"]: d for name, d in events if name == "note"}
    assert all(later[i]["end"] is not None for i in open_at_cut)  # closed by the continuation or at the end


def test_without_arcs_only_notes_stream():
    model = tiny_model()
    prompt = np.array([TOK.bos_id], np.int64)
    settings = GenerationSettings(60, None, SamplingConfig(), 1, 1, None, True, False, 256, 10.0)
    events, _ = follow(Generation(model, TOK, prompt, settings))
    assert events and {name for name, _ in events} == {"note"}


def _decode_like_the_tracker(ids):
    tracker = NoteTracker(TOK, 0)
    for t in ids:
        tracker.push(int(t))
    notes = sorted((n.start_step, n.pitch, n.end_step, n.velocity) for n in tracker.notes.values())
    return notes, tracker


def test_tracker_reads_tokens_as_decode_with_index():
    """A primer's encoding, and hand-made sequences with a re-strike and a note of no length (dropped)."""
    encoded = TOK.encode(PRIMER).ids
    on, off, shift, vel = TOK.note_on, TOK.note_off, TOK.time_shift, TOK.velocity
    hand = [TOK.bos_id, int(vel(20)), int(on(60)), int(on(64)), int(off(64)), int(shift(10)), int(on(60)),
            int(shift(5)), int(off(60)), int(vel(3)), int(on(67)), int(shift(7)), int(off(67)), int(on(62)),
            int(shift(1)), int(off(62))]
    for ids in (encoded, hand):
        notes, tracker = _decode_like_the_tracker(ids)
        decoded, note_index = TOK.decode_with_index(np.asarray(ids))
        want = sorted((int(round(s / TOK.time_step)), int(p), int(round(e / TOK.time_step)), int(v))
                      for s, e, p, v in zip(decoded.start, decoded.end, decoded.pitch, decoded.velocity))
        assert notes == want
        owners = tracker.owners()
        kept = {n.key for n in tracker.notes.values()}
        # a token owned for arcs belongs to a kept note, as the decoder's note_index says
        for position in np.flatnonzero(owners >= 0):
            assert owners[position] in kept and note_index[position] >= 0
    _, tracker = _decode_like_the_tracker(hand)
    assert len(tracker.notes) == 4  # five NOTE_ONs: 64 has no length, 60 is struck twice


def test_sse_encoding_rounds_columns_as_arcs_json():
    data = {"sample": 0, "query": 5, "key": np.array([3, 1]), "weight": np.array([0.123456789, 1e-05])}
    text = to_json(data)
    assert json.loads(text) == {"sample": 0, "query": 5, "key": [3, 1], "weight": [0.1235, 1e-05]}
    assert to_json({"message": "x"}) == '{"message":"x"}'
    assert encode([("error", {"message": "bad"})]) == b'event: error\ndata: {"message":"bad"}\n\n'
    assert json.loads(to_json({"key": np.zeros(0, np.int64)})) == {"key": []}
