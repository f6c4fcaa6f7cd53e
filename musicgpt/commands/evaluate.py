"""`musicgpt evaluate [CKPT] --data DIR|FILES`: NLL per event, perplexity, accuracy, NLL per event type."""

from __future__ import annotations

import argparse

from musicgpt.commands._args import positive_int
from musicgpt.commands._checkpoint_arg import add_checkpoint_argument, checkpoint_of


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt evaluate`."""
    add_checkpoint_argument(parser)
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR|FILE",
                        help="a `musicgpt prepare` output (uses --split), or MIDI folders/files (tokenized here)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"),
                        help="split of a prepared directory (default: test)")
    parser.add_argument("--context", type=positive_int, metavar="L",
                        help="window length (default: the trained context; longer works with relative attention)")
    parser.add_argument("--stride", type=int, metavar="S",
                        help="window step (default: L, non-overlapping); smaller gives every token more context")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                        help="fp32 (default, exact figures) or bf16 autocast (faster on AMX CPUs and GPUs)")
    steer = parser.add_mutually_exclusive_group()
    steer.add_argument("--control", action="append", default=[], metavar="NAME=VALUE",
                       help="a model trained with controls: score under this control (repeatable), e.g. composer=Mozart "
                            "(default: each document's own composer where the prepared corpus records it)")
    steer.add_argument("--no-controls", action="store_true", help="score without any control (the plain model)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the figures (one of them the line `nll <number>`)."""
    from musicgpt.device import pick_device
    from musicgpt.errors import ConfigError
    from musicgpt.model.config import GPTConfig
    from musicgpt.training.evaluate import check_context, evaluate_checkpoint, write_json

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    path = checkpoint_of(args)
    config = GPTConfig.from_checkpoint(path)
    check_context(config, args.context or config.n_ctx, pick_device(args.device), args.precision)  # before loading
    result = evaluate_checkpoint(path, args.data, split=args.split, context=args.context,
                                 stride=args.stride, batch_size=args.batch_size, device=args.device,
                                 precision=args.precision, progress=not args.quiet, controls=args.control,
                                 own_controls=not args.no_controls)
    print(result.format())
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0
