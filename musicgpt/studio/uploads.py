"""`POST /api/generate`'s body: read with a size cap, and its primer file kept where only the worker reads it.

The cap counts the bytes as they arrive (a Content-Length above it is refused before reading), so an
oversized upload costs the server no more than the cap. The primer is saved under a random name in the
server's folder with a suffix that picks its reader (`musicgpt.music.scores.read_notes`: MIDI, MusicXML,
ABC; anything else is read as MIDI, as `musicgpt generate --primer` does); its own name is only shown.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from musicgpt._io import atomic_write
from musicgpt.errors import ConfigError, MusicGPTError, printable
from musicgpt.music.midi import MIDI_SUFFIXES
from musicgpt.music.scores import SCORE_SUFFIXES
from musicgpt.studio.files import FileStore
from musicgpt.studio.form import MAX_VALUES

DEFAULT_UPLOAD_MB = 20.0
FORM_SLACK = 16 * 1024  # bytes of the body besides the file: the text fields and multipart headers
PRIMER_SUFFIXES = MIDI_SUFFIXES + SCORE_SUFFIXES


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
