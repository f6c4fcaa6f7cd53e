"""musicgpt: piano performances as event tokens, a GPT-2 with relative attention, and attention arcs.

The package is laid out by pipeline stage, one room a folder (music, tokens, corpus, model, training,
generation, arcs, viz, metrics, analysis, studio, commands); docs/design.md draws the tree and its rules.

The names below are the public API; they load on first use, so `import musicgpt` is instant and
`import musicgpt.music` never loads torch.
"""

import sys

from musicgpt._lazy import lazy_getattr

__version__ = "0.2.0"  # read by pyproject.toml, the CLI, the viewer and the studio

# public name -> (module, attribute), imported when first asked for
_LAZY = {
    "generate": ("musicgpt.generation.loop", "generate"),
    "infill": ("musicgpt.generation.infilling", "infill"),
    "attend": ("musicgpt.arcs.capture", "attend"),
    "load_model": ("musicgpt.model.gpt", "load_model"),
    "save_model": ("musicgpt.model.gpt", "save_model"),
    "load_checkpoint": ("musicgpt.model.gpt", "load_checkpoint"),
    "MusicGPT": ("musicgpt.model.gpt", "MusicGPT"),
    "GPTConfig": ("musicgpt.model.config", "GPTConfig"),
    "PerformanceTokenizer": ("musicgpt.tokens.performance", "PerformanceTokenizer"),
    "load_tokenizer": ("musicgpt.tokens.registry", "load_tokenizer"),
    "Notes": ("musicgpt.music.notes", "Notes"),
    "read_midi": ("musicgpt.music.midi", "read_midi"),
    "write_midi": ("musicgpt.music.midi", "write_midi"),
    "read_notes": ("musicgpt.music.scores", "read_notes"),
    "prepare": ("musicgpt.corpus.prepare", "prepare"),
    "load_config": ("musicgpt.training.config", "load_config"),
    "train": ("musicgpt.training.loop", "train"),
    "evaluate_checkpoint": ("musicgpt.training.evaluate", "evaluate_checkpoint"),
    "pipeline": ("musicgpt.generation.pipeline", "pipeline"),
    "set_seed": ("musicgpt.generation.pipeline", "set_seed"),
    "state_dict_summary": ("musicgpt.model.inspect", "state_dict_summary"),
    "head_atlas": ("musicgpt.analysis.heads", "head_atlas"),
    "show": ("musicgpt.viz.inline", "show"),
    "inline_html": ("musicgpt.viz.inline", "inline_html"),
}
# Shown inline by `inline_html` in IPython (a notebook); named, not imported, so `import musicgpt` stays instant
_INLINE = (("musicgpt.generation.sample", "Sample"), ("musicgpt.arcs.format", "ArcsDocument"))

__all__ = ["__version__", "load_ipython_extension", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(shell) -> None:
    """`%load_ext musicgpt`, run by `import musicgpt` in IPython: samples and arcs documents show themselves inline
    (a head atlas has its own `_repr_html_`)."""
    formatter = shell.display_formatter.formatters["text/html"]
    for module, name in _INLINE:
        formatter.for_type_by_name(module, name, lambda x: __getattr__("inline_html")(x))


if getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)() is not None:
    load_ipython_extension(sys.modules["IPython"].get_ipython())
