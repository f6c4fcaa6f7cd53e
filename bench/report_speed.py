"""The report's sections on speed and memory: tokenizer, codec round trip, attention, training, generation,
attend on a long piece, GPU, studio. Each renders one results file: (Markdown lines, summary headline).

Every figure is shown as a ratio against its baseline from the same run, computed from the raw numbers in
the JSON (absolute timings from a shared machine do not compare across runs).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.format import fmt, ratio, rx, table
from bench.plots import plot_bars, plot_lines


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
    plot_bars(img / "train-tokens-per-s.png", [r[0] for r in rows], [ratio(r[1], base) for r in rows],
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
        plot_lines(img / "generate-tokens-per-s.png", {"musicgpt.generate": ([int(n) for n in lengths],
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
        plot_lines(img / "attend-memory-rss.png", {"resident memory": ([t for t, _ in timeline],
                    [m for _, m in timeline])}, "seconds", "MB", "musicgpt attend: resident memory over the run")
        lines += ["", "![attend memory](img/attend-memory-rss.png)"]
    headline = (f"peak RSS {fmt(run.get('peak_rss_mb'))} MB on {fmt(piece.get('minutes'))} min "
                f"({fmt(piece.get('notes'))} notes)")
    return lines + [""], headline


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
