"""Checkpoint directories: written atomically, read with safetensors and json only (never pickle).

    CKPT/config.json        {"format": "musicgpt-checkpoint", "version": 1, "model": {GPTConfig}, "meta": {...}}
    CKPT/model.safetensors  the state dict (float32 or bfloat16); a tied lm_head.weight is stored once
    CKPT/tokenizer.json     tokenizer.save() output, when a tokenizer was given
    CKPT/NAME.safetensors + CKPT/NAME.json   optional extra states (optimizer, scheduler, RNG, step …)

A checkpoint is written into a temporary sibling directory and renamed into place, so a reader
never sees half a checkpoint. Extra states hold any nest of dicts, lists, tuples, numbers,
strings and tensors (an optimizer's state_dict, say): tensors go to the .safetensors file, the
structure to the .json file, so loading runs no code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musicgpt.errors import CheckpointError, ConfigError
from musicgpt.model.gpt import GPTConfig, MusicGPT

FORMAT = "musicgpt-checkpoint"
VERSION = 1
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
DEFAULT_DIR = Path(__file__).resolve().parent / "pretrained"


def resolve(path: str | Path | None) -> Path:
    """The checkpoint directory to read: `path`, or the bundled model when None."""
    if path is None:
        if not (DEFAULT_DIR / CONFIG).is_file():
            raise CheckpointError(f"no bundled model at {DEFAULT_DIR} (not installed yet): pass a checkpoint directory")
        return DEFAULT_DIR
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a directory (a checkpoint is a directory with {CONFIG})")
    return path


def save(model: MusicGPT, path: str | Path, tokenizer: Any = None, *, dtype: torch.dtype | None = None,
         meta: dict[str, Any] | None = None, states: dict[str, Any] | None = None) -> Path:
    """Write model (+ tokenizer, + extra states such as {'trainer': {...}}) to the directory `path` atomically."""
    path = Path(path)
    vocab = getattr(tokenizer, "vocab_size", None)
    if isinstance(vocab, int) and vocab > model.config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: tokenizer has {vocab} tokens, model only {model.config.vocab_size}")
    with _atomic_directory(path) as tmp:
        config = {"format": FORMAT, "version": VERSION, "model": model.config.to_dict(), "meta": meta or {}}
        _write_json(tmp / CONFIG, config)
        tensors = {k: _for_saving(t, dtype) for k, t in model.state_dict().items()}
        if model.config.tie_weights:
            tensors.pop("lm_head.weight", None)  # the same tensor as tok_emb.weight
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        _fsync(tmp / WEIGHTS)
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
        for name, state in (states or {}).items():
            _write_state(tmp, name, state)
    return path


def read_config(path: str | Path | None = None) -> tuple[GPTConfig, dict[str, Any]]:
    """The model config of a checkpoint and the whole parsed config.json."""
    path = resolve(path)
    raw = _read_json(path / CONFIG, what=f"checkpoint {path}")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: {CONFIG} is not a {FORMAT} file")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {raw.get('version')!r} is not supported (want {VERSION})")
    try:
        return GPTConfig.from_dict(raw.get("model") or {}), raw
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad model config in {CONFIG}: {exc}") from None


def load_model(path: str | Path | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> MusicGPT:
    """The model of a checkpoint directory, in eval mode (default: the bundled model)."""
    path = resolve(path)
    config, _ = read_config(path)
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} is missing")
    try:
        tensors = load_file(str(path / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read {WEIGHTS}: {exc}") from None
    model = MusicGPT(config)
    expected = model.state_dict()
    if config.tie_weights:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} does not match its config: "
                              f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(t.shape)}, "
                                  f"config wants {tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=False)
    return model.to(device=device, dtype=dtype).eval()


def load_tokenizer(path: str | Path | None = None) -> Any:
    """The tokenizer saved in a checkpoint directory, or None if it has none."""
    path = resolve(path)
    if not (path / TOKENIZER).is_file():
        return None
    try:
        from musicgpt.tokens.performance import load_tokenizer as _load  # no torch there; imported on use
    except ImportError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot load {TOKENIZER}: {exc}") from None
    return _load(path / TOKENIZER)


def load(path: str | Path | None = None, *, device: str | torch.device = "cpu",
         dtype: torch.dtype | None = None) -> tuple[MusicGPT, Any]:
    """(model, tokenizer or None) from a checkpoint directory (default: the bundled model)."""
    path = resolve(path)
    model = load_model(path, device=device, dtype=dtype)
    tokenizer = load_tokenizer(path)
    vocab = getattr(tokenizer, "vocab_size", None)
    if isinstance(vocab, int) and vocab > model.config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: tokenizer has {vocab} tokens, model only {model.config.vocab_size}")
    return model, tokenizer


# ---- extra states (optimizer, scheduler, RNG, counters) beside the model ----

def save_state(path: str | Path, name: str, state: Any) -> None:
    """Write NAME.safetensors + NAME.json into the existing directory `path`, each file atomically."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory to save state {name!r} into")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=path))
    try:
        _write_state(tmp, name, state)
        for suffix in (".safetensors", ".json"):
            os.replace(tmp / f"{name}{suffix}", path / f"{name}{suffix}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_state(path: str | Path, name: str, *, device: str | torch.device = "cpu") -> Any:
    """Read back what `save_state` / `save(states=...)` wrote under `name`."""
    path = Path(path)
    structure = _read_json(path / f"{name}.json", what=f"checkpoint {path}: state {name!r}")
    try:
        tensors = load_file(str(path / f"{name}.safetensors"), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read {name}.safetensors: {exc}") from None
    return _unflatten(structure, tensors)


def has_state(path: str | Path, name: str) -> bool:
    """Whether the directory holds the extra state `name`."""
    path = Path(path)
    return (path / f"{name}.json").is_file() and (path / f"{name}.safetensors").is_file()


def _write_state(directory: Path, name: str, state: Any) -> None:
    if not name.isidentifier() or name in ("config", "model", "tokenizer"):
        raise CheckpointError(f"state name {name!r}: use an identifier other than config, model, tokenizer")
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    _fsync(directory / f"{name}.safetensors")
    _write_json(directory / f"{name}.json", structure)


def _flatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON structure of obj with every tensor replaced by a reference into `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, tensors), _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint state (tensors, numbers, "
                          "strings, lists, tuples and dicts only)")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
    return obj


# ---- files ----

@contextmanager
def _atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to fill; rename it into place when the block succeeds."""
    if path.exists() and not (path / CONFIG).is_file() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"checkpoint {path}: exists and is not a checkpoint directory; refusing to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync(tmp)
        if path.exists():  # swap: the old checkpoint is gone only once the new one is complete
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _for_saving(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach().to("cpu")
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.contiguous().clone()


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{what}: {path.name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what}: {path.name} is not valid JSON ({exc})") from None


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
