"""POST /api/influence on a tiny model through Starlette's TestClient: a finished take's note gets its influence
arcs (the arcs.json shape, what was scored and what was given up), equal to `note_influence`'s on the take's
MIDI; bad ids, a busy server and foreign pages are refused with one line each; notes match by pitch and onset."""

from __future__ import annotations

import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from musicgpt.arcs.format import validate_arcs
from musicgpt.arcs.influence import piece_maps
from musicgpt.arcs.measures import note_influence
from musicgpt.studio import create_app
from musicgpt.tokens.performance import PerformanceTokenizer
from headless import chromium, console_errors, needs_chromium
from studio_fixtures import FIXTURES, PRIMER, read_events, serve_tiny
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def client():
    app = create_app(tiny_model(), PerformanceTokenizer(), model_name="tiny", examples=FIXTURES)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def done(client):
    files = {"primer": ("song.mid", PRIMER.read_bytes(), "audio/midi")}
    with client.stream("POST", "/api/generate", data={"seconds": "3", "primer_seconds": "2", "seed": "5"},
                       files=files) as response:
        events = list(read_events(response))
    assert events[-1][0] == "done", events[-1]
    return events[-1][1]


def test_a_note_of_a_finished_take_gets_its_influence_arcs(client, done):
    doc = client.get(done["samples"][0]["files"]["arcs"]).json()
    note = max(i for i, n in enumerate(doc["notes"]) if not n["primer"])
    r = client.post("/api/influence", json={"take": done["take"], "sample": 0, "note": note})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["measure"] == "influence" and got["note"] == note and 0 < got["candidates"] <= 16
    assert len(got["scored"]) == got["candidates"] <= got["past_notes"] and not got["stopped"]
    assert got["rank_by"].startswith("attention") and ("not scored" in got["given_up"] or "every" in got["given_up"])
    validate_arcs({**doc, "measure": "influence", "arcs": got["arcs"]})
    assert got["arcs"] and all(a["query"] == note and a["layer"] == doc["n_layer"] - 1 and a["head"] == 0
                               for a in got["arcs"])
    # the same rises as the library's note_influence on the take's tokens (the MIDI read back as attend reads it)
    app = client.app
    piece = app.state.influence.piece(done["take"], 0)
    assert [n["pitch"] for n in doc["notes"]] == piece.maps.notes.pitch[piece.index].tolist()
    assert got["tokens_as_take"] == piece.same and (piece.same or "MIDI read again" in got["given_up"])
    want = note_influence(app.state.studio.model, piece.ids, piece_maps(PerformanceTokenizer(), piece.ids),
                          int(piece.index[note]))
    take_id = {int(j): i for i, j in enumerate(piece.index)}
    assert {s["note"]: s["rise"] for s in got["scored"]} == pytest.approx(
        {take_id[k]: round(v, 4) for k, v in want.items()}, abs=1e-3)
    rises = {take_id[k]: max(v, 0.0) for k, v in want.items()}
    for a in got["arcs"]:
        assert a["weight"] == pytest.approx(rises[a["key"]] / sum(rises.values()), rel=1e-3)


