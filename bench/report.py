"""Render docs/benchmarks.md (and PNG plots under docs/img/) from bench/results/*.json.

Every section reads one results file. A missing file is reported as "not measured" and a file
whose layout this renderer does not know is reported as "could not render": neither stops the
rest of the report. Figures are shown as ratios against their baseline from the same run,
computed here from the raw numbers in the JSON, because absolute timings from a shared machine
do not compare across runs.

    python bench/report.py [--results bench/results] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORT = ROOT / "docs" / "benchmarks.md"

CAVEAT = ("**Read the ratios, not the seconds.** The machine's speed drifts 2-4x within minutes (other jobs "
          "share its 2 cores; while these figures were taken a multi-hour training run of the bundled model "
          "was using them), so every comparison interleaves its contenders round by round in one process and "
          "is reported as a ratio against its baseline from that same run. Absolute seconds and tokens/s are "
          "listed for completeness; they do not compare across runs or machines.")
_DRAW = [True]  # render(plots=False) turns plotting off (tests that check the text only)
GPU_NOTE = ("Every figure is a CPU figure except the GPU section (`bench/gpu.py`, run on a lent H100 and kept in "
            "bench/results/gpu.json; the CPU suite does not re-run it).")


# ---- formatting -------------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits (thousands separated), or '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != 0 and abs(x) >= 10 ** digits:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def rx(x: float | None) -> str:
    """A ratio as '1.43x'."""
    return "-" if x is None else f"{x:.2f}x"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table; cells are formatted with fmt unless already strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return lines + [""]


def shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def load_json(path: Path) -> dict | None:
    """The parsed file, or None when it does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def machine_line(d: dict) -> str:
    """What a results file records about its machine, in one line."""
    m = d.get("machine_start") or d.get("machine") or {}
    parts = []
    cpu = m.get("cpu_model") or d.get("cpu")
    cores = m.get("cores") or m.get("cpus") or d.get("cpu_threads")
    torch_v = m.get("torch") or d.get("torch")
    load = m.get("load_average")
    date = m.get("date") or d.get("date")
    if cpu:
        parts.append(f"CPU {cpu}")
    if cores:
        parts.append(f"{cores} cores" if m.get("cores") or m.get("cpus") else f"{cores} threads")
    if torch_v:
        parts.append(f"torch {torch_v}")
    if load:
        parts.append("load average " + "/".join(f"{x:.2f}" for x in load) + " at the start")
    parts.append(f"date {date}" if date else "date not recorded in the file")
    return "Measured on: " + ", ".join(parts) + "."


# ---- sections ---------------------------------------------------------------------------------------


def section_tokenize(d: dict, img: Path) -> tuple[list[str], str]:
    """ours vs miditok: notes/s per contender, ratios per round."""
    rounds = d["rounds"]
    names = list(rounds[0])
    base = "ours"
    per_round = {n: [r[n]["notes_per_s"] / r[base]["notes_per_s"] for r in rounds] for n in names}
    rows = [[n, statistics.median(r[n]["notes_per_s"] for r in rounds), rx(statistics.median(per_round[n])),
             rx(1 / statistics.median(per_round[n]))] for n in names]
    speed = statistics.median(r["ours"]["notes_per_s"] / r["miditok_midilike"]["notes_per_s"] for r in rounds) \
        if "miditok_midilike" in names else None
    lines = [f"Files: {d.get('file_selection', '?')} ({fmt(d.get('files'))} files, {fmt(d.get('notes'))} notes); "
             f"{len(rounds)} interleaved rounds. Rate = notes in the files / wall seconds, MIDI path to token ids.", ""]
    lines += table(["contender", "notes/s (median)", "rate vs ours", "ours is ... faster"], rows)
    if speed is not None:
        target = d.get("target_speedup")
        lines.append(f"**ours vs miditok MIDILike: {speed:.1f}x** (median of per-round ratios"
                     + (f"; target {target}x" if target else "") + ").")
    if d.get("decode_notes_per_s"):
        lines.append(f"Decode: {fmt(float(d['decode_notes_per_s']))} notes/s. ")
    aug = d.get("augment")
    if aug:
        lines.append(f"Augmentation (transpose + stretch, {aug.get('crop_tokens')}-token crops, "
                     f"{aug.get('threads', 1)} thread): {fmt(float(aug['crops_per_s']))} crops/s.")
    headline = f"{speed:.1f}x miditok MIDILike" if speed else "-"
    return lines + [""], headline


