"""`musicgpt generate`: continue a primer (or start from nothing), or fill a span of it (--infill); steer with
--control; write MIDI, and arcs + viewer with --arcs."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from musicgpt.commands._args import output_folder, positive_int
from musicgpt.commands._checkpoint_arg import add_checkpoint_argument, model_of

CUT_CHOICE = "--primer-seconds or --primer-tokens"  # how this command chooses a primer's length


def add_primer_arguments(parser, tokens: bool = True) -> None:
    """--primer and how much of it (--primer-seconds, and --primer-tokens unless `tokens` is False)."""
    parser.add_argument("--primer", metavar="FILE", help="MIDI, MusicXML (.xml/.musicxml/.mxl) or ABC file to continue "
                                                         "(default: none, unconditional)")
    cut = parser.add_mutually_exclusive_group()
    cut.add_argument("--primer-seconds", type=float, metavar="S",
                     help="use the primer's first S seconds (default: as much as fits the model's context, its first "
                          "n_ctx - 1 tokens, with a note when that cuts it)")
    if tokens:
        cut.add_argument("--primer-tokens", type=int, metavar="N",
                         help="use the primer's first N tokens (default: as above)")


def add_sampling_arguments(parser) -> None:
    """How tokens are drawn: --temperature, --top-k, --top-p, --min-p, --seed, --plain-mask (generate's and a duet's)."""
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T", help="softmax temperature; 0 = greedy (default 1)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1 = off)")
    parser.add_argument("--min-p", type=float, default=0.0, metavar="P",
                        help="drop tokens less likely than P times the most likely one (0 = off)")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed (default: drawn and printed); "
                                                              "the same seed gives the same music")
    parser.add_argument("--plain-mask", action="store_true",
                        help="mask invalid tokens without handing their probability to valid ones of the same type")


def add_control_arguments(parser) -> None:
    """--control and --guidance: steering a model trained with controls."""
    parser.add_argument("--control", action="append", default=[], metavar="NAME=VALUE",
                        help="condition on a control, e.g. composer=Chopin or density=high (repeatable)")
    parser.add_argument("--guidance", type=float, default=1.0, metavar="G",
                        help="classifier-free guidance towards the controls (1 = off, the default; 2-3 = stronger; "
                             "costs a second pass)")
    parser.add_argument("--no-follow-primer", dest="follow_primer", action="store_false",
                        help="do not steer by the primer's own density and dynamics (by default a model that knows "
                             "those controls reads them from the primer; a --control given wins)")


def add_threads_argument(parser) -> None:
    """--threads: CPU threads for the model."""
    parser.add_argument("--threads", type=positive_int, default=1, metavar="N",
                        help="CPU threads (default 1: fastest for one piece)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt generate`."""
    add_checkpoint_argument(parser)
    add_primer_arguments(parser)
    parser.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds of new music")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="stop after N new tokens (default 1024; with --seconds, a cap of 200 per second)")
    add_sampling_arguments(parser)
    parser.add_argument("--num-samples", type=int, default=1, metavar="N", help="how many pieces (one batch; default 1)")
    parser.add_argument("--out", type=Path, default=Path("generated"), metavar="DIR",
                        help="output folder for sample_00.mid … (default: ./generated)")
    parser.add_argument("--ignore-eos", action="store_true", help="never let the model end a piece early (mask EOS)")
    parser.add_argument("--max-note-seconds", type=float, metavar="S",
                        help="end a note that has sounded S seconds at the next step (default 10, with --infill no limit; 0 = never)")
    arcs = parser.add_argument_group("attention arcs")
    arcs.add_argument("--arcs", action="store_true", help="also write sample_NN.arcs.json and the viewer sample_NN.html")
    arcs.add_argument("--arcs-top-n", type=int, default=6, metavar="N",
                      help="per note, layer and head: keep the N heaviest earlier notes (default 6)")
    arcs.add_argument("--arcs-min-weight", type=float, default=0.01, metavar="W",
                      help="drop note arcs lighter than W (default 0.01)")
    arcs.add_argument("--measure", default=None, metavar="NAME",
                      help="what the arcs measure: attention, norm, rollout or influence (default: "
                           "musicgpt.arcs.format.DEFAULT_MEASURE; all but attention are computed after generating)")
    arcs.add_argument("--arcs-row-top-k", type=int, default=64, metavar="K",
                      help="per token, layer and head: keep the K heaviest keys while generating (default 64)")
    audio = parser.add_argument_group("audio")
    audio.add_argument("--wav", action="store_true", help="also render sample_NN.wav offline (FluidSynth or TinySoundFont)")
    audio.add_argument("--soundfont", metavar="SF2", help="soundfont for --wav (default: a system GM soundfont or "
                                                          "pretty_midi's TimGM6mb.sf2)")
    steer = parser.add_argument_group("steering (a model trained with controls / infilling)")
    add_control_arguments(steer)
    steer.add_argument("--list-controls", action="store_true",
                       help="print the controls and values the checkpoint knows, and whether it can infill; then exit")
    steer.add_argument("--infill", nargs=2, type=float, metavar=("START", "END"),
                       help="regenerate the primer's notes with onsets in [START, END) seconds, keeping the rest")
    add_threads_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate, write the files, print one line per sample (and a note line when the primer is cut to fit)."""
    from musicgpt.arcs.capture import ArcsConfig
    from musicgpt.generation.primer import PrimerCutWarning
    from musicgpt.tokens.controls import describe_controls
    from musicgpt.viz.viewer import write_html

    arcs_config = ArcsConfig(row_top_k=args.arcs_row_top_k, top_n=args.arcs_top_n,
                             min_weight=args.arcs_min_weight) if args.arcs else None
    measure = _arcs_measure(args)
    if args.wav:
        from musicgpt.music.audio import NO_RENDERER, AudioError, available_renderers

        if not available_renderers():  # say so before spending minutes on generation
            raise AudioError(f"--wav: {NO_RENDERER}")
    model, tokenizer = model_of(args)
    if args.list_controls:
        print(describe_controls(tokenizer))
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("always", PrimerCutWarning)
        warnings.showwarning = _cut_notes_as_lines(warnings.showwarning)
        samples = _generate(args, model, tokenizer, arcs_config)
    if measure not in (None, "attention"):  # computed after generating, from each sample's ids
        from musicgpt.arcs.measures import remeasure

        for s in samples:
            s.arcs = remeasure(model, tokenizer, s.arcs, s.ids, measure, arcs_config, progress=not args.quiet)
    for i, s in enumerate(samples):
        name = f"sample_{i:02d}"
        written = s.save(args.out, name, wav=args.wav, soundfont=args.soundfont)
        if s.arcs is not None:  # the viewer page beside the arcs it draws
            written.insert(2, write_html(s.arcs, args.out / f"{name}.html", title=name))
        n_primer = int(s.primer_notes.sum())
        what = (f"{len(s.notes) - n_primer} new notes in {s.infill[0]:g}-{s.infill[1]:g} s, {n_primer} kept" if s.infill
                else f"{len(s.notes) - n_primer} new notes after {n_primer} primer notes")
        print(f"wrote {', '.join(str(p) for p in written)} ({what}, {s.seconds:.1f} s, {s.n_generated} tokens, "
              f"stopped by {s.stop_reason}, seed {s.seed})")
    return 0


def _arcs_measure(args: argparse.Namespace) -> str | None:
    """The measure the arcs are made with (None: no arcs), checked before anything is generated."""
    from musicgpt.arcs.format import DEFAULT_MEASURE, MEASURES
    from musicgpt.errors import ConfigError

    if not args.arcs:
        if args.measure is not None:
            raise ConfigError("--measure: only with --arcs")
        return None
    measure = args.measure or DEFAULT_MEASURE
    if measure not in MEASURES:
        raise ConfigError(f"--measure: unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    if measure != "attention" and args.infill:
        raise ConfigError(f"--measure {measure}: with --infill the arcs are attention only")
    return measure


def _cut_notes_as_lines(show):
    """A warnings.showwarning that prints a PrimerCutWarning as one 'note: ...' line on stderr, in the CLI's words
    (its flags), and other warnings as `show`."""
    from musicgpt.generation.primer import PrimerCutWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if isinstance(message, PrimerCutWarning):
            print(f"note: {message.describe(CUT_CHOICE)}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def _generate(args: argparse.Namespace, model, tokenizer, arcs_config):
    """The samples the arguments ask for: one GenerationRequest, whether continuing or infilling."""
    from musicgpt.errors import ConfigError
    from musicgpt.generation.loop import run
    from musicgpt.generation.infilling import finished
    from musicgpt.generation.setup import GenerationRequest, prepare

    if args.infill and not args.primer:
        raise ConfigError("--infill START END: needs --primer FILE (the piece to fill)")
    try:
        request = GenerationRequest(
            primer=args.primer, primer_seconds=args.primer_seconds, primer_tokens=args.primer_tokens,
            infill=tuple(args.infill) if args.infill else None, seconds=args.seconds,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            min_p=args.min_p, keep_type_mass=not args.plain_mask, seed=args.seed, num_samples=args.num_samples,
            stop_at_eos=not args.ignore_eos, max_note_seconds=args.max_note_seconds, controls=args.control,
            guidance=args.guidance, follow_primer=args.follow_primer, arcs=arcs_config)
    except ConfigError as exc:  # in the command's words: its flags, not the Python names
        raise ConfigError(_as_flags(str(exc))) from None
    plan = prepare(model, tokenizer, request)
    _check_memory(model.config, plan, args)
    output_folder(args.out)  # before the work: a file in the way, or no permission, is said now
    return finished(plan, run(model, tokenizer, plan, progress=not args.quiet, threads=args.threads))


def _check_memory(config, plan, args: argparse.Namespace) -> None:
    """Refuse a batch whose KV caches, prefill and arcs would not fit in the memory available (the limit and how
    many samples would fit in the message), before anything is allocated."""
    from musicgpt.device import available_memory
    from musicgpt.generation import budget

    s = plan.settings
    need = budget.estimate(config, s.num_samples, tokens=budget.expected_tokens(len(plan.prompt), s.max_new_tokens,
                                                                                s.seconds),
                           arcs=s.arcs is not None, arcs_top_k=s.arcs.row_top_k if s.arcs else None,
                           guidance=s.guidance != 1, chunk=s.chunk)
    budget.check_fits(need, available_memory(), what="--num-samples")


def _as_flags(message: str) -> str:
    """A GenerationRequest's message with its argument names written as this command's flags."""
    import re

    names = "primer_seconds|primer_tokens|max_new_tokens|max_note_seconds|num_samples|seconds|infill|seed"
    return re.sub(rf"(?<![\w-])({names})(?![\w-])", lambda m: "--" + m.group(1).replace("_", "-"), message)
