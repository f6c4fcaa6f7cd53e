"""`musicgpt train`: train, fine-tune (--init-from) or continue (--resume) a model from a TOML config."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from musicgpt.commands._checkpoint_arg import CKPT_HELP


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt train`."""
    from musicgpt.training.config import preset_names

    parser.add_argument("--config", metavar="TOML|PRESET",
                        help="training config: a TOML file, or a preset that ships with musicgpt: "
                             + ", ".join(preset_names()))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value with a dotted key, e.g. --set train.steps=500 (repeatable)")
    parser.add_argument("--data", metavar="DIR",
                        help="a `musicgpt prepare` output, or a MIDI folder (prepared into RUN_DIR/data)")
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/CONFIG-TIMESTAMP)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a run from its last checkpoint (uses RUN_DIR/config.toml plus --set)")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="fine-tune: start from these weights with the [finetune] learning rate and steps; "
                             + CKPT_HELP.replace(" (the default: the bundled model)", ""))


def run(args: argparse.Namespace) -> int:
    """Train and print where the checkpoints went; 130/143 when stopped by SIGINT/SIGTERM (resumable)."""
    from musicgpt.training.config import load_config
    from musicgpt.errors import ConfigError
    from musicgpt.device import teardown
    from musicgpt.training.loop import train
    from musicgpt.training.rundir import resume_config

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.resume:
        if args.config:
            raise ConfigError("--config with --resume: a resumed run reads RUN_DIR/config.toml; change values with --set")
        if args.out and Path(args.out) != Path(args.resume):
            raise ConfigError("--out with --resume: a resumed run continues in its own directory")
        config, run_dir = resume_config(args.resume, args.overrides), Path(args.resume)
    else:
        if not args.config:
            raise ConfigError("--config: required (a TOML file or a preset name, e.g. --config tiny), unless --resume RUN_DIR")
        config = load_config(args.config, args.overrides)
        if args.out:
            run_dir = Path(args.out)
        elif distributed:
            raise ConfigError("--out: required under torchrun, so that every process writes the same run")
        else:
            run_dir = Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    init_from = args.init_from
    if init_from is not None:
        from musicgpt import checkpoint

        path, note = checkpoint.locate(init_from)
        if note:  # a run directory: record the checkpoint it stood for
            print(f"note: {note}", file=sys.stderr)
            init_from = str(path)
    if not args.resume:
        _say_defaults(config, args.config, fine_tuning=bool(args.init_from))
    try:
        result = train(config, run_dir, data=args.data, init_from=init_from, resume=bool(args.resume))
    finally:
        teardown()
    if not distributed or int(os.environ.get("RANK", "0")) == 0:
        best = f", best valid NLL {result.best_valid_nll:.4f} in {run_dir / 'best'}" if result.best_valid_nll else ""
        print(f"{run_dir}: step {result.step}, checkpoint {result.last_checkpoint}{best}", file=sys.stderr)
    if result.interrupted:
        return 143 if result.signal_name == "SIGTERM" else 130
    return 0


def _say_defaults(config, path: str, fine_tuning: bool) -> None:
    """A note for each of [model] and [train] that the config left wholly to the defaults."""
    m, t = config.model, config.train
    if config.defaulted("model") and not fine_tuning:
        print(f"note: {path} sets nothing in [model]: training the default model (n_layer={m.n_layer}, "
              f"n_head={m.n_head}, d_model={m.d_model}, n_ctx={m.n_ctx}, position={m.position})", file=sys.stderr)
    if config.defaulted("train"):
        print(f"note: {path} sets nothing in [train]: the defaults (steps={t.steps}, batch_size={t.batch_size}, "
              f"precision={t.precision}, device={t.device})", file=sys.stderr)
