"""The studio under bad input and a long session, on tiny models: takes free their generation without a garbage
collection, spans, seeds and bodies that once cost a traceback or the server's memory are refused with one line,
the takes outlive the server under a size cap, and the URL it prints answers. (The soak: bench/studio_soak.py.)"""

from __future__ import annotations

import gc
import json
import logging
import platform
import socket
import sys
import tempfile
import weakref

import httpx
import pytest

from musicgpt.errors import ConfigError
from musicgpt.generation import budget
from musicgpt.generation.loop import Generation
from musicgpt.studio import StudioServer, create_app, takes as takes_module
from musicgpt.studio.files import FileStore, default_takes_dir
from musicgpt.studio.server import allowed_hosts
from studio_fixtures import PRIMER, read_events, serve_tiny, wait_until
from tiny_models import tiny_model

LONG = {"max_new_tokens": "50000", "ignore_eos": "true"}
UPLOAD = {"primer": ("song.mid", PRIMER.read_bytes(), "audio/midi")}


def events_of(server, data=None, files=None, **kw) -> list[tuple[str, dict]]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        with client.stream("POST", "/api/generate", data=data, files=files, **kw) as response:
            assert response.status_code == 200, response.read()
            return list(read_events(response))


def first_note_then_leave(server, fields, files=None) -> str:
    """Start a take, read to its first new note, close the connection; the job id."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/api/generate", data=fields, files=files) as response:
            for name, data in read_events(response):
                if name == "note" and not data["primer"]:
                    return response.headers["x-job-id"]
    raise AssertionError("the take ended before its first new note")


def idle(app) -> bool:
    worker = app.state.studio.worker
    return not worker.busy and not worker.queued


def test_finished_stopped_and_dropped_takes_leave_no_generation_alive_without_gc(monkeypatch):
    alive: list[weakref.ref] = []

    class Counted(Generation):
        @classmethod
        def from_plan(cls, *args, **kwargs):
            generation = super().from_plan(*args, **kwargs)
            alive.append(weakref.ref(generation))
            return generation
    monkeypatch.setattr(takes_module, "Generation", Counted)
    with serve_tiny() as (server, app):
        gc.collect()
        gc.disable()  # what a cycle would keep is only freed by a collection: none may run here
        try:
            for seed in range(3):
                assert events_of(server, {"max_new_tokens": "30", "seed": str(seed)})[-1][0] == "done"
            job = first_note_then_leave(server, {**LONG, "seed": "9"})  # disconnected mid-take
            assert wait_until(lambda: idle(app) and app.state.studio.worker.jobs[job].state == "finished")
            with httpx.Client(base_url=server.url, timeout=60) as client:  # stopped mid-take
                with client.stream("POST", "/api/generate", data={**LONG, "seed": "10"}) as response:
                    for name, data in read_events(response):
                        if name == "note" and not data["primer"]:
                            client.post("/api/cancel", params={"job": response.headers["x-job-id"]})
            assert wait_until(lambda: idle(app))
            assert len(alive) == 5 and [r for r in alive if r() is not None] == []
        finally:
            gc.enable()


@pytest.fixture(scope="module")
def steer():
    with serve_tiny(steer=True) as (server, app):
        yield server, app


@pytest.mark.parametrize("start, end, words", [
    ("0", "1e9", "a span of at most 600 s"),  # was 16 GB of TIME_SHIFTs, then the OOM killer
    ("0", "nan", "infill_end: expected a finite number"),
    ("1", "inf", "infill_end: expected a finite number"),
    ("-5", "1", "need 0 <= start < end"),
    ("100", "400", "START 100 s is not inside the piece (it ends at 76.0 s)"),
])
def test_a_span_outside_the_piece_or_not_finite_is_refused_before_anything_is_built(steer, monkeypatch, start,
                                                                                       end, words):
    server, app = steer
    built = []

    class Counted(Generation):
        @classmethod
        def from_plan(cls, *args, **kwargs):
            built.append(args)
            return super().from_plan(*args, **kwargs)
    monkeypatch.setattr(takes_module, "Generation", Counted)
    events = events_of(server, {"infill_start": start, "infill_end": end}, UPLOAD)
    names = [name for name, _ in events]  # the piece's length is read by the worker: it may say "accepted" first
    assert names[-1] == "error" and set(names[:-1]) <= {"progress"} and words in events[-1][1]["message"], events
    assert built == [] and "\n" not in events[-1][1]["message"]
    assert wait_until(lambda: idle(app)) and not list(app.state.studio.files.root.glob("upload-*"))


def test_a_huge_seed_is_one_error_event_not_an_internal_error():
    with serve_tiny() as (server, app):
        events = events_of(server, {"seed": "1180591620717411303424", "max_new_tokens": "5"})
        assert [name for name, _ in events] == ["error"]
        assert "seed: must be an integer in 0..2**63-1" in events[0][1]["message"]  # generation's own check
        assert events_of(server, {"seed": str(2**63 - 1), "max_new_tokens": "5"})[-1][0] == "done"


def test_a_json_body_to_generate_is_refused_not_read_as_a_default_take():
    with serve_tiny() as (server, app):
        response = httpx.post(server.url + "api/generate", json={"seconds": 1, "seed": 3})
        assert response.status_code == 400 and "expected the fields as multipart/form-data" in response.json()["error"]
        assert app.state.studio.worker.jobs == {}  # nothing was queued
        assert httpx.post(server.url + "api/generate").status_code == 200  # an empty body is still a default take


def test_every_request_body_is_capped_and_a_client_leaving_mid_upload_logs_no_traceback():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        with serve_tiny() as (server, app):
            big = json.dumps({"job": "x", "pad": "a" * (1 << 20)})
            response = httpx.post(server.url + "api/cancel", content=big, headers={"Content-Type": "application/json"})
            assert response.status_code == 413 and "limit of 64 KB" in response.json()["error"]

            def chunks():  # no Content-Length: the cap counts the bytes as they come
                for _ in range(100):
                    yield b"a" * 4096
            response = httpx.post(server.url + "api/cancel", content=chunks(),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert response.status_code == 413
            with socket.create_connection(("127.0.0.1", server.port)) as raw:  # half an upload, then gone
                raw.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                            b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                            b"name=\"primer\"; filename=\"a.mid\"\r\n\r\nMThd")
            assert wait_until(lambda: httpx.get(server.url + "api/health").status_code == 200)
            assert events_of(server, {"max_new_tokens": "5"})[-1][0] == "done"
            assert not list(app.state.studio.files.root.glob("upload-*")) and app.state.studio.worker.jobs
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []


def test_uploads_of_takes_cancelled_or_gone_while_queued_are_removed():
    with serve_tiny() as (server, app):
        files = app.state.studio.files
        with httpx.Client(base_url=server.url, timeout=60) as client:
            with client.stream("POST", "/api/generate", data={**LONG, "seed": "1"}) as running:
                head = read_events(running)  # kept: a generator dropped here would close the stream
                next(head)
                assert wait_until(lambda: app.state.studio.worker.busy, timeout=30)
                with client.stream("POST", "/api/generate", data={"seconds": "1"}, files=UPLOAD) as queued:
                    stream = read_events(queued)
                    name, data = next(stream)
                    assert data["state"] == "queued" and len(list(files.root.glob("upload-*"))) == 1
                    client.post("/api/cancel", params={"job": data["job"]})
                    assert [n for n, _ in stream] == ["done"]
                assert not list(files.root.glob("upload-*"))
                with httpx.stream("POST", server.url + "api/generate", data={"seconds": "1"}, files=UPLOAD) as gone:
                    assert next(read_events(gone))[1]["state"] == "queued"
                assert wait_until(lambda: app.state.studio.worker.queued == 0)  # the stream closed: dropped
                assert not list(files.root.glob("upload-*"))
                client.post("/api/cancel", params={"job": running.headers["x-job-id"]})


def take_names(server) -> list[int]:
    return [t["take"] for t in httpx.get(server.url + "api/takes").json()["takes"]]


def test_takes_stay_in_their_folder_and_are_listed_again_after_a_restart(tmp_path):
    folder = tmp_path / "takes"
    with serve_tiny(takes=folder) as (server, app):
        assert not folder.exists()  # made with the first take
        done = events_of(server, {"max_new_tokens": "20", "seed": "4", "num_samples": "2"}, UPLOAD)[-1][1]
        first_note_then_leave(server, {**LONG, "seed": "5"})  # disconnected: leaves no folder
        assert wait_until(lambda: idle(app))
        assert wait_until(lambda: len(list(folder.glob("take_01/*"))) == 7)  # MIDI, arcs, viewer x 2, take.json
        midi = httpx.get(server.url.rstrip("/") + done["samples"][1]["files"]["midi"]).content
        listed = httpx.get(server.url + "api/takes").json()
        assert listed["folder"] == str(folder) and "oldest takes are removed first" in listed["policy"]
    assert sorted(p.name for p in folder.iterdir()) == ["take_01"]
    info = json.loads((folder / "take_01" / "take.json").read_text())
    assert info["seed"] == 4 and info["primer"] == "song.mid" and len(info["samples"]) == 2
    with serve_tiny(takes=folder) as (server, app):  # a restart
        (take,) = httpx.get(server.url + "api/takes").json()["takes"]
        assert take["take"] == 1 and take["seed"] == 4 and set(take["samples"][1]["files"]) >= {"midi", "arcs"}
        assert httpx.get(server.url.rstrip("/") + take["samples"][1]["files"]["midi"]).content == midi
        events_of(server, {"max_new_tokens": "5", "seed": "6"})
        assert take_names(server) == [2, 1]


def test_past_the_cap_the_oldest_takes_go_first_and_the_newest_stays(tmp_path):
    store = FileStore(tmp_path / "takes", limit_mb=0.01)  # 10,240 bytes
    try:
        for size in (4000, 4000, 4000, 20000):
            number = store.new_take()
            file_id, entry = store.add("a.mid", lambda path, n=size: path.write_bytes(bytes(n)), number)
            entry.ensure()
            store.finish_take(number, {"samples": [{"files": {"midi": "a.mid"}}]}, [{"midi": store.url(file_id)}])
            if number == 3:
                assert [t["take"] for t in store.listing()] == [3, 2] and store.used() <= store.limit
        assert [t["take"] for t in store.listing()] == [4]  # alone over the cap: kept
        assert sorted(p.name for p in (tmp_path / "takes").iterdir()) == ["take_04"]
        assert store.get(file_id, "a.mid") is not None
    finally:
        store.close()
    assert (tmp_path / "takes" / "take_04" / "a.mid").stat().st_size == 20000  # the folder outlives the store


def test_the_default_takes_folder_follows_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_takes_dir() == tmp_path / "musicgpt" / "takes"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # ignored, as the XDG spec says
    assert default_takes_dir().parts[-4:] == (".local", "share", "musicgpt", "takes")


def test_a_failed_start_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from musicgpt.cli import main
    from tiny_models import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = main(["studio", str(ckpt), "--port", str(port), "--no-browser", "--takes", str(tmp_path / "takes")])
    assert code == 1 and "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert list(scratch.iterdir()) == [] and not (tmp_path / "takes").exists()


def loopback_works(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.2", "::1", "localhost"])
def test_the_printed_url_answers_on_every_loopback_address(host, tmp_path, monkeypatch, capsys):
    if not loopback_works(host):
        pytest.skip(f"{host} cannot be bound here")
    from musicgpt.cli import main
    from tiny_models import tiny_checkpoint

    answers = []

    def run(self):  # in place of serving forever: start, ask the printed URL, stop
        with self:
            answers.append(httpx.get(self.url + "api/health", timeout=10).status_code)
    monkeypatch.setattr(StudioServer, "run", run)
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    assert main(["studio", str(ckpt), "--host", host, "--port", "0", "--no-browser", "--takes",
                 str(tmp_path / "takes")]) == 0
    assert answers == [200] and "warning" not in capsys.readouterr().err
    assert "[::1]" in allowed_hosts("::1") and allowed_hosts("0.0.0.0") == ["*"]


def test_a_take_that_would_not_fit_in_memory_is_refused_with_the_limit():
    with serve_tiny() as (server, app):
        runner = app.state.studio.runner
        config = app.state.studio.model.config
        one = budget.estimate(config, 1, tokens=1, arcs=True, arcs_top_k=64)
        runner.available_memory = lambda: int(one.per_sample * 3 / budget.BUDGET_SHARE)  # room for 3 samples
        events = events_of(server, {"num_samples": "8", "max_new_tokens": "5"})
        message = events[-1][1]["message"]
        assert [name for name, _ in events] == ["progress", "error"] and "num_samples 8: needs about" in message
        assert "at most 2 samples fit" in message or "at most 3 samples fit" in message
        assert events_of(server, {"num_samples": "2", "max_new_tokens": "5"})[-1][0] == "done"


def test_the_memory_estimate_matches_the_bundled_models_measured_size():
    from musicgpt.model.config import GPTConfig

    bundled = GPTConfig(vocab_size=453, n_layer=6, n_head=8, d_model=384, d_ff=1536, n_ctx=1024)
    plain = budget.estimate(bundled, 16, tokens=1126)
    arcs = budget.estimate(bundled, 16, tokens=1126, arcs=True, arcs_top_k=64)
    assert 34.7 <= plain.per_sample / 2**20 <= 40  # measured 34.7 MB a sample (see musicgpt/generation/budget.py)
    assert 141 <= arcs.per_sample / 2**20 <= 160  # measured 141 MB
    assert budget.estimate(bundled, 1, tokens=10, guidance=True).per_sample > 1.9 * plain.parts["kv_cache"]
    with pytest.raises(ConfigError, match=r"num_samples 500: needs about .* at most \d+ samples fit"):
        budget.check_fits(budget.estimate(bundled, 500, tokens=1126), 8 * 2**30)
    budget.check_fits(plain, None)  # unknown memory: nothing refused
    assert budget.expected_tokens(100, 4000, 20.0) == 100 + 1001 and budget.expected_tokens(1, 30, None) == 31


def test_the_page_lists_the_takes_of_an_earlier_session_with_the_cap_policy(tmp_path):
    from headless import chromium, needs_chromium

    if needs_chromium.args[0]:
        pytest.skip(needs_chromium.kwargs["reason"])
    folder = tmp_path / "takes"
    with serve_tiny(takes=folder) as (server, _):
        events_of(server, {"max_new_tokens": "10", "seed": "8"})
    with serve_tiny(takes=folder) as (server, _), chromium("1400,900") as driver:
        driver.get(server.url)
        assert wait_until(lambda: driver.execute_script(
            "const e = document.getElementById('earlier-takes'); return e && e.textContent"), timeout=30)
        text = driver.execute_script("return document.getElementById('earlier-takes').textContent")
        links = driver.execute_script("return [...document.querySelectorAll('#earlier-takes a')].map(a => a.href)")
        assert "Earlier takes (1)" in text and "Take 1" in text and "seed 8" in text and str(folder) in text
        assert "oldest takes are removed first" in text and any(link.endswith(".mid") for link in links)
        midi = next(link for link in links if link.endswith(".mid"))
        assert httpx.get(midi).status_code == 200


def test_a_restart_skips_unfinished_or_foreign_take_folders_and_serves_no_outside_file(tmp_path):
    folder = tmp_path / "takes"
    for name, info in [("take_01", None), ("take_02", "[1, 2]"), ("take_03", '{"samples": [3]}'),
                       ("take_04", json.dumps({"samples": [{"files": {"midi": "../../secret.mid", "arcs": "a.json"}}],
                                               "seed": 1}))]:
        (folder / name).mkdir(parents=True)
        if info is not None:
            (folder / name / "take.json").write_text(info)
    (folder / "take_04" / "a.json").write_text("{}")
    (tmp_path / "secret.mid").write_text("secret")
    store = FileStore(folder)
    try:
        assert store.load() == 1
        (take,) = store.listing()
        assert take["take"] == 4 and list(take["samples"][0]["files"]) == ["arcs"]
        assert store.new_take() == 5  # numbering goes on past every folder, listed or not
    finally:
        store.close()


def test_each_take_hands_the_memory_it_freed_back_to_the_system(monkeypatch):
    trims = []
    monkeypatch.setattr(takes_module, "release_freed_memory", lambda: trims.append(1))
    with serve_tiny() as (server, app):
        events_of(server, {"max_new_tokens": "5"})
        events_of(server, {"seed": "1180591620717411303424"})  # refused before it runs: nothing to trim
        events_of(server, {"max_new_tokens": "5", "num_samples": "2"})
        assert wait_until(lambda: idle(app)) and len(trims) == 2
    monkeypatch.undo()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert takes_module.release_freed_memory() is glibc  # elsewhere it does nothing
