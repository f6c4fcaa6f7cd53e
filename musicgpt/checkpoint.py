"""Checkpoint directories: the files, written atomically, read with safetensors and json only (never pickle).

    CKPT/config.json        {"format": "musicgpt-checkpoint", "version": 1, "model": {GPTConfig}, "meta": {...},
                             "tokenizer": {"type", "vocab_size", "fingerprint"} of the tokenizer saved beside it}
    CKPT/model.safetensors  the state dict (float32, bfloat16 or float16); a tied lm_head.weight is stored once
    CKPT/tokenizer.json     tokenizer.save() output, when a tokenizer was given
    CKPT/NAME.safetensors + CKPT/NAME.json   optional extra states (optimizer, scheduler, RNG, step …)

This module is the one home of loading and saving: `load_into(MusicGPT, path)` builds a model of a
checkpoint, loads and checks its weights and attaches the checkpoint's tokenizer as `model.tokenizer`;
`save(model, path)` writes one. It knows the directory format, not the model class: the class comes in as
an argument (`MusicGPT.from_pretrained`, `musicgpt.load_model`), so the model imports this module and never
the other way round, and the model itself never reads a tokenizer (it only carries one). A checkpoint is
written into a hidden temporary sibling directory and renamed into place (musicgpt._io), so a
reader never sees half a checkpoint. Extra states hold any nest of dicts, lists, tuples, numbers,
strings and tensors (an optimizer's state_dict, say): tensors go to the .safetensors file, the
structure to the .json file, so loading runs no code.

A checkpoint that disagrees with itself is refused on load: a tokenizer.json that is not the one
recorded in config.json (another time step or velocity bins, say), or missing though config.json records
one, or weights that are not finite.
Checkpoints saved before fingerprints were recorded load with a warning, and must at least have a
tokenizer of the model's vocabulary size.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musicgpt._io import atomic_directory, atomic_write, atomic_write_text, recover_directories, umask
from musicgpt.errors import CheckpointError, ConfigError, WriteError
from musicgpt.tokens.base import Tokenizer

__all__ = ["locate", "resolve", "is_complete", "step_checkpoints", "load_into", "save", "read_model_config", "write",
           "read_config", "read_weights", "load_weights", "load_tokenizer", "check_vocab", "save_state", "load_state",
           "has_state", "FORMAT", "VERSION", "CONFIG", "WEIGHTS", "TOKENIZER", "DEFAULT_DIR"]

M = TypeVar("M", bound=torch.nn.Module)
C = TypeVar("C")
FORMAT = "musicgpt-checkpoint"
VERSION = 1
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"
DEFAULT_DIR = Path(__file__).resolve().parent / "pretrained"
BUNDLED = "bundled"  # the name of the bundled model wherever a checkpoint is asked for
RUN_BEST, RUN_CHECKPOINTS, STEP_PREFIX = "best", "checkpoints", "step-"  # a training run directory's checkpoints
# The bundled model's files predate recorded fingerprints and are not rewritten: its tokenizer's, known here.
BUNDLED_TOKENIZER_FINGERPRINT = "2508b399e0c69044"


def resolve(name: str | Path | None) -> Path:
    """The checkpoint directory a name stands for (see `locate`)."""
    return locate(name)[0]


def locate(name: str | Path | None) -> tuple[Path, str | None]:
    """(the checkpoint directory a name stands for, a note saying which, when the name was not that directory).

    A name is one of: None or "bundled" (the bundled model; a folder called "bundled" is taken as a
    path instead), a checkpoint directory, or a training run directory, meaning its best/ (lowest
    valid NLL), else its latest complete step checkpoint. A run killed in the middle of replacing
    one of them is repaired first (the newest complete copy goes back).
    """
    if name is None or (str(name) == BUNDLED and not Path(BUNDLED).exists()):
        if not (DEFAULT_DIR / CONFIG).is_file():
            raise CheckpointError(f"no bundled model at {DEFAULT_DIR} (not installed yet): pass a checkpoint directory")
        return DEFAULT_DIR, None
    path = Path(name)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such directory (give a checkpoint directory, a training run "
                              f"directory or '{BUNDLED}')")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a directory (a checkpoint is a directory with {CONFIG})")
    if (path / CONFIG).is_file():
        return path, None
    if (path / "run.json").is_file() or (path / RUN_BEST).is_dir() or (path / RUN_CHECKPOINTS).is_dir():
        recover_directories(path, is_complete)
        if (path / RUN_CHECKPOINTS).is_dir():
            recover_directories(path / RUN_CHECKPOINTS, is_complete)
        if is_complete(path / RUN_BEST):
            return path / RUN_BEST, f"{path} is a training run: using its best checkpoint, {path / RUN_BEST}{_step(path / RUN_BEST)}"
        steps = step_checkpoints(path)
        if steps:
            return steps[-1], f"{path} is a training run without best/: using its latest checkpoint, {steps[-1]}"
        raise CheckpointError(f"{path}: a training run directory with no complete checkpoint yet")
    raise CheckpointError(f"checkpoint {path}: {CONFIG} is missing (neither a checkpoint directory nor a training run "
                          "directory)")


def is_complete(path: Path) -> bool:
    """Whether a directory holds a checkpoint's config and weights."""
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run's step checkpoints that hold config and weights, oldest first."""
    root = Path(run_dir) / RUN_CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit() and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def _step(path: Path) -> str:
    try:
        step = read_config(path).get("meta", {}).get("step")
    except CheckpointError:
        return ""
    return f" (step {step})" if isinstance(step, int) else ""


