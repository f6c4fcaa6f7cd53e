"""The studio's duet: `GET /api/duet`, a WebSocket on which a human plays with the model (docs/studio.md#duet).

    ws://127.0.0.1:8765/api/duet?wait=1&answer=8&temperature=0.9&seed=1
    client -> server   {"midi": [144, 60, 80]}                    note on (0x9n), note off (0x8n), control (0xBn)
    server -> client   {"event": "ready" | "turn" | "midi" | "note" | "arcs" | "error", ...}

Query parameters set the engine (`DuetConfig`'s fields: wait, answer, lead, first_note, lookahead, trigger_cc,
trigger_note) and the sampling (`GenerationRequest`: temperature, top_p, top_k, min_p, seed, control, guidance,
parsed as the studio's form parses them); a parameter left out keeps its default there, a bad one is an
`error` naming it, and the socket closes. One duet plays at a time: a second client is told so and closed.
The duet plays on the studio's model, decoded on its own thread (`DuetPump`) with scratch buffers of its own
(`DuetSession` makes its own Decoder), so neither the event loop nor a take being generated waits for it.
A message that is not a MIDI message is answered by an `error`; the duet goes on.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from musicgpt.duet import DuetConfig, DuetSession
from musicgpt.errors import ConfigError, MusicGPTError
from musicgpt.generation.setup import GenerationRequest
from musicgpt.studio.duet_pump import INBOX, DuetPump
from musicgpt.studio.form import PARSERS, _number
from musicgpt.studio.sse import to_json

__all__ = ["DuetHost", "DuetParams", "parse_params", "parse_message", "PARAMS"]

CONFIG_PARAMS = {f.name: int if "int" in str(f.type) else float for f in fields(DuetConfig)}  # DuetConfig's fields
REQUEST_PARAMS = ("temperature", "top_p", "top_k", "min_p", "seed", "control", "guidance")  # GenerationRequest's
PARAMS = (*CONFIG_PARAMS, *REQUEST_PARAMS)
MAX_MESSAGE = 512  # characters: a MIDI message is about 30
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_BUSY = 1000, 1008, 1013
FLUSH_S = 2.0  # what the pump sends last (note-offs) gets this long to go out once the session ends


@dataclass(frozen=True)
class DuetParams:
    """A duet's settings from its query parameters, checked."""

    config: DuetConfig
    request: GenerationRequest


