"""Old module paths of musicgpt 0.1.0 (a flat package), kept importable for one release with a DeprecationWarning.

`import musicgpt.midi` or `from musicgpt.tokenizer import PerformanceTokenizer` still work: a finder on
sys.meta_path answers the old name with the module at its new place (the same module object, so
monkeypatching either name patches both) and warns once per name. The old paths go away in 0.2.
`musicgpt.model` and `musicgpt.arcs` kept their names (they are packages now and export the same
names); `musicgpt.generation` is a package whose `generate` is a module: use `musicgpt.generate`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

# old dotted name -> new dotted name
MOVED = {
    "musicgpt.notes": "musicgpt.music.notes",
    "musicgpt.midi": "musicgpt.music.midi",
    "musicgpt.audio": "musicgpt.music.audio",
    "musicgpt.tokenizer": "musicgpt.tokens.performance",
    "musicgpt.miditok_backend": "musicgpt.tokens.miditok",
    "musicgpt.augment": "musicgpt.tokens.augment",
    "musicgpt.recipes": "musicgpt.corpus.recipes",
    "musicgpt.prepare": "musicgpt.corpus.prepare",
    "musicgpt.attention": "musicgpt.model.attention",
    "musicgpt.kv_cache": "musicgpt.model.kv_cache",
    "musicgpt.decoder": "musicgpt.model.decode_step",
    "musicgpt.hugepages": "musicgpt.model._hugepages",
    "musicgpt._relative_kernel": "musicgpt.model._relative_kernel",
    "musicgpt.config": "musicgpt.training.config",
    "musicgpt.data": "musicgpt.training.data",
    "musicgpt.train": "musicgpt.training.loop",
    "musicgpt.evaluate": "musicgpt.training.evaluate",
    "musicgpt.trainlog": "musicgpt.training.log",
    "musicgpt.sampling": "musicgpt.generation.sampling",
    "musicgpt.primer": "musicgpt.generation.primer",
    "musicgpt.arcs_format": "musicgpt.arcs.format",
    "musicgpt.embedding_plots": "musicgpt.viz.embeddings",
    "musicgpt.host": "musicgpt._cpuinfo",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and loads it as the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old name goes away in musicgpt 0.2", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the module at its new place is already executed


def install() -> None:
    """Put the finder on sys.meta_path (once)."""
    if not any(isinstance(f, _MovedModule) for f in sys.meta_path):
        sys.meta_path.append(_MovedModule())