# ---- models: the one place a checkpoint becomes a model, and a model a checkpoint ----

def load_into(model_class: type[M], path: str | Path | None = None, *, device: str | torch.device = "cpu",
              dtype: torch.dtype | None = None) -> M:
    """A `model_class` built from a checkpoint's config, its weights loaded and checked, in eval mode, carrying the
    checkpoint's tokenizer as `model.tokenizer` (None when the checkpoint has none)."""
    path = resolve(path)
    model = model_class(read_model_config(path, model_class.config_class))
    load_weights(model, path, tied=model.tied_weights())
    tokenizer = load_tokenizer(path)
    check_vocab(path, model.config.to_dict(), tokenizer)
    model = model.to(device=device, dtype=dtype).eval()
    model.tokenizer = tokenizer
    return model


def save(model: torch.nn.Module, path: str | Path, tokenizer: Tokenizer | None = None, *,
         dtype: torch.dtype | None = None, meta: dict[str, Any] | None = None,
         states: dict[str, Any] | None = None) -> Path:
    """Write a model (with `tokenizer`, else the one it carries) as a checkpoint directory, atomically."""
    tensors = {k: t for k, t in model.state_dict().items() if k not in model.tied_weights()}
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    return write(path, model_config=model.config.to_dict(), tensors=tensors, tokenizer=tokenizer, dtype=dtype,
                 meta=meta, states=states)


def read_model_config(path: str | Path | None, config_class: type[C]) -> C:
    """The model config of a checkpoint directory, as a `config_class` (`from_dict`); a CheckpointError if bad."""
    raw = read_config(path)
    try:
        return config_class.from_dict(raw.get("model") or {})
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {resolve(path)}: bad model config in {CONFIG}: {exc}") from None


def write(path: str | Path, *, model_config: dict[str, Any], tensors: dict[str, torch.Tensor],
          tokenizer: Tokenizer | None = None, dtype: torch.dtype | None = None, meta: dict[str, Any] | None = None,
          states: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically: config, weights (floats cast to `dtype` if given), tokenizer, states."""
    path = Path(path)
    check_vocab(path, model_config, tokenizer)
    if path.exists() and not (path / CONFIG).is_file() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"checkpoint {path}: exists and is not a checkpoint directory; refusing to overwrite")
    try:
        with atomic_directory(path, durable=True) as tmp:
            config = {"format": FORMAT, "version": VERSION, "model": model_config, "meta": meta or {}}
            if tokenizer is not None:
                config["tokenizer"] = {"type": tokenizer.type, "vocab_size": tokenizer.vocab_size,
                                       "fingerprint": tokenizer.fingerprint()}
            (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            _save_tensors({k: _for_saving(t, dtype) for k, t in tensors.items()}, tmp / WEIGHTS,
                          metadata={"format": FORMAT})
            if tokenizer is not None:
                tokenizer.save(tmp / TOKENIZER)
            for name, state in (states or {}).items():
                _write_state(tmp, name, state)
    except SafetensorError as exc:  # safetensors reports a full disk as its own error
        raise WriteError(f"checkpoint {path}: cannot write {WEIGHTS} ({_io_reason(exc)})") from None
    return path


def check_vocab(path: Path, model_config: dict[str, Any], tokenizer: Tokenizer | None) -> None:
    """A tokenizer may not have more ids than the model has embeddings (CheckpointError naming both)."""
    vocab = model_config.get("vocab_size")
    if tokenizer is not None and isinstance(vocab, int) and tokenizer.vocab_size > vocab:
        raise CheckpointError(f"checkpoint {path}: tokenizer has {tokenizer.vocab_size} tokens, model only {vocab}")


def read_config(path: str | Path | None = None) -> dict[str, Any]:
    """The parsed config.json of a checkpoint (format and version checked; its "model" holds the GPTConfig)."""
    path = resolve(path)
    raw = _read_json(path / CONFIG, what=f"checkpoint {path}")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: {CONFIG} is not a {FORMAT} file")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {raw.get('version')!r} is not supported (want {VERSION})")
    return raw


def read_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's model.safetensors, on the CPU as stored."""
    path = resolve(path)
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} is missing")
    try:
        return load_file(str(path / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read {WEIGHTS}: {exc}") from None


def load_weights(module: torch.nn.Module, path: str | Path | None = None, *, tied: set[str] = frozenset()) -> None:
    """Load a checkpoint's weights into `module`, every name and shape checked (`tied` names are not stored)."""
    path = resolve(path)
    tensors = read_weights(path)
    expected = {k: v for k, v in module.state_dict().items() if k not in tied}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} does not match its config: "
                              f"missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(t.shape)}, "
                                  f"config wants {tuple(expected[name].shape)}")
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"checkpoint {path}: {name} holds NaN or infinite values (a run that diverged, or "
                                  "a damaged file); refusing to load it")
    module.load_state_dict(tensors, strict=False)


