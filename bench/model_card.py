"""Render the bundled model's card (MODEL_CARD.md) from bench/results/bundled_model.json.

    python bench/model_card.py            # bench/results/bundled_model.json -> musicgpt/pretrained/MODEL_CARD.md
    python bench/model_card.py RESULTS.json --out DIR/MODEL_CARD.md

Every figure in the card comes from the JSON that bench/bundled_model.py measured (which holds
the run's config, its metrics.csv summary and the checkpoint's meta); nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bundled_model.json"
CARD = ROOT / "musicgpt" / "pretrained" / "MODEL_CARD.md"
LICENSE_NAME = "CC BY-NC-SA 4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
NLL_TARGET = 2.2
MEASURE_NAMES = {"repeated_4gram_share": "repeated 4-note pitch n-grams (share)",
                 "longest_silence": "longest silence (s)",
                 "notes_per_second": "notes per second",
                 "longest_pitch_run": "longest repeated-pitch run (onsets)",
                 "polyphony": "polyphony (sounding notes, time average; hanging notes raise it)"}


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _n(value: Any) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


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
    return f"{hw.get('cpu')}, {hw.get('cores')} cores{amp_text}; no GPU was available for this model"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(r) + " |" for r in rows]]


def _eval_rows(evaluations: dict[str, dict]) -> list[list[str]]:
    rows = []
    for key, e in evaluations.items():
        corpus, split, context = key.split("/")
        if "not_applicable" in e:
            rows.append([corpus, split, context, "-", "-", "n/a", "-", "-"])
            continue
        rows.append([corpus, split, context, _n(e["n_docs"]), _n(e["n_tokens"]), f"**{e['nll']:.4f}**",
                     f"{e['perplexity']:.3f}", f"{e['accuracy']:.4f}"])
    return rows


def _nll(evaluations: dict | None, key: str) -> float | None:
    e = (evaluations or {}).get(key)
    return None if not e or "not_applicable" in e else e["nll"]


def render(r: dict[str, Any]) -> str:
    """The card as Markdown."""
    ck, run, machine = r["checkpoint"], r["run"], r["machine"]
    model, meta = ck["model"], ck["meta"]
    evals = r.get("evaluations") or {}
    n_ctx = model["n_ctx"]
    test_key = f"asap/test/{n_ctx}"
    final = r.get("label") == "final" and not r.get("subset")
    lines = ["# musicgpt bundled piano model", ""]
    if not final:
        lines += [f"> **Not the final figures**: {r.get('label')}"
                  + (f"; evaluated on a subset ({r['subset']})" if r.get("subset") else "") + ". "
                  "Regenerate this card with `bench/bundled_model.py` on the shipped weights.", ""]
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
    test_nll = _nll(evals, test_key)
    if test_nll is not None:
        verdict = "met" if test_nll <= NLL_TARGET else "NOT met"
        summary_rows.append(["ASAP test NLL", f"**{test_nll:.4f} nats/event** at context {n_ctx} "
                                              f"(target ≤ {NLL_TARGET}: {verdict})"])
    lines += _table(["", ""], summary_rows) + [""]

    lines += _data_section(r) + _model_section(ck)
    if r.get("base"):
        base = r["base"]
        lines += _training_section({**r, "run": base["run"], "checkpoint": base["checkpoint"]},
                                   "## Training: the plain base model")
        lines += _training_section(r, "## Training: the fine-tune for steering")
    else:
        lines += _training_section(r)
    lines += _evaluation_section(r)
    lines += steering_section(r)
    if r.get("samples"):
        lines += _samples_section(r["samples"], r.get("samples_uncapped"))
    lines += _limitations(r) + _reproduce(r)
    return "\n".join(lines).rstrip() + "\n"


def _data_section(r: dict) -> list[str]:
    asap = r["data"]["asap"]
    splits = asap.get("splits") or {}
    rows = [[name, _n(s.get("n_pieces")), _n(s.get("n_docs")), _n(s.get("n_tokens")), _n(s.get("n_notes"))]
            for name, s in splits.items()]
    lines = ["## Training data and license", "",
             "[ASAP](https://github.com/fosfrancesco/asap-dataset) (F. Foscarin, A. McLeod, P. Rigaux, F. Jacquemard, "
             "M. Sakai, *ASAP: a dataset of aligned scores and performances for piano transcription*, ISMIR 2020): "
             f"{_n(asap.get('n_files'))} real performances of {_n(asap.get('n_pieces'))} classical pieces by "
             f"{_n(asap.get('n_composers'))} composers, recorded on Yamaha Disklavier pianos at the "
             "Piano-e-Competition, licensed **CC BY-NC-SA 4.0**. The weights are derived from it, so they carry "
             "the same "
             "license: use them for non-commercial purposes, share what you make from them under the same terms, and "
             "credit ASAP and its authors.", "",
             f"Prepared with `musicgpt prepare` (recipe `{asap.get('recipe')}`, sustain pedal folded into note "
             "lengths), split by piece (composer + title, hashed) so that no piece's performances straddle two splits; "
             f"{asap.get('skipped', 0)} file(s) skipped (an exact duplicate):", ""]
    lines += _table(["split", "pieces", "performances", "events (tokens)", "notes"], rows) + [""]
    lines += ["Training augments on the fly: transposition by up to ±"
              f"{r['run']['config'].get('data', {}).get('transpose', '?')} semitones and time stretch by up to ±"
              f"{100 * r['run']['config'].get('data', {}).get('stretch', 0):.0f}%.", ""]
    return lines


def _model_section(ck: dict) -> list[str]:
    m = ck["model"]
    tok = ck.get("tokenizer") or {}
    rows = [[k, f"`{v}`"] for k, v in m.items()]
    return (["## Model", ""] + _table(["config.json `model`", "value"], rows) + [""]
            + [f"Tokenizer (`tokenizer.json`): `{tok.get('type', '?')}`, {tok.get('vocab_size', '?')} tokens, "
               f"time step {tok.get('time_step', '?')} s, TIME_SHIFT up to {tok.get('max_shift_steps', '?')} steps, "
               f"{tok.get('velocity_bins', '?')} velocity bins.", ""])


def _training_summary(r: dict) -> str:
    """The summary row: steps, tokens and time, and the base's when the weights are a fine-tune."""
    run, meta, machine = r["run"], r["checkpoint"]["meta"], r["machine"]
    text = (f"{_n(meta.get('step'))} steps, {_n(meta.get('tokens'))} tokens seen, "
            f"{_hours(run.get('seconds_at_checkpoint'))} on {_trained_on(run, machine)}")
    base = r.get("base")
    if not base:
        return text
    bm = base["checkpoint"]["meta"]
    return (f"the plain base model: {_n(bm.get('step'))} steps, {_n(bm.get('tokens'))} tokens, "
            f"{_hours(base['run'].get('seconds_at_checkpoint'))} on {_trained_on(base['run'], machine)}; then "
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
        ["steps", f"{_n(meta.get('step'))} ({_source(meta)}; the run logged {_n(run['steps_logged'])} of "
                  f"{_n(run['steps_planned'])} planned steps)"],
        ["tokens seen", f"{_n(meta.get('tokens'))} ({step_tokens:,} per step: batch {train.get('batch_size')} × "
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
        ["training time", f"{_hours(run.get('seconds_at_checkpoint'))} to these weights, "
                          f"{_hours(run.get('train_seconds'))} for the whole run "
                          "(metrics.csv `time_s`: training steps, evaluation pauses excluded); "
                          f"median {_n(run.get('median_tokens_per_s'))} tokens/s"
                          + (" with the twin training beside it" if (run.get("hardware") or {}).get("shared_with")
                             else " on a machine shared with other work")],
        *([["resumed with changes", "; ".join(f"from {x.get('from')}: {_changes(x)}" for x in run["resumes"])]]
          if run.get("resumes") else []),
        ["final train loss", f"{_f(run.get('final_train_loss'))} (mean of the last 10 logged)"],
        ["best validation NLL", f"{_f(run.get('best_valid_nll'), 4)} (the training loop's fixed validation windows)"],
    ]
    return lines + _table(["", ""], rows) + [""]


def _piece(group: str) -> str:
    """'Composer|Title_words' -> 'Composer: Title words'."""
    return group.replace("|", ": ").replace("_", " ")


def _source(meta: dict) -> str:
    """Which checkpoint of the run the weights are."""
    source = meta.get("source")
    if not source:
        return "checkpoint of the run"
    name = Path(source).name
    return "the run's best/: lowest validation NLL" if name == "best" else f"checkpoint `{name}`"


def _evaluation_section(r: dict) -> list[str]:
    ck = r["checkpoint"]
    n_ctx = ck["model"]["n_ctx"]
    evals = r.get("evaluations") or {}
    lines = ["## Evaluation", "",
             "Measured with `musicgpt evaluate` (`musicgpt.training.evaluate.evaluate_checkpoint`): every document is read as "
             "[BOS] + events in non-overlapping windows of the given context, each event predicted once; NLL in nats "
             f"per event. Precision: {r['precision']} autocast. For scale: Music Transformer reports 1.835 and "
             "Performance RNN 1.969 on the Piano-e-Competition data, with far larger models and compute.", ""]
    if r.get("subset"):
        lines += [f"**Subset**: {r['subset']} (not the full splits).", ""]
    if evals:
        lines += _table(["corpus", "split", "context", "documents", "events", "NLL", "perplexity", "accuracy"],
                        _eval_rows(evals)) + [""]
        check = r.get("fp32_check")
        if check:
            lines += [f"The same {check['figure'].replace('/', ' ')} figure in fp32: {check['nll_fp32']:.4f} "
                      f"(bf16 autocast differs by {check['difference']:+.5f}).", ""]
        test = evals.get(f"asap/test/{n_ctx}")
        if test and test.get("per_type"):
            lines += [f"### Per event type (ASAP test, context {n_ctx})", ""]
            lines += _table(["event type", "NLL", "perplexity", "accuracy", "share of events"],
                            [[name, f"{t['nll']:.4f}", f"{t['perplexity']:.3f}", f"{t['accuracy']:.4f}",
                              f"{t['share']:.3f}"] for name, t in test["per_type"].items()]) + [""]
    pp = r.get("per_piece")
    if pp:
        largest = pp["largest_piece"]
        lines += [f"### Per piece (ASAP test, context {pp['context']})", "",
                  (f"One piece dominates the test split ({_piece(largest['piece'])}: "
                   f"{100 * largest['share_of_events']:.0f}% of its events), so the pooled figure is mostly that piece. "
                   if largest["share_of_events"] > 0.4 else
                   f"The largest piece is {_piece(largest['piece'])} ({100 * largest['share_of_events']:.0f}% of the "
                   "events). ")
                  + f"Macro average over the {len(pp['pieces'])} pieces: **{pp['macro_nll']:.4f}**; pooled "
                  f"{pp['pooled_nll']:.4f}; pooled without the largest piece "
                  f"{_f(pp['pooled_nll_without_largest'], 4)}.", ""]
        lines += _table(["composer", "piece", "performances", "events", "NLL", "accuracy"],
                        [[p["composer"], p["title"], str(p["performances"]), f"{p['events']:,}", f"{p['nll']:.4f}",
                          f"{p['accuracy']:.4f}"] for p in pp["pieces"]]) + [""]
    base = r.get("base")
    if base and base.get("evaluations"):
        lines += ["### Against the plain model it was fine-tuned from", "",
                  f"The same evaluations of the base model (sha256 `{base['checkpoint']['meta'].get('weights_sha256', '')[:16]}…`, "
                  "measured by this script when it was the bundled model); lower is better:", ""]
        rows = [[key.replace("/", " "), _f(_nll(base["evaluations"], key), 4), _f(_nll(evals, key), 4),
                 f"{_nll(evals, key) - _nll(base['evaluations'], key):+.4f}"]
                for key in evals if _nll(base["evaluations"], key) is not None and _nll(evals, key) is not None]
        lines += _table(["corpus split context", "base (plain)", "these weights", "difference"], rows) + [""]
    twin = r.get("absolute_twin")
    if twin:
        lines += _twin_section(r, twin)
    elif base and base.get("absolute_twin"):
        lines += _twin_section({**r, "evaluations": base["evaluations"]}, base["absolute_twin"],
                               "### The base model's relative attention vs its absolute-position twin (same budget)")
    curve = r["run"].get("valid_curve") or []
    if base:
        twin = None  # the fine-tune's steps are not the twin's
    if curve:
        twin_curve = {v["step"]: v["valid_nll"] for v in (twin or {}).get("run", {}).get("valid_curve", [])}
        every = max(1, len(curve) // 12)
        shown = curve[::every] + ([curve[-1]] if (len(curve) - 1) % every else [])
        lines += ["### Validation NLL during training", "",
                  "The training loop's fixed sample of validation windows (metrics.csv), every "
                  f"{shown[1]['step'] - shown[0]['step'] if len(shown) > 1 else '?'} steps:", ""]
        header = ["step", "relative"] + (["absolute twin"] if twin_curve else [])
        lines += _table(header, [[f"{v['step']:,}", f"{v['valid_nll']:.4f}"]
                                 + ([_f(twin_curve.get(v["step"]), 4)] if twin_curve else []) for v in shown]) + [""]
    return lines


def _changes(resume: dict) -> str:
    """A run.json `resumes` entry's config changes: "`key` before → after, ..."."""
    return ", ".join(f"`{k}` {v[0]} → {v[1]}" for k, v in resume.get("changed", {}).items())


def _twin_section(r: dict, twin: dict,
                  title: str = "### Relative attention vs the absolute-position twin (same budget)") -> list[str]:
    rel, ab = r.get("evaluations") or {}, twin.get("evaluations") or {}
    tm = twin["checkpoint"]["meta"]
    lines = [title, "",
             f"The twin (`{twin['run']['config_file'] or twin['run']['dir']}`) is the same model and recipe with "
             "learned "
             f"absolute position embeddings instead of relative attention ({twin['checkpoint']['parameters']:,} "
             f"parameters), trained with the same step budget (its best weights: step {_n(tm.get('step'))}, "
             f"{_n(tm.get('tokens'))} tokens). Lower is better; an absolute model cannot read past its "
             f"{twin['checkpoint']['model']['n_ctx']}-position table."
             + "".join(f" Resumed from {x.get('from')} with {_changes(x)}." for x in twin["run"].get("resumes") or []),
             ""]
    rows = []
    for key in rel:
        a, b = _nll(rel, key), _nll(ab, key)
        diff = f"{b - a:+.4f}" if a is not None and b is not None else "-"
        rows.append([key.replace("/", " "), _f(a, 4), _f(b, 4), diff])
    lines += _table(["corpus split context", "relative", "absolute", "absolute − relative"], rows) + [""]
    return lines


def steering_section(r: dict) -> list[str]:
    """Controls, infilling and guidance as bench/steering.py measured them (on these weights or another's)."""
    st = r.get("steering")
    if not st:
        return []
    ours = st.get("weights_sha256") and st.get("weights_sha256") == r["checkpoint"]["meta"].get("weights_sha256")
    lines = ["## Steering", "",
             ("Measured on these weights" if ours else
              f"**Measured on another checkpoint** (`{st.get('checkpoint')}`, a fine-tune of this model for steering; "
              "these weights cannot be steered)")
             + " with `bench/steering.py` on ASAP's test split (split by piece: no test piece was trained on)"
             + (" (a quick run: few documents)" if st.get("quick") else "") + ".", ""]
    plain = st.get("plain") or {}
    if plain.get("baseline"):
        lines += [f"- Plain continuation (no control), ASAP test NLL at context 1024 over {_n(plain['model']['n_docs'])} "
                  f"documents: **{plain['model']['nll']:.4f}** against {plain['baseline']['nll']:.4f} for the plain "
                  f"model (`{plain['baseline']['checkpoint']}`): {plain['difference']:+.4f}."]
    iv = st.get("infill_validity")
    if iv:
        lines += [f"- Infilling: **{iv['valid']}/{iv['infills']} valid** MIDI files (parse in mido and pretty_midi, "
                  "the kept notes are the input's, new notes only in the gap, no overlapping notes of one pitch); kept "
                  f"onsets exact in memory in {iv.get('kept_onsets_exact_in_memory', '?')}/{iv['infills']}, at most "
                  f"{iv.get('kept_onset_error_max_ms', float('nan')):.2f} ms off once written (0.5 ms MIDI ticks); "
                  f"{iv['new_notes_mean']:.0f} new notes per gap on average."]
    nll = st.get("infill_nll")
    if nll:
        n = nll["nll"]
        lines += [f"- The suffix helps: NLL per event of the true middle of {nll['gaps']} random 3-8 s gaps "
                  f"({_n(nll['middle_tokens'])} events) given prefix and suffix **{n['prefix_and_suffix']:.4f}**, "
                  f"given the prefix alone {n['prefix_alone']:.4f}, given the prefix and an empty suffix "
                  f"{n['prefix_empty_suffix']:.4f}; lower with the suffix in {100 * nll['suffix_helped_share']:.0f}% "
                  "of the gaps."]
    g = st.get("guidance")
    if g:
        by = {(x["guidance"], x["asked"]): x for x in g["runs"]}
        nps = "; ".join(f"guidance {scale:g}: low {by[(scale, 'low')]['notes_per_second']:.1f}, high "
                        f"{by[(scale, 'high')]['notes_per_second']:.1f} notes/s"
                        for scale in sorted({k[0] for k in by}) if (scale, "low") in by and (scale, "high") in by)
        lines += [f"- Density control and guidance ({g['samples']} continuations of {g['seconds']:g} s per setting, "
                  f"asked low or high): the share measuring as asked is {100 * g['match_share_g1']:.0f}% without "
                  f"guidance and {100 * g['match_share_g2.5']:.0f}% at guidance 2.5 ({nps}); guided sampling runs at "
                  f"{g['guided_over_unguided_tokens_per_s']:.2f}x the unguided tokens/s (interleaved runs)."]
    lc = st.get("long_controls")
    if lc:
        by = {(x["pinned"], x["asked"]): x for x in lc["runs"]}
        slid = [t for x in lc["runs"] for t in x["window_slid_at_seconds"]]
        rate = lambda pinned, third: " / ".join(f"{by[(pinned, a)][f'notes_per_second_{third}_third']:.1f}"  # noqa: E731
                                                for a in ("low", "high"))
        held = lc["high_minus_low_last_third_pinned"] > 0
        lines += [f"- Long continuations ({lc['samples']} of {lc['seconds']:g} s per setting; the window slides past the "
                  f"controls {min(slid):.0f}-{max(slid):.0f} s in): notes/s asked low / high over the first third "
                  f"{rate(True, 'first')}, over the last third {rate(True, 'last')} with the controls kept first in the "
                  f"window (as generation does), {rate(False, 'last')} without them"
                  + (": the density control holds." if held else
                     ": the density control does not hold that long on this model, pinned or not.")]
    comp = st.get("composers")
    if comp:
        rows_ok = sum(comp["true_below_none"].values())
        spread = max(max(v.values()) - min(v.values()) for v in comp["nll"].values())
        lines += [f"- Composer control: for the test documents of each composer (rows; their first "
                  f"{comp['windows_per_doc']} windows of 1024 events), NLL per event when told each composer "
                  f"(columns), `unknown` or nothing. Told the true composer, NLL is lower than with no control for "
                  f"{rows_ok} of {len(comp['rows'])} composers, and the lowest of its row for "
                  f"{sum(comp['diagonal_lowest'].values())}; but no row spans more than {spread:.4f} nats"
                  + (", so the composer control changes the predictions very little: it is barely learned yet."
                     if spread < 0.01 else "."), ""]
        header = ["true / told", "docs"] + comp["columns"]
        rows = [[c, str(comp["docs"][c])] + [("**%.3f**" if told == c else "%.3f") % comp["nll"][c][told]
                                            for told in comp["columns"]] for c in comp["rows"]]
        lines += _table(header, rows)
    return lines + [""]


def _samples_section(s: dict, uncapped: dict | None = None) -> list[str]:
    primers = ", ".join(_piece(p["piece"]) for p in s["primers"])
    lines = ["## Samples and degeneracy", "",
             f"{s['n_generated']} continuations of {s['seconds']:.0f} s: {s['samples_per_primer']} per primer, from the "
             f"first {s['primer_seconds']:.0f} s of one ASAP test performance of each of {len(s['primers'])} pieces "
             f"({primers}); seeds {s['seed']}…{s['seed'] + len(s['primers']) - 1}, default sampling "
             "(temperature 1, no top-k/top-p"
             + (", type-preserving grammar mask" if s.get("sampling", {}).get("keep_type_mass") else "")
             + (f", notes ended after {s['sampling']['max_note_seconds']:g} s" if s.get("sampling", {}).get(
                 "max_note_seconds") else "")
             + f"). Stop reasons: {', '.join(f'{k} {v}' for k, v in s['stop_reasons'].items())}. The same "
             f"measures on {s['n_real']} real excerpts of the same length (seconds {s['primer_seconds']:.0f}–"
             f"{s['primer_seconds'] + s['seconds']:.0f} of up to 2 performances of every test piece), with "
             "`musicgpt.metrics`:", ""]
    rows = []
    for name, m in s["degeneracy"].items():
        g, real = m["generated"], m["real"]
        rows.append([MEASURE_NAMES.get(name, name), f"{g['mean']:.3f} ± {g['std']:.3f} (max {g['max']:.3f})",
                     f"{real['mean']:.3f} ± {real['std']:.3f} (max {real['max']:.3f})",
                     f"{100 * m['outside_real_range']:.0f}%"])
    lines += _table(["measure", "generated: mean ± std", "real: mean ± std", "generated outside the real range"], rows)
    lines += ["", f"**Degenerate samples: {100 * s['degenerate_share']:.0f}%** ({s['degenerate_rule']}); "
                  f"{s['empty_samples']} sample(s) without notes.", ""]
    if uncapped:
        u = uncapped["degeneracy"]
        lines += [f"Without the long-note limit (`--max-note-seconds 0`, same primers and seeds): "
                  f"{100 * uncapped['degenerate_share']:.0f}% degenerate; polyphony "
                  f"{u['polyphony']['generated']['mean']:.1f} ± {u['polyphony']['generated']['std']:.1f} "
                  f"(real {u['polyphony']['real']['mean']:.1f}), notes per second "
                  f"{u['notes_per_second']['generated']['mean']:.1f}: how often the model itself forgets to end "
                  "a note.", ""]
    if s.get("set_comparison"):
        lines += ["Set comparison (mgeval style, `musicgpt.metrics.compare_features`): overlap of the inter-set "
                  "distance density with the real set's intra-set density (1 = generated pieces lie as close to the "
                  "real ones as those lie to each other) and its KL divergence (0 = same):", ""]
        lines += _table(["feature", "generated mean", "real mean", "overlap", "KL"],
                        [[name, _f(c["generated_mean"]), _f(c["real_mean"]), f"{c['overlap']:.3f}", f"{c['kl']:.3f}"]
                         for name, c in s["set_comparison"].items()]) + [""]
    return lines


def _limitations(r: dict) -> list[str]:
    return ["## Limitations", "",
            f"- A small model ({_n(r['checkpoint']['parameters'])} parameters) trained for "
            + (f"{_hours(r['base']['run'].get('train_seconds'))} on {_trained_on(r['base']['run'], r['machine'])} and "
               f"fine-tuned for {_hours(r['run'].get('train_seconds'))} on {_trained_on(r['run'], r['machine'])}"
               if r.get("base") else f"{_hours(r['run'].get('train_seconds'))} on {_trained_on(r['run'], r['machine'])}")
            + ": expect plausible "
            "piano texture and local continuity, "
            "not long-range form. It knows solo classical piano; pop or other instruments are out of its domain "
            "(see the POP909 row).",
            f"- ASAP holds {_n(r['data']['asap'].get('n_pieces'))} pieces by {_n(r['data']['asap'].get('n_composers'))} "
            f"composers, so the style range is narrow; the test split has "
            f"{_n((r['data']['asap'].get('splits') or {}).get('test', {}).get('n_pieces'))} pieces.",
            "- The weights are for non-commercial use only (CC BY-NC-SA 4.0).",
            *(["- Controls are read once, at the start: past the context (1024 events, about 10-20 s of dense "
               "piano) the sliding window no longer holds them."] if (r["checkpoint"].get("tokenizer") or {})
              .get("controls") else []), ""]


def _reproduce(r: dict) -> list[str]:
    return ["## Reproduce these figures", "", "```bash", *(r.get("commands") or [r["command"]]), "```", "",
            f"Measured on {r['date']} ({r['caveat']})", ""]


def write_card(results: dict[str, Any], path: str | Path = CARD) -> Path:
    """Render the card and write it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results), encoding="utf-8")
    return path


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
