"""Attention arcs over notes: which earlier notes each note attended to, per layer and head.

    capture.py  from the model (torch): record attention rows while generating or teacher-forcing a
                piece, aggregate them to notes, `attend(model, ids, tokenizer)` -> the arcs.json dict
    format.py   arcs.json (no torch): `build_arcs`, `validate_arcs`, `read_arcs`, `write_arcs`, `select_arcs`

The format's names are imported here directly; the capture names load torch on first use, so
`from musicgpt.arcs import read_arcs` stays torch-free.
"""

import importlib

from musicgpt.arcs.format import ArcsFormatError, build_arcs, read_arcs, select_arcs, validate_arcs, write_arcs

_CAPTURE = ("ArcsConfig", "AttentionRecorder", "NoteArcs", "aggregate", "arcs_document", "attend", "note_arcs",
            "query_rows", "teacher_force", "token_owners")

__all__ = ["ArcsFormatError", "build_arcs", "read_arcs", "select_arcs", "validate_arcs", "write_arcs", *_CAPTURE]


def __getattr__(name: str):
    if name in _CAPTURE:
        return getattr(importlib.import_module("musicgpt.arcs.capture"), name)
    raise AttributeError(f"module 'musicgpt.arcs' has no attribute {name!r}")
