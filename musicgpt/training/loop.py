"""The training loop: AdamW + warmup/cosine, accumulation, bf16 autocast, DDP, atomic resumable checkpoints.

`train(config, run_dir, data=...)` runs a `Trainer`: it sets up the device and process group
(musicgpt.device), the corpus and batches (musicgpt.training.data), the model (new, --init-from a
checkpoint, or --resume from the run's last checkpoint), the optimizer (musicgpt.training.optim),
then steps, logs (musicgpt.training.log), evaluates and checkpoints into the run directory
(musicgpt.training.rundir) until the step count or a stop signal. A fine-tune keeps the control and
infilling tokens of a steerable checkpoint, and freezes the rows its crops never hold
(musicgpt.training.finetune).

Resuming restores weights, optimizer moments, the step (the schedule is a function of it), the data
position (batches are a function of the step, see musicgpt.training.data) and every RNG, so the
continued loss trajectory is that of an uninterrupted run, bit for bit in fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from musicgpt import checkpoint
from musicgpt.device import autocast_dtype, hardware, setup_distributed
from musicgpt.errors import CheckpointError, ConfigError, MusicGPTError
from musicgpt.model.config import GPTConfig
from musicgpt.model.gpt import MusicGPT, load_checkpoint, load_model, save_model
from musicgpt.training import finetune, rundir
from musicgpt.training.config import Config
from musicgpt.corpus.shards import open_split, read_manifest
from musicgpt.tokens.base import Tokenizer
from musicgpt.tokens.registry import load_tokenizer
from musicgpt.training.conditioning import Conditioner, composer_headers, doc_composers
from musicgpt.training.data import (BatchStream, CropSampler, load_data_tokenizer, make_augment, optional_split,
                                    resolve_data, specials_of, valid_windows)
from musicgpt.training.evaluate import score
from musicgpt.training.log import MetricsLog
from musicgpt.training.optim import Schedule, parameter_groups, schedule_for
from musicgpt.training.signals import StopFlag
from musicgpt.training.rundir import BEST, CHECKPOINTS, checkpoint_dirs

__all__ = ["Trainer", "TrainResult", "train", "weights_fingerprint"]


@dataclass
class TrainResult:
    """What a finished (or interrupted) run left behind."""

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    best_valid_nll: float | None
    interrupted: bool = False
    signal_name: str | None = None


def _unwrap(model: nn.Module) -> MusicGPT:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


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
            if self.init_from is not None:  # fail before anything is written; record the model actually trained
                self.config = finetune.checkpoint_config(self.config, self.init_from, say=self.d.main)
            if self.d.main:
                self._start_run_dir()
        if self.d.enabled:
            dist.barrier()

        self.data_dir = resolve_data(self.data_arg, self.run_dir, config.data.workers, self.d)
        self.manifest = read_manifest(self.data_dir)
        self.tokenizer = self._run_tokenizer(resume)
        self.frozen = finetune.untrained_rows(self.tokenizer, self.manifest, config.data)  # kept, not trained
        self.specials = specials_of(self.tokenizer)
        self.amp_dtype = autocast_dtype(tc.precision, self.d.device)

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model = self._build_model(resume)
        if not resume and self.model.config != self.config.model:  # the vocabulary comes from the tokenizer
            self.config = rundir.with_model(self.config, self.model.config, self.run_dir if self.d.main else None)
        self.controls_only = finetune.restrict_training(self.model, self.tokenizer, self.frozen, config, self.init_from)
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
        conditioner = Conditioner(self.tokenizer, doc_composers(self.manifest, "train"), config.data.control_dropout,
                                  config.data.uncond_rate, config.data.infill_rate, config.data.controls)
        self.sampler = CropSampler(self.train_split, context, tc.batch_size, tc.seed, self.d.rank, augment,
                                   self.specials, stretch_margin=config.data.stretch if augment else 0.0,
                                   conditioner=conditioner)
        valid = optional_split(self.data_dir, "valid")
        headers = composer_headers(self.tokenizer, self.manifest, "valid", valid) if self.controls_only else None
        items = valid_windows(valid, context, config.data.valid_windows, self.specials, headers) if valid else []
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
        run = {"data": self.data_arg, "init_from": self.init_from, "world_size": self.d.world,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "hardware": hardware(self.d.device, self.config.train.precision)}
        rundir.start_run_dir(self.run_dir, self.config, run)

    def _read_run_json(self, data, init_from) -> None:
        if self.d.main:  # a kill mid-way through replacing a checkpoint: put the newest complete copy back
            for path in rundir.recover(self.run_dir):
                print(f"note: {path} was missing after an interrupted write; restored it", file=sys.stderr)
        run = rundir.read_run_json(self.run_dir)
        self.data_arg = str(data) if data is not None else run["data"]
        self.init_from = run.get("init_from")
        if init_from is not None:
            raise ConfigError("--init-from cannot be combined with --resume (the run's weights come from its checkpoint)")
        changed = rundir.config_changes(rundir.resume_config(self.run_dir), self.config)
        if changed and self.d.main:  # overrides at resume (a shortened schedule, say) stay on the record
            rundir.record_resume(self.run_dir, run, changed)
        if run.get("world_size", 1) != self.d.world and self.d.main:
            print(f"note: resuming a run of {run.get('world_size')} processes on {self.d.world}: "
                  "the data streams will differ from the original run", file=sys.stderr)

    def _build_model(self, resume: bool) -> MusicGPT:
        if resume:  # the shape comes from the run's own checkpoint (its weights are loaded later)
            dirs = checkpoint_dirs(self.run_dir)
            if not dirs:
                raise CheckpointError(f"--resume {self.run_dir}: no complete checkpoint in {self.run_dir / CHECKPOINTS}")
            model = MusicGPT(GPTConfig.from_checkpoint(dirs[-1]))
        elif self.init_from is not None:
            model, tokenizer = load_checkpoint(self.init_from)
            model, note = finetune.fit_checkpoint(model, tokenizer, self.tokenizer, self.frozen, self.config,
                                                  f"--init-from {self.init_from}")
            if note and self.d.main:
                print(f"note: fine-tuning {self.init_from}: {note}", file=sys.stderr)
            model.train()
        else:
            cfg = self.config.model
            vocab = self.tokenizer.vocab_size
            if cfg.vocab_size != vocab:
                if "model.vocab_size" in self.config.explicit:
                    raise ConfigError(f"model.vocab_size: {cfg.vocab_size} disagrees with the tokenizer of {self.data_dir} "
                                      f"({vocab} tokens); leave it out, it is taken from the tokenizer")
                cfg = replace(cfg, vocab_size=vocab)
            model = MusicGPT(cfg)
        return model.to(self.d.device)

    def _run_tokenizer(self, resume: bool) -> Tokenizer:
        """The corpus's tokenizer with the config's controls and infilling tokens and those a fine-tune keeps (a
        resumed run: its own)."""
        dirs = checkpoint_dirs(self.run_dir) if resume else []
        if dirs and (dirs[-1] / "tokenizer.json").is_file():
            return load_tokenizer(dirs[-1] / "tokenizer.json")
        return finetune.finetune_tokenizer(load_data_tokenizer(self.data_dir), self.manifest, self.config,
                                           finetune.source_tokenizer(self.init_from), f"--init-from {self.init_from}")

    def _load_latest(self) -> None:
        dirs = checkpoint_dirs(self.run_dir)
        if not dirs:
            raise CheckpointError(f"--resume {self.run_dir}: no complete checkpoint in {self.run_dir / CHECKPOINTS}")
        path = self.resume_from = dirs[-1]
        weights = load_model(path)
        self.model.load_state_dict(weights.state_dict())
        self.optimizer.load_state_dict(checkpoint.load_state(path, "optimizer"))
        state = checkpoint.load_state(path, "trainer")
        self.step, self.tokens_seen, self.elapsed = state["step"], state["tokens"], state["elapsed"]
        self.best_valid = state["best_valid"]
        rundir.set_rng_state(state["rng"])
        per_rank = state["torch_rng"]
        if self.d.rank < len(per_rank):
            torch.set_rng_state(per_rank[self.d.rank])
        if self.d.main:
            print(f"resuming {self.run_dir} from {path.name} (step {self.step})", file=sys.stderr)
        saved = Schedule(**state["schedule"]) if "schedule" in state else self.schedule
        if saved.same_settings(self.schedule):
            self.schedule = saved  # exactly the schedule the run was on: the curve of an uninterrupted run
        else:
            self.schedule = self.schedule.continued(saved, self.step)
            if self.d.main:
                print(f"note: the schedule changed at step {self.step} (to {self.schedule.total} steps, peak "
                      f"{self.schedule.peak:g}, floor {self.schedule.floor:g}): the learning rate goes on from "
                      f"{self.schedule.lr(self.step):.3g} and falls to {self.schedule.floor:g} by step "
                      f"{self.schedule.total}, without restarting its warmup", file=sys.stderr)

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
        torch_rng = rundir.gather_torch_rng(self.d)
        path = rundir.step_dir(self.run_dir, self.step)
        if self.d.main:
            trainer = {"step": self.step, "tokens": self.tokens_seen, "elapsed": self.elapsed,
                       "best_valid": self.best_valid, "batch_index": self.step * self.config.train.grad_accum,
                       "world_size": self.d.world, "schedule": vars(self.schedule), "total_steps": self.total_steps,
                       "rng": rundir.rng_state(), "torch_rng": torch_rng}
            save_model(self.model, path, self.tokenizer, meta=self._meta(),
                            states={"optimizer": self.optimizer.state_dict(), "trainer": trainer})
            rundir.prune(self.run_dir, max(1, self.config.train.keep_last))
        if self.d.enabled:
            dist.barrier()
        return path

    def _save_best(self) -> None:
        if self.d.main:
            save_model(self.model, self.run_dir / BEST, self.tokenizer, meta=self._meta())

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
            rundir.clean_partial(self.run_dir)
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
