"""The report's sections on the music: the metrics' cost and separating power, and length generalization.
Each renders one results file: (Markdown lines, summary headline).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.format import fmt, ratio, rx, table
from bench.plots import plot_grouped, plot_lines


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
    plot_grouped(img / "metrics-overlap.png", names,
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
    plot_lines(plot, curves, "evaluation context (tokens)", "NLL per event (nats)",
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
        plot_lines(plot, curves, "position in the window (tokens)", f"NLL per event (nats, mean per {bin_})",
                    f"NLL by position ({d.get('size')}): trained at {base}", vline=int(base))
        lines += [f"![NLL by position](img/{plot.name})", ""]
    rel = verdict.get("ratios_to_training_context", {}).get("relative", {}).get(contexts[-1])
    return lines, (f"relative NLL@{contexts[-1]} / NLL@{base} = {rx(rel)}" if rel else "-")
