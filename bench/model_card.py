"""Render the bundled model's card (MODEL_CARD.md) from bench/results/bundled_model.json.

    python -m bench.model_card            # bench/results/bundled_model.json -> musicgpt/pretrained/MODEL_CARD.md
    python -m bench.model_card RESULTS.json --out DIR/MODEL_CARD.md

Every figure in the card comes from the JSON that bench/bundled_model.py measured (which holds
the run's config, its metrics.csv summary and the checkpoint's meta); nothing is typed in by hand.
This module writes the card's frame (summary, data, model, training, limitations, how to reproduce);
bench/card_evaluation.py and bench/card_samples.py write its measured sections.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.card_evaluation import changes, evaluation_section, nll_of
from bench.card_samples import samples_section, steering_section
from bench.format import count, current_command, duration, fixed, table
from musicgpt._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bundled_model.json"
CARD = ROOT / "musicgpt" / "pretrained" / "MODEL_CARD.md"
LICENSE_NAME = "CC BY-NC-SA 4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
NLL_TARGET = 2.2


def _trained_on(run: dict, machine: dict) -> str:
    """Where the run trained: its run.json hardware record, else (older runs) the machine that measured the card."""
    hw = run.get("hardware")
    if hw and hw.get("gpu"):
        return f"one {hw['gpu']} GPU"
    if hw and hw.get("device") not in (None, "cpu"):
        return f"a `{hw['device']}` device"
    hw = hw or machine
    return f"{hw.get('cores')} CPU cores (no GPU)"


def _autocast(run: dict, machine: dict, precision: str | None) -> str | None:
    """The run's autocast dtype: recorded in run.json, else what `precision` chose on its device."""
    hw = run.get("hardware")
    if hw and "autocast" in hw:
        return hw["autocast"]
    if precision == "bf16":
        return "bfloat16"
    if precision != "auto":
        return None
    if hw and hw.get("device") == "cuda":  # recorded before the field: auto is bf16 on GPUs that support it
        return "bfloat16"
    return "bfloat16" if not hw and machine.get("amx_bf16") else None


def _hardware_row(run: dict, machine: dict, precision: str | None) -> str:
    """The card's hardware line for training."""
    hw = run.get("hardware")
    amp = _autocast(run, machine, precision)
    amp_text = f", {amp} autocast" if amp else ", float32"
    if hw and hw.get("device") not in (None, "cpu"):
        text = _trained_on(run, machine) + (f" ({hw['cores']} CPU cores)" if hw.get("cores") else "") + amp_text
        text += f", torch {hw['torch']}" if hw.get("torch") else ""
        if hw.get("shared_with"):
            text += f"; shared with {hw['shared_with']}"
        return text + (f"; recorded {hw['recorded']}" if hw.get("recorded") else "")
    hw = hw or machine
    cpu = hw.get("cpu") or hw.get("cpu_model")  # run.json and older results say "cpu", machine_info "cpu_model"
    return f"{cpu}, {hw.get('cores')} cores{amp_text}; no GPU was available for this model"


