"""Training configs: TOML files loaded strictly into dataclasses, with `--set key=value` overrides.

A config has five tables: [model] (the GPTConfig fields, or a `preset` plus overrides), [data],
[optim], [train] and [finetune]. Unknown keys and values of the wrong type raise `ConfigError`
naming the dotted key, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from musicgpt.device import check_memory
from musicgpt.errors import ConfigError
from musicgpt.model.config import PRESETS, GPTConfig

SEED_LIMIT = 2**63  # torch's generators take 64-bit seeds, and each rank adds 1000 to the run's
OPTIMIZER_COPIES = 4  # float32 weights, their gradients and AdamW's two moments


def _require(checks: dict[str, tuple[bool, str]]) -> None:
    """Raise ValueError('key: must ...') for the first failing check (_build adds the section)."""
    for key, (ok, rule) in checks.items():
        if not ok:
            raise ValueError(f"{key}: must {rule}")


@dataclass
class DataConfig:
    """Where the tokens come from and how crops are augmented."""

    path: str | None = None  # a `musicgpt prepare` directory or a MIDI folder; --data overrides
    transpose: int = 3  # random transposition in [-transpose, +transpose] semitones; 0 disables
    stretch: float = 0.05  # random time stretch in [1 - stretch, 1 + stretch]; 0 disables
    valid_windows: int = 64  # full windows of the valid split per evaluation; 0 means all of them
    prefetch: int = 4  # batches prepared ahead by a background thread; 0 loads in the loop
    workers: int = 8  # parallel tokenizer processes when a MIDI folder is prepared on the fly
    # Steering (musicgpt.tokens.controls, musicgpt.training.conditioning); all off by default
    controls: list[str] = field(default_factory=list)  # control tokens to learn: composer, density, dynamics
    control_dropout: float = 0.3  # each control left out of a crop with this probability...
    uncond_rate: float = 0.2  # ...and all of them with this one, so the model also works without controls
    infill_rate: float = 0.0  # share of crops trained as fill-in-the-middle; > 0 adds the infilling tokens
    composer_min_files: int = 3  # composers with fewer training files are 'unknown'

    def __post_init__(self) -> None:
        from musicgpt.tokens.controls import KNOWN_CONTROLS

        unknown = [c for c in self.controls if c not in KNOWN_CONTROLS]
        _require({"controls": (not unknown and len(set(self.controls)) == len(self.controls),
                               f"list distinct names among {', '.join(KNOWN_CONTROLS)} (got {self.controls})"),
                  "control_dropout": (0 <= self.control_dropout <= 1, "be in [0, 1]"),
                  "uncond_rate": (0 <= self.uncond_rate <= 1, "be in [0, 1]"),
                  "infill_rate": (0 <= self.infill_rate <= 1, "be in [0, 1]"),
                  "composer_min_files": (self.composer_min_files >= 1, "be >= 1")})
        _require({"transpose": (0 <= self.transpose <= 12, "be in 0..12"),
                  "stretch": (0 <= self.stretch < 0.5, "be in [0, 0.5)"),
                  "valid_windows": (self.valid_windows >= 0, "be >= 0"),
                  "prefetch": (self.prefetch >= 0, "be >= 0"), "workers": (self.workers >= 1, "be >= 1")})


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay to `min_lr`."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 200
    weight_decay: float = 0.1  # not applied to embeddings, norms and biases
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    def __post_init__(self) -> None:
        _require({"lr": (self.lr > 0, "be > 0"), "min_lr": (0 <= self.min_lr <= self.lr, "be in [0, lr]"),
                  "warmup_steps": (self.warmup_steps >= 0, "be >= 0"),
                  "weight_decay": (self.weight_decay >= 0, "be >= 0"),
                  "beta1": (0 <= self.beta1 < 1, "be in [0, 1)"), "beta2": (0 <= self.beta2 < 1, "be in [0, 1)"),
                  "eps": (self.eps > 0, "be > 0"), "grad_clip": (self.grad_clip >= 0, "be >= 0")})


@dataclass
class TrainConfig:
    """The loop: how long, how big a batch, how often to evaluate and checkpoint."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch on each rank
    grad_accum: int = 1  # micro-batches per optimizer step
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA / AMX CPUs
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    seed: int = 1234
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    eval_every: int = 250  # steps between evaluations on the valid split; 0 disables
    checkpoint_every: int = 500  # steps between checkpoints; one is always written at the end
    keep_last: int = 3  # step checkpoints kept (the best one is kept separately)
    log_every: int = 10  # steps between metrics.csv rows
    progress: bool = True  # tqdm progress bar on rank 0

    def __post_init__(self) -> None:
        _require({"steps": (self.steps >= 0, "be >= 0"), "batch_size": (self.batch_size >= 1, "be >= 1"),
                  "grad_accum": (self.grad_accum >= 1, "be >= 1"), "threads": (self.threads >= 0, "be >= 0"),
                  "seed": (0 <= self.seed < SEED_LIMIT, "be >= 0 and < 2**63 (a seed for numpy and torch)"),
                  "eval_every": (self.eval_every >= 0, "be >= 0 (0 disables evaluation)"),
                  "checkpoint_every": (self.checkpoint_every >= 1, "be >= 1"),
                  "keep_last": (self.keep_last >= 1, "be >= 1"), "log_every": (self.log_every >= 1, "be >= 1")})


