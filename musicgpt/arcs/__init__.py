"""Attention arcs over notes: which earlier notes each note attended to, per layer and head.

    capture.py  from the model (torch): record attention rows while generating or teacher-forcing a
                piece, aggregate them to notes, `attend(model, ids, tokenizer)` -> the arcs.json dict
    measures.py what an arc measures (torch): attention, norm, rollout, influence (`measure_stream`,
                `note_influence`, `remeasure`); influence.py hides a past note and measures the NLL rise;
                forward.py the model's forward pass layer by layer (key masks, prefix reuse)
    format.py   arcs.json (no torch): `build_arcs`, `validate_arcs`, `read_arcs`, `write_arcs`
    select.py   which arcs to draw (no torch): `select_arcs`, `filter_arcs`, `arcs_by_query`
    primer.py   which notes are the primer (no torch): `mark_primer_notes`

The format's names are imported here directly; the capture names load torch on first use, so
`from musicgpt.arcs import read_arcs` stays torch-free.
"""

from musicgpt._lazy import lazy_getattr

from musicgpt.arcs.format import ArcsFormatError, build_arcs, read_arcs, validate_arcs, write_arcs
from musicgpt.arcs.primer import mark_primer_notes
from musicgpt.arcs.select import select_arcs

# name -> (module, attribute), imported when first asked for
_LAZY = {
    "ArcsConfig": ("musicgpt.arcs.capture", "ArcsConfig"),
    "AttentionRecorder": ("musicgpt.arcs.capture", "AttentionRecorder"),
    "NoteArcs": ("musicgpt.arcs.capture", "NoteArcs"),
    "aggregate": ("musicgpt.arcs.capture", "aggregate"),
    "arcs_document": ("musicgpt.arcs.capture", "arcs_document"),
    "attend": ("musicgpt.arcs.capture", "attend"),
    "note_arcs": ("musicgpt.arcs.capture", "note_arcs"),
    "note_nll": ("musicgpt.arcs.capture", "note_nll"),
    "query_rows": ("musicgpt.arcs.capture", "query_rows"),
    "teacher_force": ("musicgpt.arcs.capture", "teacher_force"),
    "token_owners": ("musicgpt.arcs.capture", "token_owners"),
}

__all__ = ["ArcsFormatError", "build_arcs", "mark_primer_notes", "read_arcs", "select_arcs", "validate_arcs",
           "write_arcs", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
