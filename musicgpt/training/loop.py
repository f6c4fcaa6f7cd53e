"""The training loop: AdamW + warmup/cosine, accumulation, bf16 autocast, DDP, atomic resumable checkpoints.

A run directory holds everything about one run:

    RUN_DIR/config.toml               the full config after overrides (what --resume reads back)
    RUN_DIR/run.json                  data directory, --init-from, tokenizer, world size
    RUN_DIR/metrics.csv               train loss, lr, tokens/s, valid NLL (see musicgpt.training.log)
    RUN_DIR/checkpoints/step-NNNNNNN/ the last `keep_last` checkpoints, each loadable by generate/evaluate,
                                      plus optimizer.* (AdamW state), trainer.* (step, schedule, data
                                      position, RNG states): safetensors + json, no pickle
    RUN_DIR/best/                     the weights with the lowest valid NLL so far
    RUN_DIR/data/                     the prepared corpus when --data was a MIDI folder

Resuming restores weights, optimizer moments, the step (the schedule is a function of it), the data
position (batches are a function of the step, see musicgpt.training.data) and every RNG, so the continued
loss trajectory is that of an uninterrupted run, bit for bit in fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from musicgpt import checkpoint
from musicgpt.training.config import Config, config_to_dict, dump_toml, load_config
from musicgpt.training.data import BatchStream, CropSampler, Specials, Split, open_split, valid_windows
from musicgpt.errors import CheckpointError, ConfigError, MusicGPTError
from musicgpt.training.evaluate import score
from musicgpt._cpuinfo import cpu_model
from musicgpt.model.gpt import MusicGPT
from musicgpt.training.log import MetricsLog

CHECKPOINTS = "checkpoints"
BEST = "best"
STEP_PREFIX = "step-"


@dataclass
class TrainResult:
    """What a finished (or interrupted) run left behind."""

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    best_valid_nll: float | None
    interrupted: bool = False
    signal_name: str | None = None


# ---------------------------------------------------------------------------------------------
# distributed setup


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size and device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, device=device)


def hardware(device: torch.device, precision: str = "auto") -> dict[str, Any]:
    """What a run trains on, for its run.json (model cards cite it): device, GPU, CPU, autocast, torch."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    amp = autocast_dtype(precision, device)
    return {"device": device.type, "gpu": gpu, "cpu": cpu_model(),
            "autocast": str(amp).removeprefix("torch.") if amp is not None else None,
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def pick_device(name: str) -> torch.device:
    """'auto' (CUDA when available, else CPU) or an explicit torch device name, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but no CUDA device is available")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked for, or under 'auto' where it is fast (CUDA with bf16, CPUs with AMX); else None (fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if precision == "auto":  # without AMX bf16 matmuls are no faster than fp32 on a CPU
            supported = supported and _cpu_has_amx()
    if precision == "bf16" and not supported:
        raise ConfigError(f"train.precision: bf16 is not supported on {device}; use fp32 or auto")
    return torch.bfloat16 if supported else None


def _cpu_has_amx() -> bool:
    init_amx = getattr(torch._C._cpu, "_init_amx", None)
    try:
        return bool(init_amx()) if init_amx is not None else False
    except RuntimeError:
        return False


# ---------------------------------------------------------------------------------------------
# optimizer and schedule


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on Linear weights only (not embeddings, relative embeddings, norms, biases)."""
    no_decay_modules = (nn.Embedding, nn.LayerNorm)
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, no_decay_modules) or p.dim() < 2 or "emb" in full.rsplit(".", 1)[-1]:
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to `peak`, then cosine decay to `floor` at `total` steps."""

    peak: float
    floor: float
    warmup: int
    total: int

    def lr(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + 0.5 * (self.peak - self.floor) * (1.0 + math.cos(math.pi * progress))


def schedule_for(config: Config, finetune: bool) -> tuple[Schedule, int]:
    """The schedule and step count: [optim] and train.steps, or [finetune] with --init-from."""
    if finetune:
        ft = config.finetune
        steps = ft.steps if ft.steps is not None else config.train.steps
        return Schedule(ft.lr, ft.min_lr, ft.warmup_steps, steps), steps
    o = config.optim
    return Schedule(o.lr, o.min_lr, o.warmup_steps, config.train.steps), config.train.steps


# ---------------------------------------------------------------------------------------------
# data


def resolve_data(path: str | Path, run_dir: Path, workers: int, is_main: bool, d: Dist) -> Path:
    """A prepared corpus directory: `path` itself, or RUN_DIR/data prepared from a MIDI folder."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    if not path.is_dir():
        raise MusicGPTError(f"--data {path}: no such directory (want a `musicgpt prepare` output or a MIDI folder)")
    out = run_dir / "data"
    if is_main and not (out / "manifest.json").is_file():
        from musicgpt.corpus.prepare import prepare

        print(f"preparing {path} into {out}", file=sys.stderr)
        print(prepare(path, out, jobs=workers).summary(), file=sys.stderr)
    if d.enabled:
        dist.barrier()
    return out


