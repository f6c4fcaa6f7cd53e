"""The studio's web app (Starlette): the page, its assets, the HTTP API and the files the takes wrote.

    GET  /                      the page (musicgpt/studio/assets/studio.html)
    GET  /assets/NAME           studio.js, studio.css, viewer.css, piano.js, piano/*.ogg: a fixed table of files
    GET  /api/health            the model and the server's state
    GET  /api/examples          the bundled examples a take can start from
    POST /api/generate          a take, answered as text/event-stream (musicgpt.studio.stream, takes)
    POST /api/cancel            stop a take (field or query parameter `job`)
    GET  /api/takes             the takes in the takes folder, newest first (also those of earlier runs)
    POST /api/influence         a note's influence arcs, computed on demand (musicgpt.studio.influence)
    GET  /api/duet              a WebSocket: play a duet with the model (musicgpt.studio.duet)
    GET  /files/ID/NAME         a file a take wrote (musicgpt.studio.files)

No path from a request reaches the file system: assets and files are looked up in tables by name and id.
A POST or a WebSocket from a page of another origin is refused (a web page could otherwise make the studio generate);
requests with no Origin header (curl, scripts) are served.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from musicgpt import __version__
from musicgpt.errors import ConfigError, MusicGPTError
from musicgpt.generation.setup import control_header
from musicgpt.studio.duet import DuetHost
from musicgpt.studio.files import DEFAULT_TAKES_LIMIT_MB, POLICY, FileStore
from musicgpt.studio.form import FIELDS, MAX_SAMPLES, parse_fields
from musicgpt.studio.influence import InfluenceRefused, InfluenceService, parse_request
from musicgpt.studio.jobs import Event, Job, Worker
from musicgpt.studio.sse import encode
from musicgpt.studio.uploads import (DEFAULT_UPLOAD_MB, FORM_SLACK, BodyLimit, UploadTooLarge, read_form,
                                     save_primer)
from musicgpt.viz.piano import asset_names as piano_assets

# name -> (package, file, media type): everything /assets/ serves
ASSETS = {
    "studio.js": ("musicgpt.studio", "studio.js", "text/javascript; charset=utf-8"),
    "studio.css": ("musicgpt.studio", "studio.css", "text/css; charset=utf-8"),
    "viewer.css": ("musicgpt.viz", "viewer.css", "text/css; charset=utf-8"),  # the viewer's theme and controls
    "duet.js": ("musicgpt.studio", "duet.js", "text/javascript; charset=utf-8"),  # the Duet mode
    "duet.css": ("musicgpt.studio", "duet.css", "text/css; charset=utf-8"),
    "piano.js": ("musicgpt.viz", "piano.js", "text/javascript; charset=utf-8"),  # the sampler the pages play
    **{name: ("musicgpt.viz", name, "audio/ogg") for name in piano_assets()},  # its samples: piano/A0v10.ogg, ...
}
PAGE = ("musicgpt.studio", "studio.html")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost"]  # a DNS-rebinding page names another host: refused
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "frame-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'")


def _asset(package: str, name: str) -> bytes:
    return resources.files(package).joinpath("assets", name).read_bytes()


@dataclass
class Studio:
    """What the app serves with: the model, its worker and the files written so far."""

    model: Any
    tokenizer: Any
    model_name: str
    files: FileStore
    worker: Worker
    upload_limit: int  # bytes
    examples: dict[str, Path] = field(default_factory=dict)
    wav: bool = False
    runner: Any = None  # the TakeRunner (its file writer stops with the studio)

    def health(self) -> dict[str, Any]:
        config = self.model.config
        return {"model": self.model_name, "version": __version__, "n_layer": config.n_layer, "n_head": config.n_head,
                "vocab": config.vocab_size, "n_ctx": config.n_ctx, "d_model": config.d_model,
                "parameters": sum(p.numel() for p in self.model.parameters()), "busy": self.worker.busy,
                "queued": self.worker.queued, "upload_limit_mb": self.upload_limit / 2**20, "wav": self.wav,
                "max_samples": MAX_SAMPLES, "fields": ["primer", *FIELDS], "examples": sorted(self.examples),
                "controls": {name: list(values) for name, values in (getattr(self.tokenizer, "controls", None)
                                                                     or {}).items()},
                "infill": bool(getattr(self.tokenizer, "infill", False))}

    def close(self) -> None:
        """Stop the worker and the file writer, and remove the temporary folder (uploads; the takes folder stays)."""
        self.worker.stop()
        if self.runner is not None:
            self.runner.close()
        self.files.close()


def find_examples(folder: Path | None) -> dict[str, Path]:
    """The primers of a folder by name (file stem): MIDI, MusicXML and ABC files."""
    from musicgpt.studio.uploads import PRIMER_SUFFIXES

    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in PRIMER_SUFFIXES}


def default_examples() -> Path | None:
    """The checkout's examples/ folder, when the package runs from a checkout (an installed wheel has none)."""
    folder = Path(__file__).resolve().parents[2] / "examples"
    return folder if folder.is_dir() else None


