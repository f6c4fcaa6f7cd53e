"""Influence on demand for a note of a finished take (POST /api/influence): which past notes shaped it, by ablation.

The page asks with the take's number, the sample and the note's id (its index in the sample's arcs.json); the
take's files are found through the store's ids (`FileStore.listing`, `FileStore.get`), never by a path from
the request. The take keeps no token ids, so the context is its MIDI read again as `musicgpt attend` reads a
file (primer track and all): the same notes, but not always the take's tokens (simultaneous notes may come
in another order, and control tokens ahead of the music are not in a MIDI), and the answer says whether
they were. Notes are matched to the take's arcs.json by pitch and onset; a take whose MIDI does not give
back every note (an infilled piece read in another order) is refused with a message saying so.

Influence is `musicgpt.arcs.influence`'s: the note's NLL rise when one past note is hidden (masked, positions
unchanged), for the `candidates` past notes attention (averaged over all layers and heads) ranks highest;
the others are not scored. The candidates are hidden one at a time (on the CPU the fastest way) and scoring
stops at `time_limit_s`: the answer says how many were scored. One note at a time: a second request while
one runs is refused at once (busy), as is one while the studio generates a take.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from musicgpt.arcs.format import read_arcs, validate_arcs
from musicgpt.arcs.influence import Maps, influence, piece_maps, query_context
from musicgpt.arcs.forward import trace
from musicgpt.arcs.measures import rank_candidates
from musicgpt.errors import MusicGPTError
from musicgpt.studio.files import FileStore


class InfluenceRefused(MusicGPTError):
    """A request /api/influence does not answer: `status` is its HTTP status, the message says why in one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class InfluenceConfig:
    """How much one request may cost."""

    candidates: int = 16  # past notes scored: 16 took 3.5 s with 1,024 tokens of context (docs/benchmarks.md)
    time_limit_s: float = 20.0  # scoring stops here; the answer says how many candidates were scored
    rank_by: str = "attention"  # the cheap measure that picks the candidates (over all layers and heads)
    cached: int = 4  # pieces (take, sample) whose token ids are kept


def parse_request(body: Any) -> tuple[int, int, int]:
    """(take, sample, note) of a request body ({"take": N, "sample": B, "note": Q}); InfluenceRefused(400) else."""
    if not isinstance(body, dict):
        raise InfluenceRefused(400, "influence: the body must be a JSON object {\"take\": N, \"sample\": B, \"note\": Q}")
    values = []
    for key in ("take", "sample", "note"):
        value = body.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InfluenceRefused(400, f"influence: '{key}' must be an integer >= 0, got {value!r}")
        values.append(value)
    return values[0], values[1], values[2]


@dataclass
class Piece:
    """A take's sample as influence reads it: the MIDI's tokens and note maps, the arcs.json header and notes,
    per take note its note in `maps`, and whether those tokens are the take's own."""

    ids: np.ndarray
    maps: Maps
    doc: dict
    index: np.ndarray
    same: bool


