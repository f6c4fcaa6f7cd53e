"""A `Generation` as events while it runs: each sample's notes and their arcs, as plain dicts (the studio's SSE data).

Notes (`note` events) are named by the position of their NOTE_ON token in the sample's token sequence
(arcs.json's `token`), known the moment a note starts. The primer's notes come first, after the prefill,
each with its end (null when it still sounds where the primer stops). A generated note is sent when its
NOTE_ON is sampled, with `end` null and the surprisal of its tokens so far (the NOTE_ON and the VELOCITY
before it), and once more when it ends, complete: the second `note` event of an id replaces the first.
The NOTE_OFFs that close the notes still sounding at the end send the last of them. (A note of no length
would be sent again as `{"id", "sample", "dropped": true}`; the sampling grammar never writes one.)

Each note's arcs (`arcs` events) follow its first `note` event: its NOTE_ON's attention row, aggregated to
notes exactly as `musicgpt.arcs.capture.aggregate` does for arcs.json (the same top-n, minimum weight and
tie order, weights rounded as arcs.json stores them), so the last `note` of every id and its arcs equal the
finished sample's arcs.json, with note ids mapped through `token`.

An infilling take streams its prefix (as primer notes) and the middle it writes, on the piece's clock; the
suffix, read first on a clock of its own, is not followed (arcs to its notes are left out of the stream),
and the finished files hold the whole piece.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from musicgpt.arcs.capture import AttentionRecorder, NoteArcs, aggregate
from musicgpt.arcs.format import round_nll as _round_nll  # arcs.json's rounding: streamed values equal the file's
from musicgpt.generation.loop import Generation
from musicgpt.generation.sample import Sample
from musicgpt.studio.tracker import LiveNote, NoteTracker
from musicgpt.tokens.infill import spans

Event = tuple[str, dict[str, Any]]  # (SSE event name, its JSON data)


class RowTee:
    """Stands in for a sample's AttentionRecorder after the prefill: takes each new row's top keys once, hands
    them on at once, and keeps them (compactly) for `samples()`, which aggregates every row into arcs.json."""

    def __init__(self, recorder: AttentionRecorder, on_row: Callable[[int, dict[str, np.ndarray]], None]):
        self.recorder, self.on_row = recorder, on_row  # the recorder holds the prefill's rows
        self.config = recorder.config
        self._rows: list[tuple] = []  # per row: position, key (int32), layer, head (int16), weight (float32)

    def add(self, positions, key_start: int, probs) -> None:
        """Rows at token `positions` with probabilities (L, R, H, n), as AttentionRecorder.add."""
        for i, position in enumerate(np.asarray(positions).reshape(-1).tolist()):
            single = AttentionRecorder(self.config)  # the recorder's own top-k and threshold: equal arcs
            single.add([position], key_start, probs[:, i : i + 1])
            entries = single.arrays()
            # float32 weights and small ints: what AttentionRecorder keeps per row, widened again by arrays()
            self._rows.append((position, entries["key"].astype(np.int32), entries["layer"].astype(np.int16),
                               entries["head"].astype(np.int16), entries["weight"].astype(np.float32)))
            self.on_row(position, entries)

    def end_chunk(self) -> None:
        self.recorder.end_chunk()

    def arrays(self) -> dict[str, np.ndarray]:
        """Every row: the prefill's and the new ones (entries of one row keep their order, so sums are equal)."""
        first = self.recorder.arrays()
        if not self._rows:
            return first
        columns = {"query": [first["query"], *(np.full(len(r[1]), r[0], np.int64) for r in self._rows)]}
        for i, name in enumerate(("key", "layer", "head", "weight"), start=1):
            columns[name] = [first[name], *(r[i] for r in self._rows)]
        out = {name: np.concatenate(parts) for name, parts in columns.items()}
        for name in ("query", "key", "layer", "head"):
            out[name] = out[name].astype(np.int64)
        out["weight"] = out["weight"].astype(np.float64)
        return out

    def __len__(self) -> int:
        return len(self.recorder) + len(self._rows)


