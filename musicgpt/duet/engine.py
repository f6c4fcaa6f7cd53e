"""The duet engine: a human and the model take turns on one token stream, one KV cache and one clock.

    session = DuetSession(model, DuetConfig(wait=1.0, answer=8.0), GenerationRequest(top_p=0.95, seed=1))
    session.note_on(60, 80); session.note_off(60)   # stamped with the clock, in the cache at once
    for event in session.poll(): ...                # the model's notes due within the lookahead

No web and no MIDI ports here: a front end calls `note_on` / `note_off` / `control` (or `midi` with raw
bytes, or `receive` with several that arrived together, each stamped with its arrival time) as messages
arrive and `poll()` from its loop, and plays what comes back at each event's `time` (seconds on the session
clock). Every public method takes the session's lock, so an input thread and a clock pump may call at once.
Human events are tokenized and prefilled as they arrive (`musicgpt.duet.stream`; messages that arrive
together in one chunk), so at the model's turn only decoding is left.

Turns: the model takes over once the human has been silent for `wait` seconds after playing, or at once on
the trigger (a controller pressed, or a key that makes no sound). It plays for up to `answer` seconds of
its own timing; its turn begins `lead` seconds after it takes over (the time to decode a first note, so that
note is not late) and its first note comes within `first_note` seconds (longer TIME_SHIFTs are masked until it
has struck one, as Aria bounds its first time token). A human note-on during its turn is a barge-in: the
model's notes not yet due are cancelled (a `cancel` event for each one already handed out) and removed
from the cache, the sounding ones end now (`off`), and the human's note goes in: these events come back at
once, before any forward pass (the stream and the caches are cut in place); the prefill of the human's note
follows with the next `poll`. A human release or pedal
change during the model's turn changes no sound of the model's: it reaches the stream when the turn ends.
After an answer the model waits for the human to play again.

Decoding runs ahead of the clock by `lookahead` seconds at most: a sampled TIME_SHIFT that would pass that
horizon is held back, unfed, until the clock comes near, so a barge-in cancels at most a lookahead's worth
of tokens, taken back from the caches in place (they keep RESERVE tokens past the window) and from the
stream by replaying from the turn's start, not from the session's. The poll that makes a turn's first note
returns with it, so it goes out before the rest of the lookahead is decoded. Sampling is `generate`'s
(`GenerationRequest`: temperature, top-k/p, min-p, seed, controls with classifier-free guidance, a primer),
under its grammar mask; the model never ends a note of the human's. Guidance keeps a second cache of the
same stream without the CONTROL header, fed in the same decode step. Each model note-on carries
its arcs (its NOTE_ON's attention aggregated to notes, as `musicgpt.arcs.capture.aggregate` does for
arcs.json, keys named by their NOTE_ON positions) and its surprisal (nats, its VELOCITY and NOTE_ON).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Sequence

import numpy as np
import torch

from musicgpt.arcs.capture import ArcsConfig, AttentionRecorder, aggregate, token_owners
from musicgpt.arcs.format import round_nll
from musicgpt.duet.clock import Clock, MonotonicClock
from musicgpt.duet.config import DuetConfig, DuetEvent, parse_midi
from musicgpt.duet.stream import HUMAN, MODEL, TokenStream
from musicgpt.errors import ConfigError
from musicgpt.generation.guidance import Guidance
from musicgpt.generation.sampling import GumbelNoise, make_generator, sample
from musicgpt.generation.setup import GenerationRequest, load_model_and_tokenizer, pinned_header, prepare
from musicgpt.model.decode_step import Decoder
from musicgpt.model.prefill import teacher_force
from musicgpt.music.midi import SUSTAIN_CC, SUSTAIN_THRESHOLD
from musicgpt.tokens.base import PerformanceEvents

__all__ = ["DuetConfig", "DuetEvent", "DuetSession", "parse_midi"]

RESERVE = 256  # tokens a cache keeps past its window: more than a lookahead's worth of decoding ahead


class DuetSession:
    """One duet: the model, its KV cache, the token stream, the clock and whose turn it is."""

    def __init__(self, model, config: DuetConfig = DuetConfig(), request: GenerationRequest | None = None,
                 clock: Clock | None = None, tokenizer=None):
        self.model, self.tokenizer = load_model_and_tokenizer(model, tokenizer)
        if not isinstance(self.tokenizer, PerformanceEvents):
            raise ConfigError("duet: needs a performance-event tokenizer (NOTE_ON/NOTE_OFF/TIME_SHIFT/VELOCITY)")
        request = request or GenerationRequest()
        if request.infill is not None:
            raise ConfigError("duet: infilling is not for a duet (the human writes what comes next)")
        plan = prepare(self.model, self.tokenizer, request)
        self.config, self.settings, self.clock = config, plan.settings, clock or MonotonicClock()
        self.arcs_config = plan.settings.arcs or ArcsConfig()
        self.step = self.tokenizer.time_step
        self.origin = self.clock.now()
        self.stream = TokenStream(self.tokenizer, plan.prompt, self.model.config.vocab_size)
        self.pinned = pinned_header(self.tokenizer, plan.prompt)
        self.decoder = Decoder(self.model)  # its own scratch buffers: another thread may decode the same model
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
        self.cache = self._new_cache(self.pinned)
        self.unconditional = plan.unconditional if plan.settings.guidance != 1 else None
        self.guidance: Guidance | None = None  # the same stream without the CONTROL header, on a cache of its own
        self._start_guidance()
        self.fed = 0
        self.barged = False  # a barge-in has cut the stream; its prefill waits for the next poll
        self.announced = False  # the model's turn has been handed out (it began)
        self.lock = threading.RLock()  # front ends call from their input thread and their clock's pump
        self._sync()

    # ---- clock and time ----------------------------------------------------------------------------------
    def _step_of(self, t: float) -> int:
        return int(round((t - self.origin) / self.step))

    def _time_of(self, step: int) -> float:
        return self.origin + step * self.step

    # ---- the cache ---------------------------------------------------------------------------------------
    def _new_cache(self, pinned: int):
        """A cache that keeps RESERVE tokens past its window, so a barge-in takes tokens back without a rebuild."""
        return self.model.new_cache(pinned=pinned, reserve=RESERVE)

    def _start_guidance(self) -> None:
        """The unconditional half (guidance != 1): its prompt prefilled now, the stream's later tokens by `_sync`."""
        if self.unconditional is not None:
            self.guidance = Guidance(self.model, self.unconditional, 1, self.settings.guidance, self.settings.chunk,
                                     cache=self._new_cache(0))

    @torch.no_grad()
    def _sync(self) -> None:
        """Feed the stream's tokens the caches have not seen (in chunks; once a pinned window slides, one at a time)."""
        self.barged = False
        new = self.stream.ids[self.fed :]
        if not new:
            return
        chunk = min(self.settings.chunk, self.model.config.n_ctx // 2)
        x = torch.tensor([new], dtype=torch.long)  # (1, T)
        self.logits = teacher_force(self.model, x, self.cache, chunk=chunk)  # a slid pinned window: token by token
        if self.guidance is not None:  # its prompt is in already; the music after it is the same tokens
            later = self.stream.ids[max(self.fed, len(self.stream.prompt)) :]
            if later:
                x = torch.tensor([later], dtype=torch.long)  # (1, T')
                self.guidance.logits = teacher_force(self.model, x, self.guidance.cache, chunk=chunk)
        self.fed = len(self.stream)

    def _rewind(self, length: int) -> None:
        """Cut the stream and the caches back to `length` tokens."""
        drop = len(self.stream) - length
        if drop <= 0:
            return
        self.stream.truncate(length)
        taken = self.cache.truncate(drop)
        if self.guidance is not None:
            taken = taken and self.guidance.cache.truncate(drop)
        if taken:  # the keys the next token's window needs are still in the buffers
            self.fed = length
            return
        # rebuilt: exact, and costs a prefill of the whole stream
        self.cache = self._new_cache(self.pinned)
        self._start_guidance()
        self.fed = 0
        self._sync()

    # ---- the human ---------------------------------------------------------------------------------------
    def note_on(self, pitch: int, velocity: int = 64, at: float | None = None) -> list[DuetEvent]:
        """The human strikes a key (velocity 0 is a release) at clock time `at` (default: now); returns the events
        it causes (a barge-in's)."""
        with self.lock:
            return self._human("on", pitch, velocity, at)

    def note_off(self, pitch: int, at: float | None = None) -> list[DuetEvent]:
        """The human releases a key."""
        with self.lock:
            return self._human("off", pitch, 0, at)

    def control(self, number: int, value: int, at: float | None = None) -> list[DuetEvent]:
        """A control change: 64 is the sustain pedal, `trigger_cc` hands over; any other is ignored."""
        with self.lock:
            return self._human("cc", number, value, at)

    def midi(self, message: Sequence[int], at: float | None = None, sync: bool = True) -> list[DuetEvent]:
        """A raw MIDI message [status, data1, data2]: note on (0x9n), note off (0x8n), control change (0xBn)."""
        return self.receive([(message, at)], sync)

    def receive(self, messages: Sequence[tuple[Sequence[int], float | None]], sync: bool = True) -> list[DuetEvent]:
        """Raw MIDI messages that arrived together, each with its arrival time on the clock (None: now), in one
        prefill: a front end that falls behind a fast player catches up in one chunk, not one forward per note.
        sync=False leaves the prefill to the next `poll` (a front end taking in a queue one message at a time).
        Raises ValueError naming the first malformed message (none of them is taken then)."""
        parsed = [(parse_midi(message), at) for message, at in messages]
        with self.lock:
            out: list[DuetEvent] = []
            for kind_ab, at in parsed:
                if kind_ab is not None:
                    out += self._human(*kind_ab, at, sync=False)
            if sync and not self.barged:  # a barge-in returns before the prefill: silence first
                self._sync()
            return out

    def _human(self, kind: str, a: int, b: int, at: float | None = None, sync: bool = True) -> list[DuetEvent]:
        if not 0 <= a < 128 or not 0 <= b < 128:
            raise ValueError(f"MIDI data bytes are 0..127, got {a}, {b}")
        now = self.clock.now()
        t = now if at is None else min(float(at), now)  # stamped at arrival; never in the future
        out = self._drain(now, now)
        trigger = ((kind == "on" and b > 0 and a == self.config.trigger_note)
                   or (kind == "cc" and a == self.config.trigger_cc and b >= SUSTAIN_THRESHOLD))
        if trigger or (kind in ("on", "off") and a == self.config.trigger_note):
            if trigger and self.turn == "human":
                self._take_over(t)
                out += self._poll(now)
            return out
        if kind == "cc" and a != SUSTAIN_CC:
            return out
        if self.turn == "model":
            if not self.announced:  # the answer was being prepared: any event of the player's takes it back
                out += self._barge_in(t)
                self.played = True
            elif not (kind == "on" and b > 0):
                self.deferred.append((kind, a, b, t))
                return out
            else:
                out += self._barge_in(t)
        if self.stream.human_event(kind, a, b, self._step_of(t)):
            self.played = True
        if kind in ("on", "off"):
            self.last_human = max(self.last_human, t)
        if sync and not self.barged:  # a barge-in's prefill waits for the next poll
            self._sync()
        return out

    # ---- turns -------------------------------------------------------------------------------------------
    def poll(self, now: float | None = None, interrupt: Callable[[], bool] | None = None) -> list[DuetEvent]:
        """The events due by `now` + lookahead (now: the clock's), taking over or ending the turn as due.

        interrupt: asked after each token decoded; True stops decoding there (the next poll goes on), so a front
        end whose player has just played hands that in after one decode step, not after the whole lookahead."""
        with self.lock:
            return self._poll(self.clock.now() if now is None else now, interrupt)

    def _poll(self, now: float, interrupt: Callable[[], bool] | None = None) -> list[DuetEvent]:
        self._sync()  # what a barge-in or the end of a turn left unfed
        due = self.last_human + self.config.wait
        if self.turn == "human" and self.played and now >= due - self.config.prepare - 1e-9:
            self._take_over(max(now, due))  # ahead of time: the opening is decoded before it is due
        if self.turn == "model":
            ahead = max(now + self.config.lookahead, self._time_of(self.turn_start) + self.config.prepare)
            self._decode(int(math.floor((ahead - self.origin) / self.step + 1e-9)), interrupt)
        return self._drain(now, now + self.config.lookahead)

    def _drain(self, now: float, horizon: float) -> list[DuetEvent]:
        """Hand out the events made up to `horizon`; keep the note-ons not due by `now` to cancel on a barge-in."""
        n = 0
        for e in self.outbox:  # a turn is told when it happens, so an answer taken back before it began goes unseen
            if e.time > (now if e.kind == "turn" else horizon) + 1e-9:
                break
            n += 1
        out, self.outbox = self.outbox[:n], self.outbox[n:]
        if any(e.kind == "turn" and e.who == "model" for e in out):
            self.announced = True
        self.handed = [e for e in self.handed + out if e.time > now + 1e-9 and e.kind == "on"]
        return out

    def _take_over(self, t: float) -> None:
        """The model takes over at `t`: the silence so far goes into the stream; its turn begins `lead` later, so
        its first note, decoded now, is not late."""
        self.stream.shift_to(self._step_of(t))
        self.stream.mark()  # a barge-in cuts back to here or later: replays from here
        self.turn_index, taken = len(self.stream), self.stream.steps
        self.stream.shift_to(self._step_of(t + self.config.lead))
        self._sync()
        self.turn, self.played, self.struck, self.held = "model", False, False, None
        self.turn_start = self.stream.steps
        self.turn_end = self.turn_start + int(round(self.config.answer / self.step))
        self.outbox.append(DuetEvent("turn", self._time_of(taken), who="model"))

    def _end_turn(self, step: int, t: float | None = None) -> list[DuetEvent]:
        """The model's notes end at `step` (a barge-in: at clock time t); the human's deferred events go in."""
        self.stream.shift_to(step)
        pitches = sorted(self.stream.model_on)
        ids = [self.stream.model_on[p] for p in pitches]
        self.stream.release(pitches, MODEL)
        end = self._time_of(self.stream.steps) if t is None else t
        events = [DuetEvent("off", end, pitch=p, id=i) for p, i in zip(pitches, ids)]
        if self.announced:  # an answer taken back before it began was never told
            events.append(DuetEvent("turn", end, who="human"))
        self.outbox = [e for e in self.outbox if e.kind != "turn"]
        self.turn, self.held, self.announced = "human", None, False
        for kind, a, b, _ in self.deferred:
            self.stream.human_event(kind, a, b, self.stream.steps)
        self.deferred.clear()
        return events  # the tokens go into the cache with the next poll's or human event's prefill

    def _barge_in(self, t: float) -> list[DuetEvent]:
        """The human plays during the model's turn: cancel what is not due by `t`, end what sounds, hand back."""
        step, self.barged = self._step_of(t), True
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
    def _decode(self, horizon: int, interrupt: Callable[[], bool] | None = None) -> None:
        """Sample and feed the model's tokens up to step `horizon` (or the end of its turn, or an interrupt)."""
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
            first = not self.struck
            self._feed(token, nll)
            if first and self.struck:  # the turn's first note: hand it out now, decode the rest on the next poll
                return
            if interrupt is not None and interrupt():
                return

    def _sample(self) -> tuple[int, float]:
        """One token from the last logits under the grammar, the first-note bound and the human's own notes."""
        logp = torch.log_softmax(self.logits.float(), dim=-1)  # (1, V) the model's own odds, before masks
        logits = logp if self.guidance is None else self.guidance.mix(self.logits)  # (1, V) what is sampled from
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
        need = bool(self.is_on[token])
        if self.guidance is not None:  # both halves in one pass: the weights read once
            self.logits, self.guidance.logits, attentions = self.decoder.step_pair(
                torch.tensor([token]), self.cache, self.guidance.cache, need_attention=need)
        else:
            self.logits, attentions = self.decoder.step(torch.tensor([token]), self.cache, need_attention=need)
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
