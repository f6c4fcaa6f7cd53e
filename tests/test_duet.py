"""The duet engine (musicgpt.duet) on a tiny random model with a fake clock: turn taking, barge-in, timing bounds,
and the cache equal to one full forward pass over the stream (random weights: the mechanics, not the music)."""

from pathlib import Path

import pytest
import torch

from musicgpt.duet import DuetConfig, DuetSession, FakeClock
from musicgpt.duet.stream import TokenStream
from musicgpt.errors import ConfigError
from musicgpt.generation.setup import GenerationRequest
from musicgpt.tokens.performance import PerformanceTokenizer
from test_kv_cache import pinned_reference
from tiny_models import steering_model

TOK = PerformanceTokenizer()
PRIMER = Path(__file__).parent / "fixtures" / "pop909_331.mid"


@pytest.fixture(scope="module")
def model(one_thread_model):
    return one_thread_model


def session(model, seed=1, **config):
    clock = FakeClock()
    return DuetSession(model, DuetConfig(**config), GenerationRequest(seed=seed), clock=clock), clock


def phrase(s, clock, pitches=(60, 64, 67), start=0.1, gap=0.25, hold=0.2):
    """The human plays `pitches` one after the other; returns the events the engine answered with."""
    out = []
    for i, p in enumerate(pitches):
        clock.set(start + gap * i)
        out += s.note_on(p, 80)
        clock.advance(hold)
        out += s.note_off(p)
    return out


def run_until(s, clock, end, dt=0.01):
    """Poll every `dt` seconds up to `end`; the events in the order handed out."""
    out = []
    n = int(round((end - clock.now()) / dt))
    start = clock.now()
    for i in range(1, n + 1):
        clock.set(start + i * dt)
        out += s.poll()
    return out


def until_an_early_note(s, clock, limit=5.0, dt=0.01, sounding=False):
    """Poll until a model note-on is handed out before it is due (its tokens are in the cache ahead of the clock),
    and with `sounding` one that is due by now too."""
    out = []
    while clock.now() < limit:
        clock.advance(dt)
        out += s.poll()
        ons = [e.time > clock.now() for e in out if e.kind == "on"]
        if any(ons) and (not sounding or not all(ons)):
            return out
    raise AssertionError("the model handed out no note ahead of time")


def turns(events):
    return [(e.who, round(e.time, 6)) for e in events if e.kind == "turn"]


def names(ids):
    return [TOK.token_name(t) for t in ids]


def assert_cache_is_the_full_forward(s, model):
    ids = torch.from_numpy(s.ids)[None]  # (1, T)
    assert s.cache.length == ids.shape[1]
    with torch.no_grad():
        if s.pinned:  # the CONTROL header stays first in the window
            full = pinned_reference(model, ids, model.config.n_ctx, s.pinned)[:, -1]  # (1, V)
        else:
            full = model(ids, window=model.config.n_ctx).logits[:, -1]  # (1, V)
        assert (s.logits - full).abs().max() <= 1e-4
        if s.guidance is not None:  # the unconditional half: the same stream without the CONTROL header
            uncond = torch.from_numpy(s.ids[s.pinned:])[None]  # (1, T - header)
            assert s.guidance.cache.length == uncond.shape[1]
            full = model(uncond, window=model.config.n_ctx).logits[:, -1]  # (1, V)
            assert (s.guidance.logits - full).abs().max() <= 1e-4


def test_the_human_is_prefilled_as_they_play_and_the_model_takes_over_after_wait_seconds_of_silence(model):
    s, clock = session(model, wait=1.0, answer=1.0)
    assert run_until(s, clock, 2.0) == []  # nothing is played, nothing is answered
    out = phrase(s, clock, start=2.1)  # the last release at 2.1 + 0.5 + 0.2 = 2.8
    assert out == []
    assert s.cache.length == len(s.ids)  # every human event is in the cache already
    assert names(s.ids[1:7]) == ["TIME_SHIFT_100", "TIME_SHIFT_100", "TIME_SHIFT_10", "VELOCITY_19", "NOTE_ON_60",
                                 "TIME_SHIFT_20"]
    assert run_until(s, clock, 3.79) == []
    events = run_until(s, clock, 3.8)
    assert turns(events) == [("model", 3.8)]


