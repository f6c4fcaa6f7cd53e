"""Analyses of a trained model over pieces (torch): what its attention heads do.

    heads.py  the head atlas: per layer and head, the attention share on the previous token, the first
              token (BOS), itself, earlier notes of the same pitch and of the same pitch class; mean
              attention distance in tokens and seconds; entropy; a name per head by explicit thresholds
              (`head_atlas(model, tokenizer, pieces)` -> the heads.json dict; `musicgpt heads`)
    importance.py  head importance: the NLL rise over pieces when each head's output is zeroed
              (`musicgpt heads --importance`)

The heads.json file and its pictures are plain data and live in `musicgpt.viz.heads` (no torch). Only
the command line and the package facade import this room.
"""

from musicgpt._lazy import lazy_getattr

MAX_TOKENS = 2048  # per piece, BOS included: about a minute for the bundled model on examples/ (2 cores)
PATTERN_TOKENS = 64  # the excerpt of the first piece drawn in the pattern grid (tokens 0 .. 63)

# name -> (module, attribute), imported when first asked for (torch)
_LAZY = {
    "head_atlas": ("musicgpt.analysis.heads", "head_atlas"),
    "name_head": ("musicgpt.analysis.heads", "name_head"),
    "HeadMeasures": ("musicgpt.analysis.heads", "HeadMeasures"),
    "THRESHOLDS": ("musicgpt.analysis.heads", "THRESHOLDS"),
    "head_importance": ("musicgpt.analysis.importance", "head_importance"),
}

__all__ = ["MAX_TOKENS", "PATTERN_TOKENS", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