def section_roundtrip(d: dict, img: Path) -> tuple[list[str], str]:
    """Codec exactness per corpus (no baseline: counts and errors)."""
    rows, exact_all = [], True
    for c in d["corpora"]:
        files = c.get("files", 0)
        exact = min(c.get("exact_decode_files", 0), c.get("exact_midi_file_round_trip_files", 0))
        exact_all &= exact == files
        onset, offset = c.get("onset_error_ms", {}), c.get("offset_error_ms", {})
        rows.append([Path(c["corpus"]).name, files, c.get("notes_read"), f"{c.get('notes_kept_pct')}%",
                     c.get("notes_merged_same_step_same_pitch"), fmt(onset.get("max")), fmt(onset.get("mean")),
                     fmt(offset.get("p99")), f"{exact}/{files}", fmt(c.get("seconds"))])
    lines = ["MIDI -> notes -> tokens -> notes -> MIDI -> tokens on every file of each corpus (or a limit). "
             "Notes kept = decoded / read (the only loss: same-pitch onsets merged inside one 10 ms step). "
             "Exact = token ids identical after decoding and after a MIDI file round trip.", ""]
    lines += table(["corpus", "files", "notes", "notes kept", "merged", "onset err max ms", "onset err mean ms",
                    "offset err p99 ms", "exact files", "seconds"], rows)
    return lines, "all files exact" if exact_all else "some files not exact"


def _contender_table(section: dict) -> list[str]:
    """Median seconds of each contender and its ratio to the first one."""
    seconds = section["seconds"]
    names = list(seconds)
    base = names[0]
    rows = [[n, seconds[n]["median_s"], seconds[n].get("min_s"),
             rx(ratio(seconds[n]["median_s"], seconds[base]["median_s"]))] for n in names]
    return table(["contender", "median s", "min s", f"vs {base} (median)"], rows)


def section_attention(d: dict, img: Path) -> tuple[list[str], str]:
    """Every timed section of attention.json (contenders vs the first) and every peak-memory section."""
    lines = []
    headline = "-"
    for key, sec in d.items():
        if not isinstance(sec, dict):
            continue
        if "seconds" in sec:
            shape = ", ".join(f"{k} {sec[k]}" for k in ("length", "batch", "threads", "dtype", "attn_dropout")
                              if k in sec)
            lines += [f"**{key.replace('_', ' ')}** ({shape})", ""] + _contender_table(sec)
            derived = [f"{k} {rx(v)}" for k, v in sec.items() if "_over_" in k and isinstance(v, (int, float))]
            if derived:
                lines += ["Ratios recorded by the script: " + "; ".join(derived) + ".", ""]
            if key == "train_step":
                s = sec["seconds"]
                # the script's own figure (a median of per-round ratios of interleaved runs) when it has one
                rel_abs = sec.get("relative_over_absolute") or ratio(s["relative"]["median_s"],
                                                                     s["absolute"]["median_s"])
                headline = f"train step relative/absolute {rx(rel_abs)}"
        elif any(isinstance(v, dict) and "peak_mb" in v for v in sec.values()):
            names = [k for k, v in sec.items() if isinstance(v, dict) and "peak_mb" in v]
            base = names[0]
            rows = [[n, sec[n]["peak_mb"], rx(ratio(sec[n]["peak_mb"], sec[base]["peak_mb"]))] for n in names]
            lines += [f"**{key.replace('_', ' ')}** (length {sec.get('length')}, batch {sec.get('batch')}; "
                      f"{sec.get('method', '')})", ""] + table(["contender", "peak MB", f"vs {base}"], rows)
    targets = d.get("targets")
    if targets:
        lines.append("Targets: " + "; ".join(f"{k} <= {v}x" for k, v in targets.items()) + ".")
    return lines + [""], headline


