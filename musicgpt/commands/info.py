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

    from musicgpt import checkpoint
    from musicgpt.model.gpt import load_model

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
    keys = list(model.state_dict())  # the model's own order
    print(f"\nstate dict ({len(keys)} keys; dtype as stored in {checkpoint.WEIGHTS})")
    width = max(map(len, keys))
    for k in keys:
        if k in stored:
            shape, dtype = stored[k]
            print(f"  {k:<{width}}  {str(shape):<18} {dtype}")
        else:
            print(f"  {k:<{width}}  {str(list(model.state_dict()[k].shape)):<18} tied to tok_emb.weight (not stored)")

    if args.plot is not None:
        for p in plot(model, tokenizer, args.plot):
            print(p)
    return 0


def module_tree(model) -> list[str]:
    """Lines 'name (Class)  count', indented by depth; parameters held directly by a module get a line too."""
    seen_total: set[int] = set()
    lines: list[str] = []

    def count(module) -> int:
        ids: dict[int, int] = {}
        for p in module.parameters():
            ids[id(p)] = p.numel()
        return sum(ids.values())

    def walk(name: str, module, depth: int, prefix: str) -> None:
        tied = ""
        own = [id(p) for p in module.parameters(recurse=False)]
        if own and all(i in seen_total for i in own):
            tied = "  (tied)"
        seen_total.update(own)
        lines.append(f"{'  ' * depth}{name} ({type(module).__name__}){'':<2}{count(module):>12,}{tied}")
        for pname, p in module.named_parameters(recurse=False):
            if not list(module.children()):
                continue  # leaf modules (Linear, LayerNorm …): their weight/bias are in the tensor list
            lines.append(f"{'  ' * (depth + 1)}{pname} (parameter {list(p.shape)}){'':<2}{p.numel():>12,}")
        for child_name, child in module.named_children():
            walk(child_name, child, depth + 1, f"{prefix}{child_name}.")

    walk("model", model, 0, "")
    width = max(len(line.rsplit("  ", 1)[0]) for line in lines)
    return [_align(line, width) for line in lines]


def _align(line: str, width: int) -> str:
    label, _, rest = line.partition(")  ")
    return f"{label + ')':<{width}}{rest}"


def plot(model, tokenizer, out_dir: Path) -> list[Path]:
    """Write the embedding PNGs; returns their paths."""
    import numpy as np

    from musicgpt.viz.embeddings import note_on_similarity_png, position_similarity_png, relative_embeddings_png

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    cfg = model.config
    if cfg.position in ("relative", "both"):
        for layer in range(cfg.n_layer):
            emb = model.relative_embeddings(layer).float().numpy()  # (H, R, D), ascending distance
            written.append(relative_embeddings_png(emb, layer, out_dir / f"relative_embeddings_layer{layer}.png"))
    if cfg.position in ("absolute", "both"):
        written.append(position_similarity_png(model.pos_emb.weight.detach().float().numpy(),
                                               out_dir / "position_embedding_similarity.png"))
    from musicgpt.tokens.base import PerformanceEvents

    if not isinstance(tokenizer, PerformanceEvents):
        print("musicgpt info: no tokenizer with NOTE_ON tokens in the checkpoint; NOTE_ON similarity not drawn",
              file=sys.stderr)
        return written
    pitches = np.arange(128)
    ids = np.asarray(tokenizer.note_on(pitches))
    emb = model.tok_emb.weight.detach().float().numpy()[ids]  # (128, C)
    written.append(note_on_similarity_png(emb, pitches, out_dir / "note_on_similarity.png"))
    return written