@pytest.mark.parametrize("body, status, words", [
    ({"take": 999, "sample": 0, "note": 1}, 404, "no finished take 999"),
    ({"sample": 0, "note": 1}, 400, "'take' must be an integer"),
    ({"take": 1, "sample": 7, "note": 1}, 404, "has no sample 7"),
    ({"take": 1, "sample": 0, "note": 10**6}, 404, "has no note 1000000"),
    ({"take": 1, "sample": 0, "note": -1}, 400, "'note' must be an integer >= 0"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_bad_ids_are_refused_in_one_line(client, done, body, status, words):
    if isinstance(body, dict) and body.get("take") == 1:
        body = {**body, "take": done["take"]}
    r = client.post("/api/influence", json=body)
    assert r.status_code == status and words in r.json()["error"] and "\n" not in r.json()["error"]


def test_busy_and_foreign_requests_are_refused(client, done):
    service = client.app.state.influence
    held = service._running
    held.acquire()  # another note is being scored
    try:
        r = client.post("/api/influence", json={"take": done["take"], "sample": 0, "note": 3})
        assert r.status_code == 503 and "busy with another note" in r.json()["error"]
    finally:
        held.release()
    r = client.post("/api/influence", json={"take": done["take"], "sample": 0, "note": 3},
                    headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    r = client.post("/api/influence", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]


def test_the_time_limit_stops_scoring_and_says_so(client, done):
    service = client.app.state.influence
    before = service.config.time_limit_s
    service.config.time_limit_s = 0.0
    try:
        got = service.answer(done["take"], 0, done["samples"][0]["notes"] - 1)
    finally:
        service.config.time_limit_s = before
    assert got["stopped"] and got["scored"] == [] and got["arcs"] == [] and "time limit" in got["given_up"]


def test_notes_are_matched_by_pitch_and_onset_or_refused():
    from musicgpt.music.notes import Notes
    from musicgpt.studio.influence import match_notes

    read = Notes(start=[0.0, 0.5, 0.5], end=[1.0, 1.0, 1.0], pitch=[60, 67, 64], velocity=[80, 80, 80])
    take = [{"pitch": 60, "start": 0.0}, {"pitch": 64, "start": 0.5}, {"pitch": 67, "start": 0.5004}]
    assert match_notes(take, read).tolist() == [0, 2, 1]  # simultaneous notes in another order
    assert match_notes(take[:2], read) is None
    assert match_notes([*take[:2], {"pitch": 67, "start": 0.51}], read) is None


@needs_chromium
def test_in_the_studio_a_clicked_note_shows_its_influence():
    """Headless Chromium: a finished take in the viewer inside the studio; click a note, ask for its influence,
    and the influence view appears: drawn as its own measure and labelled with what was scored and given up."""
    with serve_tiny() as (server, _), chromium("1400,900") as driver:
        driver.get(server.url)
        driver.find_element("id", "primer-file").send_keys(str(PRIMER))
        driver.find_element("id", "primer_seconds").send_keys("2")
        seconds = driver.find_element("css selector", "input[name=seconds]")
        seconds.clear()
        seconds.send_keys("3")
        driver.find_element("id", "generate").click()
        wait = lambda condition, what, timeout=60: _wait(driver, condition, what, timeout)
        wait(lambda: any(t["state"] == "done" for t in driver.execute_script("return window.musicgptStudio.takes()")),
             "the take to finish")
        driver.execute_script("window.musicgptStudio.showView('viewer')")
        wait(lambda: driver.find_element("id", "viewer").is_displayed(), "the viewer")
        driver.switch_to.frame("viewer")
        wait(lambda: driver.execute_script("return !!window.musicgptViewer"), "the viewer's page")
        assert not driver.find_element("id", "measure-group").is_displayed()  # one measure in the take's file
        n = driver.execute_script("return window.musicgptViewer.nNotes")
        q = n - 1
        note = driver.find_element("css selector", f'#notes rect[data-i="{q}"]')
        driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'});"  # a click on
                              "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", note)  # the note
        assert driver.execute_script("return window.musicgptViewer.state.sel") == q
        button = driver.find_element("id", "influence-btn")
        assert button.is_displayed() and f"#{q}" in button.text
        button.click()
        wait(lambda: driver.execute_script("return window.musicgptViewer.measure()") == "influence", "the influence view")
        card = driver.find_element("id", "influence-card")
        answer = driver.execute_script("return window.musicgptViewer.influence(arguments[0])", q)
        assert card.is_displayed() and f"Influence on #{q}" in card.text
        assert f"{len(answer['scored'])} of {answer['past_notes']} past notes scored" in card.text
        assert "Given up:" in card.text and answer["scored"]
        assert "arcs by influence (on demand, 1 note)" in driver.find_element("id", "stats").text
        chips = [c.text for c in driver.find_elements("css selector", "#measures .chip")]
        assert chips == ["attention", "influence (on demand)"]
        drawn = len(driver.find_elements("css selector", "#arcs path.arc"))
        assert drawn == driver.execute_script("return window.musicgptViewer.visibleArcs(arguments[0]).length", q) > 0
        assert drawn == len([a for a in answer["arcs"] if a["weight"] >= 0.02][:6])
        driver.find_element("css selector", '#measures .chip[data-measure="attention"]').click()
        assert driver.execute_script("return window.musicgptViewer.measure()") == "attention"
        driver.switch_to.default_content()
        assert console_errors(driver) == []


def _wait(driver, condition, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