def load_tokenizer(path: str | Path | None = None) -> Tokenizer | None:
    """The tokenizer saved in a checkpoint directory, or None if it has none; refused if it is not the one
    the checkpoint recorded (see the module docstring)."""
    path = resolve(path)
    raw = read_config(path)
    recorded = (raw.get("tokenizer") or {}).get("fingerprint")
    if not (path / TOKENIZER).is_file():
        if recorded is not None:  # the default tokenizer in its place could read the model with the wrong timing
            kind = (raw.get("tokenizer") or {}).get("type", "performance")
            raise CheckpointError(f"checkpoint {path}: {TOKENIZER} is missing; {CONFIG} records the tokenizer the "
                                  f"model was trained with ({kind}, fingerprint {recorded}): put that file back")
        return None
    if recorded is None and path.resolve() == DEFAULT_DIR.resolve():
        recorded = BUNDLED_TOKENIZER_FINGERPRINT
    from musicgpt.tokens.registry import load_tokenizer as _load  # loads miditok only for a miditok tokenizer

    tokenizer = _load(path / TOKENIZER)
    if recorded is not None and tokenizer.fingerprint() != recorded:
        raise CheckpointError(f"checkpoint {path}: {TOKENIZER} is not the tokenizer its model was saved with "
                              f"({tokenizer!r}, fingerprint {tokenizer.fingerprint()}; {CONFIG} records {recorded})")
    if recorded is None:
        vocab = (raw.get("model") or {}).get("vocab_size")
        if isinstance(vocab, int) and tokenizer.vocab_size != vocab:
            raise CheckpointError(f"checkpoint {path}: {TOKENIZER} has {tokenizer.vocab_size} tokens, the model "
                                  f"{vocab}: not the tokenizer it was trained with")
        _warn_unverified(str(path))
    return tokenizer


@functools.lru_cache(maxsize=None)
def _warn_unverified(path: str) -> None:
    warnings.warn(f"checkpoint {path}: saved before tokenizer fingerprints were recorded, so {TOKENIZER} cannot be "
                  "checked against its model beyond its size (save the checkpoint again to record one)",
                  UserWarning, stacklevel=3)


# ---- extra states (optimizer, scheduler, RNG, counters) beside the model ----

def save_state(path: str | Path, name: str, state: Any) -> None:
    """Write NAME.safetensors + NAME.json into the existing directory `path`, each file atomically."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory to save state {name!r} into")
    tensors, text = _state_files(name, state)
    try:
        atomic_write(path / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp)), durable=True)
    except SafetensorError as exc:
        raise WriteError(f"checkpoint {path}: cannot write {name}.safetensors ({_io_reason(exc)})") from None
    atomic_write_text(path / f"{name}.json", text, durable=True)


def load_state(path: str | Path, name: str, *, device: str | torch.device = "cpu") -> Any:
    """Read back what `save_state` / `write(states=...)` wrote under `name`."""
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


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """save_file, then the umask's permissions: safetensors creates its files 0600, unreadable by others."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~umask())


def _write_state(directory: Path, name: str, state: Any) -> None:
    """NAME.safetensors and NAME.json in a directory being built (it is renamed into place as a whole)."""
    tensors, text = _state_files(name, state)
    _save_tensors(tensors, directory / f"{name}.safetensors")
    (directory / f"{name}.json").write_text(text, encoding="utf-8")


def _state_files(name: str, state: Any) -> tuple[dict[str, torch.Tensor], str]:
    """(the tensors, the JSON text of the structure) of an extra state."""
    if not name.isidentifier() or name in ("config", "model", "tokenizer"):
        raise CheckpointError(f"state name {name!r}: use an identifier other than config, model, tokenizer")
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors)
    return tensors, json.dumps(structure, indent=2) + "\n"


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

def _io_reason(exc: Exception) -> str:
    """The readable part of a safetensors I/O error."""
    text = str(exc)
    for marker in ('message: "', "message: '"):
        if marker in text:
            return text.split(marker, 1)[1].split(marker[-1], 1)[0]
    return text


def _for_saving(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach().to("cpu")
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.contiguous().clone()


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{what}: {path.name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what}: {path.name} is not valid JSON ({exc})") from None