@dataclass
class FinetuneConfig:
    """Replaces the [optim] schedule and the step count when training starts from --init-from."""

    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 50
    steps: int | None = None  # None keeps train.steps
    # all: every weight learns; controls: only the control tokens' embeddings (prompt tuning: every other
    # weight stays bit-identical; the tied output head shares those rows, which sampling masks)
    trainable: Literal["all", "controls"] = "all"
    # true: the run keeps the checkpoint's CONTROL and infilling tokens (INFILL, GAP) and their rows, whatever
    # [data] asks for (musicgpt.training.finetune); false: its vocabulary is the data's plus what [data] adds
    keep_steering: bool = True

    def __post_init__(self) -> None:
        _require({"lr": (self.lr > 0, "be > 0"), "min_lr": (0 <= self.min_lr <= self.lr, "be in [0, lr]"),
                  "warmup_steps": (self.warmup_steps >= 0, "be >= 0"),
                  "steps": (self.steps is None or self.steps >= 0, "be >= 0")})


@dataclass
class Config:
    """Everything `musicgpt train` needs besides paths."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # the dotted keys the file and the overrides set (the rest are defaults); not written to TOML
    explicit: frozenset[str] = field(default_factory=frozenset, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        m, t = self.model, self.train  # a lower bound (bf16 halves the activations): refused only if it cannot fit
        activations = m.forward_bytes(t.batch_size, m.n_ctx, training=True,
                                      value_bytes=4 if t.precision == "fp32" else 2)
        check_memory(OPTIMIZER_COPIES * m.weight_bytes() + activations,
                     f"training: {m.num_parameters():.3g} parameters and batches of train.batch_size {t.batch_size} x "
                     f"model.n_ctx {m.n_ctx} tokens", _train_device(t.device))

    def defaulted(self, section: str) -> bool:
        """Whether nothing in [section] was set: every value in it is a default."""
        return not any(key.split(".", 1)[0] == section for key in self.explicit)


def _train_device(name: str) -> str:
    """The device whose memory a run of `train.device` uses: CUDA under 'auto' when there is one."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package


def preset_names() -> list[str]:
    """The training presets that ship with musicgpt (musicgpt/configs/NAME.toml)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def config_path(name: str | Path) -> Path:
    """A config file: `name` itself when it is a file, else the shipped preset of that name."""
    path = Path(name)
    if path.is_file() or path.parent != Path(".") or path.suffix not in ("", ".toml"):
        return path  # a path: read (or fail to read) as given
    preset = PRESETS_DIR / f"{path.stem}.toml"
    if preset.is_file():
        return preset
    raise ConfigError(f"{name}: cannot read config (no such file, and no preset of that name; presets: "
                      f"{', '.join(preset_names())})")


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a TOML config (a path, or the name of a shipped preset), apply `key=value` overrides (dotted
    keys), and validate it."""
    path = config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); a TOML file is UTF-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for item in overrides:
        apply_override(raw, item)
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from nested dicts; a [model] `preset` key starts from that GPTConfig preset."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    explicit = frozenset(f"{section}.{key}" for section, values in raw.items() if isinstance(values, dict)
                         for key in values)
    model = raw.get("model")
    if isinstance(model, dict) and "preset" in model:
        raw["model"] = _expand_preset(model)
    config = _build(Config, raw, "")
    config.explicit = explicit
    return config


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set one `section.key=value` in a nested dict; the value is parsed as TOML, else kept as text."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: is a value, not a table (in --set {item!r})")
        node = child
    node[leaf] = parse_value(text.strip())


def parse_value(text: str) -> Any:
    """A command-line value: TOML syntax when it parses (1e-4, true, "x"), otherwise the bare text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as nested dicts of plain values (None values left out, as TOML has no null)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue  # bookkeeping (Config.explicit), not a setting
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def dump_toml(config: Config) -> str:
    """The config as TOML text that `load_config` reads back to an equal Config."""
    lines: list[str] = []
    for section, values in config_to_dict(config).items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _expand_preset(model: dict[str, Any]) -> dict[str, Any]:
    name = model.pop("preset")
    if name not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    return {**config_to_dict(PRESETS[name]), **model}


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from `raw`, checking every key and every value's type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known keys: {', '.join(names)})")
    kwargs = {name: _check(hints[name], raw[name], prefix + name) for name in names if name in raw}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # a dataclass's own __post_init__ validation ("key: must ...")
        raise ConfigError(f"{prefix}{exc}") from None


def _check(hint: Any, value: Any, key: str) -> Any:
    """`value` converted to `hint` (int -> float is the only widening), or ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {_name(hint)}, got {_describe(value)}")
    if origin is Literal:
        if value in args and type(value) is type(args[0]):
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{key}: expected one of {choices}, got {_describe(value)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        item = args[0] if args else Any
        items = [_check(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not _finite(value):  # TOML writes inf and nan; no setting means them (AdamW with eps = inf never steps)
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, hint):
        return value
    raise ConfigError(f"{key}: expected {_name(hint)}, got {_describe(value)}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