def test_the_first_model_note_comes_within_the_bound_and_each_note_carries_arcs_and_surprisal(model):
    for seed, bound, lead in [(1, 0.0, 0.0), (2, 0.05, 0.03), (3, 0.03, 0.1)]:
        s, clock = session(model, seed=seed, wait=0.5, first_note=bound, lead=lead)
        phrase(s, clock)
        events = run_until(s, clock, 2.0)
        start = next(e.time for e in events if e.kind == "turn")  # the takeover; the turn begins `lead` later
        first = next(e for e in events if e.kind == "on")
        assert start + lead - 1e-9 <= first.time <= start + lead + bound + 1e-9, seed
        assert first.surprisal is not None and first.surprisal > 0
        assert first.arcs and all(TOK.token_name(s.ids[a["key"]]).startswith("NOTE_ON") for a in first.arcs)
        assert any(s.stream.who[a["key"]] == 0 for a in first.arcs)  # it listens to the human's notes


def test_events_are_handed_out_at_most_a_lookahead_early_and_the_answer_is_bounded(model):
    s, clock = session(model, wait=0.5, answer=1.5, lookahead=0.1)
    phrase(s, clock)
    handed = []
    for i in range(1, 400):
        clock.set(0.8 + i * 0.01)
        handed += [(clock.now(), e) for e in s.poll()]
    start, end = [e.time for _, e in handed if e.kind == "turn"]
    assert end == pytest.approx(start + s.config.lead + 1.5)  # the answer counts from the turn's beginning
    notes = [e for _, e in handed if e.kind in ("on", "off")]
    assert notes and all(start - 1e-9 <= e.time <= end + 1e-9 for e in notes)
    assert all(e.time - now <= 0.1 + 1e-9 for now, e in handed)  # never more than the lookahead early
    ons = {e.id for e in notes if e.kind == "on"}
    assert ons == {e.id for e in notes if e.kind == "off"}  # every model note ends by the end of its turn
    assert s.stream.model_on == {} and s.turn == "human"
    assert len(turns(run_until(s, clock, clock.now() + 3))) == 0  # no second answer before the human plays again


def test_barge_in_cancels_what_is_not_due_ends_what_sounds_and_puts_the_human_note_in_the_cache(model):
    s, clock = session(model, seed=4, wait=0.5, answer=5.0, lookahead=0.1)
    phrase(s, clock)
    handed = until_an_early_note(s, clock, sounding=True)
    ons = [e for e in handed if e.kind == "on"]
    barge = clock.now()
    out = s.note_on(72, 100)
    assert turns(out) == [("human", round(barge, 6))]
    sounding = {e.id for e in ons if e.time <= barge} - {e.id for e in handed if e.kind == "off" and e.time <= barge}
    assert sounding and {e.id for e in out if e.kind == "off"} == sounding
    assert all(e.time == barge for e in out if e.kind == "off")
    cancelled = {e.id for e in out if e.kind == "cancel"}
    assert cancelled and cancelled == {e.id for e in ons if e.time > barge}
    step = int(round((barge - s.origin) / TOK.time_step))
    model_steps = [at for at, who in zip(s.stream.step_at, s.stream.who) if who == 1]
    # nothing the model wrote after the barge-in stays (a release of a note struck in that step waits one step)
    assert model_steps and max(model_steps) <= step + 1
    assert names(s.ids[-1:]) == ["NOTE_ON_72"] and s.stream.owner[72] == 0
    # the silencing events came back before any forward pass; the next poll feeds the human's note
    assert s.cache.length < len(s.ids) and s.poll() == []
    assert_cache_is_the_full_forward(s, model)
    later = run_until(s, clock, barge + 0.4)  # less than `wait`: the model stays silent
    assert later == []


def test_pedal_and_key_triggers_hand_over_at_once_and_other_controllers_are_ignored(model):
    s, clock = session(model, wait=5.0, trigger_cc=67, trigger_note=21)
    phrase(s, clock, pitches=(60,))
    n = len(s.ids)
    clock.set(0.5)
    assert s.control(1, 100) == [] and len(s.ids) == n  # a modulation wheel is no music
    out = s.control(67, 127)
    assert turns(out) == [("model", 0.5)]
    s, clock = session(model, wait=5.0, trigger_note=21)
    clock.set(0.4)
    out = s.note_on(21, 90)
    assert turns(out) == [("model", 0.4)] and "NOTE_ON_21" not in names(s.ids)


