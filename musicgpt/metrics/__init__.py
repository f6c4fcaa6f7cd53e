"""Musical statistics per piece and set-against-set comparison (mgeval / MusPy style; no torch).

    from musicgpt.metrics import piece_features, compare_sets
    piece_features(notes)            # {"pitch_class_histogram": array(12), "pitch_range": 48.0, ..., "key": "C major"}
    compare_sets(generated, reference)  # {feature: {"overlap": ..., "kl": ..., "inter": {"mean", "std"}, ...}}
    CopyIndex(training).longest_run(notes)  # CopyMatch: the longest run of notes copied from a training piece
    check_copies(folder_notes(gen_dir), prepared_training_set(prep_dir))  # CopyCheck (folder_notes: metrics.folder)
"""

from musicgpt.metrics.copies import (CopyIndex, CopyMatch, TrainingSet, check_copies, midi_training_set,
                                     prepared_training_set)
from musicgpt.metrics.features import BIN_LABELS, FEATURES, EmptyPieceError, Feature, piece_features
from musicgpt.metrics.key import KeyAnalysis, analyze_key
from musicgpt.metrics.sets import TooFewPiecesError, compare_features, compare_sets

__all__ = [
    "BIN_LABELS",
    "CopyIndex",
    "CopyMatch",
    "FEATURES",
    "EmptyPieceError",
    "Feature",
    "KeyAnalysis",
    "TooFewPiecesError",
    "TrainingSet",
    "analyze_key",
    "check_copies",
    "compare_features",
    "compare_sets",
    "midi_training_set",
    "piece_features",
    "prepared_training_set",
]
