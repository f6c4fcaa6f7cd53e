"""`musicgpt live`: duet with the model on MIDI ports: play on a keyboard (or from a DAW), the model answers."""

from __future__ import annotations

import argparse
import sys
import warnings

from musicgpt.commands._checkpoint_arg import add_checkpoint_argument, model_of

# generate's options a duet samples with: declared by generate's own functions, so names, defaults and help are its
SAMPLING = ("primer", "primer_seconds", "temperature", "top_k", "top_p", "min_p", "seed", "control", "guidance",
            "plain_mask", "threads")
DUET_FLAGS = {"wait": "--wait", "answer": "--answer", "prepare": "--prepare", "lead": "--lead",
              "first_note": "--first-note", "lookahead": "--lookahead",
              "trigger_cc": "--trigger-cc", "trigger_note": "--trigger-note"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt live`."""
    from musicgpt.duet import DuetConfig

    add_checkpoint_argument(parser)
    ports = parser.add_argument_group("MIDI ports (a name, or a piece of one that fits one port; see --list-ports)")
    ports.add_argument("--list-ports", action="store_true", help="print the MIDI inputs and outputs, then exit")
    into = ports.add_mutually_exclusive_group()
    into.add_argument("--in", dest="input", metavar="PORT", help="the input you play on (a keyboard, a DAW's output)")
    into.add_argument("--in-virtual", metavar="NAME",
                      help="make a new input port NAME for a DAW to send to (Linux, macOS)")
    out = ports.add_mutually_exclusive_group()
    out.add_argument("--out", dest="output", metavar="PORT", help="where the model plays (a synth, a keyboard, a DAW)")
    out.add_argument("--out-virtual", metavar="NAME",
                     help="make a new output port NAME for a DAW track to record or play (Linux, macOS)")
    ports.add_argument("--channel", type=int, default=1, metavar="N", help="the MIDI channel the model plays on, "
                                                                           "1-16 (default 1)")
    ports.add_argument("--echo", action="store_true",
                       help="also send your notes to the output (a MIDI thru: for a sound module or a DAW track)")
    duet = parser.add_argument_group("turn taking")
    duet.add_argument("--wait", type=float, default=DuetConfig.wait, metavar="S",
                      help=f"the model plays after S seconds of silence from you (default {DuetConfig.wait:g})")
    duet.add_argument("--answer", type=float, default=DuetConfig.answer, metavar="S",
                      help=f"the model plays at most S seconds per turn (default {DuetConfig.answer:g})")
    duet.add_argument("--prepare", type=float, default=DuetConfig.prepare, metavar="S",
                      help=f"the model starts decoding its answer S seconds before --wait runs out (a note of yours "
                           f"before then takes it back unheard; default {DuetConfig.prepare:g})")
    duet.add_argument("--lead", type=float, default=DuetConfig.lead, metavar="S",
                      help=f"its turn begins S seconds after it takes over: the time to decode its first note, so that "
                           f"note is not late (default {DuetConfig.lead:g})")
    duet.add_argument("--first-note", type=float, default=DuetConfig.first_note, metavar="S",
                      help=f"its first note comes at most S seconds after its turn begins "
                           f"(default {DuetConfig.first_note:g})")
    duet.add_argument("--lookahead", type=float, default=DuetConfig.lookahead, metavar="S",
                      help=f"the model writes up to S seconds ahead of the clock; a note you play cancels "
                           f"what it has not sounded (default {DuetConfig.lookahead:g})")
    duet.add_argument("--trigger-cc", type=int, metavar="N",
                      help="a controller (not 64, the sustain pedal) whose press hands over at once, e.g. 67 "
                           "(the soft pedal)")
    duet.add_argument("--trigger-note", type=int, metavar="KEY",
                      help="a key (MIDI number, 21 = the lowest A) that hands over at once and makes no sound")
    from musicgpt.commands.generate import (add_control_arguments, add_primer_arguments, add_sampling_arguments,
                                            add_threads_argument)

    sampling = parser.add_argument_group("sampling (as in musicgpt generate)")
    add_primer_arguments(sampling, tokens=False)
    add_sampling_arguments(sampling)
    add_control_arguments(sampling)
    add_threads_argument(sampling)
    parser.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds (default: at Ctrl-C)")
    parser.add_argument("--quiet", action="store_true", help="no line per note: turns and the summary only")


def run(args: argparse.Namespace) -> int:
    """List the ports, or open them, load the model and duet until --seconds or Ctrl-C; then the summary."""
    from musicgpt.errors import ConfigError
    from musicgpt.live.ports import listing, match_port, open_system

    system = open_system()
    if args.list_ports:
        print(system.describe())
        return 0
    if args.input is None and args.in_virtual is None:
        raise ConfigError(f"--in PORT or --in-virtual NAME: say where you play; inputs: {listing(system.inputs())}")
    if args.output is None and args.out_virtual is None:
        raise ConfigError(f"--out PORT or --out-virtual NAME: say where the model plays; outputs: "
                          f"{listing(system.outputs())}")
    if not 1 <= args.channel <= 16:
        raise ConfigError(f"--channel: a MIDI channel 1..16, got {args.channel}")
    if args.input is not None:  # a wrong name fails now, not after the model has loaded
        match_port(args.input, system.inputs(), "input")
    if args.output is not None:
        match_port(args.output, system.outputs(), "output")
    runner, ports = _start(args, system)
    try:
        runner.run(args.seconds)
    except KeyboardInterrupt:  # the way a live session ends: the runner has released its notes
        pass
    finally:
        for port in ports:
            port.close()
    print(f"musicgpt live: {runner.stats.summary()}")
    return 0


def _start(args: argparse.Namespace, system):
    """The runner on its session, and the ports opened for it (output first: the input's first message may echo)."""
    import torch

    from musicgpt.duet import DuetSession, MonotonicClock
    from musicgpt.generation.primer import PrimerCutWarning
    from musicgpt.live.runner import LiveConfig, LiveRunner

    config, request = _duet_config(args), _request(args)  # checked before the model loads
    torch.set_num_threads(args.threads)
    model, tokenizer = model_of(args)
    with warnings.catch_warnings(record=True) as caught:  # reading the primer may cut it to fit the context
        warnings.simplefilter("always", PrimerCutWarning)
        session = DuetSession(model, config, request, clock=MonotonicClock(), tokenizer=tokenizer)
    for w in caught:
        message = w.message.describe("--primer-seconds") if isinstance(w.message, PrimerCutWarning) else w.message
        print(f"note: {message}", file=sys.stderr)
    output = (system.open_output(args.output) if args.output is not None
              else system.open_virtual_output(args.out_virtual))
    try:
        runner = LiveRunner(session, output, LiveConfig(channel=args.channel - 1, echo=args.echo,
                                                        show_notes=not args.quiet), show=_line)
        source = (system.open_input(args.input, runner.receive) if args.input is not None
                  else system.open_virtual_input(args.in_virtual, runner.receive))
    except BaseException:
        output.close()
        raise
    wait = (f"after {args.wait:g} s of silence" + (f", at once on controller {args.trigger_cc}"
                                                   if args.trigger_cc is not None else "")
            + (f", at once on key {args.trigger_note}" if args.trigger_note is not None else ""))
    print(f"musicgpt live: you play on {source.name!r}; the model answers on {output.name!r} channel {args.channel} "
          f"{wait}, for up to {args.answer:g} s (seed {session.settings.seed}). Ctrl-C to stop.", flush=True)
    return runner, [source, output]


def _duet_config(args: argparse.Namespace):
    """The DuetConfig the flags ask for; its messages in the flags' words."""
    from musicgpt.duet import DuetConfig
    from musicgpt.errors import ConfigError

    try:
        return DuetConfig(**{name: getattr(args, name) for name in DUET_FLAGS})
    except ConfigError as exc:
        raise ConfigError(_as_flags(str(exc).removeprefix("duet "))) from None


def _request(args: argparse.Namespace):
    """generate's one settings object, from the options borrowed from it."""
    from musicgpt.errors import ConfigError
    from musicgpt.generation.setup import GenerationRequest

    try:
        return GenerationRequest(primer=args.primer, primer_seconds=args.primer_seconds, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                 keep_type_mass=not args.plain_mask, seed=args.seed, controls=args.control,
                                 guidance=args.guidance, follow_primer=args.follow_primer)
    except ConfigError as exc:
        raise ConfigError(_as_flags(str(exc))) from None


def _as_flags(message: str) -> str:
    """A settings object's message with the argument it names written as this command's flag."""
    import re

    names = {**{name: "--" + name.replace("_", "-") for name in SAMPLING}, **DUET_FLAGS, "controls": "--control"}
    return re.sub(r"^(\w+)", lambda m: names.get(m[1], m[1]), message)


def _line(text: str) -> None:
    print(text, flush=True)