def render(r: dict[str, Any]) -> str:
    """The card as Markdown."""
    ck = r["checkpoint"]
    model, meta = ck["model"], ck["meta"]
    evals = r.get("evaluations") or {}
    n_ctx = model["n_ctx"]
    test_key = f"asap/test/{n_ctx}"
    final = r.get("label") == "final" and not r.get("subset")
    lines = ["# musicgpt bundled piano model", ""]
    if not final:
        lines += [f"> **Not the final figures**: {r.get('label')}"
                  + (f"; evaluated on a subset ({r['subset']})" if r.get("subset") else "") + ". "
                  "Regenerate this card with `python -m bench.bundled_model` on the shipped weights.", ""]
    attention = ("relative-position self-attention (Music Transformer, memory-efficient skewing)"
                 if model["position"] == "relative" else f"{model['position']} position embeddings")
    lines += [
        f"A {model['n_layer']}-layer decoder-only transformer (GPT-2 style) with {attention}, "
        f"{ck['parameters']:,} parameters, trained on real piano performances (ASAP) in the performance-event "
        f"encoding (NOTE_ON, NOTE_OFF, TIME_SHIFT, VELOCITY; {model['vocab_size']} tokens). It continues a primer "
        "with expressive solo piano, and it is what `musicgpt generate`, `evaluate`, `attend`, `info` and "
        "`MusicGPT.from_pretrained()` use when no checkpoint is given. Nothing is downloaded: the weights ship "
        "inside the package. " + _can_steer(ck), ""]
    summary_rows = [
        ["weights", f"`model.safetensors`: {ck['weights_bytes']:,} bytes, {', '.join(ck['stored_dtypes'])}"
         + (f", sha256 `{meta['weights_sha256'][:16]}…`" if meta.get("weights_sha256") else "")],
        ["license", f"**{LICENSE_NAME}** ([terms]({LICENSE_URL})), inherited from the ASAP training data: "
                    "non-commercial use, share alike, attribution. See `LICENSE` in this folder. "
                    "(The musicgpt code is MIT.)"],
        ["training", _training_summary(r)],
    ]
    test_nll = nll_of(evals, test_key)
    if test_nll is not None:
        verdict = "met" if test_nll <= NLL_TARGET else "NOT met"
        summary_rows.append(["ASAP test NLL", f"**{test_nll:.4f} nats/event** at context {n_ctx} "
                                              f"(target ≤ {NLL_TARGET}: {verdict})"])
    lines += table(["", ""], summary_rows)

    lines += _data_section(r) + _model_section(ck)
    if r.get("base"):
        base = r["base"]
        lines += _training_section({**r, "run": base["run"], "checkpoint": base["checkpoint"]},
                                   "## Training: the plain base model")
        lines += _training_section(r, "## Training: the fine-tune for steering")
    else:
        lines += _training_section(r)
    lines += evaluation_section(r)
    lines += steering_section(r)
    if r.get("samples"):
        lines += samples_section(r["samples"], r.get("samples_uncapped"))
    lines += _limitations(r) + _reproduce(r)
    return "\n".join(lines).rstrip() + "\n"


def _data_section(r: dict) -> list[str]:
    asap = r["data"]["asap"]
    splits = asap.get("splits") or {}
    rows = [[name, count(s.get("n_pieces")), count(s.get("n_docs")), count(s.get("n_tokens")), count(s.get("n_notes"))]
            for name, s in splits.items()]
    lines = ["## Training data and license", "",
             "[ASAP](https://github.com/fosfrancesco/asap-dataset) (F. Foscarin, A. McLeod, P. Rigaux, F. Jacquemard, "
             "M. Sakai, *ASAP: a dataset of aligned scores and performances for piano transcription*, ISMIR 2020): "
             f"{count(asap.get('n_files'))} real performances of {count(asap.get('n_pieces'))} classical pieces by "
             f"{count(asap.get('n_composers'))} composers, recorded on Yamaha Disklavier pianos at the "
             "Piano-e-Competition, licensed **CC BY-NC-SA 4.0**. The weights are derived from it, so they carry "
             "the same "
             "license: use them for non-commercial purposes, share what you make from them under the same terms, and "
             "credit ASAP and its authors.", "",
             f"Prepared with `musicgpt prepare` (recipe `{asap.get('recipe')}`, sustain pedal folded into note "
             "lengths), split by piece (composer + title, hashed) so that no piece's performances straddle two splits; "
             f"{asap.get('skipped', 0)} file(s) skipped (an exact duplicate):", ""]
    lines += table(["split", "pieces", "performances", "events (tokens)", "notes"], rows)
    lines += ["Training augments on the fly: transposition by up to ±"
              f"{r['run']['config'].get('data', {}).get('transpose', '?')} semitones and time stretch by up to ±"
              f"{100 * r['run']['config'].get('data', {}).get('stretch', 0):.0f}%.", ""]
    return lines


