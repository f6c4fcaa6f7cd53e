"""musicgpt studio: a local web app where the music and its attention arcs appear as the model writes them.

    app.py      the Starlette app: the page, the HTTP API, the files takes wrote
    server.py   uvicorn on a bound socket (foreground or a thread)
    jobs.py     one worker thread, a queue, cancelling
    takes.py    one take: a Generation stepped in the worker, its events, its files
    stream.py   a Generation's notes and arcs as events while it runs
    tracker.py  the notes of a token sequence, token by token
    sse.py      events as text/event-stream
    form.py     the fields of POST /api/generate
    uploads.py  the request body's size cap, the uploaded primer
    files.py    the takes' files (kept in the takes folder) and uploads, by opaque id
    duet.py     GET /api/duet, the duet's WebSocket; duet_pump.py its engine on a thread of its own
    assets/     studio.html, studio.js, studio.css (the page also loads the viewer's viewer.css)

`musicgpt studio` starts it (musicgpt.commands.studio); `create_app(model, tokenizer)` builds the app.
"""

from musicgpt.studio.app import create_app
from musicgpt.studio.server import StudioServer

__all__ = ["create_app", "StudioServer"]
