"""Corpus preparation: a folder of MIDI files -> token shards per split + manifest.json (no torch).

The output folder's files are described (and read) in `musicgpt.corpus.shards`.

Documents are ordered by relative path within a split. Every file is hashed (sha256) first: exact
duplicates are skipped ("duplicate of ..."), and a re-run reuses the tokens of every file whose
content hash and `key` (tokenizer + reading options) match the previous manifest, tokenizing only
new or changed files. Files are tokenized in parallel over `jobs` processes (all cores by default)
with a progress bar. A file that cannot be read (not MIDI, truncated, empty, no notes, absurd tempo,
a dangling symlink, ...) is skipped and listed with its reason; the run goes on.

The output folder is one unit (musicgpt.corpus.shards): one run at a time holds it (a lock with its
pid), each file's result is kept as it arrives so that a killed run's successor reuses it
(musicgpt.corpus.workdir), and the shards, tokenizer.json and manifest are all written to temporary
names before any is renamed into place, the manifest last. A full disk leaves the previous folder as
it was and ends in one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musicgpt._io import atomic_files, ensure_folder, remove_leftovers
from musicgpt.corpus.recipes import DEFAULT_RATIOS, SPLITS, check_ratios, collect
from musicgpt.corpus.shards import (FORMAT, MANIFEST, TOKEN_DTYPE, VERSION, load_split, read_manifest, verify,
                                    write_split)
from musicgpt.corpus.workdir import PartialResults, PrepareLock
from musicgpt.errors import DatasetError, MusicGPTError
from musicgpt.music.midi import walk_midi
from musicgpt.tokens.base import TOKENIZER_FILE
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.tokens.registry import tokenizer_from_dict

@dataclass
class PrepareResult:
    """What a run did; `manifest` is what was written to manifest.json."""

    out_dir: Path
    manifest: dict
    tokenized: int = 0  # files tokenized in this run
    reused: int = 0  # files whose tokens came from the previous run
    seconds: float = 0.0
    skipped: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal."""
        m = self.manifest
        per_split = ", ".join(f"{s} {m['splits'][s]['n_docs']} docs / {m['splits'][s]['n_tokens']:,} tokens"
                              for s in SPLITS)
        lines = [f"prepared {len(m['sources'])} files with recipe '{m['recipe']}' into {self.out_dir} "
                 f"in {self.seconds:.1f} s ({self.tokenized} tokenized, {self.reused} reused)",
                 f"  {per_split}"]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s):")
            lines += [f"    {s['path']}: {s['reason']}" for s in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"    ... and {len(self.skipped) - 20} more (see {self.out_dir / MANIFEST})")
        return "\n".join(lines)


# ---- workers -------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(tokenizer_dict: dict, read_options: dict) -> None:
    _WORKER["tokenizer"] = tokenizer_from_dict(tokenizer_dict)
    _WORKER["read"] = read_options


def _tokenize(task: tuple[int, str, str]) -> tuple[int, int, np.ndarray | None, str | None]:
    """(index, n_notes, tokens or None, reason or None) for one file."""
    index, path, rel = task
    tokenizer = _WORKER["tokenizer"]
    try:
        encoding = tokenizer.encode(path, name=rel, **_WORKER["read"])
        ids = encoding.ids
        if not len(ids):
            return index, 0, None, "no tokens"
        return index, encoding.n_notes, np.asarray(ids, dtype=TOKEN_DTYPE), None
    except MusicGPTError as exc:
        reason = str(exc)
        return index, 0, None, reason[len(rel) + 2:] if reason.startswith(rel + ": ") else reason
    except Exception as exc:  # a bad file must never stop the run
        return index, 0, None, f"unexpected {type(exc).__name__}: {exc}"