class InfluenceService:
    """Answers /api/influence for the takes of one store with one model; `answer` blocks (run it off the loop)."""

    def __init__(self, model, tokenizer, files: FileStore, config: InfluenceConfig | None = None):
        self.model, self.tokenizer, self.files = model, tokenizer, files
        self.config = config or InfluenceConfig()
        self._running = threading.Lock()
        self._pieces: OrderedDict[tuple[int, int], Piece] = OrderedDict()

    def answer(self, take: int, sample: int, note: int) -> dict[str, Any]:
        """The influence arcs of note `note` of sample `sample` of take `take`, in the arcs.json shape, with what
        was scored; InfluenceRefused when busy or for a take, sample or note that is not there."""
        if not self._running.acquire(blocking=False):
            raise InfluenceRefused(503, "influence: busy with another note; ask again when it is done")
        try:
            piece = self.piece(take, sample)
            if not note < len(piece.doc["notes"]):
                raise InfluenceRefused(404, f"influence: take {take} sample {sample} has no note {note} "
                                            f"(notes 0..{len(piece.doc['notes']) - 1})")
            return self._score(take, sample, note, piece)
        finally:
            self._running.release()

    def piece(self, take: int, sample: int) -> Piece:
        """The sample as influence reads it (cached); InfluenceRefused for a take or sample that is not there."""
        if (take, sample) in self._pieces:
            self._pieces.move_to_end((take, sample))
            return self._pieces[(take, sample)]
        from musicgpt.generation.primer import primer_ids
        from musicgpt.music.scores import read_notes

        found = next((t for t in self.files.listing() if t["take"] == take), None)
        if found is None:
            raise InfluenceRefused(404, f"influence: no finished take {take} (GET /api/takes lists them)")
        if not sample < len(found["samples"]):
            raise InfluenceRefused(404, f"influence: take {take} has no sample {sample} "
                                        f"(samples 0..{len(found['samples']) - 1})")
        urls = found["samples"][sample]["files"]
        if "midi" not in urls or "arcs" not in urls:
            raise InfluenceRefused(404, f"influence: take {take} sample {sample} has no MIDI and arcs.json to read")
        midi, arcs = (self._path(urls[kind]) for kind in ("midi", "arcs"))
        doc = read_arcs(arcs)
        ids = np.r_[self.tokenizer.bos_id, primer_ids(read_notes(midi), self.tokenizer)].astype(np.int64)
        maps = piece_maps(self.tokenizer, ids)
        index = match_notes(doc["notes"], maps.notes)
        if index is None:
            raise InfluenceRefused(409, f"influence: take {take} sample {sample}: its MIDI does not give back every "
                                        "note of its arcs.json (pitch and onset), so its notes cannot be hidden")
        same = np.array_equal(maps.note_token[index], [n["token"] for n in doc["notes"]])
        piece = Piece(ids, maps, {k: v for k, v in doc.items() if k not in ("arcs", "measures")}, index, same)
        self._pieces[(take, sample)] = piece
        while len(self._pieces) > self.config.cached:
            self._pieces.popitem(last=False)
        return piece

    def _path(self, url: str):
        """The path of a file of the store from its URL (/files/ID/NAME), made first if it is not yet."""
        _, _, file_id, name = url.split("/", 3)
        entry = self.files.get(file_id, name)
        if entry is None:
            raise InfluenceRefused(404, f"influence: {name} is gone (the takes folder reached its cap)")
        try:
            return entry.ensure()
        except OSError as exc:
            raise InfluenceRefused(500, f"influence: {exc}") from exc

    @torch.no_grad()
    def _score(self, take: int, sample: int, note: int, piece: Piece) -> dict[str, Any]:
        cfg, started = self.config, time.perf_counter()
        ids, maps, doc, index, same = piece.ids, piece.maps, piece.doc, piece.index, piece.same
        back = np.full(len(maps.note_token), -1, np.int64)
        back[index] = np.arange(len(index))  # a note of the MIDI -> the take's note id
        ctx = query_context(ids, maps, int(index[note]), self.model.config.n_ctx)
        tr = trace(self.model, ctx.ids, [len(ctx.ids) - 1])
        chosen = rank_candidates(tr, ctx, len(maps.note_token), cfg.candidates, cfg.rank_by)
        scored: list[tuple[int, float]] = []
        for i in chosen:  # one at a time, so the time limit holds within one ablation
            if time.perf_counter() - started > cfg.time_limit_s:
                break
            scored.append((int(back[ctx.past[i]]), float(influence(self.model, ctx, tr, np.array([i]), batch=1)[0])))
        gain = np.maximum([rise for _, rise in scored], 0.0) if scored else np.zeros(0)
        share = gain / gain.sum() if gain.sum() > 0 else gain
        layer = self.model.config.n_layer - 1  # influence belongs to the whole model: last layer, head 0
        arcs = [{"query": note, "key": key, "layer": layer, "head": 0, "weight": min(1.0, float(f"{w:.4g}"))}
                for (key, _), w in zip(scored, share) if w >= 1e-4]
        validate_arcs({**doc, "measure": "influence", "arcs": arcs}, source=f"influence of note {note}")
        past, stopped = len(ctx.past), len(scored) < len(chosen)
        given_up = (f"the other {past - len(scored)} past notes were not scored (a note {cfg.rank_by} overlooks is "
                    "never found)" if past > len(scored) else "nothing: every past note was scored")
        if stopped:
            given_up += f"; the time limit stopped scoring after {len(scored)} of {len(chosen)} candidates"
        if not same:
            given_up += ("; the context is the take's MIDI read again, whose tokens differ from the take's (simultaneous "
                         "notes in another order, or control tokens ahead of the music)")
        return {"take": take, "sample": sample, "note": note, "measure": "influence", "n_layer": doc["n_layer"],
                "n_head": doc["n_head"], "arcs": arcs,
                "scored": [{"note": key, "rise": round(rise, 4)} for key, rise in scored],
                "candidates": len(chosen), "past_notes": past, "context_tokens": len(ctx.ids),
                "rank_by": f"{cfg.rank_by} (all layers and heads)", "seconds": round(time.perf_counter() - started, 3),
                "stopped": stopped, "time_limit_s": cfg.time_limit_s, "given_up": given_up, "tokens_as_take": same}


def match_notes(notes: list[dict], read) -> np.ndarray | None:
    """Per arcs.json note, the index of the note of `read` (a Notes table) with its pitch and onset (within 2 ms),
    one to one; None when the counts differ or a note has no match."""
    if len(notes) != len(read.pitch):
        return None
    free: dict[int, list[int]] = {}
    for j, pitch in enumerate(np.asarray(read.pitch).tolist()):
        free.setdefault(pitch, []).append(j)
    start, out = np.asarray(read.start), []
    for n in notes:
        options = free.get(n["pitch"], [])
        best = min(options, key=lambda j: abs(start[j] - n["start"]), default=None)
        if best is None or abs(start[best] - n["start"]) > 2e-3:
            return None
        options.remove(best)
        out.append(best)
    return np.asarray(out, np.int64)