def load_data_tokenizer(data_dir: Path):
    """The tokenizer a prepared corpus was made with."""
    from musicgpt.tokens.performance import load_tokenizer

    path = data_dir / "tokenizer.json"
    if not path.is_file():
        raise MusicGPTError(f"{data_dir}: tokenizer.json is missing (not a `musicgpt prepare` output?)")
    return load_tokenizer(path)


def specials_of(tokenizer) -> Specials:
    """PAD/BOS/EOS ids of a tokenizer."""
    return Specials(pad=tokenizer.pad_id, bos=tokenizer.bos_id, eos=tokenizer.eos_id)


def make_augment(tokenizer, transpose: int, stretch: float):
    """On-the-fly augmentation for performance tokens; None (with a note) for other tokenizers."""
    if transpose == 0 and stretch == 0:
        return None
    if getattr(tokenizer, "type", None) != "performance":
        print(f"note: no augmentation for {tokenizer.type!r} tokens (performance tokens only)", file=sys.stderr)
        return None
    from musicgpt.tokens.augment import make_augmenter

    return make_augmenter(tokenizer, transpose=transpose, stretch=stretch)


def _optional_split(data_dir: Path, split: str) -> Split | None:
    try:
        s = open_split(data_dir, split)
    except (MusicGPTError, FileNotFoundError):
        return None
    return s if s.n_tokens > 0 else None


# ---------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete step checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and checkpoint.has_state(p, "trainer") and checkpoint.has_state(p, "optimizer")]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def _clean_partial(run_dir: Path) -> None:
    """Remove temporary and half-deleted directories a killed run may have left."""
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
    for p in run_dir.glob(f".{BEST}.*"):
        shutil.rmtree(p, ignore_errors=True)


