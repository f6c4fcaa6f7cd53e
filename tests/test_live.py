"""`musicgpt live` (musicgpt.live): MIDI ports found by name through mido (an in-process backend stands in for the
system's), the runner on a tiny model with a fake clock (notes out at their times, a note-off for every note-on,
on a barge-in and at exit too), the command end to end, and python-rtmidi's virtual ports where the system has a
MIDI sequencer."""

import os
import re
import sys
import threading
import time
import types

import mido
import pytest

from musicgpt.cli import main
from musicgpt.duet import DuetConfig, DuetSession, FakeClock
from musicgpt.generation.setup import GenerationRequest
from musicgpt.live import ports as live_ports
from musicgpt.live.ports import INSTALL_HINT, MidiPortError, match_port, open_system
from musicgpt.live.runner import LiveConfig, LiveRunner

BACKEND = "fake_midi_backend"


class FakeSystem:
    """A MIDI system in this process: hardware ports by name, virtual ones as programs open them, and what each
    output received."""

    def __init__(self, inputs=(), outputs=(), virtual=True):
        self.inputs, self.outputs, self.virtual = list(inputs), list(outputs), virtual
        self.listeners: dict[str, list] = {}
        self.received: dict[str, list] = {}

    def play(self, name, message):
        """A device sends `message` from its port `name` to whoever listens."""
        for port in self.listeners.get(name, []):
            port.callback(message)

    def module(self):
        system = self

        class Input(mido.ports.BaseInput):
            def _open(self, virtual=False, callback=None, **_):
                if virtual:
                    if not system.virtual:
                        raise NotImplementedError("virtual ports are not supported by this API")
                    system.outputs.append(self.name)  # others send to it
                elif self.name not in system.inputs:
                    raise OSError(f"unknown port {self.name!r}")
                self.callback = callback
                system.listeners.setdefault(self.name, []).append(self)

            def _close(self):
                system.listeners[self.name].remove(self)

        class Output(mido.ports.BaseOutput):
            def _open(self, virtual=False, **_):
                if virtual:
                    if not system.virtual:
                        raise NotImplementedError("virtual ports are not supported by this API")
                    system.inputs.append(self.name)
                elif self.name not in system.outputs:
                    raise OSError(f"unknown port {self.name!r}")

            def _send(self, message):
                system.received.setdefault(self.name, []).append(message)
                system.play(self.name, message)

        def get_devices(**_):
            names = dict.fromkeys(system.inputs + system.outputs)
            return [{"name": n, "is_input": n in system.inputs, "is_output": n in system.outputs} for n in names]

        module = types.ModuleType(BACKEND)
        module.Input, module.Output, module.get_devices = Input, Output, get_devices
        return module


@pytest.fixture
def system(monkeypatch):
    fake = FakeSystem(inputs=["Keystation 49:Keystation 49 MIDI 1 20:0", "Midi Through:Midi Through Port-0 14:0"],
                      outputs=["FLUID Synth (1234):Synth input port (1234:0) 128:0",
                               "Midi Through:Midi Through Port-0 14:0"])
    monkeypatch.setitem(sys.modules, BACKEND, fake.module())
    monkeypatch.setenv("MIDO_BACKEND", BACKEND)
    return fake


@pytest.fixture(scope="module")
def model(one_thread_model):
    return one_thread_model


# ---- ports -----------------------------------------------------------------------------------------------
def test_ports_are_listed_and_named_exactly_or_by_a_piece_that_fits_one(system):
    midi = open_system()
    assert sorted(midi.inputs()) == sorted(system.inputs) and sorted(midi.outputs()) == sorted(system.outputs)
    assert "inputs (--in):\n  Keystation 49" in midi.describe()
    assert match_port("keystation", midi.inputs(), "input") == system.inputs[0]
    assert match_port(system.inputs[1], midi.inputs(), "input") == system.inputs[1]
    with pytest.raises(MidiPortError, match=r"no MIDI output port matches 'Disklavier'; outputs: '.*'FLUID Synth"):
        match_port("Disklavier", midi.outputs(), "output")
    with pytest.raises(MidiPortError, match=r"'MIDI' fits 2 ports, name one: 'Keystation.*', 'Midi Through"):
        match_port("MIDI", midi.inputs(), "input")
    heard = []
    port = midi.open_input("keystation", heard.append)
    system.play(system.inputs[0], mido.Message("note_on", note=60, velocity=90))
    assert [m.note for m in heard] == [60]
    port.close()


