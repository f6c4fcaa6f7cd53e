"""The studio's HTTP API end to end on a tiny model, through a real uvicorn server on a free port: health, takes
streamed as server-sent events (in order, notes before `done`, the files parse and equal `musicgpt.generate`'s),
errors as one event, cancelling, a client that goes away, two takes at once, and what the server refuses."""

from __future__ import annotations

import http.client
import io
import json
import sys
import threading
import time

import httpx
import mido
import pretty_midi
import pytest

import musicgpt
from musicgpt.arcs.format import validate_arcs
from studio_fixtures import PRIMER, read_events, serve_tiny, wait_until
from tiny_models import tiny_model

LONG = {"max_new_tokens": "50000", "ignore_eos": "true"}  # far longer than any test waits (600 s of music came
# in a few thousand tokens of the random tiny model, done before a loaded CI machine read the first note)


@pytest.fixture(scope="module")
def studio():
    with serve_tiny() as (server, app):
        yield server, app


def post(server, files=None, timeout: float = 60, **fields):
    """A streaming POST /api/generate (a context manager)."""
    client = httpx.Client(base_url=server.url, timeout=timeout)
    return client.stream("POST", "/api/generate", data={k: str(v) for k, v in fields.items()}, files=files)


def take(server, files=None, **fields) -> list[tuple[str, dict]]:
    with post(server, files=files, **fields) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return list(read_events(response))


def worker(app):
    return app.state.studio.worker


def test_health_names_the_model(studio):
    server, _ = studio
    health = httpx.get(server.url + "api/health").json()
    assert health["model"] == "tiny" and health["n_layer"] == 2 and health["n_head"] == 2
    assert health["vocab"] == 391 and health["version"] == musicgpt.__version__ and health["busy"] is False
    assert "primer" in health["fields"] and "pop909_331" in health["examples"]
    page = httpx.get(server.url)
    assert page.status_code == 200 and "studio.js" in page.text and "Content-Security-Policy" in page.headers


def test_a_take_streams_notes_and_arcs_before_done_and_its_files_match_generate(studio):
    server, _ = studio
    times: list[float] = []
    fields = dict(seconds=3, primer_seconds=2, seed=11, num_samples=2, top_p=0.9)
    with post(server, files={"primer": ("song.mid", PRIMER.read_bytes(), "audio/midi")}, **fields) as response:
        events = list(read_events(response, times=times))
    names = [name for name, _ in events]
    assert names[0] == "progress" and events[0][1]["state"] == "accepted"
    assert events[1][0] == "progress" and events[1][1]["state"] == "running" and events[1][1]["primer"] == "song.mid"
    assert names[-1] == "done" and names.count("done") == 1 and "error" not in names
    done = events[-1][1]
    new = [i for i, (name, d) in enumerate(events) if name == "note" and not d["primer"]]
    assert new and new[0] < len(events) - 1 and times[new[0]] < times[-1]  # notes before done
    assert any(name == "arcs" and len(d["key"]) for name, d in events)
    assert not done["stopped"] and done["seed"] == 11 and len(done["samples"]) == 2
    expected = musicgpt.generate(tiny_model(), PRIMER, arcs=True, **{k: float(v) if k in ("seconds", "primer_seconds",
                                 "top_p") else v for k, v in fields.items()})
    for b, sample in enumerate(done["samples"]):
        files = sample["files"]
        midi = httpx.get(server.url.rstrip("/") + files["midi"])
        assert midi.status_code == 200 and midi.headers["content-type"] == "audio/midi"
        assert len(mido.MidiFile(file=io.BytesIO(midi.content)).tracks) >= 2
        assert pretty_midi.PrettyMIDI(io.BytesIO(midi.content)).instruments
        doc = httpx.get(server.url.rstrip("/") + files["arcs"]).json()
        validate_arcs(doc)
        assert doc == json.loads(json.dumps(expected[b].arcs))  # the same take as musicgpt.generate
        notes = {}
        arcs = {}
        for name, d in events:
            if d.get("sample") == b and name == "note":
                notes[d["id"]] = d
            elif d.get("sample") == b and name == "arcs":
                arcs[d["query"]] = list(zip(d["key"], d["layer"], d["head"], d["weight"]))
        token = [n["token"] for n in doc["notes"]]
        assert sorted(notes) == sorted(token)
        assert all(notes[n["token"]]["end"] == n["end"] and notes[n["token"]]["surprisal"] == n["nll"]
                   for n in doc["notes"])
        want = {}
        for a in doc["arcs"]:
            want.setdefault(token[a["query"]], []).append((token[a["key"]], a["layer"], a["head"], a["weight"]))
        assert {q: rows for q, rows in arcs.items() if rows} == want
        viewer = httpx.get(server.url.rstrip("/") + files["viewer"])
        assert viewer.status_code == 200 and "mgv-data" in viewer.text


