"""Offline WAV rendering: each renderer found here, the WAV writer, and the one-line errors."""

import wave

import numpy as np
import pytest

from musicgpt.music import audio
from musicgpt.music.audio import AudioError, available_renderers, render_wav
from musicgpt.music.midi import read_midi
from tiny_models import FIXTURES

MIDI = FIXTURES / "pop909_806.mid"
RENDERERS = available_renderers()


def read_wav(path):
    with wave.open(str(path)) as f:
        frames = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, f.getnchannels())
        return frames, f.getframerate()


@pytest.mark.parametrize("renderer", RENDERERS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no offline renderer here (apt-get install fluidsynth, or pip install --no-deps tinysoundfont)"))])
def test_each_available_renderer_writes_the_piece(renderer, tmp_path):
    notes = read_midi(MIDI)
    out = render_wav(MIDI, tmp_path / "x.wav", renderer=renderer, sample_rate=22050)
    frames, rate = read_wav(out)
    seconds = len(frames) / rate
    assert rate == 22050 and frames.shape[1] == 2
    assert notes.end_time - 0.5 <= seconds <= notes.end_time + 5
    loud = np.abs(frames.astype(float)).mean(axis=1)
    first = int(notes.start[0] * rate)
    assert loud[first : first + rate].mean() > 50 * (loud[: max(first, 1)].mean() + 1e-3)  # sound where the notes are
    again = render_wav(MIDI, tmp_path / "y.wav", renderer=renderer, sample_rate=22050)
    assert again.read_bytes() == out.read_bytes()  # deterministic
    x = frames.astype(float) / 32768
    rms, peak = (20 * np.log10(v) for v in (np.sqrt((x ** 2).mean()), np.abs(x).max()))
    assert peak <= audio.PEAK_DBFS + 0.01 and (abs(rms - audio.TARGET_RMS_DBFS) < 0.1 or peak > audio.PEAK_DBFS - 0.1)


def test_wav_writer_brings_renders_to_one_level_and_interleaves(tmp_path):
    t = np.arange(800) / 8000
    audio._write_wav(tmp_path / "s.wav", np.stack([np.sin(2 * np.pi * 440 * t), 2 * np.sin(2 * np.pi * 220 * t)], 1), 8000)
    frames, rate = read_wav(tmp_path / "s.wav")
    assert rate == 8000 and frames.shape == (800, 2)
    x = frames / 32768
    assert abs(20 * np.log10(np.sqrt((x ** 2).mean())) - audio.TARGET_RMS_DBFS) < 0.1  # loud sines brought down
    clicks = np.zeros((8000, 1))
    clicks[::2000] = 0.01  # quiet, and all peak: raised until the peak reaches -1 dBFS, short of -18 dBFS RMS
    audio._write_wav(tmp_path / "q.wav", clicks, 8000)
    assert 0.88 < np.abs(read_wav(tmp_path / "q.wav")[0]).max() / 32767 < 0.9
    assert np.abs(frames[:, 0]).max() < np.abs(frames[:, 1]).max()


def test_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(AudioError, match="no such MIDI file"):
        render_wav(tmp_path / "none.mid", tmp_path / "x.wav")
    with pytest.raises(AudioError, match="soundfont .*nope.sf2"):
        audio.find_soundfont(tmp_path / "nope.sf2")
    monkeypatch.setattr(audio, "available_renderers", lambda: [])
    with pytest.raises(AudioError, match="fluidsynth") as exc:
        render_wav(MIDI, tmp_path / "x.wav")
    assert "\n" not in str(exc.value)
    with pytest.raises(AudioError, match="not one of"):
        render_wav(MIDI, tmp_path / "x.wav", renderer="timidity")
