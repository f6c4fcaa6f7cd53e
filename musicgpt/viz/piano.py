"""The piano sound of the pages (assets/piano.js): the shipped samples' names and files, and the small set a
standalone viewer page embeds. The samples are the Salamander Grand Piano V3 (CC BY 3.0; assets/piano/README.md);
`python -m tools.fetch_piano` rebuilds the folder."""

from __future__ import annotations

import base64
from importlib import resources

# As piano.js lists them: A0, then C, D#, F# and A of octaves 1..7, then C8 (every minor third).
SAMPLE_NAMES = ("A0", *(f"{step}{octave}" for octave in range(1, 8) for step in ("C", "D#", "F#", "A")), "C8")
# The embedded set (assets/piano/lite/): every major sixth, so a pitch is at most 4.5 semitones from its sample.
LITE_NAMES = ("A0", "F#1", "D#2", "C3", "A3", "F#4", "D#5", "C6", "A6", "F#7")
ATTRIBUTION = "Piano: Salamander Grand Piano V3 by Alexander Holm, CC BY 3.0"


def file_name(name: str) -> str:
    """The file of a sample name, as piano.js spells it: 'D#4' -> 'Ds4v10.ogg' (a '#' would need escaping in a URL)."""
    return name.replace("#", "s") + "v10.ogg"


def asset_names() -> list[str]:
    """The sample files the studio serves under /assets/, by name: 'piano/A0v10.ogg', ..."""
    return [f"piano/{file_name(name)}" for name in SAMPLE_NAMES]


def lite_samples() -> dict[str, str]:
    """The embedded set as piano.js's `samples` option: sample name -> data: URL of its OGG file."""
    folder = resources.files("musicgpt.viz").joinpath("assets", "piano", "lite")
    return {name: "data:audio/ogg;base64," + base64.b64encode(folder.joinpath(file_name(name)).read_bytes()).decode()
            for name in LITE_NAMES}
