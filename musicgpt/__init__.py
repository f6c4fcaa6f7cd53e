"""musicgpt: piano performances as event tokens, a GPT-2 with relative attention, and attention arcs."""

from musicgpt._version import __version__

# Heavy names (torch) load on first use, so `import musicgpt.music.midi` stays torch-free.
_LAZY = {
    "generate": ("musicgpt.generation.generate", "generate"),
    "GPTConfig": ("musicgpt.model.gpt", "GPTConfig"),
    "MusicGPT": ("musicgpt.model.gpt", "MusicGPT"),
    "PerformanceTokenizer": ("musicgpt.tokens.performance", "PerformanceTokenizer"),
    "Notes": ("musicgpt.music.midi", "Notes"),
    "read_midi": ("musicgpt.music.midi", "read_midi"),
    "write_midi": ("musicgpt.music.midi", "write_midi"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'musicgpt' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