def test_an_example_by_name_and_the_primer_cut_notice(studio):
    server, _ = studio
    events = take(server, example="pop909_331", max_new_tokens=20, seed=1)
    running = events[1][1]
    assert running["primer"] == "pop909_331.mid"
    assert running["notice"] and "primer_seconds or primer_tokens (fields)" in running["notice"]  # cut to n_ctx
    assert events[-1][0] == "done"


@pytest.mark.parametrize("fields, words", [
    ({"temperature": "-1"}, "temperature: must be a finite number >= 0"),
    ({"top_p": "abc"}, "top_p: expected a number, got 'abc'"),
    ({"num_samples": "99"}, "num_samples: must lie in 1..8"),
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"example": "nope"}, "example 'nope': unknown"),
])
def test_bad_fields_are_one_error_event(studio, fields, words):
    server, _ = studio
    events = take(server, **fields)
    assert [name for name, _ in events] == ["error"] and words in events[0][1]["message"]


def test_a_corrupt_upload_is_an_error_event_and_the_server_goes_on(studio):
    server, app = studio
    events = take(server, files={"primer": ("broken.mid", b"MThd this is not midi", "audio/midi")}, seconds=2)
    assert events[-1][0] == "error"
    message = events[-1][1]["message"]
    assert "'broken.mid'" in message and str(app.state.studio.files.root) not in message and "\n" not in message
    events = take(server, files={"primer": ("score.xml", b"<score-partwise><oops", "text/xml")}, seconds=2)
    assert events[-1][0] == "error" and "'score.xml'" in events[-1][1]["message"]
    assert take(server, max_new_tokens=10, seed=2)[-1][0] == "done"
    assert not list(app.state.studio.files.root.glob("upload-*"))  # uploads are removed once read