class EventStream(StreamingResponse):
    """A job's events as text/event-stream; a client that goes away cancels the job."""

    def __init__(self, job: Job, worker: Worker, first: list[Event]):
        self.job, self.worker, self.complete = job, worker, False
        super().__init__(self._events(first), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Job-Id": job.id,
                                  **SECURITY_HEADERS})

    async def _events(self, first: list[Event]):
        # encoded on a thread: a batch with the primer's arcs takes tens of ms of pure Python, which on the loop
        # would hold every other request (/api/health) that long; off it, they wait one GIL switch at most
        yield await run_in_threadpool(encode, first)
        while (batch := await self.job.events()) is not None:
            yield await run_in_threadpool(encode, batch)
        self.complete = True

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.complete:  # the client closed the connection (or the server is stopping)
                self.worker.cancel(self.job, "disconnected")


def error_stream(message: str) -> Response:
    """A stream of one `error` event: how a take that cannot start is answered."""
    return Response(encode([("error", {"message": " ".join(message.split())})]), media_type="text/event-stream",
                    headers=SECURITY_HEADERS)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def _foreign(request: Request) -> bool:
    """Whether a request comes from a page of another origin (browsers send Origin with every POST)."""
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.headers.get("host")


def _text_fields(form) -> list[tuple[str, str]]:
    """The form's fields besides `primer`, in order (a file where a text belongs is a ConfigError naming the field)."""
    values = []
    for name, value in form.multi_items():
        if name == "primer":
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a text field, got a file")
        values.append((name, value))
    return values


def _studio(request: Request) -> Studio:
    return request.app.state.studio