def test_virtual_ports_appear_to_other_programs_or_say_the_system_cannot_make_them(system):
    midi = open_system()
    made = midi.open_virtual_input("musicgpt in", lambda m: None), midi.open_virtual_output("musicgpt out")
    assert "musicgpt in" in midi.outputs() and "musicgpt out" in midi.inputs()  # seen from the other side
    for port in made:
        port.close()
    system.virtual = False
    with pytest.raises(MidiPortError, match=r"virtual output 'x'.*cannot make virtual ports.*--in/--out"):
        midi.open_virtual_output("x")


def test_no_backend_is_one_line_naming_what_to_install_or_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("MIDO_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "rtmidi", None)  # python-rtmidi not installed
    missing = f"no MIDI backend: python-rtmidi is not installed ({INSTALL_HINT})"
    with pytest.raises(MidiPortError, match=re.escape(missing)):
        open_system()
    with pytest.raises(MidiPortError, match="no MIDI backend: no_such_midi_module does not import"):
        open_system("no_such_midi_module")
    monkeypatch.delitem(sys.modules, "rtmidi")
    pytest.importorskip("rtmidi", reason="python-rtmidi is not installed (the live extra)")
    monkeypatch.setattr(live_ports, "ALSA_SEQUENCER", str(tmp_path / "seq"))
    monkeypatch.setattr(live_ports.sys, "platform", "linux")
    with pytest.raises(MidiPortError, match=r"the ALSA sequencer .*seq is missing"):
        open_system()


# ---- the runner ----------------------------------------------------------------------------------------
class Recorder(mido.ports.BaseOutput):
    """An output port that keeps each message with the clock time it went out."""

    def _open(self, clock=None, **_):
        self.clock, self.messages = clock, []

    def _send(self, message):
        self.messages.append((round(self.clock.now(), 6), message))


def live(model, seed=1, echo=False, **duet):
    clock = FakeClock()
    session = DuetSession(model, DuetConfig(**duet), GenerationRequest(seed=seed), clock=clock)
    output = Recorder("synth", clock=clock)
    lines = []
    runner = LiveRunner(session, output, LiveConfig(echo=echo), show=lines.append)
    return runner, clock, output, lines


def play(runner, clock, pitches=(60, 64, 67), start=0.1, gap=0.25, hold=0.2, dt=0.005):
    """The human plays `pitches` while the pump runs every `dt` seconds."""
    for i, p in enumerate(pitches):
        pump_until(runner, clock, start + gap * i, dt)
        runner.receive(mido.Message("note_on", note=p, velocity=80))
        pump_until(runner, clock, start + gap * i + hold, dt)
        runner.receive(mido.Message("note_off", note=p))


def pump_until(runner, clock, end, dt=0.005):
    while clock.now() < end - 1e-9:
        clock.set(min(end, clock.now() + dt))
        runner.step()


def notes(output, channel=0):
    return [(t, m.type, m.note) for t, m in output.messages if m.type in ("note_on", "note_off")
            and m.channel == channel]


def balanced(messages):
    """Every note-on ended by a note-off of its pitch, in order."""
    down = set()
    for _, kind, pitch in messages:
        if kind == "note_on":
            assert pitch not in down, f"{pitch} struck twice without a release"
            down.add(pitch)
        else:
            down.discard(pitch)
    return not down


def test_after_wait_the_model_answers_in_time_order_at_its_times_and_ends_every_note(model):
    runner, clock, output, lines = live(model, wait=0.5, answer=1.5, lookahead=0.1)
    play(runner, clock)
    assert output.messages == [] and lines[:3] == ["    0.10  you    C4   v80 ", "    0.35  you    E4   v80 ",
                                                   "    0.60  you    G4   v80 "]
    pump_until(runner, clock, 4.0)
    sent = notes(output)
    assert sent and sum(kind == "note_on" for _, kind, _ in sent) >= 2
    assert [t for t, _, _ in sent] == sorted(t for t, _, _ in sent)
    takeover = 0.8 + 0.5
    assert all(takeover - 1e-9 <= t <= takeover + 1.5 + 0.005 for t, _, _ in sent)
    assert max(runner.scheduler.lateness) < 0.005  # each went out at the first pump step at or after its time
    assert balanced(sent)
    assert "-- the model plays" in lines[3] and "-- your turn" in lines[-1]
    model_lines = [line for line in lines if "  model  " in line]
    assert len(model_lines) == runner.stats.model_notes and "nats  listens to " in model_lines[0]
    assert "(you)" in " ".join(model_lines)  # it listens to the human's notes
    stats = runner.close()
    assert (stats.human_notes, stats.turns, stats.barge_ins) == (3, 1, 0)
    assert output.messages[-1][1] == mido.Message("control_change", control=123, value=0)
    assert f"the model {stats.model_notes} in 1 turns" in stats.summary() and "p95" in stats.summary()


def test_a_barge_in_silences_the_model_at_once_and_drops_what_it_had_not_sounded(model):
    for seed in range(1, 8):  # a seed whose answer has a note sounding and one handed out early when we come in
        runner, clock, output, _ = live(model, seed=seed, wait=0.5, answer=5.0, lookahead=0.1)
        play(runner, clock)
        early = None
        while clock.now() < 4.0 and early is None:
            pump_until(runner, clock, clock.now() + 0.005)
            pending = [e for _, _, _, e, _ in runner.scheduler.queue if e.kind == "on"]
            if runner.scheduler.sounding and pending:
                early = pending
        if early:
            break
    assert early, "no seed gave a sounding note and an early one"
    sounding = set(runner.scheduler.sounding.values())
    barge = clock.now()
    runner.receive(mido.Message("note_on", note=72, velocity=100))
    runner.step()
    after = [(kind, pitch) for t, kind, pitch in notes(output) if t >= barge]
    assert {p for kind, p in after if kind == "note_off"} == sounding and all(k == "note_off" for k, _ in after)
    assert runner.stats.barge_ins == 1 and runner.stats.cancelled >= 1
    pump_until(runner, clock, barge + 0.4)  # less than `wait`: silence, and what was handed out early never sounds
    assert [(k, p) for t, k, p in notes(output) if t >= barge] == after
    assert balanced(notes(output))


def test_exit_releases_the_sounding_notes_and_sends_all_notes_off_and_the_echo_is_a_thru(model):
    runner, clock, output, _ = live(model, wait=0.3, answer=5.0, echo=True, trigger_note=21)
    play(runner, clock, pitches=(60,))
    runner.receive(mido.Message("note_on", channel=3, note=50, velocity=70))  # held when the session ends
    runner.receive(mido.Message("note_on", note=21, velocity=70))  # the trigger: no sound
    while not runner.scheduler.sounding and clock.now() < 3:
        pump_until(runner, clock, clock.now() + 0.005)
    sounding = set(runner.scheduler.sounding.values())
    assert sounding
    assert notes(output, channel=3) == [(0.3, "note_on", 50)] and 21 not in [p for *_, p in notes(output)]
    mark = len(output.messages)
    runner.close()
    tail = output.messages[mark:]
    assert {m.note for _, m in tail if m.type == "note_off" and m.channel == 0} == sounding
    assert [m.note for _, m in tail if m.type == "note_off" and m.channel == 3] == [50]
    assert [(m.channel, m.control) for _, m in tail if m.type == "control_change"] == [(0, 123), (3, 123)]
    runner.receive(mido.Message("note_on", note=62, velocity=70))
    assert len(output.messages) == mark + len(tail)  # closed: no echo


def test_an_output_that_stops_taking_notes_ends_the_session_in_one_line(model):
    class Unplugged(Recorder):
        def _send(self, message):
            raise OSError("MidiOutAlsa::sendMessage: error sending MIDI message to port.")

    clock = FakeClock()
    session = DuetSession(model, DuetConfig(wait=0.3), GenerationRequest(seed=1), clock=clock)
    runner = LiveRunner(session, Unplugged("synth", clock=clock), LiveConfig(echo=True), show=lambda line: None)
    runner.receive(mido.Message("note_on", note=60, velocity=80))
    with pytest.raises(MidiPortError, match=r"^MIDI output 'synth' stopped taking notes \(MidiOutAlsa::send"):
        runner.step()
    assert runner.close().human_notes == 1  # closing sends nothing more and raises nothing


def test_messages_are_stamped_on_arrival_and_a_full_inbox_drops_and_counts(model):
    clock = FakeClock()
    session = DuetSession(model, DuetConfig(wait=5.0), GenerationRequest(seed=1), clock=clock)
    runner = LiveRunner(session, Recorder("synth", clock=clock), LiveConfig(inbox=2), show=lambda line: None)
    clock.set(1.0)
    for message in (mido.Message("note_on", note=60, velocity=80), mido.Message("clock"),
                    mido.Message("note_off", note=60), mido.Message("note_on", note=62, velocity=80)):
        runner.receive(message)
    clock.set(1.3)  # the pump comes late: the notes still land at 1.0 s
    runner.step()
    names = [session.tokenizer.token_name(t) for t in session.ids[-3:]]
    # the note-on at step 100; its release, in the same step, goes in one step on once the stream moves on (a note
    # lasts a step); the third note found the inbox full
    assert names == ["TIME_SHIFT_100", "VELOCITY_19", "NOTE_ON_60"] and session.stream.waiting == {60}
    assert runner.stats.dropped == 1 and runner.stats.human_notes == 1


# ---- the command -------------------------------------------------------------------------------------------
def test_list_ports_and_a_missing_port_or_backend_is_one_line(system, capsys, monkeypatch, checkpoint):
    assert main(["live", "--list-ports"]) == 0
    out = capsys.readouterr().out
    assert f"MIDI backend: {BACKEND}" in out and "  Keystation 49:Keystation 49 MIDI 1 20:0" in out
    assert main(["live", str(checkpoint), "--in", "Disklavier", "--out", "fluid"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no MIDI input port matches 'Disklavier'; inputs: 'Keystation" in err
    assert main(["live", str(checkpoint), "--in", "keystation"]) == 1
    assert "--out PORT or --out-virtual NAME" in capsys.readouterr().err
    assert main(["live", str(checkpoint), "--in", "keystation", "--out", "fluid", "--top-p", "2"]) == 1
    assert "musicgpt live: error: --top-p: must lie in (0, 1]" in capsys.readouterr().err  # in the flags' words
    monkeypatch.setenv("MIDO_BACKEND", "no_such_midi_module")
    assert main(["live", "--list-ports"]) == 1
    assert "no MIDI backend: no_such_midi_module does not import" in capsys.readouterr().err


def test_the_command_duets_in_real_time_on_ports_and_leaves_no_note_sounding(system, capsys, checkpoint):
    keyboard, synth = system.inputs[0], system.outputs[0]

    def pianist():
        deadline = time.monotonic() + 30
        while not system.listeners.get(keyboard) and time.monotonic() < deadline:  # the model loads, the port opens
            time.sleep(0.01)
        for pitch in (60, 64, 67):
            system.play(keyboard, mido.Message("note_on", note=pitch, velocity=80))
            time.sleep(0.05)
            system.play(keyboard, mido.Message("note_off", note=pitch))
    hands = threading.Thread(target=pianist)
    hands.start()
    code = main(["live", str(checkpoint), "--in", "keystation", "--out", "fluid", "--wait", "0.3", "--answer", "1",
                 "--seed", "3", "--seconds", "2", "--channel", "2"])
    hands.join()
    out = capsys.readouterr().out
    assert code == 0, out
    received = system.received[synth]
    model = [(m.type, m.note) for m in received if m.type in ("note_on", "note_off")]
    assert all(m.channel == 1 for m in received) and ("control_change", 123) == (received[-1].type,
                                                                                   received[-1].control)
    assert any(kind == "note_on" for kind, _ in model) and balanced([(0, k, p) for k, p in model])
    assert "you play on 'Keystation 49:Keystation 49 MIDI 1 20:0'" in out and "-- the model plays" in out
    assert "musicgpt live: " in out.splitlines()[-1] and "you played 3 notes" in out


@pytest.mark.skipif(not os.path.exists("/dev/snd/seq"), reason="no ALSA sequencer (/dev/snd/seq) on this machine")
def test_virtual_ports_on_the_system_sequencer(checkpoint, capsys, monkeypatch):
    pytest.importorskip("rtmidi", reason="python-rtmidi is not installed (the live extra)")
    monkeypatch.delenv("MIDO_BACKEND", raising=False)
    try:
        midi = open_system()
    except MidiPortError as exc:  # a sequencer this user may not open
        pytest.skip(str(exc))
    heard = []

    def pianist():
        deadline = time.monotonic() + 10
        while not any("musicgpt-test-in" in n for n in midi.outputs()) and time.monotonic() < deadline:
            time.sleep(0.05)
        listen = midi.open_input("musicgpt-test-out", heard.append)
        keys = midi.open_output("musicgpt-test-in")
        for pitch in (60, 64, 67):
            keys.send(mido.Message("note_on", note=pitch, velocity=80))
            time.sleep(0.05)
            keys.send(mido.Message("note_off", note=pitch))
        time.sleep(3.5)  # past the session's end: its closing note-offs are heard too
        keys.close()
        listen.close()
    hands = threading.Thread(target=pianist)
    hands.start()
    code = main(["live", str(checkpoint), "--in-virtual", "musicgpt-test-in", "--out-virtual", "musicgpt-test-out",
                 "--wait", "0.3", "--answer", "1", "--seed", "3", "--seconds", "3"])
    hands.join()
    assert code == 0, capsys.readouterr().err
    model = [(0, m.type, m.note) for m in heard if m.type in ("note_on", "note_off")]
    assert any(kind == "note_on" for _, kind, _ in model) and balanced(model)
