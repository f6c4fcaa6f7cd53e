"""Old module paths of musicgpt 0.1.0 (a flat package), kept importable for one release with a DeprecationWarning.

`import musicgpt.midi`, `from musicgpt.tokenizer import PerformanceTokenizer, load_tokenizer` and
`python -m musicgpt.tokenizer` still work. A finder on sys.meta_path answers an old name with a
stand-in module whose attributes are looked up, on first use, in the modules the old one was split
into (in order), and warns once per old name. Monkeypatch the new place, not the stand-in. The old
paths go away in 0.2. `musicgpt.model`, `musicgpt.arcs`, `musicgpt.generation` and `musicgpt.viz`
kept their names (they are packages now and export the old names); see CHANGELOG.md for the rest.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

# old dotted name -> the modules its names now live in, the main one first
MOVED: dict[str, tuple[str, ...]] = {
    "musicgpt.notes": ("musicgpt.music.notes",),
    "musicgpt.midi": ("musicgpt.music.midi",),
    "musicgpt.audio": ("musicgpt.music.audio",),
    "musicgpt.tokenizer": ("musicgpt.tokens.performance", "musicgpt.tokens.base", "musicgpt.tokens.grammar",
                           "musicgpt.tokens.registry", "musicgpt.tokens.__main__"),
    "musicgpt.miditok_backend": ("musicgpt.tokens.miditok", "musicgpt.tokens.base"),
    "musicgpt.augment": ("musicgpt.tokens.augment",),
    "musicgpt.recipes": ("musicgpt.corpus.recipes", "musicgpt.music.midi"),
    "musicgpt.prepare": ("musicgpt.corpus.prepare", "musicgpt.corpus.shards"),
    "musicgpt.attention": ("musicgpt.model.attention",),
    "musicgpt.kv_cache": ("musicgpt.model.kv_cache",),
    "musicgpt.decoder": ("musicgpt.model.decode_step",),
    "musicgpt.hugepages": ("musicgpt.model._hugepages",),
    "musicgpt._relative_kernel": ("musicgpt.model._relative_kernel",),
    "musicgpt.config": ("musicgpt.training.config",),
    "musicgpt.data": ("musicgpt.training.data", "musicgpt.corpus.shards"),
    "musicgpt.train": ("musicgpt.training.loop", "musicgpt.training.rundir", "musicgpt.training.optim",
                       "musicgpt.training.data", "musicgpt.training.signals", "musicgpt.device"),
    "musicgpt.evaluate": ("musicgpt.training.evaluate",),
    "musicgpt.trainlog": ("musicgpt.training.log", "musicgpt.viz.curves"),
    "musicgpt.sampling": ("musicgpt.generation.sampling", "musicgpt.generation.constraints"),
    "musicgpt.primer": ("musicgpt.generation.primer", "musicgpt.music.scores", "musicgpt.music.midi"),
    "musicgpt.arcs_format": ("musicgpt.arcs.format", "musicgpt.arcs.select"),
    "musicgpt.embedding_plots": ("musicgpt.viz.embeddings",),
    "musicgpt.host": ("musicgpt._cpuinfo",),
}
# names that were replaced rather than moved: old "module.name" -> the name that replaced it, in its module
RENAMED = {
    "musicgpt.tokenizer.SavedTokenizer": ("musicgpt.tokens.base", "Tokenizer"),
    "musicgpt.miditok_backend.SavedTokenizer": ("musicgpt.tokens.base", "Tokenizer"),
    "musicgpt.sampling.shift_seconds_per_id": ("musicgpt._moved", "shift_seconds_per_id"),
}
RUNNABLE = {"musicgpt.tokenizer": "musicgpt.tokens.__main__"}  # python -m OLD runs NEW


def shift_seconds_per_id(tokenizer):
    """0.1.0's sampling.shift_seconds_per_id: `tokenizer.seconds_per_id()`, zeros without performance events."""
    import numpy as np

    from musicgpt.tokens.base import PerformanceEvents

    return tokenizer.seconds_per_id() if isinstance(tokenizer, PerformanceEvents) else np.zeros(tokenizer.vocab_size)


class _StandIn(types.ModuleType):
    """An old module name: attributes come from the modules it was split into."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        renamed = RENAMED.get(f"{self.__name__}.{name}")
        if renamed is not None:
            return getattr(importlib.import_module(renamed[0]), renamed[1])
        for source in MOVED[self.__name__]:
            module = importlib.import_module(source)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} (now {', '.join(MOVED[self.__name__])}) has no attribute "
                             f"{name!r}")

    def __dir__(self):
        return sorted({n for source in MOVED[self.__name__] for n in dir(importlib.import_module(source))})


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as a stand-in for the modules at its new places."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, origin=f"moved to {MOVED[fullname][0]}")

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {' and '.join(MOVED[spec.name])}; the old name goes away in "
                      "musicgpt 0.2", DeprecationWarning, stacklevel=2)
        return _StandIn(spec.name, f"Moved to {', '.join(MOVED[spec.name])} (deprecated name).")

    def exec_module(self, module):
        pass  # its attributes are found on use

    def get_code(self, fullname):
        """The code `python -m OLD` runs: the new module's."""
        target = RUNNABLE.get(fullname)
        if target is None:
            raise ImportError(f"{fullname} cannot be run with -m (it moved to {MOVED[fullname][0]})")
        print(f"note: python -m {fullname} is now python -m {target.removesuffix('.__main__')} (the old name goes away "
              "in musicgpt 0.2)", file=sys.stderr)  # a command line: a warning would be filtered out
        return importlib.util.find_spec(target).loader.get_code(target)


def install() -> None:
    """Put the finder on sys.meta_path (once)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
