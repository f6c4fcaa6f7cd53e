"""The bundled model's NLL figures: per corpus, split and context with `evaluate_checkpoint` (what `musicgpt
evaluate` runs), per piece with `score`, and the subsets of a quick check (--max-docs).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from musicgpt import load_checkpoint
from musicgpt._io import atomic_files
from musicgpt.corpus.shards import MANIFEST, Split, open_split, read_manifest, write_split
from musicgpt.device import autocast_dtype
from musicgpt.errors import ConfigError, MusicGPTError
from musicgpt.training.data import Specials, windows
from musicgpt.training.evaluate import evaluate_checkpoint, report, score


def pieces_of(data_dir: Path, split: str) -> dict[str, list[int]]:
    """Document indices of each piece (the manifest's group: composer|title) in one split."""
    groups: dict[str, list[int]] = defaultdict(list)
    for source in read_manifest(data_dir)["sources"]:
        if source["split"] == split:
            groups[source["group"]].append(int(source["doc"]))
    return dict(sorted(groups.items()))


def subset_split(split: Split, docs: list[int]) -> Split:
    """An in-memory Split of some documents of `split`, in the given order."""
    parts = [np.asarray(split.doc(d)) for d in docs]
    offsets = np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64)
    return Split(np.concatenate(parts) if parts else np.zeros(0, np.uint16), offsets)


def spread_docs(groups: dict[str, list[int]], limit: int) -> list[int]:
    """Up to `limit` documents, taking one piece's next performance after another (round robin)."""
    chosen, queues = [], [list(v) for v in groups.values()]
    while len(chosen) < limit and any(queues):
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    return sorted(chosen)


def make_subset_dir(data_dir: Path, out_dir: Path, max_docs: int) -> Path:
    """A prepared directory holding up to `max_docs` documents per split of `data_dir` (spread over pieces)."""
    manifest = read_manifest(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources, splits, shards = [], {}, {}
    with atomic_files() as group:  # shards, tokenizer, then the manifest that lists them (with their checksums)
        for split in ("train", "valid", "test"):
            try:
                docs = open_split(data_dir, split)
            except MusicGPTError:
                continue
            keep = spread_docs(pieces_of(data_dir, split), max_docs)
            offsets, record = write_split(group, out_dir, split, [np.asarray(docs.doc(d)) for d in keep])
            shards.update(record)
            renumber = {d: i for i, d in enumerate(keep)}
            for s in manifest["sources"]:
                if s["split"] == split and s["doc"] in renumber:
                    sources.append({**s, "doc": renumber[s["doc"]]})
            splits[split] = {"n_docs": len(keep), "n_tokens": int(offsets[-1])}
        group.write(out_dir / "tokenizer.json", lambda tmp: shutil.copyfile(data_dir / "tokenizer.json", tmp))
        group.write_text(out_dir / MANIFEST, json.dumps({**manifest, "sources": sources, "splits": splits,
                                                         "shards": shards, "subset_of": str(data_dir)}, indent=1))
    return out_dir


def evaluate(ckpt: Path, data_dir: Path, split: str, context: int, args) -> dict[str, Any]:
    """`evaluate_checkpoint` figures (as `musicgpt evaluate --json` writes them) plus wall seconds."""
    t0 = time.perf_counter()
    try:
        result = evaluate_checkpoint(ckpt, [data_dir], split=split, context=context,
                                     batch_size=max(1, args.batch_tokens // context), device="cpu",
                                     precision=args.precision, progress=not args.quiet)
    except ConfigError as exc:  # e.g. an absolute-position model asked for a longer context
        return {"not_applicable": str(exc)}
    figures = result.to_dict()
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  {split} L={context}: nll {result.nll:.4f} ({result.n_tokens:,} events, {figures['seconds']} s)",
          file=sys.stderr)
    return figures


def per_piece(ckpt: Path, data_dir: Path, split: str, context: int, args) -> dict[str, Any]:
    """NLL per piece (composer + title) with `musicgpt.training.evaluate.score`, the macro average, and the pooled figure."""
    model, tokenizer = load_checkpoint(ckpt)
    docs = open_split(data_dir, split)
    specials = Specials(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    type_of = np.maximum(tokenizer.token_type(np.arange(model.config.vocab_size)), 0)
    amp = autocast_dtype(args.precision, torch.device("cpu"))
    batch = max(1, args.batch_tokens // context)
    pieces, pooled = [], None
    t0 = time.perf_counter()
    for group, doc_ids in pieces_of(data_dir, split).items():
        totals = score(model, windows(subset_split(docs, doc_ids), context, context, specials), context, batch,
                       "cpu", amp, type_of)
        composer, _, title = group.partition("|")
        pieces.append({"piece": group, "composer": composer, "title": title.replace("_", " "),
                       "performances": len(doc_ids), "events": totals.count, "nll": totals.nll_sum / totals.count,
                       "accuracy": totals.correct / totals.count})
        if pooled is None:
            pooled = totals
        else:
            pooled.nll_sum += totals.nll_sum
            pooled.count += totals.count
            pooled.correct += totals.correct
            pooled.type_nll, pooled.type_count = pooled.type_nll + totals.type_nll, pooled.type_count + totals.type_count
            pooled.type_correct = pooled.type_correct + totals.type_correct
        print(f"  {group}: nll {pieces[-1]['nll']:.4f} ({len(doc_ids)} performances)", file=sys.stderr)
    pooled_report = report(pooled, tokenizer.type_names, checkpoint=str(ckpt), data=str(data_dir), split=split,
                           context=context, stride=context, trained_context=model.config.n_ctx,
                           n_docs=docs.n_docs, n_tokens=docs.n_tokens)
    pieces.sort(key=lambda p: -p["events"])
    largest = pieces[0]
    rest = [p for p in pieces if p is not largest]
    return {"split": split, "context": context, "pieces": pieces,
            "macro_nll": float(np.mean([p["nll"] for p in pieces])),
            "pooled_nll": pooled_report.nll,
            "largest_piece": {"piece": largest["piece"], "share_of_events": largest["events"] / pooled.count},
            "pooled_nll_without_largest": (sum(p["nll"] * p["events"] for p in rest) / sum(p["events"] for p in rest)
                                           if rest else None),
            "seconds": round(time.perf_counter() - t0, 1)}


def evaluate_all(ckpt: Path, data: Path, pop909: Path | None, contexts: list[int], args,
                 splits=("test", "valid")) -> dict[str, Any]:
    """Every (corpus, split, context) figure of one checkpoint, keyed 'asap/test/1024'."""
    out = {}
    for split in splits:
        for context in contexts:
            out[f"asap/{split}/{context}"] = evaluate(ckpt, data, split, context, args)
    if pop909 is not None:
        for context in contexts:
            out[f"pop909/test/{context}"] = evaluate(ckpt, pop909, "test", context, args)
    return out