def test_the_sustain_pedal_holds_released_keys_until_it_is_lifted(model):
    s, clock = session(model, wait=5.0)
    s.note_on(60, 80)
    clock.set(0.1)
    s.control(64, 127)
    clock.set(0.2)
    s.note_off(60)
    assert "NOTE_OFF_60" not in names(s.ids)
    clock.set(0.5)
    s.midi([0xB0, 64, 0])  # pedal up, as raw bytes
    assert names(s.ids[-2:]) == ["TIME_SHIFT_50", "NOTE_OFF_60"]
    s.midi([0x90, 62, 0])  # a note-on of velocity 0 releases a key that is not down: nothing
    assert names(s.ids[-1:]) == ["NOTE_OFF_60"]
    with pytest.raises(ValueError):
        s.midi([0x90, 200, 10])
    assert_cache_is_the_full_forward(s, model)


@pytest.mark.parametrize("steered", ["plain", "pinned", "guided"])
def test_the_cache_equals_one_full_forward_pass_over_a_long_duet_with_barge_ins(model, steered):
    """Past n_ctx (128) the window slides, and past the buffers' capacity they move to the front keeping a reserve;
    barge-ins cut tokens from the caches' ends without a rebuild, or (a steered duet whose CONTROL header is pinned
    in a slid window) rebuild them. Guided: the unconditional cache follows the same stream without the header."""
    if steered != "plain":
        model, tokenizer = steering_model()
        clock = FakeClock()
        s = DuetSession(model, DuetConfig(wait=0.3, answer=3.0), GenerationRequest(
            seed=5, controls={"composer": "Chopin"}, guidance=2.0 if steered == "guided" else 1.0),
            clock=clock, tokenizer=tokenizer)
        assert s.pinned == 1 and (s.guidance is not None) == (steered == "guided")
    else:
        s, clock = session(model, seed=5, wait=0.3, answer=3.0)
    cuts, truncate = [], s.stream.truncate
    s.stream.truncate = lambda n: (cuts.append(len(s.stream) - n), truncate(n))
    rebuilds, new_cache = [], s._new_cache
    s._new_cache = lambda pinned: (rebuilds.append(pinned), new_cache(pinned))[1]
    t, round_ = 0.0, 0
    while len(s.ids) < s.cache.capacity + model.config.n_ctx and round_ < 60:
        phrase(s, clock, pitches=(60 + round_ % 12, 64, 67, 72), start=t + 0.05, gap=0.07, hold=0.05)
        until_an_early_note(s, clock, limit=clock.now() + 5)
        s.note_on(48, 70)
        s.poll()
        if round_ % 4 == 0:
            assert_cache_is_the_full_forward(s, model)
        clock.advance(0.1)
        s.note_off(48)
        t, round_ = clock.now(), round_ + 1
    assert len(s.ids) >= s.cache.capacity + model.config.n_ctx and sum(cuts) > 0  # barge-ins cut model tokens
    assert_cache_is_the_full_forward(s, model)
    # the stream cut back from its mark is the stream written straight: grammar, clock and who holds each key
    fresh = TokenStream(s.tokenizer, s.ids[: len(s.stream.prompt)], s.stream.width)
    for token, who in zip(s.stream.ids[len(fresh) :], s.stream.who[len(fresh) :]):
        fresh.append(token, who)
    assert torch.equal(fresh.grammar.blocked, s.stream.grammar.blocked) and fresh.steps == s.stream.steps
    assert (fresh.owner == s.stream.owner).all() and fresh.model_on == s.stream.model_on
    if steered == "plain":  # every cut was taken back in place: the reserve outlived the moves to the front
        assert rebuilds == []


def test_a_duet_is_repeatable_and_checks_its_settings(model):
    def play(seed):
        s, clock = session(model, seed=seed, wait=0.5)
        phrase(s, clock)
        return [(e.kind, e.pitch, round(e.time, 6)) for e in run_until(s, clock, 3.0)], s.ids.tolist()
    assert play(7) == play(7)
    assert play(7) != play(8)
    with pytest.raises(ConfigError, match="trigger_cc"):
        DuetConfig(trigger_cc=64)
    with pytest.raises(ConfigError, match="wait"):
        DuetConfig(wait=0)
    with pytest.raises(ConfigError, match="guidance"):  # guidance steers towards controls: none given
        DuetSession(model, request=GenerationRequest(guidance=2.0))
    with pytest.raises(ConfigError, match="infilling"):
        DuetSession(model, request=GenerationRequest(infill=(1.0, 2.0), primer=PRIMER))


