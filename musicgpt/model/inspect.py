"""What a model is made of, for people: its module tree with parameter counts, its tensors, its embeddings.

    print("\n".join(module_tree(model)))
    print(state_dict_summary(model))                 # name, shape, dtype; tied weights named
    arrays = embedding_arrays(model, note_on_ids=tokenizer.note_on(range(128)))
    musicgpt.viz.embeddings.plot_embeddings(arrays, "plots/")   # the PNGs `musicgpt info --plot` draws

The arrays are numpy (float32), so the pictures are drawn without torch (musicgpt.viz).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

__all__ = ["module_tree", "state_dict_rows", "state_dict_summary", "embedding_arrays"]


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


def state_dict_rows(model: nn.Module, stored: dict[str, tuple[list[int], str]] | None = None) -> list[dict[str, Any]]:
    """One row per state-dict tensor, in the model's order: name, shape, dtype (as `stored` in a checkpoint file
    when given), and for a tensor that is another one under a second name, which."""
    state = model.state_dict()
    first_name: dict[int, str] = {}
    rows = []
    for name, tensor in state.items():
        tied = first_name.setdefault(tensor.data_ptr(), name)
        shape, dtype = (stored or {}).get(name, (list(tensor.shape), str(tensor.dtype).removeprefix("torch.")))
        rows.append({"name": name, "shape": list(shape), "dtype": dtype, "numel": int(tensor.numel()),
                     "tied_to": tied if tied != name else None})
    return rows


def state_dict_summary(model: nn.Module, stored: dict[str, tuple[list[int], str]] | None = None) -> str:
    """The state dict as a table: every tensor's name, shape and dtype (tied weights named as such)."""
    rows = state_dict_rows(model, stored)
    width = max((len(r["name"]) for r in rows), default=0)
    lines = []
    for r in rows:
        what = f"tied to {r['tied_to']} (not stored)" if r["tied_to"] else r["dtype"]
        lines.append(f"  {r['name']:<{width}}  {str(r['shape']):<18} {what}")
    return "\n".join(lines)


def embedding_arrays(model: nn.Module, note_on_ids=None) -> dict[str, Any]:
    """The learned embeddings as float32 numpy arrays: "relative" (per layer (H, R, D), ascending distance),
    "positions" ((n_ctx, C), models with absolute positions), "note_on" ((128, C) rows of `note_on_ids`)."""
    cfg = model.config
    out: dict[str, Any] = {"relative": [], "positions": None, "note_on": None}
    if cfg.position in ("relative", "both"):
        out["relative"] = [model.relative_embeddings(layer).float().numpy() for layer in range(cfg.n_layer)]
    if cfg.position in ("absolute", "both"):
        out["positions"] = model.pos_emb.weight.detach().float().numpy()
    if note_on_ids is not None:
        out["note_on"] = model.tok_emb.weight.detach().float().numpy()[np.asarray(note_on_ids)]
    return out
