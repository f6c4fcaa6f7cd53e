"""The `musicgpt` command: a thin dispatcher over musicgpt.commands.<name>.

Subcommand modules are imported only when chosen, so `musicgpt --help` is instant and
commands that need no torch (prepare, view, metrics) never load it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line summary; the module musicgpt.commands.<name> does the work.
COMMANDS: dict[str, str] = {
    "prepare": "tokenize a MIDI corpus into memory-mappable shards with a manifest",
    "train": "train or fine-tune a model from a TOML config",
    "evaluate": "NLL per event, perplexity and accuracy of a checkpoint on MIDI data",
    "generate": "continue a primer (or start from nothing) and write MIDI, arcs and a viewer",
    "attend": "compute attention arcs over the notes of an existing MIDI file",
    "heads": "a head atlas: what every attention head attends to, averaged over pieces (JSON and PNGs)",
    "view": "render an arcs.json file as a self-contained HTML viewer (or a PNG)",
    "info": "print a checkpoint's modules, parameter counts and tensors; plot its embeddings",
    "plot": "draw the train/valid curves of a training run to PNG",
    "metrics": "compare generated MIDI against reference MIDI with musical statistics, or check it for copies",
    "studio": "a local web app: generate from a primer and watch the notes and their attention arcs appear live",
    "live": "duet with the model on MIDI ports: play a keyboard or a DAW track, the model answers",
    "bench": "run the project's benchmarks and render docs/benchmarks.md",
}


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line, if any."""
    positional = [a for a in argv if not a.startswith("-")]
    return positional[0] if positional and positional[0] in COMMANDS else None


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, str | None]:
    """The top-level parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="musicgpt",
        description="Symbolic piano music generation with a relative-attention GPT.",
    )
    from musicgpt import __version__

    parser.add_argument("--version", action="version", version=f"musicgpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = chosen_command(argv)
    for name, summary in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if name == chosen:
            _command_module(name).configure(p)
    return parser, chosen


def _command_module(name: str):
    return importlib.import_module(f"musicgpt.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `musicgpt` console script."""
    from musicgpt.errors import MusicGPTError

    argv = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # a file name's undecodable bytes are printed as they are
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    chosen = chosen_command(argv)
    threads = _torch_threads()
    try:
        parser, _ = build_parser(argv)
        args = parser.parse_args(argv)
        if chosen is None or args.command is None:
            parser.print_help()
            return 2
        return int(_command_module(chosen).run(args) or 0)
    except MusicGPTError as exc:
        print(f"musicgpt {chosen}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"musicgpt {chosen}: interrupted", file=sys.stderr)
        return 130
    finally:
        if threads is not None:  # a command's --threads is the command's: called from Python, it is put back
            sys.modules["torch"].set_num_threads(threads)


def _torch_threads() -> int | None:
    """torch's CPU thread count when torch is already loaded (None: a command that loads it ends the process)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None and hasattr(torch, "get_num_threads") else None


if __name__ == "__main__":
    sys.exit(main())