def section_train(d: dict, img: Path) -> tuple[list[str], str]:
    """Training tokens/s and peak memory per variant, against fp32 eager."""
    variants = d["variants"]
    base_name = "fp32-eager" if "fp32-eager" in variants else next(iter(variants))
    base = variants[base_name]["tokens_per_s_best"]
    rows = []
    for name, v in variants.items():
        mem = v.get("memory", {}).get("peak_rss_mb")
        base_mem = variants[base_name].get("memory", {}).get("peak_rss_mb")
        rows.append([name, v["tokens_per_s_best"], v.get("tokens_per_s_median"),
                     rx(ratio(v["tokens_per_s_best"], base)), mem, rx(ratio(mem, base_mem))])
    model = d.get("model", {})
    batch = d.get("batch", {})
    lines = [f"Config {d.get('config')} ({fmt(model.get('parameters'))} parameters, context {batch.get('context')}, "
             f"{batch.get('tokens_per_step')} tokens per step), data {d.get('data')}, {d.get('rounds')} interleaved "
             f"rounds of {d.get('steps_per_round', 1)} step(s). A step is Trainer.train_step (augmented crops, "
             "forward, backward, clipping, AdamW). Other jobs can only slow a step down, so the best round is "
             "the least disturbed figure.", ""]
    lines += table(["variant", "tokens/s (best)", "tokens/s (median)", f"vs {base_name}", "peak RSS MB",
                    f"memory vs {base_name}"], rows)
    dl = d.get("data_loading")
    if dl:
        lines.append(f"Data loading: {fmt(dl.get('seconds_per_batch'))} s per batch, "
                     f"{fmt(dl.get('share_of_bf16_step'))} of a bf16 step ({dl.get('note', '')}).")
    _plot_bars(img / "train-tokens-per-s.png", [r[0] for r in rows], [ratio(r[1], base) for r in rows],
               f"training tokens/s vs {base_name} (best round)", "ratio")
    lines += ["", "![training throughput](img/train-tokens-per-s.png)", ""]
    others = [f"{k} {rx(ratio(v['tokens_per_s_best'], base))}" for k, v in variants.items() if k != base_name]
    return lines, ", ".join(others) + f" tokens/s of {base_name}"


def section_generate(d: dict, img: Path) -> tuple[list[str], str]:
    """Generation tokens/s by length and the comparisons against HF, full recompute and arcs off."""
    lines = [f"Batch 1, {d.get('threads')} thread(s), model {d.get('model', {}).get('preset', '?')} "
             f"({fmt(d.get('model', {}).get('parameters'))} parameters, n_ctx {d.get('model', {}).get('n_ctx')}), "
             f"{d.get('rounds')} rounds.", ""]
    by_len = d.get("tokens_per_s_by_length") or {}
    headline = "-"
    if by_len:
        lengths = sorted(by_len, key=int)
        first = by_len[lengths[0]]["ms_per_token"]
        rows = [[int(n), by_len[n]["tokens_per_s"], by_len[n]["ms_per_token"],
                 rx(ratio(by_len[n]["ms_per_token"], first))] for n in lengths]
        lines += table(["tokens generated", "tokens/s", "ms/token", f"ms/token vs {lengths[0]}"], rows)
        _plot_lines(img / "generate-tokens-per-s.png", {"musicgpt.generate": ([int(n) for n in lengths],
                    [by_len[n]["tokens_per_s"] for n in lengths])}, "tokens generated", "tokens/s",
                    "generation speed by length (batch 1, CPU)", logx=True)
        lines += ["![generation speed](img/generate-tokens-per-s.png)", ""]
    hf = d.get("vs_hf_transformers") or {}
    rows = []
    if "ours_tokens_per_s" in hf:
        speed = ratio(hf["ours_tokens_per_s"], hf["hf_tokens_per_s"])
        headline = f"{rx(speed)} HF transformers"
        rows.append(["vs HF transformers GPT-2 generate", f"{hf['tokens']} tokens", rx(speed), hf.get("target")])
    elif hf:
        rows.append(["vs HF transformers GPT-2 generate", hf.get("skipped", "skipped"), "-", "-"])
    full = d.get("vs_full_recompute") or {}
    if full:
        t = full.get("total_seconds", {})
        rows.append(["vs full recompute (no KV cache)", f"{full.get('tokens')} tokens",
                     rx(ratio(t.get("full_recompute"), t.get("ours"))), full.get("target")])
    arcs = d.get("arcs_overhead") or {}
    if arcs:
        rows.append(["attention arcs on / off", f"{arcs.get('tokens')} tokens", rx(ratio(arcs["on_s"], arcs["off_s"])),
                     arcs.get("target")])
    if rows:
        lines += table(["comparison", "size", "ratio", "target"], rows)
    rtf = d.get("real_time_factor") or {}
    if rtf.get("by_data"):
        rows = [[name, v.get("files"), fmt(v.get("seconds_per_token")), rx(v.get("real_time_factor"))]
                for name, v in rtf["by_data"].items()]
        lines += [f"Real-time factor: {fmt(rtf.get('tokens_per_s'))} tokens/s at length {rtf.get('at_length')} "
                  f"x seconds of music per token of real performances (target {rtf.get('target')}x).", ""]
        lines += table(["data", "files", "s of music / token", "real-time factor"], rows)
    for key in ("vs_hf_transformers", "vs_full_recompute", "arcs_overhead"):
        note = (d.get(key) or {}).get("note")
        if note:
            lines.append(f"- {key.replace('_', ' ')}: {note}")
    return lines + [""], headline


