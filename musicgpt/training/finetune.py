"""What a fine-tune keeps of its checkpoint: the steering tokens (CONTROL, INFILL, GAP) and their rows.

`--init-from` a steerable checkpoint (its tokenizer has control or infilling tokens, as the bundled
model's does) keeps them by default (`finetune.keep_steering = true`): the run's tokenizer is the
data's, grown to the checkpoint's controls (every name and value) and infilling tokens, plus what
[data] adds on top as for any run (data.controls' names and the corpus's composers; infilling tokens
when data.infill_rate > 0). So the fine-tuned checkpoint still lists its controls and still infills.

What the run trains is what [data] asks for, as without a checkpoint: a plain [data] (no controls,
infill_rate 0) trains plain crops, since the corpus need not carry the control values (a folder has
no composer metadata, and telling every crop `composer=unknown` would re-teach `unknown` as it). The
rows no crop of the run holds (kept controls [data] does not name, kept composers the corpus lacks,
the infilling tokens at infill_rate 0) are frozen: no weight decay reaches embeddings, but through
the tied output head every row gets a gradient (the softmax pushes non-target logits down) that AdamW
would turn into steps of about the learning rate, so they stay bit-identical to the checkpoint's
(`musicgpt.training.optim.freeze_rows`). The rest of the network moves under them, so how well the
model follows its controls after a long plain fine-tune is not guaranteed: set data.controls and
data.infill_rate (as the medium-steer preset does) to keep training them on the new data.

Refused (ConfigError naming the option): a data.controls that names some but not all of the
checkpoint's controls (it contradicts the kept ones: name them all, leave it empty, or drop them).
`finetune.keep_steering = false` gives the run the data's vocabulary plus what [data] adds, as for a
run from scratch: the checkpoint's control and infilling tokens [data] does not ask for are dropped
(the note says how many).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from torch import nn

from musicgpt import checkpoint
from musicgpt.errors import ConfigError
from musicgpt.model.config import GPTConfig
from musicgpt.tokens.base import Tokenizer
from musicgpt.tokens.controls import UNKNOWN, controls_vocabulary
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.training import rundir
from musicgpt.training.conditioning import (carry_over, control_rows, prompt_tuning_rows, run_tokenizer,
                                            trained_composers)
from musicgpt.training.config import Config, DataConfig
from musicgpt.training.optim import freeze_rows, train_only_rows

__all__ = ["KEEP", "checkpoint_config", "source_tokenizer", "check_keep", "finetune_tokenizer", "untrained_rows",
           "fit_checkpoint", "restrict_training"]

KEEP = "finetune.keep_steering"


def checkpoint_config(config: Config, init_from: str | Path, say: bool) -> Config:
    """`config` with the checkpoint's model in [model] (fine-tuning trains it), said once when `say`; a [data]
    that contradicts the steering tokens the run keeps is refused first (nothing is written yet)."""
    model = GPTConfig.from_checkpoint(init_from)
    check_keep(config, source_tokenizer(init_from), f"--init-from {init_from}")
    if model != config.model and say:
        shape = lambda m: f"{m.n_layer} layers, d_model {m.d_model}, {m.n_head} heads, n_ctx {m.n_ctx}"  # noqa: E731
        print(f"note: fine-tuning {init_from}: its model ({shape(model)}) replaces [model] of the config "
              f"({shape(config.model)})", file=sys.stderr)
    return rundir.with_model(config, model, None)


def source_tokenizer(init_from: str | Path | None) -> Tokenizer | None:
    """The tokenizer of the --init-from checkpoint (None without one, or when it saved none)."""
    return None if init_from is None else checkpoint.load_tokenizer(init_from)


def _steering(tokenizer: Tokenizer | None) -> tuple[dict[str, tuple[str, ...]], bool]:
    """(controls, infill) of a tokenizer: what it can be steered with."""
    return dict(getattr(tokenizer, "controls", None) or {}), bool(getattr(tokenizer, "infill", False))


def check_keep(config: Config, source: Tokenizer | None, what: str) -> None:
    """Refuse a [data] that contradicts the steering tokens the fine-tune keeps (see the module docstring)."""
    controls, _ = _steering(source)
    if not config.finetune.keep_steering or not controls or not config.data.controls:
        return
    missing = [name for name in controls if name not in config.data.controls]
    if missing:
        every = ", ".join(dict.fromkeys([*controls, *config.data.controls]))
        raise ConfigError(
            f"data.controls = {list(config.data.controls)} leaves out {', '.join(missing)}, which {what} was trained "
            f"with and this fine-tune keeps: name all of them ({every}) to train them, leave data.controls empty to "
            f"keep them untrained, or set {KEEP} = false to drop the checkpoint's control and infilling tokens")


def finetune_tokenizer(data_tokenizer: Tokenizer, manifest: dict, config: Config, source: Tokenizer | None,
                       what: str) -> Tokenizer:
    """The tokenizer a fine-tune trains with: the run's (`run_tokenizer`) grown to the source's steering tokens."""
    run = run_tokenizer(data_tokenizer, manifest, config.data)
    controls, infill = _steering(source)
    if not config.finetune.keep_steering or not (controls or infill) or not isinstance(run, PerformanceTokenizer):
        return run  # nothing to keep (a tokenizer of other events is refused by carry_over)
    check_keep(config, source, what)
    merged = {name: list(values) for name, values in controls.items()}  # the checkpoint's order first
    for name, values in run.controls.items():
        old = merged.get(name, [])
        extra = [v for v in values if v not in old]
        merged[name] = controls_vocabulary([name], old + extra)[name] if name == "composer" and extra else old + extra
    return PerformanceTokenizer(**{**run.params(), "controls": merged, "infill": infill or run.infill})


def untrained_rows(tokenizer: Tokenizer, manifest: dict, data: DataConfig) -> list[int]:
    """The ids no training crop of the run holds: kept control values and infilling tokens [data] does not train."""
    rows = []
    composers = set(trained_composers(manifest, data)) | {UNKNOWN}
    for i in control_rows(tokenizer):
        name, value = tokenizer.control_of(i)
        if name not in data.controls or (name == "composer" and value not in composers):
            rows.append(i)
    if getattr(tokenizer, "infill", False) and data.infill_rate == 0:
        masks = tokenizer.type_masks()
        rows += np.flatnonzero(masks["INFILL"] | masks["GAP"]).tolist()
    return rows


def fit_checkpoint(model: nn.Module, source: Tokenizer | None, tokenizer: Tokenizer, frozen: list[int],
                   config: Config, what: str) -> tuple[nn.Module, str | None]:
    """(the checkpoint's model on the run's vocabulary, a note on what was carried over, kept and dropped, or None)."""
    parts = []
    if source is not None and source.to_dict() != tokenizer.to_dict():
        model, note = carry_over(model, source, tokenizer, what, seed=config.train.seed)
        parts.append(note + (f" ({KEEP} = false)" if " dropped (" in note and not config.finetune.keep_steering
                             else ""))
    controls, infill = _steering(source)
    if (controls or infill) and config.finetune.keep_steering:
        n_kept = sum(source.ranges[k][1] for k in ("CONTROL", "INFILL", "GAP") if k in source.ranges)
        named = [f"{n} ({len(v)} values)" if n == "composer" else n for n, v in controls.items()]
        what_kept = "; ".join([", ".join(named)] * bool(named) + ["infilling"] * infill)
        kept = f"kept its {n_kept} control and infilling tokens ({what_kept})"
        if len(frozen) == n_kept:
            kept += "; this run trains none of them (data.controls and data.infill_rate ask for none): their rows stay"
        elif frozen:
            kept += (f"; {len(frozen)} of them no crop of this run holds (controls or composers [data] does not train, "
                     "infilling at data.infill_rate 0): their rows stay")
        parts.append(f"{kept}; {KEEP} = false drops them")
    return model, ("; ".join(parts) or None)


def restrict_training(model: nn.Module, tokenizer: Tokenizer, frozen: list[int], config: Config,
                      init_from: str | None) -> bool:
    """Prompt tuning trains only the control rows the crops are told; otherwise `frozen` rows stay put. Whether
    it is prompt tuning (finetune.trainable = 'controls')."""
    if config.finetune.trainable == "controls":
        rows = prompt_tuning_rows(tokenizer, init_from, config.data.controls)
        train_only_rows(model, model.tok_emb, sorted(set(rows) - set(frozen)))
        return True
    if frozen:
        freeze_rows(model.tok_emb, frozen)
    return False
