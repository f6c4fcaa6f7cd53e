"""Corpora (no torch): which files make a corpus and its splits, tokenized into shards, read back.

    recipes.py   asap, maestro, pop909, giantmidi, folder: files, groups (pieces) and splits by group
    prepare.py   `prepare(source, out)`: hash, deduplicate, tokenize in parallel, write shards + manifest
    shards.py    the prepared folder's files: `open_split(out, split) -> Split`, `read_manifest(out)`
"""

from musicgpt.corpus.prepare import PrepareResult, prepare
from musicgpt.corpus.recipes import RECIPES, SPLITS, Source, collect
from musicgpt.corpus.shards import Split, load_split, open_split, read_manifest

__all__ = ["RECIPES", "SPLITS", "PrepareResult", "Source", "Split", "collect", "load_split", "open_split", "prepare",
           "read_manifest"]
