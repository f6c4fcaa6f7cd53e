"""Copy check: the longest run of notes a generated piece shares with any training piece (no torch).

    index = CopyIndex(training_notes, names=paths)   # one index for the whole training set
    match = index.longest_run(generated_notes)        # CopyMatch: length, which piece, where in both

The note sequence of a piece: onsets are rounded to a grid (`grid`, default 10 ms, the PerformanceTokenizer's
time step: step = rint(start / grid), as the tokenizer rounds them), notes are ordered by onset step, then by
pitch ascending (a chord's notes lowest first, whatever order the file stored them in), and a pitch struck
twice within one step counts once (the tokenizer merges those too). Note i is the pair (pitch_i, ioi_i), where
ioi_i = step_i - step_(i-1) is the inter-onset interval to the previous note in grid steps (0 inside a chord).
Durations and velocities play no part.

A run of L notes shared by piece A at note a and piece B at note b: pitch[a + j] == pitch[b + j] for j < L and
ioi[a + j] == ioi[b + j] for 0 < j < L. The same pitches, with the same onset intervals between them; the
interval into the run's first note is free, so a copy may start anywhere. Pitches must be equal: a transposed
copy does not match (nor does a time-stretched one). Onsets within half a step (5 ms) of the same grid points
match exactly; an onset that rounds into a neighbouring step breaks the run there.

The search: `CopyIndex` keeps the training notes back to back as symbols, the 64-bit hashes of every k-gram
(k = `seed` notes, default 4, its first interval left out as above) that lies inside one piece, sorted by that
hash and then by the hash of the k-gram one note earlier, and polynomial prefix hashes of the symbols. For a
generated piece of m notes, each k-gram's matches are found by binary search; those whose previous k-gram also
matches the generated piece's previous k-gram lie inside a run that began earlier and form one contiguous
range of the sorted table, so only the run starts are enumerated. Each run start is measured by a binary
search on the prefix hashes, capped at the end of both pieces. The longest run wins (ties: the earliest
training piece and note, then the earliest generated note), and it is checked note by note, so a hash
collision cannot report a run that is not there. Building costs O(n log n) time and at most about 100 bytes
per training note (70 kept); a query O(m log n + S log L), S the maximal shared runs of k or more notes
(measured in blocks, so memory stays bounded on repetitive music) and L their lengths. Runs shorter than
`seed` notes are not searched: a piece whose longest shared run is shorter reports length 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from musicgpt.errors import MusicGPTError
from musicgpt.metrics.folder import FolderNotes, folder_notes
from musicgpt.music.midi import primer_track_notes
from musicgpt.music.notes import Notes

COPY_GRID = 0.01  # seconds: onsets are rounded to this grid (the PerformanceTokenizer's time step)
COPY_SEED = 4  # notes in the k-grams the index is built on: the shortest run the search finds
# A run longer than this many notes is flagged as a copy. On ASAP (grid 10 ms), pieces of the valid and test
# splits share at most 8 notes with the train split (median 5), and performances of one composition by different
# pianists at most 13 (p99 11); the bundled model's unconditional samples at most 7. 20 leaves a margin.
COPY_THRESHOLD = 20
PAIR_BLOCK = 1 << 20  # run starts measured at once: bounds memory on repetitive music


class CopyCheckError(MusicGPTError, ValueError):
    """A copy check setting is out of range (grid, seed length, threshold)."""


_U = np.uint64
_BASE = _U(0x9E3779B97F4A7C15 | 1)  # odd, so its powers never vanish modulo 2^64
_NO_PREVIOUS = _U(0)  # the previous k-gram of a piece's first note (a real hash is 0 with odds 2^-64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 of each value: symbols spread over 64 bits before they are hashed together."""
    z = np.asarray(x, dtype=np.uint64) + _U(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
    return z ^ (z >> _U(31))


@dataclass(frozen=True)
class NoteSequence:
    """One piece as the copy check sees it (module docstring): notes in (step, pitch) order, duplicates gone."""

    pitch: np.ndarray  # int64
    step: np.ndarray  # int64 onset in grid steps

    @classmethod
    def from_notes(cls, notes: Notes, grid: float = COPY_GRID) -> "NoteSequence":
        if not grid > 0:
            raise CopyCheckError(f"the copy grid must be positive, got {grid}")
        step = np.rint(np.asarray(notes.start, np.float64) / grid).astype(np.int64)
        pitch = np.asarray(notes.pitch, np.int64)
        order = np.lexsort((pitch, step))  # onset step, then pitch
        step, pitch = step[order], pitch[order]
        first = np.r_[True, (step[1:] != step[:-1]) | (pitch[1:] != pitch[:-1])][: len(step)]
        return cls(pitch[first], step[first])

    def __len__(self) -> int:
        return len(self.pitch)

    @property
    def ioi(self) -> np.ndarray:
        """Steps from the previous note's onset (0 for the first note)."""
        return np.diff(self.step, prepend=self.step[:1])

    def symbols(self) -> np.ndarray:
        """(pitch, ioi) of each note packed in one non-negative int64."""
        return self.ioi * 128 + self.pitch


@dataclass(frozen=True)
class CopyMatch:
    """The longest run one generated piece shares with the training set (length 0: none of `seed` notes)."""

    length: int
    piece: int = -1  # index of the training piece in the index, -1 when length is 0
    name: str = ""  # its name (path or document)
    generated_note: int = -1  # index of the run's first note in each piece's note sequence
    training_note: int = -1
    generated_seconds: tuple[float, float] = (0.0, 0.0)  # onsets of the run's first and last note, on the grid
    training_seconds: tuple[float, float] = (0.0, 0.0)
    generated_notes: int = 0  # notes in the generated piece's sequence

    def to_dict(self) -> dict:
        return {
            "longest_run": self.length,
            "notes": self.generated_notes,
            "training_piece": self.name if self.length else None,
            "training_index": self.piece if self.length else None,
            "generated_note": self.generated_note if self.length else None,
            "training_note": self.training_note if self.length else None,
            "generated_seconds": list(self.generated_seconds) if self.length else None,
            "training_seconds": list(self.training_seconds) if self.length else None,
        }


class CopyIndex:
    """The k-gram index of a training set (module docstring), built once and queried per generated piece."""

    def __init__(self, pieces: Sequence[Notes], names: Sequence[str] | None = None, grid: float = COPY_GRID,
                 seed: int = COPY_SEED):
        if seed < 2:
            raise CopyCheckError(f"the seed length must be at least 2 notes, got {seed}")
        self.grid, self.seed = float(grid), int(seed)
        self.names = [str(n) for n in names] if names is not None else [str(i) for i in range(len(pieces))]
        if len(self.names) != len(pieces):
            raise ValueError(f"{len(pieces)} pieces but {len(self.names)} names")
        sequences = [NoteSequence.from_notes(p, grid) for p in pieces]
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        self.offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        n = int(self.offsets[-1])
        concat = (lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
        self.step = concat([s.step for s in sequences], np.int64)
        self.symbol = concat([s.symbols() for s in sequences], np.int64)
        self.piece_of = np.repeat(np.arange(len(sequences), dtype=np.int32), lengths)
        value = _mix(self.symbol)
        self._prefix = _prefix_hashes(value)
        self._powers = _powers(n + 2)
        self.kgram = _kgram_hashes(self.symbol % 128, value, self.seed)
        del value
        # the k-gram one note earlier in the same piece, or NO_PREVIOUS at a piece's first note
        position = np.arange(len(self.kgram))
        previous = np.full(len(self.kgram), _NO_PREVIOUS, dtype=np.uint64)
        later = np.flatnonzero(position[1:] > self._piece_start(position[1:])) + 1
        previous[later] = self.kgram[later - 1]
        valid = np.flatnonzero(position + self.seed <= self._piece_end(position))
        del position, later
        order = np.lexsort((previous[valid], self.kgram[valid]))
        self._order = valid[order]  # training positions by (k-gram, previous k-gram)
        self._sorted, self._sorted_previous = self.kgram[self._order], previous[self._order]

    def _piece_start(self, t: np.ndarray) -> np.ndarray:
        return self.offsets[self.piece_of[t]]

    def _piece_end(self, t: np.ndarray) -> np.ndarray:
        return self.offsets[self.piece_of[t] + 1]

    @property
    def n_pieces(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_notes(self) -> int:
        return int(self.offsets[-1])

    def longest_run(self, notes: Notes, exclude: Notes | None = None) -> CopyMatch:
        """The longest run `notes` shares with any training piece, which piece and where (module docstring).

        exclude: notes that are not the model's (a primed sample's primer, an infilled piece's kept notes): they
        leave the sequence before the search (same onset step and pitch), so a primer taken from the training
        data is not a copy, while generated notes that go on copying its piece still are; generated_note counts
        in the whole sequence, generated_notes the notes searched."""
        seq = NoteSequence.from_notes(notes, self.grid)
        kept = np.arange(len(seq))
        if exclude is not None and len(exclude):
            given = NoteSequence.from_notes(exclude, self.grid)
            kept = np.flatnonzero(~np.isin(seq.step * 128 + seq.pitch, given.step * 128 + given.pitch))
            seq = NoteSequence(seq.pitch[kept], seq.step[kept])
        m, k = len(seq), self.seed
        if m < k or not len(self._sorted):
            return CopyMatch(0, generated_notes=m)
        pitch, value = seq.pitch, _mix(seq.symbols())
        prefix, powers = _prefix_hashes(value), _powers(max(m, self.n_notes) + 2, self._powers)
        kgram = _kgram_hashes(pitch, value, k)
        lo = np.searchsorted(self._sorted, kgram, "left")
        hi = np.searchsorted(self._sorted, kgram, "right")
        # training positions whose previous k-gram equals this one's previous continue a run begun earlier:
        # they sit together inside [lo, hi); the run starts are the rest
        cut_lo, cut_hi = lo.copy(), lo.copy()
        cut_lo[1:] = _segment_search(self._sorted_previous, lo[1:], hi[1:], kgram[:-1], "left")
        cut_hi[1:] = _segment_search(self._sorted_previous, cut_lo[1:], hi[1:], kgram[:-1], "right")
        # each generated k-gram's starts as two ranges of sorted positions: [lo, cut_lo) and [cut_hi, hi)
        first, second = cut_lo - lo, hi - cut_hi
        before = np.r_[0, np.cumsum(first + second)]
        best = (0, 0, 0)  # (length, -t, -g) ordering: longest, then earliest t, then earliest g
        for block in range(0, int(before[-1]), PAIR_BLOCK):
            pair = np.arange(block, min(block + PAIR_BLOCK, int(before[-1])), dtype=np.int64)
            g = np.searchsorted(before, pair, "right") - 1
            within = pair - before[g]
            t = self._order[np.where(within < first[g], lo[g] + within, cut_hi[g] + within - first[g])]
            length = 1 + self._symbols_in_common(prefix, powers, g + 1, t + 1, k - 1,
                                                 np.minimum(m - g, self._piece_end(t) - t) - 1)
            top = np.lexsort((g, t, -length))[:1]
            if len(top) and (int(length[top[0]]), -int(t[top[0]]), -int(g[top[0]])) > best:
                best = (int(length[top[0]]), -int(t[top[0]]), -int(g[top[0]]))
        if not best[0]:
            return CopyMatch(0, generated_notes=m)
        g, t = -best[2], -best[1]
        length = self._exact_length(seq, g, t)
        piece = int(self.piece_of[t])
        return CopyMatch(
            length, piece, self.names[piece], int(kept[g]), t - int(self.offsets[piece]),
            (float(seq.step[g] * self.grid), float(seq.step[g + length - 1] * self.grid)),
            (float(self.step[t] * self.grid), float(self.step[t + length - 1] * self.grid)), m)

    def _symbols_in_common(self, prefix, powers, g, t, known, cap) -> np.ndarray:
        """For each pair, the most symbols from g (generated) and t (training) that agree, between known and cap."""
        lo, hi = np.full(len(g), known, np.int64), np.maximum(cap, known)
        while True:
            open_ = np.flatnonzero(lo < hi)
            if not len(open_):
                return lo
            gg, tt = g[open_], t[open_]
            mid = (lo[open_] + hi[open_] + 1) // 2
            # sum v[g + i] B^(g + i) B^t == sum v'[t + i] B^(t + i) B^g: both are sums over B^(g + t + i)
            left = (prefix[gg + mid] - prefix[gg]) * powers[tt]
            right = (self._prefix[tt + mid] - self._prefix[tt]) * powers[gg]
            same = left == right
            lo[open_[same]] = mid[same]
            hi[open_[~same]] = mid[~same] - 1

    def _exact_length(self, seq: NoteSequence, g: int, t: int) -> int:
        """The run at (g, t) compared note by note: pitches, then the intervals after the first note."""
        cap = min(len(seq) - g, int(self.offsets[self.piece_of[t] + 1]) - t)
        same = seq.pitch[g : g + cap] == self.symbol[t : t + cap] % 128
        same[1:] &= seq.symbols()[g + 1 : g + cap] == self.symbol[t + 1 : t + cap]
        differ = np.flatnonzero(~same)
        return int(differ[0]) if len(differ) else cap


def _segment_search(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, query: np.ndarray, side: str) -> np.ndarray:
    """np.searchsorted(values[lo[i]:hi[i]], query[i], side) + lo[i] for every i at once (each segment sorted)."""
    lo, hi = lo.copy(), hi.copy()
    while True:
        open_ = np.flatnonzero(lo < hi)
        if not len(open_):
            return lo
        mid = (lo[open_] + hi[open_]) // 2
        right = values[mid] < query[open_] if side == "left" else values[mid] <= query[open_]
        lo[open_[right]] = mid[right] + 1
        hi[open_[~right]] = mid[~right]


def _prefix_hashes(value: np.ndarray) -> np.ndarray:
    """P[i] = sum over j < i of value[j] * B^j, modulo 2^64: sums of any stretch without a sequential loop."""
    out = np.zeros(len(value) + 1, dtype=np.uint64)
    np.cumsum(value * _powers(len(value)), out=out[1:])
    return out


def _powers(n: int, cached: np.ndarray | None = None) -> np.ndarray:
    """B^0 .. B^(n-1) modulo 2^64."""
    if cached is not None and len(cached) >= n:
        return cached
    out = np.full(max(n, 1), _BASE, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, out=out)[:n]


def _kgram_hashes(pitch: np.ndarray, value: np.ndarray, k: int) -> np.ndarray:
    """Hash of the k notes from each position (the first note's pitch, then the next k - 1 symbols)."""
    n = len(pitch) - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = _mix(pitch[:n].astype(np.uint64) | _U(1 << 62))  # a pitch alone hashes unlike any symbol
    for j in range(1, k):
        h = h * _BASE + value[j : j + n]
    return h


@dataclass
class TrainingSet:
    """The pieces a copy check compares against, and where they came from."""

    source: Path
    kind: str  # "midi" (a folder of MIDI files) or "prepared" (one split of a `musicgpt prepare` folder)
    names: list[str]
    pieces: list[Notes]
    split: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def midi_training_set(folder: str | Path, sustain: bool = True, progress: bool = True) -> TrainingSet:
    """Every readable MIDI file under `folder`, named by its path relative to the folder."""
    read = folder_notes(folder, progress=progress, sustain=sustain)
    root = Path(folder)
    names = [str(p.relative_to(root)) if root.is_dir() else str(p) for p in read.files]
    return TrainingSet(root, "midi", names, read.notes, skipped=[(str(p), r) for p, r in read.skipped])


def prepared_training_set(folder: str | Path, split: str = "train") -> TrainingSet:
    """One split of a `musicgpt prepare` folder decoded with its tokenizer.json, named by source path."""
    from musicgpt.corpus import open_split, read_manifest
    from musicgpt.corpus.shards import verify
    from musicgpt.tokens import load_tokenizer

    folder = Path(folder)
    manifest = read_manifest(folder)
    verify(folder, manifest)  # shards that disagree with the manifest are refused, as training refuses them
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    data = open_split(folder, split)
    sources = {s.get("doc"): s.get("path") for s in manifest.get("sources", []) if s.get("split") == split}
    names = [sources.get(i) or f"{split} document {i}" for i in range(data.n_docs)]
    pieces = [tokenizer.decode(np.asarray(data.doc(i))) for i in range(data.n_docs)]
    return TrainingSet(folder, "prepared", names, pieces, split=split)


@dataclass
class CopyCheck:
    """Each generated piece's longest run shared with the training set, and the settings that define it."""

    generated: FolderNotes
    training: TrainingSet
    matches: list[CopyMatch]
    threshold: int = COPY_THRESHOLD
    grid: float = COPY_GRID
    seed: int = COPY_SEED
    training_notes: int = 0  # notes in the index (after merging a pitch struck twice in one step)
    seconds: dict = field(default_factory=dict)  # "index", "search": wall time

    @property
    def flagged(self) -> list[bool]:
        """Runs longer than `threshold` notes."""
        return [m.length > self.threshold for m in self.matches]

    def _label(self, path: Path) -> str:
        root = self.generated.directory
        return str(path.relative_to(root)) if root.is_dir() else path.name

    def table(self) -> str:
        """One row per generated piece: notes, longest run (COPY when flagged), training piece, where in both."""
        header = ["generated", "notes", "longest run", "training piece", "generated at", "training at"]
        rows = [header]
        for path, m, copy in zip(self.generated.files, self.matches, self.flagged):
            if not m.length:
                rows.append([self._label(path), str(m.generated_notes), f"<{self.seed}", "-", "-", "-"])
                continue
            where = [f"#{note} {a:.2f}-{b:.2f}s" for note, (a, b) in
                     ((m.generated_note, m.generated_seconds), (m.training_note, m.training_seconds))]
            rows.append([self._label(path), str(m.generated_notes), ("COPY " if copy else "") + str(m.length),
                         m.name, *where])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.rjust(w) if i in (1, 2) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 .rstrip() for r in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        t = self.training
        split = f" ({t.split} split)" if t.split else ""
        lines[:0] = [f"copy check against {t.source}{split}: {len(t.pieces):,} pieces, "
                     f"{self.training_notes:,} notes", ""]
        lines += [
            "",
            f"longest run: most successive notes with the same pitches and onset intervals (onsets on a "
            f"{1000 * self.grid:g} ms grid) as a",
            f"stretch of one training piece; <{self.seed}: none of {self.seed}. at: first note's index, first and "
            "last onset. Transpositions do not match.",
            f"COPY: longer than {self.threshold} notes (--copy-threshold); {sum(self.flagged)} of "
            f"{len(self.matches)} flagged. Index {self.seconds.get('index', 0):.1f} s, "
            f"search {self.seconds.get('search', 0):.1f} s.",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The "copies" section of metrics.json."""
        t = self.training
        return {
            "training": {"source": str(t.source), "kind": t.kind, "split": t.split, "pieces": len(t.pieces),
                         "notes": self.training_notes,
                         "skipped": [{"path": p, "reason": r} for p, r in t.skipped]},
            "settings": {"grid_s": self.grid, "seed_notes": self.seed, "threshold_notes": self.threshold},
            "definition": "longest_run: most successive notes with equal pitches and equal onset intervals (onsets "
                          "rounded to grid_s; notes by onset, then pitch) shared with one training piece; 0 when "
                          "shorter than seed_notes; transposed copies do not match; copy: longest_run > "
                          "threshold_notes; *_note: index of the run's first note; *_seconds: its first and last onset",
            "flagged": [str(p) for p, copy in zip(self.generated.files, self.flagged) if copy],
            "pieces": [{"file": str(p), "copy": copy, **m.to_dict()}
                       for p, m, copy in zip(self.generated.files, self.matches, self.flagged)],
        }


def check_copies(generated: FolderNotes, training: TrainingSet, threshold: int = COPY_THRESHOLD,
                 grid: float = COPY_GRID, seed: int = COPY_SEED, progress: bool = True) -> CopyCheck:
    """Index `training` once, then find each generated piece's longest shared run (module docstring), the notes
    of a file's "primer" track (as `musicgpt generate` writes a primed sample) left out: they are not the model's."""
    if threshold < 0:
        raise CopyCheckError(f"the copy threshold must be at least 0 notes, got {threshold}")
    began = time.perf_counter()
    index = CopyIndex(training.pieces, training.names, grid=grid, seed=seed)
    indexed = time.perf_counter()
    matches = [index.longest_run(notes, exclude=primer_track_notes(path)) for path, notes in
               tqdm(list(zip(generated.files, generated.notes)), desc="copy check", unit="piece",
                    disable=not progress)]
    seconds = {"index": indexed - began, "search": time.perf_counter() - indexed}
    return CopyCheck(generated, training, matches, threshold, grid, seed, index.n_notes, seconds)
