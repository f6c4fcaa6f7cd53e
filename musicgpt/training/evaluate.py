"""Evaluation of a checkpoint: NLL per event (nats), perplexity, token accuracy, and NLL per event type.

Every document is read as [BOS] + tokens and scored in windows of `context` tokens moved by
`stride` (musicgpt.training.data.windows): each token is predicted exactly once, and with a stride S below
the context every token after the first window sees at least context - S tokens before it.
`context` may exceed the length the model was trained on when it uses relative attention (that is
the point of it); a model with absolute position embeddings cannot look past its table.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from musicgpt.corpus.shards import Split, open_split, read_manifest, verify
from musicgpt.music.midi import midi_files
from musicgpt.device import autocast_dtype, check_memory, pick_device
from musicgpt.training.conditioning import doc_composers
from musicgpt.training.data import IGNORE_INDEX, Specials, batch_windows, windows
from musicgpt._io import atomic_write_text
from musicgpt.errors import ConfigError, DatasetError, MidiError, MusicGPTError

EVENT_TYPES = ("NOTE_ON", "NOTE_OFF", "TIME_SHIFT", "VELOCITY")


@dataclass
class Totals:
    """Running sums over scored tokens; per-type arrays are indexed by the tokenizer's type codes."""

    nll_sum: float = 0.0
    count: int = 0
    correct: int = 0
    type_nll: np.ndarray = field(default_factory=lambda: np.zeros(0))
    type_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    type_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@torch.no_grad()
def score(model: torch.nn.Module, items: Iterable[tuple[np.ndarray, int]], length: int, batch_size: int,
          device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
          type_of: np.ndarray | None = None, progress: Any = None) -> Totals:
    """Sum of NLL, correct argmax predictions and counts over the scored targets of `items` (see data.windows).

    `type_of` maps token id -> type code for the per-type sums; `progress` is a tqdm bar to advance.
    """
    device = torch.device(device)
    n_types = 0 if type_of is None else int(type_of.max()) + 1
    totals = Totals(type_nll=np.zeros(n_types), type_count=np.zeros(n_types, np.int64),
                    type_correct=np.zeros(n_types, np.int64))
    type_table = None if type_of is None else torch.as_tensor(type_of.astype(np.int64), device=device)
    for x, y in batch_windows(iter(items), batch_size, length):
        x, y = x.to(device), y.to(device)  # (B, L)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext():
            logits = model(x).logits  # (B, L, V)
        mask = y != IGNORE_INDEX
        picked = logits[mask].float()  # (N, V)
        targets = y[mask]  # (N,)
        nll = F.cross_entropy(picked, targets, reduction="none")  # (N,)
        correct = picked.argmax(-1) == targets  # (N,)
        totals.nll_sum += float(nll.double().sum())
        totals.count += int(targets.numel())
        totals.correct += int(correct.sum())
        if type_table is not None:
            kinds = type_table[targets.clamp(max=len(type_table) - 1)]  # (N,)
            totals.type_nll += torch.bincount(kinds, weights=nll.double(), minlength=n_types).cpu().numpy()
            totals.type_count += torch.bincount(kinds, minlength=n_types).cpu().numpy()
            totals.type_correct += torch.bincount(kinds[correct], minlength=n_types).cpu().numpy()
        if progress is not None:
            progress.update(int(targets.numel()))
    return totals


@dataclass
class EvalReport:
    """The figures `musicgpt evaluate` prints and writes with --json."""

    checkpoint: str
    data: str
    split: str | None
    context: int
    stride: int
    trained_context: int
    n_docs: int
    n_tokens: int
    nll: float
    perplexity: float
    accuracy: float
    per_type: dict[str, dict[str, float]]
    skipped: list[str] = field(default_factory=list)
    controls: str = "none"  # what the windows were told: none, NAME=VALUE..., or each file's own metadata

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)

    def format(self) -> str:
        """Human-readable lines, among them `nll <number>`."""
        where = f"{self.data} ({self.split} split)" if self.split else self.data
        lines = [f"checkpoint  {self.checkpoint}",
                 f"data        {where}: {self.n_docs} documents, {self.n_tokens:,} events",
                 f"context     {self.context} (trained on {self.trained_context}), stride {self.stride}",
                 *([f"controls    {self.controls}"] if self.controls != "none" else []),
                 f"nll {self.nll:.6f}",
                 f"perplexity {self.perplexity:.4f}",
                 f"accuracy {self.accuracy:.4f}"]
        if self.per_type:
            lines.append(f"{'event type':<12}{'nll':>9}{'ppl':>9}{'accuracy':>10}{'share':>8}")
            for name, f in self.per_type.items():
                lines.append(f"{name:<12}{f['nll']:>9.4f}{f['perplexity']:>9.3f}{f['accuracy']:>10.4f}"
                             f"{f['share']:>8.3f}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable file(s): " + "; ".join(self.skipped[:5]))
        return "\n".join(lines)


