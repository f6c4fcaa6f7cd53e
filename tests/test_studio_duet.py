"""The studio's duet (`GET /api/duet`) on a tiny model: its pump with a fake clock (what is sent when, a barge-in's
cancels, the notes released at the end, a flood counted), and the WebSocket end to end through a real uvicorn
server and the `websockets` client: ready first, the human echoed, the model answering after a takeover with
notes, arcs and a note-off for every note-on (at the end of its turn, on a barge-in, on disconnect), bad
parameters and messages answered by an error, a second client and a page of another origin refused."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from urllib.parse import urlencode

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from musicgpt.duet import DuetConfig, DuetSession, FakeClock
from musicgpt.generation.setup import GenerationRequest
from musicgpt.studio.duet import parse_params
from musicgpt.studio.duet_pump import EARLY_S, INBOX, DuetPump
from musicgpt.errors import ConfigError
from studio_fixtures import serve_tiny, wait_until

ON, OFF = 0x90, 0x80


@pytest.fixture(scope="module")
def model(one_thread_model):
    return one_thread_model


def pump(model, seed=1, **config) -> tuple[DuetPump, FakeClock, list]:
    clock = FakeClock()
    session = DuetSession(model, DuetConfig(**config), GenerationRequest(seed=seed), clock=clock)
    return DuetPump(session, lambda m: None), clock, []


def run(p: DuetPump, clock: FakeClock, until: float, dt: float = 0.005) -> list[tuple[float, dict]]:
    """(clock time, message) of what the pump sends while the clock moves to `until`."""
    out = []
    while clock.now() < until - 1e-9:
        clock.advance(dt)
        out += [(clock.now(), m) for m in p.step()]
    return out


def play(p: DuetPump, clock: FakeClock, pitches=(60, 64, 67), gap=0.2) -> list[tuple[float, dict]]:
    out = []
    for pitch in pitches:
        p.put([ON, pitch, 80])
        out += run(p, clock, clock.now() + gap / 2)
        p.put([OFF, pitch, 0])
        out += run(p, clock, clock.now() + gap / 2)
    return out


def midi_of(sent, kind=None):
    return [(t, m) for t, m in sent if m["event"] == "midi" and (kind is None or m["midi"][0] == kind)]


def test_the_pump_sends_model_events_at_most_early_seconds_before_due_and_never_after(model):
    p, clock, _ = pump(model, wait=0.3, answer=1.0, lookahead=0.1)
    sent = play(p, clock)
    humans = [m for _, m in sent if m["event"] == "note"]
    assert [(m["pitch"], m["who"], m["end"] is None) for m in humans] == [
        (60, "human", True), (60, "human", False), (64, "human", True), (64, "human", False), (67, "human", True),
        (67, "human", False)]
    sent = run(p, clock, clock.now() + 2.0)
    turns = [m["who"] for _, m in sent if m["event"] == "turn"]
    assert turns == ["model", "human"]
    notes = midi_of(sent)
    assert notes and all(m["time"] - EARLY_S - 1e-6 <= t <= m["time"] + 0.005 + 1e-6 for t, m in notes)
    ons = [m["midi"][1] for _, m in midi_of(sent, ON)]
    offs = [m["midi"][1] for _, m in midi_of(sent, OFF)]
    assert sorted(ons) == sorted(offs)  # every model note ends by the end of its turn
    first = next(i for i, (_, m) in enumerate(sent) if m["event"] == "note")
    note, arcs = sent[first][1], sent[first + 1][1]
    assert note["who"] == "model" and note["surprisal"] > 0 and arcs["event"] == "arcs" and arcs["query"] == note["id"]
    human_ids = {m["id"] for m in humans}
    assert set(arcs["key"].tolist()) & human_ids  # the model's note listens to the human's


def test_a_barge_in_drops_unsent_notes_and_ends_sent_ones_where_they_were_to_begin(model):
    p, clock, _ = pump(model, seed=4, wait=0.3, answer=5.0, lookahead=0.1)
    play(p, clock)
    sent = []
    while not any(m["event"] == "midi" and m["time"] > t for t, m in sent):  # a note-on sent before it is due
        sent += run(p, clock, clock.now() + 0.005)
        assert clock.now() < 10, "no model note was sent ahead of time"
    early = {m["id"]: m for t, m in sent if m["event"] == "note" and m["start"] > t}
    p.put([ON, 72, 100])
    barge = run(p, clock, clock.now() + 0.005)
    dropped = {m["id"] for _, m in barge if m.get("dropped")}
    assert dropped == set(early)
    ends = {m["midi"][1]: m["time"] for _, m in midi_of(barge, OFF)}
    assert all(ends[n["pitch"]] == n["start"] for n in early.values())
    later = run(p, clock, clock.now() + 0.2)  # less than `wait`: the human's turn, no model note
    assert not midi_of(later, ON) and ("human" in [m.get("who") for _, m in barge if m["event"] == "turn"])
    all_sent = sent + barge + later
    assert len(midi_of(all_sent, ON)) == len(midi_of(all_sent, OFF))


def test_finish_ends_every_struck_model_note_and_a_flood_is_bounded_counted_and_reported(model):
    p, clock, _ = pump(model, seed=2, wait=0.3, answer=5.0)
    play(p, clock)
    sent = []
    while not midi_of(sent, ON):
        sent += run(p, clock, clock.now() + 0.01)
    last = p.finish()
    struck = {m["midi"][1] for _, m in midi_of(sent, ON)} - {m["midi"][1] for _, m in midi_of(sent, OFF)}
    assert struck and {m["midi"][1] for m in last if m["event"] == "midi"} == struck
    assert p.finish() == []
    p, clock, _ = pump(model, wait=5.0)
    accepted = [p.put([ON, 30 + i % 60, 90]) and p.put([OFF, 30 + i % 60, 0]) for i in range(1000)]
    assert p.inbox.qsize() == INBOX and p.dropped == 1000 - INBOX // 2 and accepted.count(True) == INBOX // 2
    sent = [m for _, m in run(p, clock, 0.01)]
    report = [m for m in sent if m["event"] == "error"]
    assert len(report) == 1 and report[0]["dropped"] == p.dropped and "dropped" in report[0]["message"]
    keys = [m for m in sent if m["event"] == "note"]
    assert all(m["who"] == "human" for m in keys) and p.keys == {}  # every key struck was released


def test_parameters_are_checked_and_named():
    params = parse_params([("wait", "0.5"), ("temperature", "0.9"), ("seed", "3"), ("control", "density=high"),
                           ("control", "composer=Bach"), ("top_k", "")])
    assert params.config.wait == 0.5 and params.config.answer == DuetConfig().answer  # the engine's default
    assert params.request.temperature == 0.9 and params.request.seed == 3
    assert params.request.controls == ("density=high", "composer=Bach")
    assert params.request.top_k == GenerationRequest().top_k
    for bad, name in [([("wait", "soon")], "wait"), ([("wait", "-1")], "wait"), ([("top_p", "2")], "top_p"),
                      ([("trigger_cc", "64")], "trigger_cc"), ([("tempo", "1")], "tempo"),
                      ([("seed", "1"), ("seed", "2")], "seed"), ([("lookahead", "nan")], "lookahead")]:
        with pytest.raises(ConfigError, match=name):
            parse_params(bad)


# ---- the WebSocket, end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def studio():
    with serve_tiny() as (server, app):
        yield server, app


def open_duet(server, app, origin=None, **params):
    assert wait_until(lambda: not app.state.duets.playing, 10), "the last duet did not end"
    url = server.url.replace("http://", "ws://") + "api/duet?" + urlencode(params, doseq=True)
    return connect(url, open_timeout=10, origin=origin)


def receive(ws, until, timeout: float = 20.0) -> list[dict]:
    """Messages up to and including the first for which until(message) holds."""
    out, deadline = [], time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out; got {[m['event'] for m in out][-20:]}")
        out.append(json.loads(ws.recv(timeout=left)))
        if until(out[-1]):
            return out


def send(ws, *midi):
    for m in midi:
        ws.send(json.dumps({"midi": list(m)}))


def phrase(ws, pitches=(60, 64, 67), gap=0.06):
    for pitch in pitches:
        send(ws, (ON, pitch, 80))
        time.sleep(gap)
        send(ws, (OFF, pitch, 0))


def test_a_duet_over_the_websocket_ready_echo_takeover_notes_arcs_and_a_note_off_for_every_note_on(studio):
    server, app = studio
    with open_duet(server, app, wait="0.3", answer="1", seed="5", temperature="0.95") as ws:
        ready = json.loads(ws.recv(timeout=10))
        assert ready["event"] == "ready" and ready["model"] == "tiny"
        assert ready["settings"]["wait"] == 0.3 and ready["settings"]["seed"] == 5
        assert ready["settings"]["temperature"] == 0.95 and ready["settings"]["lookahead"] == DuetConfig().lookahead
        phrase(ws)
        got = receive(ws, lambda m: m["event"] == "turn" and m["who"] == "human")
    events = [m["event"] for m in got]
    takeover = events.index("turn")
    assert got[takeover]["who"] == "model" and "midi" in events[takeover:]
    humans = {m["id"] for m in got[:takeover] if m["event"] == "note" and m["who"] == "human"}
    assert len(humans) == 3
    midi = [m for m in got if m["event"] == "midi"]
    assert [m["time"] for m in midi] == sorted(m["time"] for m in midi)
    assert all(m["time"] >= got[takeover]["time"] for m in midi)
    on = [m["midi"][1] for m in midi if m["midi"][0] == ON]
    assert on and sorted(on) == sorted(m["midi"][1] for m in midi if m["midi"][0] == OFF)
    arcs = [m for m in got if m["event"] == "arcs"]
    assert len(arcs) == len(on) and any(set(a["key"]) & humans for a in arcs)
    model_notes = {m["id"]: m for m in got if m["event"] == "note" and m["who"] == "model"}
    assert all(n["end"] is not None and n["end"] >= n["start"] for n in model_notes.values())


def test_a_barge_in_silences_the_model_and_a_disconnect_mid_answer_leaves_the_server_playing(studio):
    server, app = studio
    with open_duet(server, app, wait="0.2", answer="20", seed="3") as ws:
        ws.recv(timeout=10)
        phrase(ws)
        got = receive(ws, lambda m: m["event"] == "midi" and m["midi"][0] == ON)
        send(ws, (ON, 72, 90))
        got += receive(ws, lambda m: m["event"] == "turn" and m["who"] == "human")
        send(ws, (OFF, 72, 0))
        # the model's turn comes again after the silence; the client leaves in the middle of it
        receive(ws, lambda m: m["event"] == "midi" and m["midi"][0] == ON)
    midi = [m["midi"] for m in got if m["event"] == "midi"]
    ons = sorted(m[1] for m in midi if m[0] == ON)
    assert ons and ons == sorted(m[1] for m in midi if m[0] == OFF)  # the barge-in ended what it struck
    barged = next(i for i, m in enumerate(got) if m["event"] == "note" and m.get("pitch") == 72 and m.get("who") == "human")
    assert all(m["event"] != "midi" or m["midi"][0] == OFF for m in got[barged:])  # no note-on after it
    assert wait_until(lambda: not app.state.duets.playing, 10)
    assert wait_until(lambda: not any(t.name == "musicgpt-duet" for t in threading.enumerate()), 10)
    with open_duet(server, app) as ws:
        assert json.loads(ws.recv(timeout=10))["event"] == "ready"


def test_bad_messages_get_an_error_each_and_the_duet_goes_on(studio):
    server, app = studio
    bad = [b"\x90\x3c\x50", "not json", "[144, 60, 80]", '{"midi": [144, 60]}', '{"midi": [144, 200, 10]}',
           '{"midi": [true, 60, 10]}', '{"midi": [144, 60, 80], "x": 1}', '{"midi": [16, 60, 80]}',
           '{"midi": "C4"}', "x" * 10_000]
    with open_duet(server, app, wait="30") as ws:
        ws.recv(timeout=10)
        send(ws, (OFF, 61, 0), (0xE0, 0, 64))  # a release of a key not down, a pitch bend: ignored
        for message in bad:
            ws.send(message)
        errors = [m for m in (json.loads(ws.recv(timeout=10)) for _ in bad)]
        send(ws, (ON, 60, 80))
        echo = json.loads(ws.recv(timeout=10))
    assert [m["event"] for m in errors] == ["error"] * len(bad)
    assert all("\n" not in m["message"] and len(m["message"]) < 200 for m in errors)
    assert "binary" in errors[0]["message"] and "not JSON" in errors[1]["message"]
    assert echo["event"] == "note" and echo["pitch"] == 60 and echo["who"] == "human"


def test_a_flood_of_notes_is_survived_and_every_key_is_released(studio):
    server, app = studio
    with open_duet(server, app, wait="30") as ws:
        ws.recv(timeout=10)
        for i in range(1000):
            send(ws, (ON, 36 + i % 48, 80), (OFF, 36 + i % 48, 0))
        got, deadline = [], time.monotonic() + 60
        while not any(m["event"] == "note" and m["pitch"] == 99 for m in got):
            assert time.monotonic() < deadline, "the flood was never drained"
            send(ws, (ON, 99, 80))  # a key struck while the inbox is full is dropped: strike it until it is heard
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append(json.loads(ws.recv(timeout=0.5)))
        send(ws, (OFF, 99, 0))
        got += receive(ws, lambda m: m["event"] == "note" and m["pitch"] == 99 and m["end"] is not None)
        ws.send("not json")
        got += receive(ws, lambda m: m["event"] == "error" and "JSON" in m["message"])  # it still answers
    starts = {m["id"] for m in got if m["event"] == "note" and m["end"] is None}
    ends = {m["id"] for m in got if m["event"] == "note" and m["end"] is not None}
    assert len(starts) > 1 and starts == ends  # every key the model's stream took was released
    drops = [m["dropped"] for m in got if m["event"] == "error" and "dropped" in m]
    assert drops == sorted(drops) and all(0 < d < 1000 for d in drops)


def test_parameters_a_second_client_and_other_origins_are_refused_with_a_reason(studio):
    server, app = studio
    for params, name in [({"wait": "soon"}, "wait"), ({"temperature": "-1"}, "temperature"), ({"tempo": "2"}, "tempo"),
                         ({"control": "composer=Bach"}, "control")]:
        with open_duet(server, app, **params) as ws:
            error = json.loads(ws.recv(timeout=10))
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        assert error["event"] == "error" and name in error["message"], error
    with open_duet(server, app, wait="30") as first:
        assert json.loads(first.recv(timeout=10))["event"] == "ready"
        url = server.url.replace("http://", "ws://") + "api/duet"
        with connect(url, open_timeout=10) as second:
            refused = json.loads(second.recv(timeout=10))
            with pytest.raises(ConnectionClosed):
                second.recv(timeout=10)
        assert refused["event"] == "error" and "another duet" in refused["message"]
        send(first, (ON, 60, 80))
        assert json.loads(first.recv(timeout=10))["event"] == "note"  # the first plays on
    with pytest.raises(InvalidStatus) as refused:
        open_duet(server, app, origin="http://example.com")
    assert refused.value.response.status_code == 403