def section_attend_memory(d: dict, img: Path) -> tuple[list[str], str]:
    """`musicgpt attend` on a long tiled piece: peak RSS, time and sizes, and the same pieces before streaming."""
    piece, run, out = d.get("piece") or {}, d.get("attend") or {}, d.get("outputs") or {}
    mb = 2**20
    lines = [f"`musicgpt attend` (bundled model, default settings) on {fmt(piece.get('minutes'))} minutes of "
             f"{piece.get('source')} repeated: {fmt(piece.get('notes'))} notes, {fmt(piece.get('tokens'))} tokens.",
             ""]
    size = (lambda b: "-" if b is None else fmt(b / mb))
    rows = [["now", fmt(piece.get("minutes")), piece.get("notes"), run.get("arcs"), run.get("wall_s"),
             run.get("cpu_s"), run.get("peak_rss_mb"), size(out.get("arcs_json_bytes")), size(out.get("html_bytes"))]]
    before = d.get("before_streaming") or {}
    for r in before.get("runs", []):
        rows.append([f"before ({before.get('commit')})", fmt(r.get("minutes")), r.get("notes"), r.get("arcs"),
                     r.get("wall_s"), r.get("cpu_s"), r.get("peak_rss_mb"), size(r.get("arcs_json_bytes")),
                     size(r.get("html_bytes"))])
    lines += table(["code", "minutes", "notes", "arcs", "wall s", "CPU s", "peak RSS MB", "arcs.json MB", "page MB"],
                   rows)
    lines += [f"- before, {fmt(r.get('minutes'))} minutes: {r['outcome']}" for r in before.get("runs", [])
              if r.get("outcome")]
    timeline = run.get("rss_mb_timeline") or []
    if timeline:
        _plot_lines(img / "attend-memory-rss.png", {"resident memory": ([t for t, _ in timeline],
                    [m for _, m in timeline])}, "seconds", "MB", "musicgpt attend: resident memory over the run")
        lines += ["", "![attend memory](img/attend-memory-rss.png)"]
    headline = (f"peak RSS {fmt(run.get('peak_rss_mb'))} MB on {fmt(piece.get('minutes'))} min "
                f"({fmt(piece.get('notes'))} notes)")
    return lines + [""], headline


def section_metrics(d: dict, img: Path) -> tuple[list[str], str]:
    """Feature cost against MIDI reading, and within- vs cross-corpus overlap and KL per feature."""
    s = d["speed"]
    lines = [f"Files: {d.get('files')}; per set: "
             + ", ".join(f"{k} {v}" for k, v in d.get("files_per_set", {}).items()) + ".", ""]
    read = statistics.median(s["read_s"])
    feat = statistics.median(s["read_and_features_s"])
    lines += table(["stage", "median s", "files/s", "vs reading the MIDI"],
                   [["read_midi only", read, s["files"] / read, "1.00x"],
                    ["read_midi + piece_features", feat, s["files"] / feat,
                     rx(statistics.median(f / r for f, r in zip(s["read_and_features_s"], s["read_s"])))]])
    lines.append(f"{s['files']} files, {fmt(s.get('notes'))} notes, {s['rounds']} interleaved rounds; the set "
                 f"comparison of {s.get('compare_sets_pieces')} pieces took {fmt(s.get('compare_sets_s'))} s.")
    cli = d.get("cli")
    if cli:
        lines.append(f"`{cli['command']}` on {cli['files']} files, end to end: {fmt(cli['seconds'])} s "
                     f"(exit {cli['exit_code']}; {cli.get('note', '')}).")
    ref = d["reference"]
    within, across = ref["asap_a_vs_asap_b"], ref["pop909_a_vs_asap_b"]
    pop = ref.get("pop909_a_vs_pop909_b")
    lines += ["", "Reference figures: mgeval overlap / KL of a candidate set against a reference set "
              "(overlap 1 and KL 0: as close as the reference is to itself). Within a corpus the figures "
              "should be high / low, across corpora lower / higher.", ""]
    rows = []
    names = list(within["features"])
    for n in names:
        row = [n, within["features"][n]["overlap"], across["features"][n]["overlap"],
               rx(ratio(across["features"][n]["overlap"], within["features"][n]["overlap"])),
               within["features"][n]["kl"], across["features"][n]["kl"],
               rx(ratio(across["features"][n]["kl"], within["features"][n]["kl"]))]
        if pop:
            row.insert(2, pop["features"][n]["overlap"])
        rows.append(row)
    mean = ["**mean**", within["mean_overlap"], across["mean_overlap"],
            rx(ratio(across["mean_overlap"], within["mean_overlap"])), within["mean_kl"], across["mean_kl"],
            rx(ratio(across["mean_kl"], within["mean_kl"]))]
    if pop:
        mean.insert(2, pop["mean_overlap"])
    rows.append(mean)
    header = ["feature", "overlap ASAP A vs ASAP B", "overlap POP909 A vs ASAP B", "overlap cross / within",
              "KL ASAP A vs B", "KL POP909 vs ASAP B", "KL cross / within"]
    if pop:
        header.insert(2, "overlap POP909 A vs POP909 B")
    lines += table(header, rows)
    lower = sum(across["features"][n]["overlap"] < within["features"][n]["overlap"] for n in names)
    lines.append(f"The cross-corpus overlap is lower than the within-corpus one on {lower} of {len(names)} features.")
    _plot_grouped(img / "metrics-overlap.png", names,
                  {"ASAP A vs ASAP B": [within["features"][n]["overlap"] for n in names],
                   "POP909 A vs ASAP B": [across["features"][n]["overlap"] for n in names]},
                  "overlap with the reference (ASAP B)")
    lines += ["", "![metrics overlap](img/metrics-overlap.png)", ""]
    return lines, f"cross-corpus overlap {rx(ratio(across['mean_overlap'], within['mean_overlap']))} within-corpus"