def report(totals: Totals, type_names: tuple[str, ...] | None, **info: Any) -> EvalReport:
    """Turn sums into means: NLL per event, perplexity, accuracy, and the same per event type."""
    if totals.count == 0:
        raise DatasetError(f"{info.get('data')}: nothing to evaluate (no tokens)")
    nll = totals.nll_sum / totals.count
    if not math.isfinite(nll):
        raise MusicGPTError(f"{info.get('checkpoint')}: evaluation gave NLL {nll} on {info.get('data')} (the model's "
                            "outputs are not finite)")
    per_type: dict[str, dict[str, float]] = {}
    if type_names is not None:
        for code, name in enumerate(type_names[: len(totals.type_count)]):
            n = int(totals.type_count[code])
            if n == 0 or name not in EVENT_TYPES:
                continue
            t_nll = float(totals.type_nll[code] / n)
            per_type[name] = {"nll": t_nll, "perplexity": math.exp(min(t_nll, 700.0)),
                              "accuracy": float(totals.type_correct[code] / n), "count": n,
                              "share": n / totals.count}
    return EvalReport(nll=nll, perplexity=math.exp(min(nll, 700.0)), accuracy=totals.correct / totals.count,
                      per_type=per_type, **info)


def tokenize_files(paths: list[Path], tokenizer) -> tuple[Split, list[str]]:
    """Tokenize MIDI files (folders are searched for *.mid / *.midi) into an in-memory Split; skips unreadable ones."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += midi_files(p)
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p}: no such file or folder")
    if not files:
        raise DatasetError(f"{', '.join(map(str, paths))}: no MIDI files found")
    docs, skipped = [], []
    for f in files:
        try:
            ids = np.asarray(tokenizer.encode(f).ids, dtype=np.int64)
        except (MidiError, MusicGPTError, OSError) as exc:
            reason = str(exc) if isinstance(exc, MusicGPTError) else exc.strerror or str(exc)
            skipped.append(reason if reason.startswith(f"{f}: ") else f"{f}: {reason}")  # the file, then why
            continue
        if len(ids):
            docs.append(ids)
        else:
            skipped.append(f"{f}: no notes")
    if not docs:
        shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        raise DatasetError(f"none of {len(files)} MIDI file(s) could be tokenized: {shown}")
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return Split(np.concatenate(docs), offsets), skipped


def check_context(model_config, context: int, device="cpu", precision: str = "fp32") -> None:
    """Refuse a context the model cannot score (absolute position embeddings end at n_ctx) or whose window cannot
    fit in the device's memory, before a forward pass allocates it, with a clear reason."""
    if context < 1:
        raise ConfigError(f"--context: must be positive, got {context}")
    if model_config.position != "relative" and context > model_config.n_ctx:
        raise ConfigError(f"--context {context}: this model has absolute position embeddings for "
                          f"{model_config.n_ctx} positions only, so it cannot score longer windows "
                          f"(models with relative attention can); use --context {model_config.n_ctx} or less")
    window = model_config.forward_bytes(1, context, value_bytes=4 if precision == "fp32" else 2)
    check_memory(model_config.weight_bytes() + window, f"--context {context}: a window of {context} tokens", device)


