"""Dataset recipes: which MIDI files of a source folder make a corpus, and which split each one joins.

Every recipe returns `Source`s (absolute path, path relative to the folder, split, group). Files
of one group (a piece, a song) always share a split, so no piece leaks from train into test.

- asap: `metadata.csv`, one row per performance (`midi_performance`); group = composer + title
  (a piece can sit in several folders, e.g. with and without repeats). Hashed split by group.
- maestro: its own CSV (`maestro-v*.csv`, column `split`: train / validation / test).
- pop909: `NNN/NNN.mid` and `NNN/versions/*.mid`; group = the song number NNN.
- giantmidi: `*.mid` named "Surname, Firstname, Title, YouTubeID.mid"; group = the name
  without the YouTube id (one piece, several recordings).
- folder: every `*.mid` / `*.midi` below the folder; group = the relative path.

Composer (the `composer` control, see `musicgpt.tokens.controls`), when the corpus says it: ASAP's
`composer`, MAESTRO's `canonical_composer`, GiantMIDI's surname (the file name's first field), a
folder's `metadata.csv` (a `composer` column and the file in `path`, `file`, `filename`, `midi`,
`midi_filename` or `midi_performance`, relative to the folder; names in any case), or, with
composer_from="folder", each file's first folder below the corpus folder (`Chopin/ballade1.mid`).
Otherwise None (the `unknown` composer).

Hashed split: u = the first 8 bytes of sha256(group) as a fraction in [0, 1); train when
u < ratio_train, valid when u < ratio_train + ratio_valid, else test. This is deterministic and
stable: adding files never moves another file to a different split. One exception keeps small
corpora usable: when a split with a positive ratio is empty but train has two or more groups,
the train group(s) with the highest u move into it.

Exact duplicates (same content) are removed by `musicgpt.corpus.prepare`, which hashes every file.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from musicgpt.errors import ConfigError
from musicgpt.music.midi import midi_files

SPLITS = ("train", "valid", "test")
DEFAULT_RATIOS = (0.9, 0.05, 0.05)


@dataclass(frozen=True)
class Source:
    """One input file of a corpus."""

    path: Path  # absolute
    rel: str  # relative to the corpus folder, '/'-separated: the name in the manifest
    split: str
    group: str  # files of one group share a split
    composer: str | None = None  # from the corpus's metadata, None when it does not say


def split_fraction(key: str) -> float:
    """A deterministic number in [0, 1) for a group key (a file name's undecodable bytes hash as those bytes)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:8], "big") / 2**64


def check_ratios(ratios) -> tuple[float, float, float]:
    """Three non-negative ratios (train, valid, test) normalised to sum 1."""
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        raise ConfigError(f"split ratios: expected three numbers, got {ratios!r}") from None
    if len(values) != 3 or not all(map(math.isfinite, values)) or min(values) < 0 or values[0] <= 0:
        raise ConfigError(f"split ratios: need three finite numbers, train > 0, valid >= 0, test >= 0, got {ratios!r}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def hashed_splits(groups: list[str], ratios=DEFAULT_RATIOS) -> dict[str, str]:
    """group -> split by hashed fraction; see the module docstring for the small-corpus rule."""
    train, valid, test = check_ratios(ratios)
    fraction = {g: split_fraction(g) for g in set(groups)}
    split = {g: "train" if u < train else "valid" if u < train + valid else "test" for g, u in fraction.items()}
    for name, ratio in (("valid", valid), ("test", test)):
        in_train = sorted((g for g in split if split[g] == "train"), key=fraction.get)
        if ratio > 0 and name not in split.values() and len(in_train) >= 2:
            split[in_train[-1]] = name
    return split


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_csv(path: Path, required: set[str]) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: cannot read the CSV ({exc})") from None
    missing = required - set(rows[0] if rows else {})
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return rows


def _grouped(root: Path, files: list[tuple[Path, str]], ratios, composers: dict[Path, str] | None = None) -> list[Source]:
    splits = hashed_splits([group for _, group in files], ratios)
    composers = composers or {}
    return [Source(path, _rel(path, root), splits[group], group, composers.get(path)) for path, group in files]


def asap(root: Path, ratios=DEFAULT_RATIOS) -> list[Source]:
    """ASAP performances from metadata.csv, split by piece (composer + title)."""
    rows = _read_csv(root / "metadata.csv", {"composer", "title", "midi_performance"})
    files = [(root / row["midi_performance"], f"{row['composer']}|{row['title']}") for row in rows]
    composers = {root / row["midi_performance"]: row["composer"].strip() or None for row in rows}
    return _grouped(root, sorted(files), ratios, composers)


def maestro(root: Path, ratios=DEFAULT_RATIOS) -> list[Source]:
    """MAESTRO files with the split given by its CSV (validation -> valid); ratios are ignored."""
    csvs = sorted(root.glob("maestro-v*.csv"))
    if not csvs:
        raise ConfigError(f"{root}: no maestro-v*.csv found (is this the MAESTRO folder?)")
    rows = _read_csv(csvs[-1], {"split", "midi_filename", "canonical_composer", "canonical_title"})
    names = {"train": "train", "validation": "valid", "test": "test"}
    out = []
    for row in rows:
        if row["split"] not in names:
            raise ConfigError(f"{csvs[-1]}: unknown split {row['split']!r} for {row['midi_filename']}")
        path = root / row["midi_filename"]
        out.append(Source(path, _rel(path, root), names[row["split"]],
                          f"{row['canonical_composer']}|{row['canonical_title']}", row["canonical_composer"].strip() or None))
    return sorted(out, key=lambda s: s.rel)


def pop909(root: Path, ratios=DEFAULT_RATIOS) -> list[Source]:
    """POP909 songs NNN/NNN.mid (and NNN/versions/*.mid), split by song."""
    base = root / "POP909" if (root / "POP909").is_dir() else root
    files = [(p, p.relative_to(base).parts[0]) for p in midi_files(base) if re.fullmatch(r"\d{3}", p.relative_to(base).parts[0])]
    return _grouped(root, files, ratios)


def giantmidi(root: Path, ratios=DEFAULT_RATIOS) -> list[Source]:
    """GiantMIDI-Piano files, split by piece (the file name without its trailing YouTube id)."""
    files = [(p, p.stem.rsplit(",", 1)[0].strip() if "," in p.stem else p.stem) for p in midi_files(root)]
    composers = {p: p.stem.split(",", 1)[0].strip() or None for p, _ in files if "," in p.stem}
    return _grouped(root, files, ratios, composers)


FILE_COLUMNS = ("path", "file", "filename", "midi", "midi_filename", "midi_performance")  # the first one present


def folder(root: Path, ratios=DEFAULT_RATIOS, composer_from: str = "metadata") -> list[Source]:
    """Every MIDI file below root, split by hashed relative path; composers from metadata.csv or folder names."""
    files = [(p, _rel(p, root)) for p in midi_files(root)]
    composers: dict[Path, str] = {}
    if composer_from == "folder":
        composers = {p: rel.split("/")[0] for p, rel in files if "/" in rel}
    elif composer_from == "metadata" and (root / "metadata.csv").is_file():
        rows = [{key.strip().lower(): value or "" for key, value in row.items() if isinstance(key, str)}
                for row in _read_csv(root / "metadata.csv", set())]  # column names as people write them: File, MIDI
        column = next((c for c in FILE_COLUMNS if rows and c in rows[0]), None)
        if not rows or "composer" not in rows[0] or column is None:
            lacking = ("composer column" if not rows or "composer" not in rows[0]
                       else f"file column (one of: {', '.join(FILE_COLUMNS)})")
            raise ConfigError(f"{root / 'metadata.csv'}: has no {lacking}; name the columns so, or pass "
                              "--composer-from none|folder")
        composers = {(root / row[column]).resolve(): row["composer"].strip() for row in rows if row["composer"].strip()}
        composers = {p: composers[p.resolve()] for p, _ in files if p.resolve() in composers}
    elif composer_from not in ("metadata", "none"):
        raise ConfigError(f"composer_from {composer_from!r}: expected metadata, folder or none")
    return _grouped(root, files, ratios, composers)


RECIPES: dict[str, Callable[..., list[Source]]] = {
    "asap": asap, "maestro": maestro, "pop909": pop909, "giantmidi": giantmidi, "folder": folder,
}


def detect_recipe(root: Path) -> str:
    """Guess the recipe from the folder's layout (falls back to 'folder')."""
    if (root / "metadata.csv").is_file():
        with open(root / "metadata.csv", encoding="utf-8", errors="replace") as handle:
            if "midi_performance" in handle.readline():
                return "asap"
    if any(root.glob("maestro-v*.csv")):
        return "maestro"
    base = root / "POP909" if (root / "POP909").is_dir() else root
    if (base / "001" / "001.mid").is_file():
        return "pop909"
    names = [p.stem for p in list(root.glob("*.mid"))[:50]] + [p.stem for p in list(root.glob("midis/*.mid"))[:50]]
    if names and sum(bool(re.search(r", [\w-]{11}$", n)) for n in names) > 0.8 * len(names):
        return "giantmidi"
    return "folder"


def collect(root: str | Path, recipe: str | None = None, ratios=DEFAULT_RATIOS,
            composer_from: str = "metadata") -> tuple[str, list[Source]]:
    """(recipe name, sources) of a corpus folder; the recipe is detected when not given.

    composer_from: "metadata" (what the recipe's files say), "folder" (each file's first folder; folder
    recipe only) or "none"."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder" if root.exists() else f"{root}: no such folder")
    name = recipe or detect_recipe(root)
    if name not in RECIPES:
        raise ConfigError(f"recipe {name!r}: unknown (known: {', '.join(RECIPES)})")
    check_ratios(ratios)
    if composer_from == "folder" and name != "folder":
        raise ConfigError(f"composer from folder names: only with the folder recipe (this is '{name}')")
    if name == "folder":
        return name, folder(root, ratios, composer_from)
    sources = RECIPES[name](root, ratios)
    if composer_from == "none":
        sources = [Source(s.path, s.rel, s.split, s.group) for s in sources]
    elif composer_from != "metadata":
        raise ConfigError(f"composer_from {composer_from!r}: expected metadata, folder or none")
    return name, sources


def held_out_pieces(root: str | Path, split: str = "test") -> list[Path]:
    """One file per piece (group) of `split` in a corpus folder, by piece name (every piece when the split is
    empty): what a benchmark replays or scores, never two performances of one piece."""
    _, sources = collect(root)
    chosen = [s for s in sources if s.split == split] or list(sources)
    first: dict[str, Path] = {}
    for s in sorted(chosen, key=lambda s: s.rel):
        first.setdefault(s.group, s.path)
    return [first[g] for g in sorted(first)]
