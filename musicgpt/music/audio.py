"""Offline rendering of MIDI to a WAV file (no torch), with the first renderer that works here.

Renderers, tried in this order (or the one named):
- "fluidsynth": the FluidSynth program (`apt-get install fluidsynth fluid-soundfont-gm`,
  `brew install fluid-synth`), run as a subprocess; deterministic and fast.
- "tinysoundfont": the TinySoundFont bindings (`pip install --no-deps tinysoundfont`: the package
  declares PyAudio, which it needs only for live playback and which rarely builds on Linux).
- "symusic": symusic's own synthesizer (works in symusic 0.5.x; broken in 0.6.0, where `render`
  cannot return its array to Python, so it is probed before use).

Soundfont: the one given, else $MUSICGPT_SOUNDFONT, else a Debian General MIDI soundfont
(/usr/share/sounds/sf2/), else TimGM6mb.sf2, which pretty_midi's wheel ships. All notes play as
acoustic grand piano (program 0).

Level: every render is normalised to the same loudness, RMS at TARGET_RMS_DBFS with the peak held at or below
PEAK_DBFS (whichever gain is smaller), so renders of quiet and loud pieces, and of different renderers, play
at one level (FluidSynth's own output of a piano piece sits near -35 dBFS RMS).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from musicgpt._io import atomic_write
from musicgpt.errors import MusicGPTError

RENDERERS = ("fluidsynth", "tinysoundfont", "symusic")
TARGET_RMS_DBFS = -18.0  # the level renders are brought to
PEAK_DBFS = -1.0  # ... unless their peak would pass this
SYSTEM_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
)
NO_RENDERER = ("no offline MIDI renderer found: install FluidSynth (apt-get install fluidsynth, brew install "
               "fluid-synth) or `pip install --no-deps tinysoundfont` (symusic 0.6.0's synthesizer is broken)")


class AudioError(MusicGPTError):
    """Audio could not be rendered: no renderer, no soundfont, or the renderer failed."""


def find_soundfont(soundfont: str | os.PathLike | None = None) -> Path:
    """The soundfont to use: the one given, $MUSICGPT_SOUNDFONT, a system GM soundfont, or pretty_midi's."""
    given = soundfont or os.environ.get("MUSICGPT_SOUNDFONT")
    if given:
        path = Path(given)
        if not path.is_file():
            raise AudioError(f"soundfont {path}: no such file")
        return path
    for candidate in SYSTEM_SOUNDFONTS:
        if Path(candidate).is_file():
            return Path(candidate)
    try:
        import pretty_midi
    except ImportError:
        pretty_midi = None
    if pretty_midi is not None:
        bundled = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
        if bundled.is_file():
            return bundled
    raise AudioError("no soundfont found: pass --soundfont FILE.sf2 or set MUSICGPT_SOUNDFONT")


def available_renderers() -> list[str]:
    """Renderers that can run on this machine, in the order `render_wav` tries them."""
    found = []
    if shutil.which("fluidsynth"):
        found.append("fluidsynth")
    try:
        import tinysoundfont  # noqa: F401

        found.append("tinysoundfont")
    except ImportError:
        pass
    if _symusic_works():
        found.append("symusic")
    return found


def render_wav(midi: str | os.PathLike, wav: str | os.PathLike, *, soundfont: str | os.PathLike | None = None,
               sample_rate: int = 44100, renderer: str | None = None) -> Path:
    """Render a MIDI file to a 16-bit stereo WAV file; returns the WAV path."""
    midi, wav = Path(midi), Path(wav)
    if not midi.is_file():
        raise AudioError(f"{midi}: no such MIDI file")
    if renderer is not None and renderer not in RENDERERS:
        raise AudioError(f"renderer {renderer!r} is not one of {', '.join(RENDERERS)}")
    candidates = [renderer] if renderer else available_renderers()
    if not candidates or (renderer and renderer not in available_renderers()):
        raise AudioError(NO_RENDERER if not renderer else f"renderer {renderer!r} is not available here; {NO_RENDERER}")
    sf = find_soundfont(soundfont)
    name = candidates[0]

    def write(tmp: Path) -> None:
        if name == "fluidsynth":
            _fluidsynth(midi, tmp, sf, sample_rate)
            _write_wav(tmp, _read_wav(tmp), sample_rate)  # brought to the common level
        else:
            audio = _tinysoundfont(midi, sf, sample_rate) if name == "tinysoundfont" else _symusic(midi, sf, sample_rate)
            _write_wav(tmp, audio, sample_rate)

    return atomic_write(wav, write, make_parents=True)


