"""The duet: a human and the model take turns live on one KV cache (`DuetSession`); no web or MIDI I/O here."""

from musicgpt.duet.clock import Clock, FakeClock, MonotonicClock
from musicgpt.duet.engine import DuetConfig, DuetEvent, DuetSession, parse_midi

__all__ = ["DuetSession", "DuetConfig", "DuetEvent", "parse_midi", "Clock", "MonotonicClock", "FakeClock"]