def section_lengthgen(d: dict, img: Path, stem: str) -> tuple[list[str], str]:
    """NLL per evaluation context against the training context, training budget, NLL by position."""
    models = d["models"]
    contexts = [str(c) for c in d["contexts"]]
    base = contexts[0]
    abs_base = models.get("absolute", {}).get("nll", {}).get(base, {}).get("nll")
    rows, curves, training = [], {}, []
    labels = {"relative": "relative", "absolute": "absolute (as trained)",
              "absolute_clamped": "absolute, positions clamped past its table"}
    for name, m in models.items():
        nll = m.get("nll", {})
        ref = nll.get(base, {}).get("nll") or (abs_base if name == "absolute_clamped" else None)
        cells, xs, ys = [], [], []
        for c in contexts:
            v = nll.get(c)
            if v is None:
                cells.append("same as absolute" if name == "absolute_clamped" and c == base else "-")
            elif v.get("status") == "ok":
                r = ratio(v["nll"], ref)
                cells.append(f"{v['nll']:.4f} ({'-' if r is None else f'{r:.3f}x'})")
                xs.append(int(c))
                ys.append(v["nll"])
            else:
                cells.append("not evaluable")
        if name == "absolute_clamped" and abs_base is not None:
            xs, ys = [int(base)] + xs, [abs_base] + ys
        if xs:
            curves[labels.get(name, name)] = (xs, ys)
        rows.append([labels.get(name, name), *cells])
        if "steps" in m:
            secs = m.get("train_seconds")
            training.append([labels.get(name, name), m.get("parameters"), m.get("steps"), m.get("tokens_seen"),
                             None if secs is None else secs / 60, m.get("final_train_loss")])
    budget = d.get("same_budget", {})
    ev = d.get("evaluation", {})
    lines = [f"Size **{d.get('size')}**: {budget.get('steps')} steps of batch {budget.get('batch_size')} at context "
             f"{budget.get('context')}, seed {budget.get('seed')}, configs {', '.join(d.get('configs', {}).values())}"
             + (f" with overrides `{' '.join(d['overrides'])}`" if d.get("overrides") else "")
             + f"; the two configs differ in {budget.get('differs_only_in', 'model.position')}. "
             f"Training data: {d.get('training_data')}. Evaluation: {ev.get('data')}, {ev.get('split')} split, "
             f"{fmt(ev.get('docs'))} documents, {fmt(ev.get('tokens'))} events ({ev.get('note')}).", "",
             "NLL per event (nats) at each evaluation context, and its ratio to the NLL at the training context:", ""]
    lines += table(["model", *[f"context {c}" for c in contexts]], rows)
    clamp = models.get("absolute_clamped", {})
    if clamp.get("how"):
        lines.append(f"How the absolute model is read past {base}: as trained it cannot be (its learned position "
                     f"table has {base} rows; `evaluate_checkpoint` refuses longer windows). The clamped copy: "
                     f"{clamp['how']}. Within {base} tokens its logits differ from the original by at most "
                     f"{fmt(clamp.get('max_logit_diff_vs_absolute_within_trained_context'))}.")
    lines.append(f"Method: {d.get('evaluation_method', '')}.")
    if d.get("note"):
        lines += ["", f"Note: {d['note']}"]
    if training:
        lines += ["", "Training (same steps, batch, data and seed for both):", ""]
        lines += table(["model", "parameters", "steps", "tokens seen", "train minutes", "final train loss"],
                       training)
    verdict = d.get("verdict", {})
    if verdict.get("summary"):
        lines += ["", f"**Result: {verdict['summary']}.**"]
    plot = img / f"{stem}.png"
    _plot_lines(plot, curves, "evaluation context (tokens)", "NLL per event (nats)",
                f"length generalization ({d.get('size')}): trained at {base}", logx=True, vline=int(base))
    lines += ["", f"![NLL vs evaluation context](img/{plot.name})", ""]
    pos = {k: v for k, v in (d.get("nll_by_position") or {}).items() if v}
    if pos:
        any_pos = next(iter(pos.values()))
        buckets = list(any_pos["buckets"])
        rows = [[labels.get(k, k), v["docs"], *[v["buckets"].get(b) for b in buckets],
                 rx(ratio(v["buckets"][buckets[-1]], v["buckets"][buckets[0]]))] for k, v in pos.items()]
        lines += [f"NLL by position inside the first {any_pos['window']}-token window of each long enough "
                  "evaluation document (positions past the training context are the extrapolation):", ""]
        lines += table(["model", "documents", *[f"positions {b}" for b in buckets],
                        "last / first bucket"], rows)
        bin_ = any_pos["bin"]
        curves = {labels.get(k, k): ([(i + 0.5) * bin_ for i in range(len(v["curve"]))], v["curve"])
                  for k, v in pos.items()}
        plot = img / f"{stem}-position.png"
        _plot_lines(plot, curves, "position in the window (tokens)", f"NLL per event (nats, mean per {bin_})",
                    f"NLL by position ({d.get('size')}): trained at {base}", vline=int(base))
        lines += [f"![NLL by position](img/{plot.name})", ""]
    rel = verdict.get("ratios_to_training_context", {}).get("relative", {}).get(contexts[-1])
    return lines, (f"relative NLL@{contexts[-1]} / NLL@{base} = {rx(rel)}" if rel else "-")