def evaluate_checkpoint(checkpoint_path: str | Path | None, data: list[str | Path], *, split: str = "test",
                        context: int | None = None, stride: int | None = None, batch_size: int = 8,
                        device: str = "auto", precision: str = "fp32", progress: bool = True,
                        controls: dict[str, str] | list[str] | None = None, own_controls: bool = True) -> EvalReport:
    """Load a checkpoint (default: the bundled model) and score it on a prepared split or MIDI files.

    A model trained with controls reads `controls` before every window; without them, each document's
    own composer where the prepared corpus records it (own_controls=False: none, the plain model)."""
    from musicgpt import checkpoint
    from musicgpt.model.gpt import load_checkpoint

    dev = pick_device(device)
    checkpoint_path = checkpoint.resolve(checkpoint_path)  # a run directory: its best/, else its latest
    model, tokenizer = load_checkpoint(checkpoint_path, device=dev)
    if tokenizer is None:
        raise MusicGPTError(f"checkpoint {checkpoint.resolve(checkpoint_path)}: has no tokenizer.json")
    paths = [Path(p) for p in data]
    if not paths:
        raise DatasetError("--data: give a prepared directory, a MIDI folder or MIDI files")
    skipped: list[str] = []
    if len(paths) == 1 and (paths[0] / "manifest.json").is_file():
        from musicgpt.tokens.registry import load_tokenizer

        made_with = load_tokenizer(paths[0] / "tokenizer.json")
        if not extends(tokenizer, made_with):
            raise DatasetError(f"{paths[0]}: prepared with a different tokenizer than the checkpoint's "
                               "(evaluate on the MIDI files instead, or prepare them with the checkpoint's tokenizer)")
        verify(paths[0])
        docs, used_split = open_split(paths[0], split), split
        composers = doc_composers(read_manifest(paths[0]), split)
    else:
        composers = []
        docs, skipped = tokenize_files(paths, tokenizer)
        used_split = None
    context = context or model.config.n_ctx
    stride = stride or context
    check_context(model.config, context, dev, precision)
    if not 0 < stride <= context:
        raise ConfigError(f"--stride: must be in 1..{context} (the context), got {stride}")
    specials = Specials(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    headers, described = _headers(tokenizer, docs.n_docs, controls, composers if own_controls else [])
    type_of = tokenizer.token_type(np.arange(model.config.vocab_size))
    type_of = np.where(type_of < 0, 0, type_of)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=docs.n_tokens, unit="tok", desc="evaluate", file=sys.stderr, dynamic_ncols=True)
    try:
        totals = score(model, windows(docs, context, stride, specials, headers), context, batch_size, dev,
                       autocast_dtype(precision, dev), type_of, bar)
    finally:
        if bar is not None:
            bar.close()
    return report(totals, tokenizer.type_names,
                  checkpoint=str(checkpoint.resolve(checkpoint_path)), data=", ".join(map(str, paths)),
                  split=used_split, context=context, stride=stride, trained_context=model.config.n_ctx,
                  n_docs=docs.n_docs, n_tokens=docs.n_tokens, skipped=skipped, controls=described)


def extends(tokenizer, base) -> bool:
    """Whether `tokenizer` reads `base`'s ids as `base` does (equal, or `base` plus CONTROL / infilling tokens)."""
    if tokenizer.to_dict() == base.to_dict():
        return True
    plain = {k: v for k, v in tokenizer.to_dict().items() if k not in ("controls", "infill", "vocab_size")}
    return plain == {k: v for k, v in base.to_dict().items() if k != "vocab_size"}


def _headers(tokenizer, n_docs: int, controls, composers: list) -> tuple[list[np.ndarray] | None, str]:
    """(CONTROL ids per document or None, a description): the given controls, else each document's composer."""
    from musicgpt.tokens.controls import parse_controls

    values = parse_controls(controls)
    if values:
        if not getattr(tokenizer, "controls", None):
            raise ConfigError("--control: this model was trained without control tokens")
        header = tokenizer.header(values)
        return [header] * n_docs, " ".join(f"{k}={v}" for k, v in values.items())
    if "composer" not in (getattr(tokenizer, "controls", None) or {}) or not any(composers):
        return None, "none"
    headers = [tokenizer.header({"composer": c}) if c else np.zeros(0, np.int64)
               for c in (composers + [None] * n_docs)[:n_docs]]
    return headers, f"each document's own composer ({sum(1 for c in composers[:n_docs] if c)} of {n_docs} known)"


def write_json(result: EvalReport, path: str | Path) -> Path:
    """Write the figures as JSON."""
    return atomic_write_text(path, json.dumps(result.to_dict(), indent=2) + "\n", make_parents=True)
