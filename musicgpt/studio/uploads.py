"""Request bodies: every route's size cap (`BodyLimit`), `POST /api/generate`'s form and its primer file, kept
where only the worker reads it.

Caps count the bytes as they arrive (a Content-Length above one is refused before reading), so an oversized
body costs the server no more than its cap: `/api/generate` takes the upload limit and room for the text
fields, every other route SMALL_BODY (a cancel is a few bytes). A client that goes away mid-body ends its
request quietly (no traceback in the log). /api/generate reads form data only: a body of another type
(JSON, say) is refused, not read as an empty form (which would start a default take).

The primer is saved under a random name in the server's temporary folder with a suffix that picks its reader
(`musicgpt.music.scores.read_notes`: MIDI, MusicXML, ABC; anything else is read as MIDI, as `musicgpt generate
--primer` does); its own name is only shown.
"""

from __future__ import annotations

from pathlib import Path

import json

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from musicgpt._io import atomic_write
from musicgpt.errors import ConfigError, MusicGPTError, printable
from musicgpt.music.midi import MIDI_SUFFIXES
from musicgpt.music.scores import SCORE_SUFFIXES
from musicgpt.studio.files import FileStore
from musicgpt.studio.form import MAX_VALUES

DEFAULT_UPLOAD_MB = 20.0
FORM_SLACK = 16 * 1024  # bytes of the body besides the file: the text fields and multipart headers
PRIMER_SUFFIXES = MIDI_SUFFIXES + SCORE_SUFFIXES
SMALL_BODY = 64 * 1024  # bytes: the cap of every route but /api/generate
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class UploadTooLarge(MusicGPTError):
    """A request body over the studio's upload cap (HTTP 413)."""


def _too_large(limit: int) -> UploadTooLarge:
    return UploadTooLarge(f"primer upload: larger than the studio's limit of {limit / 2**20:.3g} MB "
                          "(musicgpt studio --max-upload-mb)")


async def read_form(request: Request, limit: int) -> FormData:
    """The form of a request whose body may hold at most `limit` bytes of file (UploadTooLarge past it)."""
    cap = limit + FORM_SLACK
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cap:
        raise _too_large(limit)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in FORM_TYPES and (kind or length not in ("", "0")):
        raise HTTPException(415, f"expected the fields as {' or '.join(FORM_TYPES)}, got "
                                 f"{printable(kind)[:80] or 'a body with no Content-Type'}")
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                raise _too_large(limit)
        return message

    return await Request(request.scope, receive).form(max_files=1, max_fields=MAX_VALUES)


async def save_primer(upload: UploadFile | str | None, files: FileStore, limit: int) -> tuple[Path | None, str | None]:
    """(where the uploaded primer now lies, its name to show), or (None, None) when no file was chosen."""
    if upload is None:
        return None, None
    if isinstance(upload, str):
        raise ConfigError("primer: expected a file (multipart/form-data), got a text field")
    data = await upload.read()
    if not data and not upload.filename:
        return None, None  # a file input left empty
    if len(data) > limit:
        raise _too_large(limit)
    name = printable(Path(upload.filename or "primer.mid").name)[:120] or "primer.mid"
    suffix = Path(name).suffix.lower()
    path = files.scratch(suffix if suffix in PRIMER_SUFFIXES else ".mid")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path, name


class BodyTooLarge(Exception):
    """A request body over its route's cap (answered 413 by BodyLimit)."""


class BodyLimit:
    """ASGI middleware: caps every request body (`limits`: path -> bytes, a backstop behind the route's own cap;
    SMALL_BODY for the others), and ends a request whose client went away mid-body without an error in the log."""

    def __init__(self, app, limits: dict[str, int] | None = None):
        self.app, self.limits = app, dict(limits or {})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        own = scope["path"] in self.limits  # such a route checks Content-Length itself, naming its own limit
        cap = self.limits.get(scope["path"], SMALL_BODY)
        length = dict(scope.get("headers", ())).get(b"content-length", b"")
        started, received = False, 0
        if not own and length.isdigit() and int(length) > cap:
            await _refuse(scope, send, cap)
            return

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise BodyTooLarge()
            return message

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyTooLarge:
            if not started:
                await _refuse(scope, send, cap)
        except ClientDisconnect:
            pass  # nobody to answer


async def _refuse(scope, send, cap: int) -> None:
    body = json.dumps({"error": f"request body: larger than this route's limit of {cap / 1024:.4g} KB"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