class LiveGeneration:
    """Follows a Generation: `start()` gives the primer's events, `after_step()` each step's, `finish()` the last."""

    def __init__(self, generation: Generation, infill_start: float | None = None):
        self.generation = generation
        # an infilling prompt reads the suffix first, on a clock of its own: its notes are not followed live (they
        # come with the finished take), and the prefix's clock is moved so that the gap starts at infill_start
        self.infill_start = infill_start
        self.offset = 0.0  # seconds added to every time the trackers read
        config = generation.model.config
        self.n_layer, self.n_head = config.n_layer, config.n_head
        self.arcs_config = generation.settings.arcs
        n = generation.settings.num_samples
        self.trackers = [NoteTracker(generation.tokenizer, len(generation.prompt)) for _ in range(n)]
        self.rows: list[dict[int, dict[str, np.ndarray]]] = [{} for _ in range(n)]  # NOTE_ON position -> its row
        self.announced: list[set[int]] = [set() for _ in range(n)]  # notes sent while sounding
        self._primer_rows = None  # per sample: the prefill's rows
        if generation.recorders is not None:
            self._primer_rows = [recorder.arrays() for recorder in generation.recorders]
            for b, recorder in enumerate(generation.recorders):
                # the tee gets the rows' dict, not this object: a callback back to us would make a reference
                # cycle (us -> generation -> its recorders -> us) that keeps every take's KV cache alive until a
                # full garbage collection (+36 MB a take on the bundled model)
                generation.recorders[b] = RowTee(recorder, self.rows[b].__setitem__)

    def start(self) -> list[Event]:
        """The primer's notes (in token order), each followed by its arcs, for every sample."""
        g = self.generation
        events: list[Event] = []
        prompt = g.prompt.tolist()
        suffix = spans(g.tokenizer, g.prompt) if self.infill_start is not None else None
        if suffix is not None:  # the block and its two sentinels read as padding: positions kept, no notes, no time
            lo, hi = suffix.suffix
            prompt[lo - 1 : hi + 1] = [g.tokenizer.pad_id] * (hi + 1 - (lo - 1))
        for b, tracker in enumerate(self.trackers):
            nll = g.token_nll[b]
            for position, token in enumerate(prompt):
                tracker.push(token, nll[position])
            if self.infill_start is not None:
                self.offset = self.infill_start - tracker.steps * tracker.time_step
            arcs = self._primer_arcs(b, tracker)
            for position in sorted(tracker.notes):
                note = tracker.notes[position]
                if note.end_step is None:
                    self.announced[b].add(position)
                events.append(("note", self._note(b, note)))
                if arcs is not None:
                    events.append(("arcs", self._arcs(b, note, arcs.get(position))))
        return events

    def after_step(self) -> list[Event]:
        """Events of the tokens the last step() appended."""
        g = self.generation
        events: list[Event] = []
        for b, tracker in enumerate(self.trackers):
            seq, nll = g.seqs[b], g.token_nll[b]
            for position in range(tracker.length, len(seq)):
                events += self._push(b, seq[position], nll[position])
        return events

    def finish(self, samples: list[Sample]) -> list[Event]:
        """Events of the NOTE_OFFs that samples() appended to close the notes still sounding."""
        g = self.generation
        events: list[Event] = []
        for b, (tracker, sample) in enumerate(zip(self.trackers, samples)):
            seq = g.seqs[b]
            # samples() drops a trailing VELOCITY (no NOTE_ON after it) and appends the closing tokens; the
            # tracker read that VELOCITY already, which changes nothing of the notes
            kept = len(seq) - (len(seq) > len(g.prompt) and self._is_velocity(seq[-1]))
            for token in sample.ids[kept:].tolist():
                events += self._push(b, token, float("nan"))  # closing tokens are not predicted
        return events

    def _is_velocity(self, token: int) -> bool:
        tok = self.generation.tokenizer
        return int(tok.token_type(token)) == tok.type_names.index("VELOCITY")

    def _push(self, b: int, token: int, nll: float) -> list[Event]:
        tracker = self.trackers[b]
        started, ended, dropped = tracker.push(token, nll)
        events: list[Event] = [("note", self._note(b, note)) for note in ended]
        events += [("note", {"sample": b, "id": note.position, "dropped": True}) for note in dropped
                   if note.position in self.announced[b]]
        if started is not None:
            self.announced[b].add(started.position)
            events.append(("note", self._note(b, started)))
            row = self.rows[b].pop(started.position, None)
            if row is not None:
                events.append(("arcs", self._row_arcs(b, started, row)))
        return events

    def _note(self, b: int, note: LiveNote) -> dict[str, Any]:
        def seconds(step: int | None) -> float | None:
            return None if step is None else round(step * self.trackers[b].time_step + self.offset, 6)
        return {"sample": b, "id": note.position, "pitch": note.pitch, "velocity": note.velocity,
                "start": seconds(note.start_step), "end": seconds(note.end_step), "primer": note.primer,
                "surprisal": _round_nll(note.nll) if note.predicted else None}

    def _aggregate(self, entries: dict[str, np.ndarray], owner: np.ndarray, query_note: np.ndarray) -> NoteArcs:
        # notes are named by their sort key here (owner and query_note hold keys): ties break as in arcs.json
        return aggregate(entries, owner, query_note, self.n_layer, self.n_head, self.arcs_config)

    def _primer_arcs(self, b: int, tracker: NoteTracker) -> dict[int, dict[str, np.ndarray]] | None:
        """The primer notes' arcs: NOTE_ON position -> arc columns."""
        if self._primer_rows is None:
            return None
        query_note = np.full(tracker.length, -1, np.int64)
        for position, note in tracker.notes.items():
            query_note[position] = note.key
        arcs = self._aggregate(self._primer_rows[b], tracker.owners(), query_note)
        bounds = np.r_[0, np.flatnonzero(np.diff(arcs.query)) + 1, len(arcs)]
        return {tracker.by_key[int(arcs.query[i])]: self._columns(tracker, arcs, slice(i, j))
                for i, j in zip(bounds[:-1], bounds[1:]) if j > i}

    def _row_arcs(self, b: int, note: LiveNote, row: dict[str, np.ndarray]) -> dict[str, Any]:
        tracker = self.trackers[b]
        entries = dict(row, query=np.zeros(len(row["query"]), np.int64))  # the one query is note 0 of query_note
        arcs = self._aggregate(entries, tracker.owners(), np.array([note.key], np.int64))
        return self._arcs(b, note, self._columns(tracker, arcs, slice(None)))

    @staticmethod
    def _columns(tracker: NoteTracker, arcs: NoteArcs, part: slice) -> dict[str, np.ndarray]:
        """Arc columns of one query note, in aggregate's order; keys as NOTE_ON positions. Weights stay float64:
        the stream's encoder rounds them as arcs.json does (4 significant digits)."""
        position = tracker.by_key
        keys = arcs.key[part].tolist()
        return {"key": np.fromiter((position[k] for k in keys), np.int64, len(keys)), "layer": arcs.layer[part],
                "head": arcs.head[part], "weight": arcs.weight[part]}

    @staticmethod
    def _arcs(b: int, note: LiveNote, columns: dict[str, np.ndarray] | None) -> dict[str, Any]:
        if columns is None:
            columns = {name: np.zeros(0, np.float64 if name == "weight" else np.int64)
                       for name in ("key", "layer", "head", "weight")}
        return {"sample": b, "query": note.position, **columns}
