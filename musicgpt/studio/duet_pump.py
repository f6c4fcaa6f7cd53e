"""The duet's pump: one `DuetSession` on a thread of its own, fed the human's MIDI and polled every few ms.

    pump = DuetPump(session, send)      # send(messages) is called from the pump's thread
    pump.start()
    pump.put([0x90, 60, 80])            # from any thread: False when the inbox was full (the message is dropped)
    pump.stop()                         # the model's sounding notes get their note-offs, then send(None)

The thread calls `step()` every TICK_S (sooner when a message arrives) and `finish()` at the end; a test
drives both by hand on a `FakeClock`.

Decoding runs here, never on the server's event loop. The engine hands out the model's events at most a
lookahead early; the pump keeps them in time order and sends each once it is due within EARLY_S (never
later than due), so a client can schedule it exactly on its own clock and a barge-in still reaches what has
not been sent. A barge-in's `cancel` of a note not yet sent drops it unsent; of one already sent, sends its
note-off at the time it was to begin (it never sounds) and a `note` marked dropped. Whatever way the session
ends, every model note the client was told to strike is told to end.

Messages are the protocol's (docs/studio.md#duet): `midi`, `note`, `arcs`, `turn` and `error`, as dicts with
an "event" field; a human note is echoed as a `note` with "who": "human", so a page draws both players.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from musicgpt.duet import DuetEvent, DuetSession

__all__ = ["DuetPump", "INBOX", "EARLY_S", "TICK_S"]

INBOX = 256  # human MIDI messages waiting at most; more are dropped, counted and reported
TICK_S = 0.004  # the pump polls the engine at least this often
EARLY_S = 0.1  # a model event is sent at most this long before it is due
REPORT_S = 0.5  # drops are reported at most this often
NOTE_ON, NOTE_OFF, CONTROL = 0x90, 0x80, 0xB0
PEDAL = 64

Message = dict[str, Any]


def _t(seconds: float) -> float:
    return round(float(seconds), 6)


class DuetPump:
    """Runs a DuetSession on its own thread: human MIDI in (a bounded inbox), protocol messages out."""

    def __init__(self, session: DuetSession, send: Callable[[list[Message] | None], None]):
        self.session, self.send = session, send
        self.early = min(EARLY_S, session.config.lookahead)
        self.inbox: queue.Queue = queue.Queue(INBOX)
        self.dropped = self.reported = 0  # messages dropped at the inbox, and how many of them were reported
        self.last_report = 0.0
        self.pending: list[tuple[float, int, DuetEvent]] = []  # heap: engine events not yet sent, by time
        self.order = itertools.count()
        self.sounding: dict[int, Message] = {}  # model note id -> its `note` message: struck, not yet ended
        self.keys: dict[int, Message] = {}  # human pitch -> its `note` message while the key (or pedal) holds it
        self.pedal, self.held = False, set()  # the human's sustain pedal and the keys it holds
        self.releases: dict[tuple[bool, int], tuple[list[int], float]] = {}  # past a full inbox, one per key
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="musicgpt-duet", daemon=True)

    # ---- from the server's side ---------------------------------------------------------------------------
    def start(self) -> "DuetPump":
        """Start the pump's thread."""
        self.thread.start()
        return self

    def put(self, midi: list[int]) -> bool:
        """Queue a checked MIDI message [status, data1, data2]; False (and counted) when the inbox is full.

        A release (note-off, pedal up) is never dropped: past the inbox it waits in a set of at most one per
        key, so a flood cannot leave a key of the human's down in the model's stream."""
        try:
            self.inbox.put_nowait((midi, self.session.clock.now()))  # stamped on arrival
            return True
        except queue.Full:
            kind, a, b = midi[0] & 0xF0, midi[1], midi[2]
            if kind == NOTE_OFF or (kind == NOTE_ON and b == 0) or (kind == CONTROL and a == PEDAL and b < 64):
                with self.lock:
                    self.releases[(kind == CONTROL, a)] = (midi, self.session.clock.now())
                return True
            self.dropped += 1
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """End the session: the pump releases the model's notes, sends them and None, and its thread ends."""
        self.stopping.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    # ---- the pump's thread ----------------------------------------------------------------------------------
    def step(self, wait: float = 0.0) -> list[Message]:
        """One turn of the pump: `take_in(wait)`, then `decode()`; returns the messages to send."""
        return self.take_in(wait) + self.decode()

    def take_in(self, wait: float = 0.0) -> list[Message]:
        """The human's messages (waiting up to `wait` s for one) and the engine's events now due: what can go out
        before the model decodes on."""
        out = []
        try:
            out += self._human(*(self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait()))
            while True:  # everything that queued meanwhile, before the model decodes on (one prefill, at its poll)
                out += self._human(*self.inbox.get_nowait())
        except queue.Empty:
            pass
        if self.releases:
            with self.lock:
                releases, self.releases = list(self.releases.values()), {}
            for midi, at in releases:
                out += self._human(midi, at)
        return out + self._due(self.session.clock.now())

    def decode(self) -> list[Message]:
        """The engine polled (it decodes up to its lookahead), the events now due, and drops to report."""
        out = self._engine(self.session.poll(interrupt=self._waiting))
        out += self._due(self.session.clock.now())
        return out + self._report_drops()

    def _waiting(self) -> bool:
        """Whether the player has played since: the engine stops decoding and the pump takes it in first."""
        return not self.inbox.empty() or bool(self.releases)

    def finish(self) -> list[Message]:
        """The session's last messages: a note-off for every model note struck and not ended (nothing queued is
        sent), and the drops not yet reported."""
        now = self.session.clock.now()
        self.pending = []
        out = []
        for note_id, note in sorted(self.sounding.items()):
            end = _t(max(now, note["start"]))
            out += [{"event": "midi", "midi": [NOTE_OFF, note["pitch"], 0], "time": end}, dict(note, end=end)]
        self.sounding.clear()
        return out + self._report_drops(force=True)

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                for out in (self.take_in(TICK_S), self.decode()):  # a barge-in's messages go before a decode
                    if out:
                        self.send(out)
        except Exception as exc:  # the engine failed: say so in one line; the server goes on
            self.send([{"event": "error", "message": " ".join(f"duet: {type(exc).__name__}: {exc}".split())}])
        finally:
            self.send(self.finish())
            self.send(None)

    def _human(self, midi: list[int], at: float | None = None) -> list[Message]:
        """Hand a human message, stamped `at` its arrival, to the engine (prefilled by the next poll); echo a key the
        stream took as a `note` (start, then end)."""
        session, stream = self.session, self.session.stream
        try:
            out = self._engine(session.midi(midi, at, sync=False))
        except ValueError as exc:
            return [{"event": "error", "message": f"midi {midi}: {exc}"}]
        kind, a, b = midi[0] & 0xF0, midi[1], midi[2]
        now = session.clock.now()
        if kind == NOTE_ON and b > 0:
            position = len(stream) - 1  # a key the stream took is its last token (a barge-in cut the model's before)
            known = self.keys.get(a)
            if stream.ids[position] == session.tokenizer.note_on(a) and stream.who[position] == 0 \
                    and (known is None or known["id"] != position):  # not a strike merged into the sounding note
                out += self._key_up(a, now)  # a re-struck key ends its note first
                start = session.origin + stream.step_at[position] * session.step
                self.keys[a] = {"event": "note", "sample": 0, "id": position, "pitch": a, "velocity": b,
                                "start": _t(start), "end": None, "primer": False, "surprisal": None, "who": "human"}
                self.held.discard(a)
                out.append(self.keys[a])
        elif kind == NOTE_OFF or kind == NOTE_ON:
            if self.pedal and a in self.keys:
                self.held.add(a)
            else:
                out += self._key_up(a, now)
        elif kind == CONTROL and a == PEDAL:
            self.pedal = b >= 64
            if not self.pedal:
                for pitch in sorted(self.held):
                    out += self._key_up(pitch, now)
                self.held.clear()
        return out

    def _key_up(self, pitch: int, now: float) -> list[Message]:
        note = self.keys.pop(pitch, None)
        return [] if note is None else [dict(note, end=_t(max(now, note["start"])))]

    def _engine(self, events: list[DuetEvent]) -> list[Message]:
        """Queue the engine's events by time; a cancel acts at once."""
        out = []
        for event in events:
            if event.kind == "cancel":
                out += self._cancel(event.id)
            else:
                heapq.heappush(self.pending, (event.time, next(self.order), event))
        return out

    def _cancel(self, note_id: int) -> list[Message]:
        """A note the engine took back: unsent, it is dropped; sent, it ends where it was to begin."""
        self.pending = [p for p in self.pending if not (p[2].id == note_id and p[2].kind in ("on", "off"))]
        heapq.heapify(self.pending)
        note = self.sounding.pop(note_id, None)
        if note is None:
            return []
        return [{"event": "midi", "midi": [NOTE_OFF, note["pitch"], 0], "time": note["start"]},
                {"event": "note", "sample": 0, "id": note_id, "dropped": True}]

    def _due(self, now: float) -> list[Message]:
        """The queued events due by now + early, as messages."""
        out = []
        while self.pending and self.pending[0][0] <= now + self.early:
            _, _, event = heapq.heappop(self.pending)
            out += self._message(event)
        return out

    def _message(self, event: DuetEvent) -> list[Message]:
        if event.kind == "turn":
            return [{"event": "turn", "who": event.who, "time": _t(event.time)}]
        if event.kind == "on":
            note = {"event": "note", "sample": 0, "id": event.id, "pitch": event.pitch, "velocity": event.velocity,
                    "start": _t(event.time), "end": None, "primer": False, "surprisal": event.surprisal,
                    "who": "model"}
            self.sounding[event.id] = note
            arcs = event.arcs or []
            columns = {name: np.array([a[name] for a in arcs], np.float64 if name == "weight" else np.int64)
                       for name in ("key", "layer", "head", "weight")}
            return [{"event": "midi", "midi": [NOTE_ON, event.pitch, event.velocity], "time": _t(event.time)}, note,
                    {"event": "arcs", "sample": 0, "query": event.id, **columns}]
        note = self.sounding.pop(event.id, None)  # an off: of a note sent and not yet ended, else nothing
        if note is None:
            return []
        end = max(event.time, note["start"])
        return [{"event": "midi", "midi": [NOTE_OFF, note["pitch"], 0], "time": _t(end)}, dict(note, end=_t(end))]

    def _report_drops(self, force: bool = False) -> list[Message]:
        """An `error` counting the messages dropped since the last report (at most every REPORT_S)."""
        dropped = self.dropped
        if dropped == self.reported or (not force and time.monotonic() - self.last_report < REPORT_S):
            return []
        new, self.reported, self.last_report = dropped - self.reported, dropped, time.monotonic()
        return [{"event": "error", "message": f"input: {new} MIDI messages dropped ({dropped} in all): more than "
                 f"{INBOX} were waiting for the model", "dropped": dropped}]