def test_an_upload_over_the_limit_is_refused_with_413():
    with serve_tiny(upload_limit_mb=0.01) as (server, _):
        big = bytes(64 * 1024)
        response = httpx.post(server.url + "api/generate", files={"primer": ("big.mid", big)}, data={"seconds": "1"})
        assert response.status_code == 413 and "limit of 0.01 MB" in response.json()["error"]

        def chunks():  # no Content-Length: the cap counts the bytes as they come
            yield b"--b\r\nContent-Disposition: form-data; name=\"primer\"; filename=\"big.mid\"\r\n\r\n"
            for _ in range(256):  # past the cap and its allowance for the text fields
                yield bytes(1024)
            yield b"\r\n--b--\r\n"
        response = httpx.post(server.url + "api/generate", content=chunks(),
                              headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413
        assert httpx.get(server.url + "api/health").status_code == 200


def raw_get(server, path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (no client-side normalisation of '..' or '%2f')."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_traversal_and_foreign_paths_are_404_and_touch_no_file(studio, tmp_path):
    server, app = studio
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    done = take(server, max_new_tokens=10, seed=3)[-1][1]
    midi_url = done["samples"][0]["files"]["midi"]
    _, _, file_id, name = midi_url.split("/")
    assert raw_get(server, midi_url)[0] == 200 and raw_get(server, "/assets/studio.js")[0] == 200
    root = app.state.studio.files.root
    up = "/".join([".."] * 12)
    paths = [
        f"/assets/../../../../../{secret}", "/assets/..%2f..%2f..%2fetc%2fpasswd", "/assets/%2e%2e%2fstudio.js",
        f"/assets/%2e%2e/%2e%2e/{secret}", f"/assets/{secret}", f"/assets/%2F{str(secret).lstrip('/')}",
        "/assets/STUDIO.JS", "/assets/viewer.js", "/assets/__init__.py",
        f"/files/{file_id}/..%2f..%2f{secret.name}", f"/files/{file_id}/{secret.name}", f"/files/{file_id}/",
        f"/files/{file_id}/%2e%2e", f"/files/../{up}{secret}", f"/files/%2e%2e/%2e%2e/{up}{secret}",
        f"/files/{file_id}{root}/{name}", f"//{up}{secret}", f"/files/{file_id}/{name}/..",
        "/files/nosuchid/take_01_sample_00.mid", f"/{up}/etc/passwd", "/api/../assets/studio.js%00",
    ]
    opened: list[str] = []

    def audit(event, args):
        if event == "open" and args and str(args[0]).endswith(secret.name):
            opened.append(str(args[0]))
    sys.addaudithook(audit)  # hooks stay for the process: this one only records opens of the secret file
    for path in paths:
        status, body = raw_get(server, path)
        assert status in (400, 404), path
        assert b"the secret" not in body and b"root:" not in body, path
    assert not opened
    assert secret.read_text() and opened == [str(secret)]  # the hook does see an open of it


def test_cancel_keeps_the_partial_take(studio):
    server, app = studio
    with post(server, **LONG, seed=4) as response:
        events, stream = [], read_events(response)
        for name, data in stream:
            events.append((name, data))
            if name == "note" and not data["primer"] and len(events) > 30:
                job = data.get("job") or events[0][1]["job"]
                answer = httpx.post(server.url + f"api/cancel?job={job}").json()
                assert answer["cancelled"] is True
                break
        events += list(stream)
    done = events[-1]
    assert done[0] == "done" and done[1]["stopped"] is True
    sample = done[1]["samples"][0]
    assert sample["stop_reason"] == "stopped" and sample["new_notes"] > 0
    assert httpx.get(server.url.rstrip("/") + sample["files"]["midi"]).status_code == 200
    job = worker(app).jobs[events[0][1]["job"]]
    assert job.outcome == "stopped" and httpx.post(server.url + "api/cancel", data={"job": job.id}).json() == {
        "job": job.id, "state": "finished", "cancelled": False}
    assert httpx.post(server.url + "api/cancel", data={"job": "nope"}).status_code == 404


def test_a_client_that_goes_away_stops_its_generation(studio):
    server, app = studio
    with post(server, **LONG, seed=5) as response:
        for name, data in read_events(response):
            if name == "note" and not data["primer"]:
                break
        job = worker(app).jobs[response.headers["x-job-id"]]
        assert job.state == "running"
    # the connection is closed here, mid-stream
    assert wait_until(lambda: job.state == "finished" and not worker(app).busy, timeout=10)
    assert job.outcome == "disconnected" and job.cancel_reason == "disconnected"
    assert take(server, max_new_tokens=10, seed=6)[-1][0] == "done"


def test_two_takes_at_once_the_second_queues_visibly_and_both_finish(studio):
    server, app = studio
    first_events: list = []
    started = threading.Event()

    def first():
        with post(server, **LONG, seed=7) as response:
            for event in read_events(response):
                first_events.append(event)
                if event[0] == "note":
                    started.set()
    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(20)
    with post(server, max_new_tokens=20, seed=8) as response:
        events = read_events(response)
        name, data = next(events)
        assert name == "progress" and data["state"] == "queued" and data["ahead"] == 1
        httpx.post(server.url + "api/cancel", params={"job": first_events[0][1]["job"]})
        rest = list(events)
    thread.join(20)
    assert first_events[-1][0] == "done" and first_events[-1][1]["stopped"]
    assert rest[-1][0] == "done" and not rest[-1][1]["stopped"]
    assert not worker(app).busy


def test_requests_from_other_origins_and_hosts_are_refused(studio):
    server, _ = studio
    response = httpx.post(server.url + "api/generate", data={"seconds": "1"}, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert httpx.post(server.url + "api/cancel?job=x", headers={"Origin": "http://evil.example"}).status_code == 403
    assert httpx.get(server.url + "api/health", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    same = httpx.post(server.url + "api/generate", data={"max_new_tokens": "5"},
                      headers={"Origin": server.url.rstrip("/")})
    assert same.status_code == 200 and "event: done" in same.text


def test_the_command_binds_loopback_and_warns_for_another_host(tmp_path, monkeypatch, capsys):
    from musicgpt.cli import main
    from musicgpt.studio import server as server_module
    from tiny_models import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the default takes folder: made by no take here
    served = []
    monkeypatch.setattr(server_module.StudioServer, "run", lambda self: served.append((self.host, self.port)))
    assert main(["studio", str(ckpt), "--port", "0", "--no-browser"]) == 0
    out = capsys.readouterr()
    assert served[-1][0] == "127.0.0.1" and "warning" not in out.err and "http://127.0.0.1:" in out.out
    assert main(["studio", "--checkpoint", str(ckpt), "--host", "0.0.0.0", "--port", "0", "--no-browser"]) == 0
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err
    assert main(["studio", str(ckpt), "--port", "70000", "--no-browser"]) == 1
    assert "--port: must lie in 0..65535" in capsys.readouterr().err
