"""The live duet's loop: the human's messages from an input port into a `DuetSession`, the model's notes out.

Three threads share the work. The input port's callback (`receive`, on the MIDI backend's thread) stamps
each message on arrival, echoes it when asked and queues it (a bounded queue: what does not fit is counted,
never waited for). The pump (`step`, the caller's thread, so Ctrl-C lands there) hands the queued messages
to the session together with their arrival times (a message that waited while the model decoded is still
placed when it was played, and a burst is prefilled in one chunk), polls the session, and schedules what
it hands out. The scheduler's thread sends each note at its time (`musicgpt.live.scheduler`). `close`
releases every sounding note and sends all-notes-off.
"""

from __future__ import annotations

import queue
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import mido

from musicgpt.duet import DuetEvent, DuetSession
from musicgpt.duet.stream import HUMAN
from musicgpt.errors import ConfigError
from musicgpt.live.display import LiveStats, human_line, model_line, turn_line
from musicgpt.live.ports import MidiPortError
from musicgpt.live.scheduler import Scheduler

__all__ = ["LiveConfig", "LiveRunner"]

HUMAN_TYPES = ("note_on", "note_off", "control_change")  # what the engine reads; clock, sysex etc. are not music


@dataclass(frozen=True)
class LiveConfig:
    """How the ports are driven (the turn taking is the session's `DuetConfig`)."""

    channel: int = 0  # the MIDI channel the model plays on, 0..15
    echo: bool = False  # also send the human's messages to the output (a MIDI thru)
    interval: float = 0.005  # the pump polls the session this often when nothing arrives (seconds)
    inbox: int = 4096  # human messages waiting at most; more are dropped and counted
    show_notes: bool = True  # a console line per note (turns and the summary always)
    listens: int = 3  # per model note, the earlier notes it attends to most that its line names

    def __post_init__(self):
        if not 0 <= self.channel < 16:
            raise ConfigError(f"channel: the model's MIDI channel is 1..16, got {self.channel + 1!r}")
        if not self.interval > 0 or self.inbox < 1:
            raise ConfigError(f"live interval and inbox: must be positive, got {self.interval!r}, {self.inbox!r}")


class LiveRunner:
    """A `DuetSession` played through `output` (a mido output port), fed by `receive`; times on its clock."""

    def __init__(self, session: DuetSession, output: mido.ports.BaseOutput, config: LiveConfig = LiveConfig(),
                 show: Callable[[str], None] = print):
        self.session, self.config, self.show = session, config, show
        self.clock = session.clock
        self.scheduler = Scheduler(output, self.clock, config.channel)
        self.inbox: queue.Queue = queue.Queue(config.inbox)
        self.stats = LiveStats()
        self.start = self.clock.now()
        self.closed = False

    # ---- the input port's thread -------------------------------------------------------------------------
    def receive(self, message: mido.Message) -> None:
        """An input port's callback: stamp the message now, echo it if asked, queue it for the pump."""
        t = self.clock.now()
        if message.type not in HUMAN_TYPES:
            return
        data = message.bytes()
        if self.config.echo and not self._is_trigger(data):
            self.scheduler.thru(message)
        try:
            self.inbox.put_nowait((t, data))
        except queue.Full:
            self.stats.dropped += 1

    def _is_trigger(self, data: list[int]) -> bool:
        """A trigger key or controller hands over and makes no sound: not echoed."""
        duet = self.session.config
        kind = data[0] & 0xF0
        return (kind in (0x80, 0x90) and data[1] == duet.trigger_note) or (kind == 0xB0 and data[1] == duet.trigger_cc)

    # ---- the pump ----------------------------------------------------------------------------------------
    def step(self, wait: float = 0.0) -> None:
        """Take the messages that arrived (waiting up to `wait` seconds for one), poll the session, schedule and
        send what is due, show it."""
        arrived = []
        try:
            arrived.append(self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait())
            while True:
                arrived.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        if arrived:
            self._take(self._human(arrived), from_human=True)
        self._take(self.session.poll(interrupt=lambda: not self.inbox.empty()))  # a key played: take it in first
        self.scheduler.send_due()
        self._show_sent()
        if self.scheduler.failure is not None:
            raise MidiPortError(f"MIDI output {getattr(self.scheduler.output, 'name', '')!r} stopped taking notes "
                                f"({self.scheduler.failure})")

    def _human(self, arrived: list[tuple[float, list[int]]]) -> list[DuetEvent]:
        """The arrived messages into the session, each at its arrival time, in one prefill."""
        try:
            events = self.session.receive([(data, t) for t, data in arrived])
        except ValueError:  # mido checks its messages: only a backend's oddity lands here
            events = []
            for t, data in arrived:
                try:
                    events += self.session.receive([(data, t)])
                except ValueError:
                    self.stats.rejected += 1
        for t, data in arrived:
            line = None if self._is_trigger(data) else human_line(t - self.start, data)
            if line:
                self.stats.human_notes += 1
                if self.config.show_notes:
                    self.show(line)
        return events

    def _take(self, events: list[DuetEvent], from_human: bool = False) -> None:
        for event in events:
            if event.kind == "cancel":
                if self.scheduler.cancel(event.id):
                    self.stats.cut_short += 1
                else:
                    self.stats.cancelled += 1
                continue
            barge_in = from_human and event.kind == "turn" and event.who == "human"
            self.stats.barge_ins += barge_in
            self.scheduler.add(event, "barge-in" if barge_in else self._label(event))

    def _label(self, event: DuetEvent) -> str:
        """A model note-on's console line, made now while the stream still holds the notes its arcs name."""
        if event.kind != "on" or not self.config.show_notes:
            return ""
        weight: dict[int, float] = defaultdict(float)
        for arc in event.arcs or []:
            weight[arc["key"]] += arc["weight"]
        keys = sorted(weight, key=lambda k: (-weight[k], k))[: self.config.listens]
        stream, tokenizer = self.session.stream, self.session.tokenizer
        listens = [(int(tokenizer.token_value(stream.ids[k])), stream.who[k] == HUMAN) for k in keys]
        return model_line(event.time - self.start, event.pitch, event.velocity, event.surprisal, listens)

    def _show_sent(self) -> None:
        log = self.scheduler.log
        while log:
            sent = log.popleft()
            event = sent.event
            if event.kind == "turn":
                self.stats.turns += event.who == "model"
                self.show(turn_line(event.time - self.start, event.who, sent.label == "barge-in"))
            elif event.kind == "on":
                self.stats.model_notes += 1
                if sent.label:
                    self.show(sent.label)

    # ---- running -----------------------------------------------------------------------------------------
    def run(self, seconds: float | None = None) -> LiveStats:
        """Pump until `seconds` have passed (None: until interrupted), sending from the scheduler's thread; then
        `close`. The counts so far are in `stats` whatever ends it (Ctrl-C propagates after closing)."""
        self.scheduler.start()
        end = None if seconds is None else time.monotonic() + seconds
        try:
            while end is None or time.monotonic() < end:
                self.step(wait=self.config.interval)
        finally:
            self.close()
        return self.stats

    def close(self) -> LiveStats:
        """Stop sending, end every sounding note (note-offs, then all-notes-off), count and show the rest."""
        if self.closed:
            return self.stats
        self.closed = True
        self.scheduler.stop()
        self.scheduler.release_all()
        self._show_sent()
        self.stats.seconds = self.clock.now() - self.start
        self.stats.lateness = list(self.scheduler.lateness)
        return self.stats
