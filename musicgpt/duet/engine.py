"""The duet engine: a human and the model take turns on one token stream, one KV cache and one clock.

    session = DuetSession(model, DuetConfig(wait=1.0, answer=8.0), GenerationRequest(top_p=0.95, seed=1))
    session.note_on(60, 80); session.note_off(60)   # stamped with the clock, in the cache at once
    for event in session.poll(): ...                # the model's notes due within the lookahead

No web and no MIDI ports here: a front end calls `note_on` / `note_off` / `control` (or `midi` with raw
bytes) as messages arrive and `poll()` from its loop, and plays what comes back at each event's `time`
(seconds on the session clock). Human events are tokenized and prefilled as they arrive
(`musicgpt.duet.stream`), so at the model's turn only decoding is left.

Turns: the model takes over once the human has been silent for `wait` seconds after playing, or at once on
the trigger (a controller pressed, or a key that makes no sound). It plays for up to `answer` seconds of
its own timing; its first note comes within `first_note` seconds (longer TIME_SHIFTs are masked until it
has struck one, as Aria bounds its first time token). A human note-on during its turn is a barge-in: the
model's notes not yet due are cancelled (a `cancel` event for each one already handed out) and removed
from the cache, the sounding ones end now (`off`), and the human's note goes in. A human release or pedal
change during the model's turn changes no sound of the model's: it reaches the stream when the turn ends.
After an answer the model waits for the human to play again.

Decoding runs ahead of the clock by `lookahead` seconds at most: a sampled TIME_SHIFT that would pass that
horizon is held back, unfed, until the clock comes near, so a barge-in cancels at most a lookahead's worth
of tokens. Sampling is `generate`'s (`GenerationRequest`: temperature, top-k/p, min-p, seed, controls, a
primer), under its grammar mask; the model never ends a note of the human's. Each model note-on carries
its arcs (its NOTE_ON's attention aggregated to notes, as `musicgpt.arcs.capture.aggregate` does for
arcs.json, keys named by their NOTE_ON positions) and its surprisal (nats, its VELOCITY and NOTE_ON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from musicgpt.arcs.capture import ArcsConfig, AttentionRecorder, aggregate, token_owners
from musicgpt.arcs.format import round_nll
from musicgpt.duet.clock import Clock, MonotonicClock
from musicgpt.duet.stream import HUMAN, MODEL, TokenStream
from musicgpt.errors import ConfigError
from musicgpt.generation.sampling import GumbelNoise, make_generator, sample
from musicgpt.generation.setup import GenerationRequest, load_model_and_tokenizer, pinned_header, prepare
from musicgpt.model.decode_step import Decoder
from musicgpt.model.prefill import teacher_force
from musicgpt.music.midi import SUSTAIN_CC, SUSTAIN_THRESHOLD
from musicgpt.tokens.base import PerformanceEvents

__all__ = ["DuetConfig", "DuetEvent", "DuetSession"]


@dataclass(frozen=True)
class DuetConfig:
    """Turn taking and timing of a duet (seconds)."""

    wait: float = 1.0  # the model takes over after this much silence from the human
    answer: float = 8.0  # the model plays at most this long per turn
    first_note: float = 0.05  # the model's first note comes at most this long after it takes over
    lookahead: float = 0.1  # events are handed out at most this early
    trigger_cc: int | None = None  # a controller (not 64, the sustain pedal) whose press (>= 64) hands over at once
    trigger_note: int | None = None  # a key that hands over at once (it makes no sound)

    def __post_init__(self):
        for name in ("wait", "answer", "lookahead"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"duet {name}: must be positive, got {getattr(self, name)!r}")
        if not self.first_note >= 0:
            raise ConfigError(f"duet first_note: must be >= 0, got {self.first_note!r}")
        if self.trigger_cc is not None and not (0 <= self.trigger_cc < 128 and self.trigger_cc != 64):
            raise ConfigError(f"duet trigger_cc: a controller 0..127 other than the sustain pedal (64), "
                              f"got {self.trigger_cc!r}")
        if self.trigger_note is not None and not 0 <= self.trigger_note < 128:
            raise ConfigError(f"duet trigger_note: a key 0..127, got {self.trigger_note!r}")


@dataclass
class DuetEvent:
    """What the engine hands a front end: "on", "off", "cancel" (an "on" handed out, now not to sound) or "turn"."""

    kind: str
    time: float  # on the session clock: when to sound it (a turn: when it changed)
    pitch: int | None = None
    velocity: int | None = None
    who: str | None = None  # a turn's new player: "model" or "human"
    id: int | None = None  # the note: its NOTE_ON's position in the stream
    surprisal: float | None = None  # an "on": -log p of its VELOCITY and NOTE_ON, nats (arcs.json's rounding)
    arcs: list[dict[str, Any]] | None = field(default=None, repr=False)  # an "on": {key, layer, head, weight}


class DuetSession:
    """One duet: the model, its KV cache, the token stream, the clock and whose turn it is."""

    def __init__(self, model, config: DuetConfig = DuetConfig(), request: GenerationRequest | None = None,
                 clock: Clock | None = None, tokenizer=None):
        self.model, self.tokenizer = load_model_and_tokenizer(model, tokenizer)
        if not isinstance(self.tokenizer, PerformanceEvents):
            raise ConfigError("duet: needs a performance-event tokenizer (NOTE_ON/NOTE_OFF/TIME_SHIFT/VELOCITY)")
        request = request or GenerationRequest()
        if request.infill is not None or request.guidance != 1:
            raise ConfigError("duet: infilling and guidance are not supported in a duet")
        plan = prepare(self.model, self.tokenizer, request)
        self.config, self.settings, self.clock = config, plan.settings, clock or MonotonicClock()
        self.arcs_config = plan.settings.arcs or ArcsConfig()
        self.step = self.tokenizer.time_step
        self.origin = self.clock.now()
        self.stream = TokenStream(self.tokenizer, plan.prompt, self.model.config.vocab_size)
        self.pinned = pinned_header(self.tokenizer, plan.prompt)
        self.decoder = Decoder.for_model(self.model)
        self.noise = GumbelNoise(make_generator(plan.settings.seed), 1, self.model.config.vocab_size)
        vocab = np.arange(self.model.config.vocab_size)
        kinds = self.tokenizer.token_type(vocab)
        self.is_shift = torch.from_numpy(kinds == self.tokenizer.type_code("TIME_SHIFT"))  # (V,)
        self.is_on = kinds == self.tokenizer.type_code("NOTE_ON")  # (V,)
        self.is_off = kinds == self.tokenizer.type_code("NOTE_OFF")
        self.shift_of = torch.from_numpy(self.stream.shift_steps[np.minimum(vocab, self.tokenizer.vocab_size - 1)]
                                         * (vocab < self.tokenizer.vocab_size))  # (V,) steps per id
        self.off0 = self.tokenizer.ranges["NOTE_OFF"][0]
        self.turn = "human"
        self.played = False  # the human has played since the model's last turn
        self.last_human = self.origin
        self.deferred: list[tuple[str, int, int, float]] = []  # human events during the model's turn
        self.outbox: list[DuetEvent] = []  # made, not yet handed out
        self.handed: list[DuetEvent] = []  # handed out, maybe not yet due
        self.held: tuple[int, float] | None = None  # a sampled TIME_SHIFT past the horizon, not fed yet
        self.turn_start = self.turn_end = self.turn_index = 0  # steps, steps, first token of the model's turn
        self.struck = False  # the model has struck a note in this turn
        self.cache = self.model.new_cache(pinned=self.pinned)
        self.fed = 0
        self._sync()

    # ---- clock and time ----------------------------------------------------------------------------------
    def _step_of(self, t: float) -> int:
        return int(round((t - self.origin) / self.step))

    def _time_of(self, step: int) -> float:
        return self.origin + step * self.step

    # ---- the cache ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _sync(self) -> None:
        """Feed the stream's tokens the cache has not seen: in chunks, or one at a time once a pinned window slides."""
        new = self.stream.ids[self.fed :]
        if not new:
            return
        n_ctx = self.model.config.n_ctx
        if self.pinned:
            room = max(0, n_ctx - 1 - self.cache.length)  # what fits before the window slides
            chunked, single = new[:room], new[room:]
        else:
            chunked, single = new, []
        if chunked:
            x = torch.tensor([chunked], dtype=torch.long)  # (1, T)
            self.logits = teacher_force(self.model, x, self.cache, chunk=min(self.settings.chunk, n_ctx // 2))
        for token in single:
            self.logits, _ = self.decoder.step(torch.tensor([token]), self.cache)
        self.fed = len(self.stream)

    def _rewind(self, length: int) -> None:
        """Cut the stream and the cache back to `length` tokens."""
        drop = len(self.stream) - length
        if drop <= 0:
            return
        self.stream.truncate(length)
        if self.cache.truncate(drop):  # the keys the next token's window needs are still in the buffers
            self.fed = length
        else:  # rebuilt: exact, and costs a prefill of the whole stream
            self.cache = self.model.new_cache(pinned=self.pinned)
            self.fed = 0
            self._sync()

    # ---- the human ---------------------------------------------------------------------------------------
    def note_on(self, pitch: int, velocity: int = 64) -> list[DuetEvent]:
        """The human strikes a key (velocity 0 is a release); returns the events it causes (a barge-in's)."""
        return self._human("on", pitch, velocity)

    def note_off(self, pitch: int) -> list[DuetEvent]:
        """The human releases a key."""
        return self._human("off", pitch, 0)

    def control(self, number: int, value: int) -> list[DuetEvent]:
        """A control change: 64 is the sustain pedal, `trigger_cc` hands over; any other is ignored."""
        return self._human("cc", number, value)

    def midi(self, message: Sequence[int]) -> list[DuetEvent]:
        """A raw MIDI message [status, data1, data2]: note on (0x9n), note off (0x8n), control change (0xBn)."""
        if len(message) != 3 or not all(isinstance(b, int) for b in message):
            raise ValueError(f"a MIDI message is three integers [status, data1, data2], got {message!r}")
        status, a, b = message
        if not (0x80 <= status <= 0xFF and 0 <= a < 128 and 0 <= b < 128):
            raise ValueError(f"MIDI bytes out of range: {message!r}")
        kind = {0x80: "off", 0x90: "on", 0xB0: "cc"}.get(status & 0xF0)
        return [] if kind is None else self._human(kind, a, b)

    def _human(self, kind: str, a: int, b: int) -> list[DuetEvent]:
        if not 0 <= a < 128 or not 0 <= b < 128:
            raise ValueError(f"MIDI data bytes are 0..127, got {a}, {b}")
        t = self.clock.now()
        out = self._drain(t, t)
        trigger = ((kind == "on" and b > 0 and a == self.config.trigger_note)
                   or (kind == "cc" and a == self.config.trigger_cc and b >= SUSTAIN_THRESHOLD))
        if trigger or (kind in ("on", "off") and a == self.config.trigger_note):
            if trigger and self.turn == "human":
                self._take_over(t)
                out += self.poll(t)
            return out
        if kind == "cc" and a != SUSTAIN_CC:
            return out
        if self.turn == "model":
            if not (kind == "on" and b > 0):
                self.deferred.append((kind, a, b, t))
                return out
            out += self._barge_in(t)
        if self.stream.human_event(kind, a, b, self._step_of(t)):
            self.played = True
        if kind in ("on", "off"):
            self.last_human = t
        self._sync()
        return out

    # ---- turns -------------------------------------------------------------------------------------------
    def poll(self, now: float | None = None) -> list[DuetEvent]:
        """The events due by `now` + lookahead (now: the clock's), taking over or ending the turn as due."""
        now = self.clock.now() if now is None else now
        if self.turn == "human" and self.played and now - self.last_human >= self.config.wait - 1e-9:
            self._take_over(now)
        if self.turn == "model":
            self._decode(int(math.floor((now + self.config.lookahead - self.origin) / self.step + 1e-9)))
        return self._drain(now, now + self.config.lookahead)

    def _drain(self, now: float, horizon: float) -> list[DuetEvent]:
        """Hand out the events made up to `horizon`; keep the note-ons not due by `now` to cancel on a barge-in."""
        out = [e for e in self.outbox if e.time <= horizon + 1e-9]
        self.outbox = self.outbox[len(out) :]
        self.handed = [e for e in self.handed + out if e.time > now + 1e-9 and e.kind == "on"]
        return out

    def _take_over(self, t: float) -> None:
        """The model's turn begins at `t`: the silence so far goes into the stream."""
        self.stream.shift_to(self._step_of(t))
        self._sync()
        self.turn, self.played, self.struck, self.held = "model", False, False, None
        self.turn_start = self.stream.steps
        self.turn_end = self.turn_start + int(round(self.config.answer / self.step))
        self.turn_index = len(self.stream)
        self.outbox.append(DuetEvent("turn", self._time_of(self.turn_start), who="model"))

    def _end_turn(self, step: int, t: float | None = None) -> list[DuetEvent]:
        """The model's notes end at `step` (a barge-in: at clock time t); the human's deferred events go in."""
        self.stream.shift_to(step)
        pitches = sorted(self.stream.model_on)
        ids = [self.stream.model_on[p] for p in pitches]
        self.stream.release(pitches, MODEL)
        end = self._time_of(self.stream.steps) if t is None else t
        events = [DuetEvent("off", end, pitch=p, id=i) for p, i in zip(pitches, ids)]
        events.append(DuetEvent("turn", end, who="human"))
        self.turn, self.held = "human", None
        for kind, a, b, _ in self.deferred:
            self.stream.human_event(kind, a, b, self.stream.steps)
        self.deferred.clear()
        self._sync()
        return events

    def _barge_in(self, t: float) -> list[DuetEvent]:
        """The human plays during the model's turn: cancel what is not due by `t`, end what sounds, hand back."""
        step = self._step_of(t)
        out = [e for e in self.outbox if e.time <= t + 1e-9]  # due, never handed out: they did sound
        self.outbox = []
        out += [DuetEvent("cancel", e.time, pitch=e.pitch, id=e.id) for e in self.handed if e.time > t + 1e-9]
        self.handed = []
        at = self.stream.step_at
        cut = next((i for i in range(self.turn_index, len(at)) if at[i] > step), len(at))
        self._rewind(cut)
        return out + self._end_turn(max(step, self.stream.steps), t)

    # ---- the model ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _decode(self, horizon: int) -> None:
        """Sample and feed the model's tokens up to step `horizon` (or the end of its turn)."""
        while self.turn == "model":
            token, nll = self.held if self.held is not None else self._sample()
            arrives = self.stream.steps + int(self.shift_of[token])
            if arrives >= self.turn_end:
                self.outbox += self._end_turn(self.turn_end)
                return
            if arrives > horizon:
                self.held = (token, nll)
                return
            self.held = None
            self._feed(token, nll)

    def _sample(self) -> tuple[int, float]:
        """One token from the last logits under the grammar, the first-note bound and the human's own notes."""
        logits = self.logits.float()  # (1, V)
        logp = torch.log_softmax(logits, dim=-1)  # (1, V) the model's own odds, before masks
        blocked = self.stream.grammar.blocked.clone()  # (1, V)
        humans = np.flatnonzero(self.stream.owner == HUMAN)
        blocked[0, torch.from_numpy(self.off0 + humans)] = True  # the model does not release the human's keys
        if not self.struck:  # the first note comes promptly: no shift past the bound
            left = int(round(self.config.first_note / self.step)) - (self.stream.steps - self.turn_start)
            blocked[0] |= self.is_shift & (self.shift_of > left)
        sampling = self.settings.sampling
        token = int(sample(logits, sampling, None, blocked=blocked, types=self.stream.grammar.types,
                           noise=None if sampling.greedy else self.noise.next())[0])
        return token, -float(logp[0, token])

    def _feed(self, token: int, nll: float) -> None:
        """Append a model token, decode it, and make its event (a note-on with its arcs and surprisal)."""
        stream, position = self.stream, len(self.stream)
        pitch = int(self.tokenizer.token_value(token))
        ended = stream.model_on.get(pitch) if self.is_off[token] else None
        stream.append(token, MODEL, nll)
        self._decode_token(token, position)
        time = self._time_of(stream.steps)
        if self.is_on[token]:
            self.struck = True
            self.outbox.append(DuetEvent("on", time, pitch=pitch, velocity=int(self.tokenizer.bin_to_velocity(
                stream.bin)), id=position, surprisal=self._surprisal(position), arcs=self._arcs(position)))
        elif ended is not None:
            self.outbox.append(DuetEvent("off", time, pitch=pitch, id=ended))

    def _decode_token(self, token: int, position: int) -> None:
        """Decode the token just appended, keeping its attention row when it is a NOTE_ON."""
        self.fed = position  # everything before it is in the cache
        key_start, header = self.cache.length - self.cache.n_past, self.cache.displaced
        self.logits, attentions = self.decoder.step(torch.tensor([token]), self.cache,
                                                    need_attention=bool(self.is_on[token]))
        self.fed = position + 1
        self._row = None
        if attentions is not None:
            probs = torch.stack(attentions)  # (L, 1, H, n)
            recorder = AttentionRecorder(self.arcs_config)
            recorder.add([position], key_start + header, probs[:, :, :, header:])
            self._row = recorder.arrays()

    def _surprisal(self, position: int) -> float | None:
        """-log p of the note's tokens the model chose: its NOTE_ON and the VELOCITY right before it."""
        stream = self.stream
        total = stream.nll[position]
        before = position - 1
        if stream.who[before] == MODEL and int(self.tokenizer.token_type(stream.ids[before])) == \
                self.tokenizer.type_code("VELOCITY"):
            total += stream.nll[before]
        return round_nll(total)

    def _arcs(self, position: int) -> list[dict[str, Any]]:
        """The note's arcs to earlier notes (the human's too), keys named by their NOTE_ON positions."""
        ids = np.asarray(self.stream.ids[: position + 1], np.int64)
        _, note_index, owner, note_token = token_owners(self.tokenizer, ids)
        query_note = np.full(len(ids), -1, np.int64)
        query_note[position] = note_index[position]
        cfg = self.model.config
        arcs = aggregate(self._row, owner, query_note, cfg.n_layer, cfg.n_head, self.arcs_config)
        return [{"key": int(note_token[k]), "layer": int(l), "head": int(h), "weight": float(w)}
                for k, l, h, w in zip(arcs.key, arcs.layer, arcs.head, arcs.weight)]

    @property
    def ids(self) -> np.ndarray:
        """The stream so far, (T,) int64: what the cache holds."""
        return np.asarray(self.stream.ids, np.int64)