def _model_section(ck: dict) -> list[str]:
    m = ck["model"]
    tok = ck.get("tokenizer") or {}
    rows = [[k, f"`{v}`"] for k, v in m.items()]
    return (["## Model", ""] + table(["config.json `model`", "value"], rows)
            + [f"Tokenizer (`tokenizer.json`): `{tok.get('type', '?')}`, {tok.get('vocab_size', '?')} tokens, "
               f"time step {tok.get('time_step', '?')} s, TIME_SHIFT up to {tok.get('max_shift_steps', '?')} steps, "
               f"{tok.get('velocity_bins', '?')} velocity bins.", ""])


def _training_summary(r: dict) -> str:
    """The summary row: steps, tokens and time, and the base's when the weights are a fine-tune."""
    run, meta, machine = r["run"], r["checkpoint"]["meta"], r["machine"]
    text = (f"{count(meta.get('step'))} steps, {count(meta.get('tokens'))} tokens seen, "
            f"{duration(run.get('seconds_at_checkpoint'))} on {_trained_on(run, machine)}")
    base = r.get("base")
    if not base:
        return text
    bm = base["checkpoint"]["meta"]
    return (f"the plain base model: {count(bm.get('step'))} steps, {count(bm.get('tokens'))} tokens, "
            f"{duration(base['run'].get('seconds_at_checkpoint'))} on {_trained_on(base['run'], machine)}; then "
            f"fine-tuned for steering: {text}")


def _can_steer(ck: dict) -> str:
    """One sentence: which controls the tokenizer has and whether it infills."""
    tok = ck.get("tokenizer") or {}
    controls = tok.get("controls") or {}
    if not controls and not tok.get("infill"):
        return ("It has no control or infilling tokens: `--control`, `--guidance` and `--infill` need a model "
                "trained for them (the README's Steering section; figures under Steering when measured).")
    names = ", ".join(f"{name} ({len(values)} values)" for name, values in controls.items())
    return (f"It can be steered: controls {names or 'none'}"
            + ("; it fills gaps (`--infill START END`)." if tok.get("infill") else "."))


def _training_section(r: dict, title: str = "## Training") -> list[str]:
    run, ck, machine = r["run"], r["checkpoint"], r["machine"]
    cfg = run["config"]
    train, optim = cfg.get("train", {}), cfg.get("optim", {})
    if run.get("init_from") and cfg.get("finetune"):  # a fine-tune runs the [finetune] schedule
        optim = {**optim, **{k: v for k, v in cfg["finetune"].items() if k != "steps"}}
    meta = ck["meta"]
    step_tokens = train.get("batch_size", 0) * train.get("grad_accum", 1) * ck["model"]["n_ctx"]
    hardware = _hardware_row(run, machine, train.get("precision"))
    lines = [title, "",
             "```bash",
             f"musicgpt prepare {(r['data']['asap'].get('source_dir') or '../shared/corpora/asap')} --out {run['data']}",
             run["command"], "```", ""]
    base = r.get("base")
    if run.get("init_from") == "bundled" and base and base["run"] is not run:
        lines += [f"`bundled` was then the plain base model above (sha256 "
                  f"`{base['checkpoint']['meta'].get('weights_sha256', '')[:16]}…`), which these weights replace as the "
                  "bundled model.", ""]
    rows = [
        ["config", f"`{run['config_file'] or run['dir'] + '/config.toml'}`"
                   + ("" if run["config_file"] else " (the run's own copy)")],
        ["steps", f"{count(meta.get('step'))} ({_source(meta)}; the run logged {count(run['steps_logged'])} of "
                  f"{count(run['steps_planned'])} planned steps)"],
        ["tokens seen", f"{count(meta.get('tokens'))} ({step_tokens:,} per step: batch {train.get('batch_size')} × "
                        f"grad accumulation {train.get('grad_accum')} × context {ck['model']['n_ctx']})"],
        ["optimizer", f"AdamW, lr {optim.get('lr')} → {optim.get('min_lr')} "
                      f"(warmup {optim.get('warmup_steps')}, cosine), weight decay {optim.get('weight_decay')}, "
                      f"betas ({optim.get('beta1')}, {optim.get('beta2')}), "
                      f"grad clip {optim.get('grad_clip')}"],
        ["precision", f"`{train.get('precision')}`"],
        ["hardware", hardware],
        ["software (evaluation)", f"torch {machine['torch']}, Python {machine['python']}"],
        ["started", run.get("started") or "n/a"],
        ["last logged", run.get("last_logged") or "n/a"],
        ["training time", f"{duration(run.get('seconds_at_checkpoint'))} to these weights, "
                          f"{duration(run.get('train_seconds'))} for the whole run "
                          "(metrics.csv `time_s`: training steps, evaluation pauses excluded); "
                          f"median {count(run.get('median_tokens_per_s'))} tokens/s"
                          + (" with the twin training beside it" if (run.get("hardware") or {}).get("shared_with")
                             else " on a machine shared with other work")],
        *([["resumed with changes", "; ".join(f"from {x.get('from')}: {changes(x)}" for x in run["resumes"])]]
          if run.get("resumes") else []),
        ["final train loss", f"{fixed(run.get('final_train_loss'))} (mean of the last 10 logged)"],
        ["best validation NLL", f"{fixed(run.get('best_valid_nll'), 4)} (the training loop's fixed validation windows)"],
    ]
    return lines + table(["", ""], rows)


