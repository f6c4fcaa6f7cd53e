"""The studio's steering fields: controls and guidance, and a span to regenerate, give the takes that
musicgpt.generate and musicgpt.infill give, on a tiny model grown to a vocabulary with controls and infilling
tokens; bad fields are one error event, and a plain model refuses them with one error."""

from __future__ import annotations

import io
import json

import httpx
import mido
import pytest

import musicgpt
from musicgpt.arcs.format import validate_arcs
from studio_fixtures import PRIMER, read_events, serve_tiny, steering_model


@pytest.fixture(scope="module")
def steer():
    with serve_tiny(steer=True) as (server, app):
        yield server, app


def take(server, fields, primer: bool = True) -> list[tuple[str, dict]]:
    files = {"primer": ("song.mid", PRIMER.read_bytes(), "audio/midi")} if primer else None
    with httpx.Client(base_url=server.url, timeout=120) as client:
        with client.stream("POST", "/api/generate", data=fields, files=files) as response:
            assert response.status_code == 200
            return list(read_events(response))


def fetch(server, url: str) -> bytes:
    response = httpx.get(server.url.rstrip("/") + url)
    assert response.status_code == 200, url
    return response.content


def test_health_says_what_the_model_can_be_steered_with(steer):
    server, _ = steer
    health = httpx.get(server.url + "api/health").json()
    assert health["controls"]["composer"] == ["Bach", "Chopin", "unknown"] and health["infill"] is True
    assert {"control", "guidance", "infill_start", "infill_end"} <= set(health["fields"])


def test_controls_and_guidance_give_the_take_of_musicgpt_generate(steer):
    server, _ = steer
    fields = {"control": ["composer=Chopin", "density=high"], "guidance": "2", "seed": "5", "max_new_tokens": "40",
              "primer_seconds": "2"}  # `control` repeated
    events = take(server, fields)
    assert events[1][1]["controls"] == ["composer=Chopin", "density=high"] and events[1][1]["guidance"] == 2
    assert events[-1][0] == "done", events[-1]
    model, tokenizer = steering_model()
    (expected,) = musicgpt.generate(model, PRIMER, tokenizer=tokenizer, controls=["composer=Chopin", "density=high"],
                                    guidance=2.0, seed=5, max_new_tokens=40, primer_seconds=2.0, arcs=True)
    doc = json.loads(fetch(server, events[-1][1]["samples"][0]["files"]["arcs"]))
    validate_arcs(doc)
    assert doc == json.loads(json.dumps(expected.arcs))


def test_a_span_is_regenerated_as_musicgpt_infill_does(steer):
    server, _ = steer
    events = take(server, {"infill_start": "1", "infill_end": "2.5", "seed": "3", "num_samples": "2"})
    assert events[1][1]["infill"] == [1.0, 2.5] and events[-1][0] == "done", events[-1]
    new = [d for name, d in events if name == "note" and not d["primer"]]
    assert new and all(1.0 <= d["start"] < 2.5 for d in new)  # streamed on the piece's clock
    model, tokenizer = steering_model()
    expected = musicgpt.infill(model, PRIMER, 1.0, 2.5, tokenizer=tokenizer, seed=3, num_samples=2, arcs=True)
    for sample, want in zip(events[-1][1]["samples"], expected):
        doc = json.loads(fetch(server, sample["files"]["arcs"]))
        assert doc == json.loads(json.dumps(want.arcs)) and doc["infill"] == [1.0, 2.5]
        midi = mido.MidiFile(file=io.BytesIO(fetch(server, sample["files"]["midi"])))
        assert [t.name for t in midi.tracks if t.name][-2:] == ["piece", "infill"]


@pytest.mark.parametrize("fields, words", [
    ({"control": "density=extreme"}, "control density='extreme': unknown value (known: low, medium, high)"),
    ({"control": "colour=red"}, "control 'colour': this tokenizer has no such control"),
    ({"control": "colour"}, "expected NAME=VALUE"),
    ({"control": ["density=low", "density=high"]}, "control 'density' given twice"),
    ({"guidance": "0"}, "guidance: must be a positive number"),
    ({"infill_start": "2"}, "give both"),
    ({"infill_start": "3", "infill_end": "1"}, "need 0 <= start < end"),
])
def test_bad_steering_fields_are_one_error_event(steer, fields, words):
    server, _ = steer
    events = take(server, fields)
    assert [name for name, _ in events] == ["error"] and words in events[0][1]["message"], events


def test_infill_needs_a_primer(steer):
    server, _ = steer
    events = take(server, {"infill_start": "0", "infill_end": "1"}, primer=False)
    assert [name for name, _ in events] == ["error"] and "need a primer" in events[0][1]["message"]


def test_a_plain_model_refuses_controls_and_infill_with_one_error():
    with serve_tiny() as (server, app):
        health = httpx.get(server.url + "api/health").json()
        assert health["controls"] == {} and health["infill"] is False
        for fields, words in [({"control": "composer=Bach"}, "trained without control tokens"),
                              ({"infill_start": "0", "infill_end": "1"}, "not trained for infilling")]:
            events = take(server, fields)
            assert [name for name, _ in events] == ["error"] and words in events[0][1]["message"]
        assert not list(app.state.studio.files.root.glob("upload-*"))  # a refused upload is removed at once