# ---- plots ------------------------------------------------------------------------------------------


def _pyplot():
    """matplotlib.pyplot with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_lines(path: Path, curves: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
                logx: bool = False, vline: int | None = None) -> None:
    if not _DRAW[0]:
        return
    if not curves:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    markers = ["o", "s", "^", "D"]
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        few = len(xs) < 12
        ax.plot(xs, ys, marker=markers[i % len(markers)] if few else None, markersize=9 - 2 * i if few else None,
                label=label)
    if logx:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for xs, _ in curves.values() for x in xs})
        if len(ticks) <= 8:
            ax.set_xticks(ticks, [str(t) for t in ticks])
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _plot_bars(path: Path, names: list[str], values: list[float | None], title: str, ylabel: str) -> None:
    if not _DRAW[0]:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax.bar(names, [v or 0 for v in values], color="#4c72b0")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set(title=title, ylabel=ylabel)
    _save(fig, path)


def _plot_grouped(path: Path, names: list[str], groups: dict[str, list[float]], ylabel: str) -> None:
    if not _DRAW[0]:
        return
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    width = 0.8 / len(groups)
    x = np.arange(len(names))
    for i, (label, values) in enumerate(groups.items()):
        ax.bar(x + i * width, values, width, label=label)
    ax.set_xticks(x + width * (len(groups) - 1) / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, ylim=(0, 1))
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version stamp: re-renders of the same data match
    import matplotlib.pyplot as plt

    plt.close(fig)


def section_gpu(d: dict, img: Path) -> tuple[list[str], str]:
    """Train step on the GPU per contender against absolute SDPA; peak memory; generation against HF."""
    lines = [f"Device **{d.get('device')}**, torch {d.get('torch')}, the bundled model's shape {d.get('shape')}, "
             f"{d.get('precision')}. Contenders interleaved round by round; medians and the median of per-round "
             "ratios (see bench/gpu.py's docstring).", ""]
    rows = []
    for t in d["train"]:
        for name, sec in t["median_seconds"].items():
            mem = t.get("peak_bytes", {}).get(name)
            rows.append([t["length"], t["batch"], name, fmt(1000 * sec), t["tokens_per_s"][name],
                         rx(t["ratio_to_absolute"].get(name)), fmt(mem / 2**30) if mem else "-",
                         rx((t.get("peak_ratio_to_absolute") or {}).get(name))])
        for name, err in (t.get("errors") or {}).items():
            rows.append([t["length"], t["batch"], name, f"failed: {err}", "-", "-", "-", "-"])
    lines += table(["context", "batch", "train step", "ms", "tokens/s", "time vs absolute", "peak GiB",
                    "memory vs absolute"], rows) + [""]
    g = d.get("generation") or {}
    grows = [[b, r["ours_tokens_per_s"], r["hf_tokens_per_s"], rx(r["speedup_vs_hf"])]
             for b, r in (g.get("batches") or {}).items()]
    if grows:
        lines += [f"Generation of {g.get('tokens')} tokens ({g.get('model')}) against HF transformers "
                  "GPT2LMHeadModel.generate of the same size (KV cache, sampling):", ""]
        lines += table(["batch", "musicgpt tokens/s", "HF tokens/s", "speedup"], grows) + [""]
    if not d["train"]:
        return lines, "no train-step figures" + (f"; generation {grows[0][3]} HF at batch {grows[0][0]}" if grows else "")
    first = d["train"][0]
    head = (f"relative train step {rx(first['ratio_to_absolute'].get('relative'))} of absolute flash SDPA at "
            f"L={first['length']} (naive port {rx(first['ratio_to_absolute'].get('naive'))})")
    if grows:
        head += f"; generation {grows[0][3]} HF at batch {grows[0][0]}"
    return lines, head


# ---- the document -----------------------------------------------------------------------------------

# name -> (results file, title, renderer, how to run it alone)
def section_studio(d: dict, img: Path) -> tuple[list[str], str]:
    """The studio: POST to the first streamed new note, and its tokens/s against musicgpt.generate."""
    first, ratios, targets = d.get("first_note_s") or {}, d.get("tokens_per_s_ratio") or {}, d.get("targets") or {}
    lines = [f"Model {d.get('model')}, primer {d.get('primer_seconds')} s of `{d.get('primer')}`, "
             f"{d.get('seconds')} s of new music per take, {len(d.get('rounds') or [])} interleaved rounds "
             "(the studio through a real server and HTTP client, and `musicgpt.generate` with arcs, same seed).", ""]
    rows = [["POST -> first new note (s)", fmt(first.get("median")), f"{fmt(first.get('min'))} - {fmt(first.get('max'))}",
             f"<= {targets.get('first_note_s')}"],
            ["streamed / direct tokens/s", fmt(ratios.get("median")), f"{fmt(ratios.get('min'))} - {fmt(ratios.get('max'))}",
             f">= {1 - targets.get('overhead', 0.1):g}"]]
    lines += table(["measure", "median", "range", "target"], rows)
    lines += ["Ratios of one run only: the machine's speed drifts between runs.", ""]
    return lines, f"first note {fmt(first.get('median'))} s, {rx(ratios.get('median'))} generate"


SECTIONS: dict[str, tuple[str, str, Callable[..., tuple[list[str], str]], str]] = {
    "tokenize": ("tokenize.json", "Tokenizer speed", section_tokenize, "python bench/tokenizer_speed.py"),
    "roundtrip": ("roundtrip.json", "Codec round trip", section_roundtrip, "python bench/roundtrip.py"),
    "attention": ("attention.json", "Relative attention speed and memory", section_attention,
                  "python bench/attention.py"),
    "train": ("train.json", "Training throughput", section_train, "python bench/train.py"),
    "generate": ("generate.json", "Generation speed", section_generate, "python bench/generate.py"),
    "metrics": ("metrics.json", "Music metrics", section_metrics, "python bench/metrics.py"),
    "attend_memory": ("attend_memory.json", "Attention arcs of a long piece: memory", section_attend_memory,
                      "python bench/attend_memory.py"),
    "studio": ("studio_latency.json", "Studio: first streamed note and streaming overhead", section_studio,
               "python bench/studio_latency.py"),
    "gpu": ("gpu.json", "GPU: relative attention and generation", section_gpu, "python bench/gpu.py (needs CUDA)"),
    "lengthgen-full": ("lengthgen-full.json", "Length generalization (full run)",
                       lambda d, img: section_lengthgen(d, img, "lengthgen-full"),
                       "python bench/length_generalization.py --size full"),
    "lengthgen": ("lengthgen.json", "Length generalization (quick suite run)",
                  lambda d, img: section_lengthgen(d, img, "lengthgen"), "python bench/length_generalization.py"),
}


def suite_lines(suite: dict | None, results: Path) -> list[str]:
    """The header's machine and suite-timing part, from suite.json."""
    if not suite:
        return ["No suite run is recorded (bench/results/suite.json is missing): each section states what its "
                "own file records about the machine.", ""]
    m = suite.get("machine_start", {})
    lines = [f"Last suite run (`{suite.get('command', 'python -m bench')}`, size **{suite.get('size')}**): "
             f"{suite.get('started')} to {suite.get('finished')}, on {m.get('cpu_model')}, {m.get('cores')} cores, "
             f"torch {m.get('torch')}, Python {m.get('python')}; load average "
             + "/".join(f"{x:.2f}" for x in (m.get("load_average") or [])) + " at the start, "
             + "/".join(f"{x:.2f}" for x in (suite.get("machine_end", {}).get("load_average") or [])) + " at the end. "
             f"{suite.get('note', '')}", ""]
    written = suite.get("results_dir")
    if written and written != shown(results):
        lines += [f"That run wrote its JSON to `{written}`, not to the folder this report was rendered from "
                  f"(`{shown(results)}`): its timings are below, but the sections may show other runs of each "
                  "benchmark (each states its own machine, date and size).", ""]
    entries = suite.get("benchmarks", {})
    rows = [[name, r.get("size"), r.get("seconds"), r.get("cpu_seconds"),
             "ok" if r.get("exit_code") == 0 else f"failed ({r.get('exit_code')})", f"`{r.get('command')}`"]
            for name, r in entries.items()]
    if rows:
        total = sum(r.get("seconds") or 0 for r in entries.values())
        cpu = sum(r.get("cpu_seconds") or 0 for r in entries.values())
        lines += table(["benchmark", "size", "wall seconds", "CPU seconds", "status", "command"], rows)
        lines += [f"Total: {total:.0f} s wall ({total / 60:.1f} min)"
                  + (f", {cpu:.0f} CPU seconds ({cpu / 60:.1f} CPU minutes)" if cpu else "")
                  + " on this machine while other jobs shared it (see the load averages). CPU seconds are what "
                  "the work itself costs; on an idle 2-core machine the wall time is roughly between half of them "
                  "(both cores busy) and all of them (one core busy).", ""]
    return lines


