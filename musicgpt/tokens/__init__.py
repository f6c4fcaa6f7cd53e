"""Tokens (no torch): notes <-> token ids, the grammar of valid sequences, and augmentation on ids.

    base.py         the `Tokenizer` interface, its optional capabilities, `Encoding`, tokenizer.json
    performance.py  `PerformanceTokenizer`: NOTE_ON / NOTE_OFF / TIME_SHIFT / VELOCITY (the default)
    grammar.py      `GrammarState`: which performance token may come next
    miditok.py      miditok's MIDILike, REMI and TSD behind the same interface
    registry.py     `load_tokenizer(path)`: any tokenizer.json, whatever its type
    augment.py      transposition and time stretch on token ids (training crops)
    __main__.py     `python -m musicgpt.tokens [FILE ...]`: the vocabulary layout, or files in brief
"""

from musicgpt.tokens.base import Encoding, PerformanceEvents, Tokenizer
from musicgpt.tokens.grammar import GrammarState
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.tokens.registry import load_tokenizer, tokenizer_from_dict

__all__ = ["Encoding", "GrammarState", "PerformanceEvents", "PerformanceTokenizer", "Tokenizer", "load_tokenizer",
           "tokenizer_from_dict"]