async def page(request: Request) -> Response:
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}
    return Response(request.app.state.assets["/"], media_type="text/html; charset=utf-8", headers=headers)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return _error(404, "no such asset")
    return Response(request.app.state.assets[name], media_type=ASSETS[name][2],
                    headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


async def health(request: Request) -> Response:
    return JSONResponse(_studio(request).health(), headers=SECURITY_HEADERS)


async def examples(request: Request) -> Response:
    return JSONResponse({"examples": [{"name": name, "file": path.name} for name, path in
                                      _studio(request).examples.items()]}, headers=SECURITY_HEADERS)


async def generate(request: Request) -> Response:
    studio = _studio(request)
    if _foreign(request):
        return _error(403, "generate: refused a request from a page of another origin")
    try:
        form = await read_form(request, studio.upload_limit)
    except UploadTooLarge as exc:
        return _error(413, str(exc))
    except HTTPException as exc:
        return _error(400, f"request body: {exc.detail}")
    upload = None
    try:
        take = parse_fields(_text_fields(form))
        path, name = await save_primer(form.get("primer"), studio.files, studio.upload_limit)
        upload = path
        if take.example is not None:
            if path is not None:
                raise ConfigError("primer and example: give an uploaded primer or an example, not both")
            if take.example not in studio.examples:
                raise ConfigError(f"example {take.example!r}: unknown; known: {', '.join(studio.examples) or 'none'}")
            path, name = studio.examples[take.example], studio.examples[take.example].name
        control_header(studio.tokenizer, take.controls)  # checked against the model before the take queues
        if take.infilling and not getattr(studio.tokenizer, "infill", False):
            raise ConfigError("infill_start, infill_end: this model was not trained for infilling (its tokenizer "
                              "has no INFILL tokens)")
        if take.infilling and path is None:
            raise ConfigError("infill_start, infill_end: need a primer (a file or an example): the piece to refill")
        take = replace(take, primer_path=path, primer_name=name)
    except UploadTooLarge as exc:
        return _error(413, str(exc))
    except MusicGPTError as exc:
        if upload is not None:
            upload.unlink(missing_ok=True)  # refused before the worker (which removes uploads) ever saw it
        return error_stream(str(exc))
    finally:
        await form.close()
    job = Job(take, asyncio.get_running_loop())
    try:
        ahead = studio.worker.submit(job)
    except RuntimeError as exc:
        return _error(503, str(exc))
    state = {"job": job.id, "state": "queued", "ahead": ahead} if ahead else {"job": job.id, "state": "accepted"}
    return EventStream(job, studio.worker, [("progress", state)])


async def cancel(request: Request) -> Response:
    studio = _studio(request)
    if _foreign(request):
        return _error(403, "cancel: refused a request from a page of another origin")
    job_id = request.query_params.get("job")
    if job_id is None:
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                job_id = str(json.loads(await request.body()).get("job"))
            except (ValueError, AttributeError):
                return _error(400, "cancel: the body is not a JSON object")
        else:
            async with request.form(max_files=0, max_fields=4) as form:
                job_id = form.get("job")
    job = studio.worker.jobs.get(str(job_id))
    if job is None:
        return _error(404, f"cancel: no job {job_id!r} (give the id of the progress events, field 'job')")
    was = job.state
    if was != "finished":
        studio.worker.cancel(job, "stopped")
    return JSONResponse({"job": job.id, "state": job.state, "cancelled": was != "finished"}, headers=SECURITY_HEADERS)


async def takes(request: Request) -> Response:
    files = _studio(request).files
    used = await run_in_threadpool(files.used)
    return JSONResponse({"takes": files.listing(), "folder": str(files.takes_dir) if files.persistent else None,
                         "used_mb": round(used / 2**20, 3), "limit_mb": round(files.limit / 2**20, 3),
                         "policy": POLICY}, headers=SECURITY_HEADERS)


async def download(request: Request) -> Response:
    entry = _studio(request).files.get(request.path_params["id"], request.path_params["name"])
    if entry is None:
        return _error(404, "no such file")
    try:
        path = await run_in_threadpool(entry.ensure)
    except OSError as exc:
        return _error(500, str(exc))
    inline = entry.name.endswith((".html", ".wav"))  # the page shows the viewer and plays the audio in place
    return FileResponse(path, media_type=entry.media_type, filename=entry.name,
                        content_disposition_type="inline" if inline else "attachment", headers=SECURITY_HEADERS)


async def influence(request: Request) -> Response:
    studio = _studio(request)
    if _foreign(request):
        return _error(403, "influence: refused a request from a page of another origin")
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _error(400, "influence: the body is not JSON ({\"take\": N, \"sample\": B, \"note\": Q})")
    try:
        take, sample, note = parse_request(body)
        if studio.worker.busy:  # one model, one core's worth of work at a time: the take comes first
            raise InfluenceRefused(503, "influence: the studio is writing a take; ask again when it is done")
        answer = await run_in_threadpool(request.app.state.influence.answer, take, sample, note)
    except InfluenceRefused as exc:
        return _error(exc.status, str(exc))
    except MusicGPTError as exc:
        return _error(400, str(exc))
    return JSONResponse(answer, headers=SECURITY_HEADERS)


async def duet(websocket: WebSocket) -> None:
    if _foreign(websocket):  # a page of another origin must not play with (or listen to) the model
        return await websocket.close(code=1008, reason="duet: refused a page of another origin")
    await websocket.app.state.duets.serve(websocket)


ROUTES = [
    Route("/", page), Route("/assets/{name:path}", asset), Route("/api/health", health),
    Route("/api/examples", examples),
    Route("/api/generate", generate, methods=["POST"]), Route("/api/cancel", cancel, methods=["POST"]),
    Route("/api/takes", takes), Route("/api/influence", influence, methods=["POST"]),
    Route("/files/{id}/{name}", download), WebSocketRoute("/api/duet", duet),
]


def create_app(model, tokenizer=None, *, model_name: str = "bundled", upload_limit_mb: float = DEFAULT_UPLOAD_MB,
               examples: Path | None = None, threads: int = 1, hosts: list[str] | None = None,
               takes: Path | None = None, takes_limit_mb: float = DEFAULT_TAKES_LIMIT_MB) -> Starlette:
    """The studio app for a loaded model, read with `tokenizer` (default: the one the model carries); `hosts`: the
    Host names it answers (default: loopback names only); `takes`: the folder that keeps the takes (default: a
    temporary one, removed when the app stops), held under `takes_limit_mb`."""
    from musicgpt.music.audio import available_renderers
    from musicgpt.studio.takes import TakeRunner
    from musicgpt.tokens.base import PerformanceEvents
    from musicgpt.tokens.registry import tokenizer_of

    tokenizer = tokenizer if tokenizer is not None else tokenizer_of(model)

    if not isinstance(tokenizer, PerformanceEvents):
        raise ConfigError(f"studio: the model's tokenizer ({type(tokenizer).__name__}) has no performance events "
                          "(NOTE_ON/NOTE_OFF/TIME_SHIFT/VELOCITY); the studio follows notes through them")
    if not upload_limit_mb > 0:
        raise ConfigError(f"max upload: must be a positive number of MB, got {upload_limit_mb!r}")
    if not takes_limit_mb > 0:
        raise ConfigError(f"takes limit: must be a positive number of MB, got {takes_limit_mb!r}")
    files = FileStore(takes, takes_limit_mb)
    wav = bool(available_renderers())
    runner = TakeRunner(model, tokenizer, files, threads=threads, wav=wav)
    studio = Studio(model, tokenizer, model_name, files, Worker(runner, runner.discard), int(upload_limit_mb * 2**20),
                    find_examples(examples if examples is not None else default_examples()), wav, runner)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(studio.close)

    app = Starlette(routes=ROUTES, lifespan=lifespan,
                    middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts or LOOPBACK_HOSTS),
                                Middleware(BodyLimit, limits={"/api/generate": studio.upload_limit + 2 * FORM_SLACK})])
    app.state.studio = studio
    app.state.duets = DuetHost(model, tokenizer, model_name)
    app.state.influence = InfluenceService(model, tokenizer, files)
    app.state.assets = {"/": _asset(*PAGE), **{name: _asset(pkg, file) for name, (pkg, file, _) in ASSETS.items()}}
    return app
