"""The one way every subcommand names a model: `CKPT`, a positional argument (`--checkpoint CKPT` as an alias).

CKPT is a checkpoint directory, a training run directory (its best/, else its latest checkpoint; the
command says which it took), or `bundled`, the default: the model that ships inside the package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CKPT_HELP = ("a checkpoint directory, a training run directory (its best/, else its latest checkpoint) or "
             "'bundled' (the default: the bundled model)")


def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    """The optional positional CKPT and its alias --checkpoint."""
    parser.add_argument("checkpoint", nargs="?", metavar="CKPT", help=CKPT_HELP)
    parser.add_argument("--checkpoint", dest="checkpoint_option", metavar="CKPT", help="the same as CKPT")


def checkpoint_of(args: argparse.Namespace) -> Path:
    """The checkpoint directory the arguments name (the bundled model when none), saying which when it was
    a run directory; a MusicGPTError for a name that is no checkpoint."""
    from musicgpt import checkpoint
    from musicgpt.errors import ConfigError

    given, option = args.checkpoint, getattr(args, "checkpoint_option", None)
    if given is not None and option is not None and str(given) != str(option):
        raise ConfigError(f"CKPT {given} and --checkpoint {option}: give the model once")
    path, note = checkpoint.locate(given if given is not None else option)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return path


def model_of(args: argparse.Namespace):
    """(model, tokenizer) the arguments name: loaded by musicgpt.checkpoint, read with the tokenizer it carries."""
    from musicgpt.model import load_model
    from musicgpt.tokens.registry import tokenizer_of

    model = load_model(checkpoint_of(args))
    return model, tokenizer_of(model)