def _prune(run_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(run_dir)[: max(0, len(checkpoint_dirs(run_dir)) - keep)]:
        trash = old.parent / f".trash-{old.name}"
        os.rename(old, trash)  # atomic: a half-deleted directory never looks like a checkpoint
        shutil.rmtree(trash, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, CUDA) random states, pickle-free."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "numpy": np.random.get_state(legacy=False),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of rng_state."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_torch_rng(d: Dist) -> list[torch.Tensor]:
    """The torch CPU RNG state of every rank (dropout differs per rank)."""
    mine = torch.get_rng_state()
    if not d.enabled:
        return [mine]
    device = d.device if d.device.type == "cuda" else torch.device("cpu")
    out = [torch.empty_like(mine, device=device) for _ in range(d.world)]
    dist.all_gather(out, mine.to(device))
    return [t.cpu() for t in out]


def _unwrap(model: nn.Module) -> MusicGPT:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


# ---------------------------------------------------------------------------------------------
# signals


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: stopping after this step and writing a checkpoint "
              "(Ctrl-C again to abort without one)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def set(self) -> bool:
        return self.signal_name is not None


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------
# the run


class Trainer:
    """One training run; `run()` trains until `steps` or a stop signal and returns a TrainResult."""

    def __init__(self, config: Config, run_dir: str | Path, *, data: str | Path | None = None,
                 init_from: str | Path | None = None, resume: bool = False) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        tc = config.train
        self.d = setup_distributed(tc.device)
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        self.resume_from: Path | None = None
        if resume:
            self._read_run_json(data, init_from)
        else:
            if data is None:
                data = config.data.path
            if data is None:
                raise ConfigError("data.path: no training data (pass --data DIR or set data.path in the config)")
            self.data_arg, self.init_from = str(data), (str(init_from) if init_from is not None else None)
            if self.init_from is not None:  # fail before anything is written
                checkpoint.resolve(None if self._init_is_bundled() else self.init_from)
            if self.d.main:
                self._start_run_dir()
        if self.d.enabled:
            dist.barrier()

        self.data_dir = resolve_data(self.data_arg, self.run_dir, config.data.workers, self.d.main, self.d)
        self.tokenizer = load_data_tokenizer(self.data_dir)
        self.specials = specials_of(self.tokenizer)
        self.amp_dtype = autocast_dtype(tc.precision, self.d.device)

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model = self._build_model(resume)
        self.schedule, self.total_steps = schedule_for(config, finetune=self.init_from is not None)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.optim.weight_decay), lr=self.schedule.lr(0),
            betas=(config.optim.beta1, config.optim.beta2), eps=config.optim.eps,
            foreach=self.d.device.type == "cuda" or None)
        torch.manual_seed(tc.seed + 1000 * self.d.rank)  # dropout differs per rank, reproducibly

        self.step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.best_valid: float | None = None
        if resume:
            self._load_latest()

        context = self.model.config.n_ctx
        self.train_split = open_split(self.data_dir, "train")
        augment = make_augment(self.tokenizer, config.data.transpose, config.data.stretch)
        self.sampler = CropSampler(self.train_split, context, tc.batch_size, tc.seed, self.d.rank, augment,
                                   self.specials, stretch_margin=config.data.stretch if augment else 0.0)
        valid = _optional_split(self.data_dir, "valid")
        items = valid_windows(valid, context, config.data.valid_windows, self.specials) if valid else []
        self.valid_items = items[self.d.rank :: self.d.world]
        self.tokens_per_step = tc.batch_size * context * tc.grad_accum * self.d.world

        self.train_model: nn.Module = self.model
        if tc.compile:
            self.train_model = torch.compile(self.train_model)
        if self.d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.train_model, device_ids=[self.d.device] if self.d.device.type == "cuda" else None)

    # ---- setup ----------------------------------------------------------------------------------

    def _start_run_dir(self) -> None:
        if checkpoint_dirs(self.run_dir):
            raise MusicGPTError(f"{self.run_dir}: already holds checkpoints; use --resume {self.run_dir} "
                                "to continue it, or another --out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.toml").write_text(dump_toml(self.config), encoding="utf-8")
        run = {"data": self.data_arg, "init_from": self.init_from, "world_size": self.d.world,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "hardware": hardware(self.d.device, self.config.train.precision)}
        (self.run_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")

    def _read_run_json(self, data, init_from) -> None:
        path = self.run_dir / "run.json"
        if not path.is_file():
            raise CheckpointError(f"--resume {self.run_dir}: not a training run directory (run.json is missing)")
        run = json.loads(path.read_text(encoding="utf-8"))
        self.data_arg = str(data) if data is not None else run["data"]
        self.init_from = run.get("init_from")
        if init_from is not None:
            raise ConfigError("--init-from cannot be combined with --resume (the run's weights come from its checkpoint)")
        changed = config_changes(resume_config(self.run_dir), self.config)
        if changed and self.d.main:  # overrides at resume (a shortened schedule, say) stay on the record
            dirs = checkpoint_dirs(self.run_dir)
            run.setdefault("resumes", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                  "from": dirs[-1].name if dirs else None, "changed": changed})
            path.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        if run.get("world_size", 1) != self.d.world and self.d.main:
            print(f"note: resuming a run of {run.get('world_size')} processes on {self.d.world}: "
                  "the data streams will differ from the original run", file=sys.stderr)

    def _build_model(self, resume: bool) -> MusicGPT:
        if resume:  # the shape comes from the run's own checkpoint (its weights are loaded later)
            dirs = checkpoint_dirs(self.run_dir)
            if not dirs:
                raise CheckpointError(f"--resume {self.run_dir}: no complete checkpoint in {self.run_dir / CHECKPOINTS}")
            model = MusicGPT(checkpoint.read_config(dirs[-1])[0])
        elif self.init_from is not None:
            model, tokenizer = checkpoint.load(None if self._init_is_bundled() else self.init_from)
            if tokenizer is not None and tokenizer.to_dict() != self.tokenizer.to_dict():
                raise CheckpointError(f"--init-from {self.init_from}: its tokenizer differs from the one of "
                                      f"{self.data_dir} (prepare the data with the checkpoint's tokenizer)")
            model.train()
        else:
            cfg = self.config.model
            vocab = self.tokenizer.vocab_size
            if cfg.vocab_size != vocab:
                cfg = replace(cfg, vocab_size=vocab)
            model = MusicGPT(cfg)
        return model.to(self.d.device)

    def _init_is_bundled(self) -> bool:
        return self.init_from == "bundled" and not Path("bundled").exists()

    def _load_latest(self) -> None:
        dirs = checkpoint_dirs(self.run_dir)
        if not dirs:
            raise CheckpointError(f"--resume {self.run_dir}: no complete checkpoint in {self.run_dir / CHECKPOINTS}")
        path = self.resume_from = dirs[-1]
        weights = checkpoint.load_model(path)
        self.model.load_state_dict(weights.state_dict())
        self.optimizer.load_state_dict(checkpoint.load_state(path, "optimizer"))
        state = checkpoint.load_state(path, "trainer")
        self.step, self.tokens_seen, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.best_valid = state["best_valid"]
        set_rng_state(state["rng"])
        per_rank = state["torch_rng"]
        if self.d.rank < len(per_rank):
            torch.set_rng_state(per_rank[self.d.rank])
        if self.d.main:
            print(f"resuming {self.run_dir} from {path.name} (step {self.step})", file=sys.stderr)

    # ---- the loop -------------------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.amp_dtype)

    def train_step(self, stream: BatchStream) -> tuple[float, float]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm)."""
        tc = self.config.train
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.d.device)
        for micro in range(tc.grad_accum):
            x, y = next(stream)
            x = x.to(self.d.device, non_blocking=True)  # (B, L)
            y = y.to(self.d.device, non_blocking=True)  # (B, L)
            sync = micro == tc.grad_accum - 1 or not self.d.enabled
            with (contextlib.nullcontext() if sync else self.train_model.no_sync()), self._autocast():
                loss = self.train_model(x, y).loss / tc.grad_accum
            loss.backward()
            total += loss.detach()
        clip = self.config.optim.grad_clip
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total), float(norm)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean NLL (nats per event) over the fixed valid windows, all ranks together."""
        if not self.valid_items and not self.d.enabled:
            return None
        self.model.eval()
        try:
            totals = score(self.model, self.valid_items, self.model.config.n_ctx, self.config.train.batch_size,
                           self.d.device, self.amp_dtype)
        finally:
            self.model.train()
        sums = torch.tensor([totals.nll_sum, float(totals.count)], dtype=torch.float64, device=self.d.device)
        if self.d.enabled:
            dist.all_reduce(sums)
        return float(sums[0] / sums[1]) if sums[1] > 0 else None

    def save(self) -> Path:
        """Write checkpoints/step-N atomically (rank 0), then prune to keep_last."""
        torch_rng = _gather_torch_rng(self.d)
        path = self.run_dir / CHECKPOINTS / f"{STEP_PREFIX}{self.step:07d}"
        if self.d.main:
            trainer = {"step": self.step, "tokens": self.tokens_seen, "elapsed": self.elapsed,
                       "best_valid": self.best_valid, "batch_index": self.step * self.config.train.grad_accum,
                       "world_size": self.d.world, "schedule": vars(self.schedule), "total_steps": self.total_steps,
                       "rng": rng_state(), "torch_rng": torch_rng}
            checkpoint.save(self.model, path, self.tokenizer, meta=self._meta(),
                            states={"optimizer": self.optimizer.state_dict(), "trainer": trainer})
            _prune(self.run_dir, max(1, self.config.train.keep_last))
        if self.d.enabled:
            dist.barrier()
        return path

    def _save_best(self) -> None:
        if self.d.main:
            checkpoint.save(self.model, self.run_dir / BEST, self.tokenizer, meta=self._meta())

    def _meta(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens_seen, "valid_nll": self.best_valid,
                "data": str(self.data_dir), "init_from": self.init_from}

    def _stop_requested(self, flag: StopFlag) -> bool:
        if not self.d.enabled:
            return flag.set
        wants = torch.tensor([1.0 if flag.set else 0.0], device=self.d.device)
        dist.all_reduce(wants, op=dist.ReduceOp.MAX)
        return bool(wants.item())

    def run(self) -> TrainResult:
        """Train to the configured step count, or until SIGINT/SIGTERM (then checkpoint and return)."""
        tc = self.config.train
        if self.d.main:
            _clean_partial(self.run_dir)
        log = MetricsLog(self.run_dir, resume_step=self.step) if self.d.main else None
        stream = BatchStream(self.sampler, start=self.step * tc.grad_accum, prefetch=self.config.data.prefetch,
                             pin_memory=self.d.device.type == "cuda")
        bar = self._progress()
        last_path: Path | None = self.resume_from
        window_start, window_tokens = time.perf_counter(), 0
        interrupted = False
        self.model.train()
        try:
            with StopFlag() as flag:
                while self.step < self.total_steps:
                    t0 = time.perf_counter()
                    loss, norm = self.train_step(stream)
                    self.step += 1
                    self.tokens_seen += self.tokens_per_step
                    self.elapsed += time.perf_counter() - t0
                    window_tokens += self.tokens_per_step
                    last = self.step == self.total_steps
                    if self.step % tc.log_every == 0 or last:
                        loss = self._mean_over_ranks(loss)  # the same value on every rank: they stop together
                        if not math.isfinite(loss):
                            raise MusicGPTError(f"training diverged at step {self.step} (loss {loss}); "
                                                "lower optim.lr or raise optim.warmup_steps")
                        rate = window_tokens / max(1e-9, time.perf_counter() - window_start)
                        window_start, window_tokens = time.perf_counter(), 0
                        if log is not None:
                            log.log(self.step, tokens=self.tokens_seen, time_s=self.elapsed,
                                    lr=self.schedule.lr(self.step - 1), train_loss=loss, grad_norm=norm,
                                    tokens_per_s=rate)
                        if bar is not None:
                            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
                    if bar is not None:
                        bar.update(1)
                    if tc.eval_every > 0 and (self.step % tc.eval_every == 0 or last):
                        nll = self.evaluate()
                        if nll is not None:
                            improved = self.best_valid is None or nll < self.best_valid
                            if improved:
                                self.best_valid = nll
                                self._save_best()
                            if log is not None:
                                log.log(self.step, valid_nll=nll, valid_ppl=math.exp(min(nll, 50.0)))
                            if bar is not None:
                                bar.write(f"step {self.step}: valid NLL {nll:.4f} nats/event"
                                          + (" (best)" if improved else ""))
                    stop = self._stop_requested(flag)
                    if last or stop or self.step % tc.checkpoint_every == 0:
                        last_path = self.save()
                    if stop:
                        interrupted = True
                        break
                if last_path is None:
                    last_path = self.save()  # a run of zero steps still leaves a loadable checkpoint
        finally:
            stream.close()
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
        if self.d.enabled:
            self._report_sync()
        if interrupted and self.d.main:
            print(f"{flag.signal_name}: stopped at step {self.step}; checkpoint {last_path}; "
                  f"continue with: musicgpt train --resume {self.run_dir}", file=sys.stderr)
        return TrainResult(self.run_dir, self.step, last_path, self.best_valid, interrupted, flag.signal_name)

    def _mean_over_ranks(self, value: float) -> float:
        if not self.d.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.d.device)
        dist.all_reduce(t)
        return float(t.item()) / self.d.world

    def _progress(self):
        if not (self.d.main and self.config.train.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                    desc=self.run_dir.name, file=sys.stderr)

    def _report_sync(self) -> None:
        """Print a fingerprint of the final weights on every rank (they must agree under DDP)."""
        digest = weights_fingerprint(self.model)
        sys.stdout.write(f"rank {self.d.rank}/{self.d.world}: step {self.step}, weights fingerprint {digest}\n")
        sys.stdout.flush()  # one write per line: the ranks share the terminal


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's bytes: equal fingerprints mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(_unwrap(model).state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def train(config: Config, run_dir: str | Path, *, data: str | Path | None = None,
          init_from: str | Path | None = None, resume: bool = False) -> TrainResult:
    """Train (or fine-tune with init_from, or continue with resume) and return what the run left behind."""
    return Trainer(config, run_dir, data=data, init_from=init_from, resume=resume).run()


def config_changes(before: Config, after: Config) -> dict[str, list]:
    """The dotted keys whose values differ between two configs, as {key: [before, after]}."""
    a, b = config_to_dict(before), config_to_dict(after)
    return {f"{section}.{key}": [a[section].get(key), value]
            for section, values in b.items() for key, value in values.items() if a[section].get(key) != value}


def resume_config(run_dir: str | Path, overrides=()) -> Config:
    """The config a run was started with (RUN_DIR/config.toml), with `key=value` overrides."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: not a training run directory (config.toml is missing)")
    return load_config(path, overrides)


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