def _fluidsynth(midi: Path, wav: Path, soundfont: Path, sample_rate: int) -> None:
    cmd = ["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(sample_rate), "-F", str(wav), "-T", "wav",
           str(soundfont), str(midi)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AudioError(f"{midi}: fluidsynth failed ({exc})") from None
    if done.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise AudioError(f"{midi}: fluidsynth failed ({message[-1] if message else f'exit {done.returncode}'})")


def _note_events(midi: Path) -> list[tuple[float, int, int, int]]:
    """(seconds, 0 = off / 1 = on, pitch, velocity) of every note, sorted (offs before ons at one time)."""
    from musicgpt.music.midi import read_midi

    notes = read_midi(midi, allow_empty=True)
    events = [(float(s), 1, int(p), int(v)) for s, p, v in zip(notes.start, notes.pitch, notes.velocity)]
    events += [(float(e), 0, int(p), 0) for e, p in zip(notes.end, notes.pitch)]
    return sorted(events)


def _tinysoundfont(midi: Path, soundfont: Path, sample_rate: int) -> np.ndarray:
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    try:
        sfid = synth.sfload(str(soundfont))
    except Exception as exc:
        raise AudioError(f"soundfont {soundfont}: tinysoundfont cannot load it ({exc})") from None
    synth.program_select(0, sfid, 0, 0)
    chunks, done = [], 0
    for seconds, on, pitch, velocity in _note_events(midi) + [(None, -1, 0, 0)]:
        target = done + sample_rate * 2 if seconds is None else int(round(seconds * sample_rate))  # 2 s of release
        if target > done:
            chunks.append(np.frombuffer(synth.generate(target - done), dtype=np.float32).copy())
            done = target
        if on == 1:
            synth.noteon(0, pitch, velocity)
        elif on == 0:
            synth.noteoff(0, pitch)
    return np.concatenate(chunks).reshape(-1, 2)


def _symusic_works() -> bool:
    try:
        import symusic

        synth = symusic.Synthesizer(sf_path=str(find_soundfont()), sample_rate=8000)
        score = symusic.Score(480)
        synth.render(score, stereo=True)
        return True
    except Exception:  # symusic 0.6.0: TypeError from the array conversion; or no soundfont
        return False


def _symusic(midi: Path, soundfont: Path, sample_rate: int) -> np.ndarray:
    import symusic

    synth = symusic.Synthesizer(sf_path=str(soundfont), sample_rate=sample_rate)
    audio = np.asarray(synth.render(symusic.Score(str(midi)), stereo=True), dtype=np.float32)
    return audio.T if audio.shape[0] == 2 else audio  # (samples, 2)


def normalise(audio: np.ndarray) -> np.ndarray:
    """Float samples brought to RMS TARGET_RMS_DBFS, or less where the peak would pass PEAK_DBFS (silence as is)."""
    if not audio.size:
        return audio
    rms, peak = float(np.sqrt(np.mean(np.square(audio)))), float(np.abs(audio).max())
    if peak == 0:
        return audio
    gain = min(10 ** (TARGET_RMS_DBFS / 20) / rms, 10 ** (PEAK_DBFS / 20) / peak)
    return audio * gain


def _read_wav(path: Path) -> np.ndarray:
    """16-bit PCM -> float samples (n, channels) in [-1, 1)."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise AudioError(f"{path}: expected 16-bit PCM from the renderer, got {8 * f.getsampwidth()}-bit")
        frames = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, f.getnchannels())
    return frames.astype(np.float64) / 32768


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Float samples (n, channels) -> 16-bit PCM at the common level (`normalise`)."""
    pcm = np.clip(np.round(normalise(audio) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(pcm.shape[1] if pcm.ndim == 2 else 1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