def _run_tasks(tasks, tokenizer_dict, read_options, jobs, progress):
    """Yield _tokenize results, over a process pool when it pays."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="file", desc="tokenizing", disable=not progress or not tasks)
    try:
        if jobs <= 1 or len(tasks) < 8:
            _init_worker(tokenizer_dict, read_options)
            for task in tasks:
                yield _tokenize(task)
                bar.update()
            return
        import multiprocessing

        chunk = max(1, min(16, len(tasks) // (jobs * 8)))
        with multiprocessing.Pool(jobs, _init_worker, (tokenizer_dict, read_options)) as pool:
            for result in pool.imap_unordered(_tokenize, tasks, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()


# ---- the run -------------------------------------------------------------------------------------
def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _previous(out_dir: Path, key: str) -> dict[str, tuple[np.ndarray | None, int, str | None]]:
    """sha256 -> (tokens or None, n_notes, skip reason) from a previous complete run with the same key."""
    try:
        manifest = read_manifest(out_dir)
        if manifest.get("key") != key or manifest.get("version") != VERSION:
            return {}
        verify(out_dir, manifest)  # shards that disagree with the manifest: start afresh
    except DatasetError:
        return {}
    cache: dict = {}
    try:
        shards = {split: load_split(out_dir, split) for split in SPLITS}
        for source in manifest["sources"]:
            tokens, offsets = shards[source["split"]]
            doc = source["doc"]
            piece = np.array(tokens[offsets[doc]:offsets[doc + 1]])
            if len(piece) != source["n_tokens"]:
                return {}
            cache[source["sha256"]] = (piece, source["n_notes"], None)
    except (DatasetError, KeyError, IndexError, TypeError):
        return {}
    for skipped in manifest.get("skipped", []):
        if skipped.get("sha256") and not skipped["reason"].startswith("duplicate of"):
            cache.setdefault(skipped["sha256"], (None, 0, skipped["reason"]))
    return cache


def prepare(
    source_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    recipe: str | None = None,
    ratios=DEFAULT_RATIOS,
    tokenizer=None,
    jobs: int | None = None,
    sustain: bool = True,
    force: bool = False,
    progress: bool = True,
    composer_from: str = "metadata",
) -> PrepareResult:
    """Tokenize a corpus folder into OUT (see the module docstring); bad files are skipped, not fatal."""
    began = time.perf_counter()
    ratios = check_ratios(ratios)
    tokenizer = tokenizer or PerformanceTokenizer()
    if tokenizer.vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise DatasetError(f"tokenizer vocab_size {tokenizer.vocab_size} does not fit the uint16 shards")
    name, sources = collect(source_dir, recipe, ratios, composer_from)
    if not sources:
        raise DatasetError(f"{source_dir}: no MIDI files found for recipe '{name}'")
    root = Path(source_dir).resolve()
    out_dir = ensure_folder(out_dir, str(out_dir), DatasetError)
    jobs = max(1, jobs or os.cpu_count() or 1)
    read_options = {"sustain": bool(sustain)}
    tokenizer_dict = tokenizer.to_dict()
    key = hashlib.sha256(json.dumps({"tokenizer": tokenizer_dict, "read": read_options},
                                    sort_keys=True).encode()).hexdigest()[:16]
    with PrepareLock(out_dir):
        remove_leftovers(out_dir)  # temporaries of a killed run (we hold the folder now)
        partial = PartialResults(out_dir, key)
        PartialResults.remove_stale(out_dir, key)
        if force:
            partial.remove()
        cache = {} if force else {**_previous(out_dir, key), **partial.load()}

        # Hash every file: duplicates out, cached files reused, the rest tokenized.
        hashes = [_sha256(s.path) for s in sources]
        skipped: list[dict] = [{"path": path.relative_to(root).as_posix(), "sha256": None, "reason": reason}
                               for path, reason in walk_midi(root)[1]]
        first_of: dict[str, str] = {}
        results: dict[int, tuple[np.ndarray, int]] = {}
        tasks = []
        reused = 0
        for i, (source, sha) in enumerate(zip(sources, hashes)):
            if sha is None:
                reason = "no such file" if not source.path.exists() else "cannot read the file"
                skipped.append({"path": source.rel, "sha256": None, "reason": reason})
            elif sha in first_of:
                skipped.append({"path": source.rel, "sha256": sha, "reason": f"duplicate of {first_of[sha]}"})
            else:
                first_of[sha] = source.rel
                if sha in cache:
                    tokens, n_notes, reason = cache[sha]
                    if reason is not None:
                        skipped.append({"path": source.rel, "sha256": sha, "reason": reason})
                    else:
                        results[i] = (tokens, n_notes)
                        reused += 1
                else:
                    tasks.append((i, str(source.path), source.rel))

        for i, n_notes, tokens, reason in _run_tasks(tasks, tokenizer_dict, read_options, jobs, progress):
            partial.add(hashes[i], tokens, n_notes, reason)  # kept if this run is killed
            if reason is not None:
                skipped.append({"path": sources[i].rel, "sha256": hashes[i], "reason": reason})
            else:
                results[i] = (tokens, n_notes)

        skipped.sort(key=lambda s: s["path"])
        manifest = {
            "format": FORMAT, "version": VERSION, "recipe": name, "source_dir": str(root), "ratios": list(ratios),
            "key": key, "read_options": read_options, "tokenizer": tokenizer_dict, "splits": {}, "sources": [],
            "skipped": skipped, "shards": {},
        }
        with atomic_files() as group:  # nothing is renamed into place until every file is written
            for split in SPLITS:
                members = [i for i in sorted(results) if sources[i].split == split]
                offsets, record = write_split(group, out_dir, split, [results[i][0] for i in members])
                lengths = np.diff(offsets)
                for doc, i in enumerate(members):
                    manifest["sources"].append({"path": sources[i].rel, "sha256": hashes[i], "split": split,
                                                "group": sources[i].group, "doc": doc,
                                                "n_notes": int(results[i][1]), "n_tokens": int(lengths[doc]),
                                                **({"composer": sources[i].composer} if sources[i].composer else {})})
                manifest["splits"][split] = {"n_docs": len(members), "n_tokens": int(offsets[-1]),
                                             "n_notes": int(sum(results[i][1] for i in members))}
                manifest["shards"].update(record)
            group.write(out_dir / TOKENIZER_FILE, tokenizer.save)
            group.write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        partial.remove()
    return PrepareResult(out_dir, manifest, tokenized=len(tasks), reused=reused,
                         seconds=time.perf_counter() - began, skipped=skipped)