def test_messages_that_arrive_together_go_in_with_one_prefill_at_their_arrival_times(model):
    """`receive` stamps each message with its own arrival time and prefills once; the stream is what the same
    messages sent one by one at those times make. A malformed message is refused whole, naming it."""
    times = [0.10, 0.12, 0.15, 0.31, 0.33]
    messages = [[0x90, 60, 80], [0x90, 64, 70], [0x80, 60, 0], [0xB0, 64, 127], [0x90, 64, 0]]
    one, clock1 = session(model)
    for m, t in zip(messages, times):
        clock1.set(t)
        one.midi(m)
    batch, clock2 = session(model)
    clock2.set(0.5)
    calls, sync = [], batch._sync
    batch._sync = lambda: (calls.append(1), sync())
    batch.receive(list(zip(messages, times)))
    assert batch.ids.tolist() == one.ids.tolist() and len(calls) == 1
    assert_cache_is_the_full_forward(batch, model)
    for bad in ([0x90, 60], [0x90, 128, 1], [0x90, 60, 1.5], "note", [True, 60, 1]):
        with pytest.raises(ValueError, match="MIDI"):
            batch.receive([([0x90, 61, 80], None), (bad, None)])
    assert batch.ids.tolist() == one.ids.tolist()  # nothing of a refused batch went in


def test_a_fast_players_short_notes_never_push_the_stream_ahead_of_the_clock(model):
    """A key released within the step it was struck in ends one step later, written when the clock gets there: a
    flood of 200 short notes leaves the stream on the clock, each note one step long, none lost."""
    s, clock = session(model, wait=5.0)
    for i in range(200):  # 250 notes a second, each 2 ms long: often several in one 10 ms step
        clock.set(0.1 + i * 0.004)
        s.note_on(48 + i % 24, 90)
        clock.advance(0.002)
        s.note_off(48 + i % 24)
        assert s.stream.steps <= int(round((clock.now() - s.origin) / TOK.time_step)) + 1
    clock.advance(0.1)
    s.note_on(100, 60)  # the clock moves on: the last release goes in
    notes = TOK.decode(s.ids)
    short = notes.pitch != 100
    assert short.sum() == 200 and (notes.end[short] - notes.start[short] <= TOK.time_step + 1e-9).all()
    assert_cache_is_the_full_forward(s, model)



def test_a_poll_stops_decoding_when_interrupted_and_the_next_poll_goes_on(model):
    """interrupt() is asked after each token: True stops there (the player's note can go in first); the next poll
    decodes on to the same horizon, and the stream is the one an uninterrupted poll writes."""
    runs = []
    for interrupted in (False, True):
        s, clock = session(model, seed=3, wait=0.3, lookahead=0.5)
        phrase(s, clock)
        clock.set(clock.now() + 0.31)
        s.poll()  # the takeover: its first note comes back at once
        before = len(s.ids)
        asked = []
        s.poll(interrupt=(lambda: asked.append(1) or True) if interrupted else None)
        if interrupted:
            assert len(asked) == 1 and len(s.ids) == before + 1  # one token, then it stopped
            s.poll()
        runs.append(s.ids.tolist())
    assert runs[0] == runs[1]


def test_the_answer_is_prepared_before_wait_runs_out_and_taken_back_unseen_if_the_player_goes_on(model):
    """`prepare` seconds before the takeover the model decodes its opening (nothing is told yet: the turn comes when
    it happens); a release by the player in that window takes it all back unseen and the wait starts again."""
    s, clock = session(model, seed=4, wait=0.5, prepare=0.15)
    phrase(s, clock, pitches=(60, 64))
    s.note_on(67, 80)  # held: its release comes inside the window
    last = clock.now()
    n = len(s.ids)
    clock.set(last + 0.5 - 0.1)  # inside the window, before the takeover
    assert [e.kind for e in s.poll() if e.kind == "turn"] == []  # nothing told
    assert any(w == 1 for w in s.stream.who[n:])  # ... but the model's opening is written already
    out = s.note_off(67)  # the player goes on: the prepared answer goes, unheard and untold
    assert [e for e in out if e.kind in ("turn", "off")] == []
    assert all(w == 0 for w in s.stream.who[n:]) and s.turn == "human"
    s.poll()
    assert_cache_is_the_full_forward(s, model)
    events = run_until(s, clock, clock.now() + 0.6)  # a full `wait` after the release: the model comes in
    assert [e.who for e in events if e.kind == "turn"][:1] == ["model"]
    first = next(e for e in events if e.kind == "on")
    assert first.time >= clock.now() - 0.6 + 0.5  # not before the release + wait