def render(results: Path = RESULTS, out: Path = REPORT, plots: bool = True) -> Path:
    """Write the report (and its plots under out.parent/img) from the JSON files in `results`."""
    _DRAW[0] = plots
    img = out.parent / "img"
    summary, body = [], []
    for name, (filename, title, renderer, command) in SECTIONS.items():
        path = results / filename
        body += [f"## {title}", ""]
        try:
            d = load_json(path)
        except (OSError, json.JSONDecodeError) as exc:
            d, error = None, f"unreadable: {exc}"
        else:
            error = None
        if d is None:
            status = error or "missing"
            body += [f"Not measured: `{shown(path)}` is {status}. Run `{command}` "
                     f"(or `python -m bench --only {name.split('-')[0]}`).", ""]
            summary.append([title, f"`{filename}`", f"**not measured** ({status})", "-"])
            continue
        try:
            lines, headline = renderer(d, img)
        except Exception as exc:  # a format this renderer does not know must not sink the report
            body += [f"Could not render `{filename}` ({type(exc).__name__}: {exc}); its layout differs from what "
                     "bench/report.py expects.", ""]
            summary.append([title, f"`{filename}`", "could not render", "-"])
            continue
        body += [machine_line(d), ""] + lines
        caveat = d.get("caveat") or d.get("note")
        if caveat:
            body += [f"*The file's own caveat: {caveat}*", ""]
        summary.append([title, f"`{filename}`", "measured", headline])
    suite = None
    try:
        suite = load_json(results / "suite.json")
    except (OSError, json.JSONDecodeError):
        pass
    head = ["# Benchmarks", "",
            "Generated by `python -m bench` (bench/report.py) from `bench/results/*.json`; do not edit by hand. "
            "Re-render without measuring: `python -m bench --report-only`.", "",
            CAVEAT, "", GPU_NOTE, ""]
    head += suite_lines(suite, results)
    head += ["## Summary", ""] + table(["benchmark", "results file", "status", "headline (ratio to its baseline)"],
                                       summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(head + body).rstrip() + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    print(f"wrote {render(args.results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