def _source(meta: dict) -> str:
    """Which checkpoint of the run the weights are."""
    source = meta.get("source")
    if not source:
        return "checkpoint of the run"
    name = Path(source).name
    return "the run's best/: lowest validation NLL" if name == "best" else f"checkpoint `{name}`"


def _limitations(r: dict) -> list[str]:
    return ["## Limitations", "",
            f"- A small model ({count(r['checkpoint']['parameters'])} parameters) trained for "
            + (f"{duration(r['base']['run'].get('train_seconds'))} on {_trained_on(r['base']['run'], r['machine'])} and "
               f"fine-tuned for {duration(r['run'].get('train_seconds'))} on {_trained_on(r['run'], r['machine'])}"
               if r.get("base") else f"{duration(r['run'].get('train_seconds'))} on {_trained_on(r['run'], r['machine'])}")
            + ": expect plausible "
            "piano texture and local continuity, "
            "not long-range form. It knows solo classical piano; pop or other instruments are out of its domain "
            "(see the POP909 row).",
            f"- ASAP holds {count(r['data']['asap'].get('n_pieces'))} pieces by {count(r['data']['asap'].get('n_composers'))} "
            f"composers, so the style range is narrow; the test split has "
            f"{count((r['data']['asap'].get('splits') or {}).get('test', {}).get('n_pieces'))} pieces.",
            "- The weights are for non-commercial use only (CC BY-NC-SA 4.0).",
            *(["- Controls are read once, at the start: past the context (1024 events, about 10-20 s of dense "
               "piano) the sliding window no longer holds them."] if (r["checkpoint"].get("tokenizer") or {})
              .get("controls") else []), ""]


def _reproduce(r: dict) -> list[str]:
    commands = [current_command(c) for c in r.get("commands") or [r["command"]]]
    return ["## Reproduce these figures", "", "```bash", *commands, "```", "",
            f"Measured on {r['date']} ({r['caveat']})", ""]


def write_card(results: dict[str, Any], path: str | Path = CARD) -> Path:
    """Render the card and write it to `path`."""
    return atomic_write_text(path, render(results), make_parents=True)


def main(argv: list[str] | None = None) -> int:
    """Render RESULTS.json into the card."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS, help="default: %(default)s")
    parser.add_argument("--out", type=Path, default=CARD, help="default: %(default)s")
    args = parser.parse_args(argv)
    print(f"wrote {write_card(json.loads(args.results.read_text()), args.out)}")
    return 0




if __name__ == "__main__":
    sys.exit(main())
