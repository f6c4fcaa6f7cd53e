"""`musicgpt info [CKPT]`: a checkpoint's config, module tree with parameter counts, and every tensor.

With --plot DIR it also writes PNGs: the relative-position embeddings of every layer, the cosine
similarity of the NOTE_ON token embeddings (which pitches the model treats alike; the NOTE_ON ids
come from the checkpoint's tokenizer, the model knows ids only), and the absolute position
embeddings when the model has them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from musicgpt.commands._checkpoint_arg import add_checkpoint_argument, checkpoint_of


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt info`."""
    add_checkpoint_argument(parser)
    parser.add_argument("--plot", metavar="DIR", type=Path, help="write embedding PNGs into DIR")


def run(args: argparse.Namespace) -> int:
    """Print the report; draw the plots when asked."""
    from safetensors import safe_open

    import numpy as np

    from musicgpt import checkpoint
    from musicgpt.model.gpt import load_model
    from musicgpt.model.inspect import embedding_arrays, module_tree, state_dict_summary
    from musicgpt.tokens.base import PerformanceEvents
    from musicgpt.viz.embeddings import plot_embeddings

    path = checkpoint_of(args)
    model = load_model(path)
    raw = checkpoint.read_config(path)
    tokenizer = checkpoint.load_tokenizer(path)
    cfg = model.config

    print(f"checkpoint  {path}")
    print(f"format      {raw['format']} v{raw['version']}")
    print("config      " + " ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))
    if tokenizer is not None:
        print(f"tokenizer   {tokenizer.type}, {tokenizer.vocab_size} tokens")
    else:
        print("tokenizer   none (no tokenizer.json)")
    if raw.get("meta"):
        print("meta        " + " ".join(f"{k}={v}" for k, v in raw["meta"].items()))
    states = sorted(p.stem for p in path.glob("*.json") if p.stem not in ("config", "tokenizer")
                    and checkpoint.has_state(path, p.stem))
    if states:
        print("states      " + ", ".join(states))

    print(f"\nmodules ({model.num_parameters():,} parameters; tied weights counted once)")
    for line in module_tree(model):
        print(line)

    with safe_open(str(path / checkpoint.WEIGHTS), framework="pt") as f:
        stored = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    print(f"\nstate dict ({len(model.state_dict())} keys; dtype as stored in {checkpoint.WEIGHTS})")
    print(state_dict_summary(model, stored))

    if args.plot is not None:
        note_on_ids = tokenizer.note_on(np.arange(128)) if isinstance(tokenizer, PerformanceEvents) else None
        if note_on_ids is None:
            print("musicgpt info: no tokenizer with NOTE_ON tokens in the checkpoint; NOTE_ON similarity not drawn",
                  file=sys.stderr)
        for p in plot_embeddings(embedding_arrays(model, note_on_ids), args.plot):
            print(f"wrote {p}")
    return 0