def parse_params(items: Iterable[tuple[str, str]]) -> DuetParams:
    """DuetParams from (name, text) query parameters; unknown names and bad values are ConfigErrors naming them."""
    pairs = list(items)
    unknown = sorted({name for name, _ in pairs} - set(PARAMS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    config: dict[str, Any] = {}
    request: dict[str, Any] = {}
    for name, text in pairs:
        text = text.strip()
        if text == "":
            continue
        if name == "control":
            request["controls"] = (*request.get("controls", ()), PARSERS[name](name, text))
            continue
        target = config if name in CONFIG_PARAMS else request
        if name in target:
            raise ConfigError(f"{name}: given more than once (only control may repeat)")
        target[name] = _number(CONFIG_PARAMS[name])(name, text) if name in CONFIG_PARAMS else PARSERS[name](name, text)
    return DuetParams(DuetConfig(**config), GenerationRequest(**request))


def parse_message(text: str | None) -> list[int]:
    """[status, data1, data2] from a client's text message; a ConfigError saying what is wrong with it."""
    shown = repr(text if text is None or len(text) <= 60 else text[:60] + "…")
    if text is None:
        raise ConfigError('message: send JSON text such as {"midi": [144, 60, 80]}, not binary')
    if len(text) > MAX_MESSAGE:
        raise ConfigError(f"message: {len(text)} characters; a MIDI message is {{\"midi\": [status, data1, data2]}}")
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(f'message: not JSON, got {shown}; send {{"midi": [status, data1, data2]}}') from None
    if not isinstance(data, dict) or list(data) != ["midi"]:
        raise ConfigError(f'message: expected {{"midi": [status, data1, data2]}}, got {shown}')
    midi = data["midi"]
    if not (isinstance(midi, list) and len(midi) == 3 and all(type(x) is int for x in midi)):
        raise ConfigError(f"midi: expected three integers [status, data1, data2], got {json.dumps(midi)[:60]}")
    status, a, b = midi
    if not 0x80 <= status <= 0xFF:
        raise ConfigError(f"midi: status {status} is no status byte (128..255: note on 0x9n, note off 0x8n, "
                          "control change 0xBn)")
    if not (0 <= a < 128 and 0 <= b < 128):
        raise ConfigError(f"midi: data bytes are 0..127, got {a}, {b}")
    return midi


class DuetHost:
    """The studio's duet: one at a time, on the studio's model (a session decodes with scratch buffers of its own,
    so a take generated on another thread at the same time does not share them)."""

    def __init__(self, model, tokenizer, model_name: str):
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.playing = False

    def _session(self, params: DuetParams) -> DuetSession:
        return DuetSession(self.model, params.config, params.request, tokenizer=self.tokenizer)

    def _ready(self, session: DuetSession, params: DuetParams, pump: DuetPump) -> dict[str, Any]:
        sampling = session.settings.sampling
        return {"event": "ready", "model": self.model_name, "time": round(session.clock.now(), 6),
                "settings": {**asdict(params.config), "temperature": sampling.temperature, "top_p": sampling.top_p,
                             "top_k": sampling.top_k, "min_p": sampling.min_p, "seed": session.settings.seed,
                             "guidance": session.settings.guidance,
                             "control": list(params.request.controls)},
                "step": session.step, "early": pump.early, "inbox": INBOX}

    async def serve(self, websocket: WebSocket) -> None:
        """Play one duet on an accepted-here WebSocket, or refuse it with an `error` saying why."""
        await websocket.accept()
        if self.playing:
            return await _refuse(websocket, "duet: another duet is playing (one at a time); try again when it "
                                            "ends", CLOSE_BUSY)
        self.playing = True
        try:
            await self._play(websocket)
        finally:
            self.playing = False

    async def _play(self, websocket: WebSocket) -> None:
        try:
            params = parse_params(websocket.query_params.multi_items())
            session = await run_in_threadpool(self._session, params)
        except MusicGPTError as exc:
            return await _refuse(websocket, str(exc), CLOSE_POLICY)
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue()

        def send(messages):  # from the pump's thread
            try:
                loop.call_soon_threadsafe(outbox.put_nowait, messages)
            except RuntimeError:  # the loop is closed: the server stopped
                pass

        pump = DuetPump(session, send)
        await websocket.send_text(to_json(self._ready(session, params, pump)))
        pump.start()
        sender = asyncio.create_task(_send_all(websocket, outbox))
        try:
            await _receive_all(websocket, pump, outbox, sender)
        finally:
            await run_in_threadpool(pump.stop)
            try:
                await asyncio.wait_for(sender, FLUSH_S)
            except (asyncio.TimeoutError, Exception):
                sender.cancel()


async def _refuse(websocket: WebSocket, message: str, code: int) -> None:
    await websocket.send_text(to_json({"event": "error", "message": " ".join(message.split())}))
    await websocket.close(code)


async def _receive_all(websocket: WebSocket, pump: DuetPump, outbox: asyncio.Queue, sender: asyncio.Task) -> None:
    """The client's messages into the pump until it goes (or the session ends); a bad one gets an `error`."""
    receive = None
    try:
        while True:
            receive = asyncio.ensure_future(websocket.receive())
            await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():  # the pump ended the session and the socket is closed
                return
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                return
            try:
                pump.put(parse_message(message.get("text")))
            except ConfigError as exc:
                outbox.put_nowait([{"event": "error", "message": str(exc)}])
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        if receive is not None and not receive.done():
            receive.cancel()


async def _send_all(websocket: WebSocket, outbox: asyncio.Queue) -> None:
    """The pump's messages to the client, in order, until the pump's None: then the socket closes."""
    while (messages := await outbox.get()) is not None:
        for message in messages:
            await websocket.send_text(to_json(message))
    await websocket.close(CLOSE_NORMAL)
