"""The output port's side of a live duet: the model's notes sent at their due times, cancelled ones dropped,
the human's notes echoed on request, and every sounding note released at the end.

The engine hands a note out up to its lookahead before it is due; the scheduler holds it until then. A
sender thread (`start`) sleeps until the next note is due, so decoding in the pump never delays a note
that is ready; without the thread (tests, a fake clock) `send_due` sends what is due when called. All
sends go through one lock, so the echo from the input's thread and the model's notes never interleave
inside a message.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from dataclasses import dataclass, field

import mido

from musicgpt.duet import Clock, DuetEvent

__all__ = ["Scheduler", "Sent"]

ALL_NOTES_OFF = 123  # the controller that silences a channel's notes
ORDER = {"off": 0, "turn": 1, "on": 2}  # at one time: releases first (a re-struck key), then the turn, then strikes


@dataclass
class Sent:
    """What went out (or, for a turn, what came) and when, for the console."""

    time: float  # when it was sent, on the clock
    event: DuetEvent
    label: str = ""  # more words for the console (a note's surprisal and what it listens to)
    released_early: bool = False  # an "off" sent because the note was cancelled after it sounded


@dataclass
class Scheduler:
    """The model's notes to `output` (a mido output port) on `channel` (0..15) at their times on `clock`."""

    output: mido.ports.BaseOutput
    clock: Clock
    channel: int = 0
    queue: list = field(default_factory=list)  # heap of (due, ORDER, seq, event, label)
    sounding: dict[int, int] = field(default_factory=dict)  # note id -> pitch: the model's notes on the output now
    dropped: set[int] = field(default_factory=set)  # note ids cancelled before they sounded
    echoed: set[tuple[int, int]] = field(default_factory=set)  # (channel, pitch) of the human's notes echoed, held
    log: deque = field(default_factory=deque)  # Sent entries not yet shown
    lateness: list[float] = field(default_factory=list)  # seconds each model note-on went out after its due time
    closed: bool = False
    failure: str | None = None  # why the output stopped taking messages (unplugged): the pump reports it

    def __post_init__(self):
        if not 0 <= self.channel < 16:
            raise ValueError(f"a MIDI channel is 0..15, got {self.channel!r}")
        self.lock = threading.Condition()
        self.seq = 0
        self.thread: threading.Thread | None = None

    def add(self, event: DuetEvent, label: str = "") -> None:
        """Schedule an "on", "off" or "turn" event at its time."""
        with self.lock:
            self.seq += 1
            heapq.heappush(self.queue, (event.time, ORDER[event.kind], self.seq, event, label))
            self.lock.notify()

    def cancel(self, note: int) -> bool:
        """A note-on the engine takes back: dropped if not sent yet, else released now; True when it had sounded."""
        with self.lock:
            if note in self.sounding:
                pitch = self.sounding.pop(note)
                self._send(mido.Message("note_off", channel=self.channel, note=pitch, velocity=0))
                self.log.append(Sent(self.clock.now(), DuetEvent("off", self.clock.now(), pitch=pitch, id=note),
                                     released_early=True))
                return True
            self.dropped.add(note)
            return False

    def send_due(self, now: float | None = None) -> float | None:
        """Send everything due by `now` (the clock's); the time the next one is due (None: nothing waits)."""
        with self.lock:
            now = self.clock.now() if now is None else now
            while self.queue and self.queue[0][0] <= now + 1e-9:
                due, _, _, event, label = heapq.heappop(self.queue)
                self._play(event, label, due)
            return self.queue[0][0] if self.queue else None

    def _play(self, event: DuetEvent, label: str, due: float) -> None:
        if event.kind == "on":
            if event.id in self.dropped:
                self.dropped.discard(event.id)
                return
            self._send(mido.Message("note_on", channel=self.channel, note=event.pitch, velocity=event.velocity))
            self.sounding[event.id] = event.pitch
            self.lateness.append(self.clock.now() - due)
        elif event.kind == "off":
            if self.sounding.pop(event.id, None) is None:  # cancelled, or already released
                return
            self._send(mido.Message("note_off", channel=self.channel, note=event.pitch, velocity=0))
        self.log.append(Sent(self.clock.now(), event, label))

    def thru(self, message: mido.Message) -> None:
        """Echo one of the human's messages to the output as it is (its own channel)."""
        with self.lock:
            if self.closed:
                return
            if message.type == "note_on" and message.velocity > 0:
                self.echoed.add((message.channel, message.note))
            elif message.type in ("note_on", "note_off"):
                self.echoed.discard((message.channel, message.note))
            self._send(message)

    def release_all(self) -> list[int]:
        """End every sounding note (the model's and the echoed ones), then all-notes-off on each channel used;
        the pitches of the model's notes it ended. Nothing scheduled is sent after this."""
        with self.lock:
            self.closed = True
            self.queue.clear()
            ended = sorted(self.sounding.values())
            for pitch in ended:
                self._send(mido.Message("note_off", channel=self.channel, note=pitch, velocity=0))
            for channel, pitch in sorted(self.echoed):
                self._send(mido.Message("note_off", channel=channel, note=pitch, velocity=0))
            for channel in sorted({self.channel} | {c for c, _ in self.echoed}):
                self._send(mido.Message("control_change", channel=channel, control=ALL_NOTES_OFF, value=0))
            self.sounding.clear()
            self.echoed.clear()
            self.lock.notify()
            return ended

    def _send(self, message: mido.Message) -> None:
        if self.failure is not None:
            return
        try:
            self.output.send(message)
        except (OSError, RuntimeError, ValueError) as exc:  # a device unplugged, a port closed under us
            self.failure = " ".join(str(exc).split()) or type(exc).__name__
            self.closed = True

    # ---- the sender thread -------------------------------------------------------------------------------
    def start(self) -> None:
        """Send each event at its time from a thread of its own, until `stop`."""
        self.thread = threading.Thread(target=self._serve, name="musicgpt-live-sender", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.lock:
            while not self.closed:
                following = self.send_due()
                self.lock.wait(None if following is None else max(0.0, following - self.clock.now()))

    def stop(self) -> None:
        """End the sender thread (what is still scheduled stays unsent)."""
        with self.lock:
            self.closed = True
            self.lock.notify()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
