"""Does steering work? Composer conditioning, infilling and guidance of a model trained with them, on ASAP test.

    python -m bench.steering --checkpoint runs/steer/best --data data/asap            # ~15 min, 2-core CPU
    python -m bench.steering --checkpoint bundled --data data/asap --quick             # a smoke run

Writes bench/results/steering.json (--out). Every figure is measured here, on the test split of the
prepared ASAP corpus (split by piece: no test piece was trained on):

- plain: NLL per event at context 1024 without any control, on the whole test split, for this
  model and (--baseline, default the plain model it was fine-tuned from) the one it replaces: plain
  continuation must not regress.
- composers: for the test documents of each composer (rows), the NLL per event of their first
  --windows windows of 1024 tokens when the model is told each test composer (columns), `unknown`,
  and nothing. Conditioning works when the diagonal is the lowest of its row.
- infill NLL: --gaps random gaps (3-8 s) in test documents; the NLL of the true middle's tokens given
  prefix + suffix (the infilling layout), given the prefix alone (plain continuation of the same prefix
  tokens), and given the prefix with an empty suffix. The suffix helps when the first is lowest.
- infill validity: --infills gaps filled by `musicgpt.infill` from the original MIDI files, each written
  as MIDI and read back with mido and pretty_midi; valid when it parses, the kept notes before START
  and from END on are the input's own (same onsets, pitches, velocities), every new note starts in
  [START, END) and ends by END, and no two notes of one pitch overlap. Kept onsets are also compared
  exactly in memory (the Sample's notes, before writing) and the largest written error is reported
  (MIDI ticks are 0.5 ms: writing rounds by at most 0.25 ms).
- long controls: --long-seconds continuations told density=low or high, notes per second over their first
  and last thirds, with the CONTROL header pinned in the sliding window and without it (as before pinning):
  does the control still hold once the window has slid past n_ctx tokens?
- guidance: continuations of one primer told density=low or density=high, at guidance 1 and 2.5; the
  share whose new notes measure as the asked density (`musicgpt.tokens.controls.computed_values`), and
  the speed ratio of guided to unguided generation in the same process (interleaved; the machine drifts).
- pair step: decode steps/s of guidance's single pass over both KV caches (`Decoder.step_pair`) against
  two separate steps, batch 1 with full windows, interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import torch

import musicgpt
from bench.machine import CAVEAT, NO_GPU, machine_info
from musicgpt import checkpoint, load_checkpoint
from musicgpt._io import atomic_write_text
from musicgpt.corpus.shards import Split, open_split, read_manifest
from musicgpt.generation.setup import infill_prompt
from musicgpt.music.scores import read_notes
from musicgpt.tokens import infill as fim
from musicgpt.tokens.controls import computed_values
from musicgpt.training.data import Specials, windows
from musicgpt.training.evaluate import evaluate_checkpoint, score

ROOT = Path(__file__).resolve().parents[1]

CONTEXT = 1024
TICK_TOLERANCE = 1e-3  # seconds: written MIDI puts onsets on a 0.5 ms grid (1000 ticks a quarter at 120 bpm)


def plain_nll(ckpt: str, data: Path, max_docs: int | None) -> dict:
    """NLL at 1024 without controls on the test split (or its first max_docs documents)."""
    began = time.perf_counter()
    if max_docs:
        report = _subset_eval(ckpt, data, max_docs)
    else:
        report = evaluate_checkpoint(ckpt, [data], split="test", context=CONTEXT, own_controls=False,
                                     precision="auto", progress=False).to_dict()
    return {"checkpoint": str(checkpoint.resolve(ckpt)), "nll": report["nll"], "n_tokens": report["n_tokens"],
            "n_docs": report["n_docs"], "seconds": round(time.perf_counter() - began, 1)}


def _subset_eval(ckpt: str, data: Path, max_docs: int) -> dict:
    model, tok = load_checkpoint(checkpoint.resolve(ckpt))
    split = open_split(data, "test")
    sub = Split(split.tokens, split.offsets[: max_docs + 1])
    totals = score(model.eval(), windows(sub, CONTEXT, CONTEXT, _specials(tok)), CONTEXT, 8)
    return {"nll": totals.nll_sum / totals.count, "n_tokens": totals.count, "n_docs": sub.n_docs}


def _specials(tok) -> Specials:
    return Specials(tok.pad_id, tok.bos_id, tok.eos_id)


def composer_matrix(model, tok, data: Path, n_windows: int, split_name: str = "test") -> dict:
    """Rows: true composer of test documents; columns: composer told (and unknown, none); NLL per event."""
    manifest = read_manifest(data)
    split = open_split(data, split_name)
    docs: dict[str, list[int]] = defaultdict(list)
    for s in manifest["sources"]:
        if s["split"] == split_name and s.get("composer"):
            docs[s["composer"]].append(int(s["doc"]))
    known = set(tok.controls.get("composer", ()))
    rows = sorted(c for c in docs if c in known)
    columns = rows + ["unknown", None]
    limit = n_windows * (CONTEXT - 8)  # tokens per document: its first windows
    out = {"split": split_name, "rows": rows, "columns": [c or "none" for c in columns], "windows_per_doc": n_windows,
           "docs": {c: len(docs[c]) for c in rows}, "nll": {}, "tokens": {}}
    for true in rows:
        parts = [np.asarray(split.doc(d)[:limit], np.int64) for d in docs[true]]
        sub = Split(np.concatenate(parts), np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64))
        out["nll"][true], out["tokens"][true] = {}, int(sum(len(p) for p in parts))
        for told in columns:
            header = tok.header({"composer": told}) if told else np.zeros(0, np.int64)
            totals = score(model, windows(sub, CONTEXT, CONTEXT, _specials(tok), [header] * sub.n_docs), CONTEXT, 8)
            out["nll"][true][told or "none"] = round(totals.nll_sum / totals.count, 4)
    out["diagonal_lowest"] = {c: min(out["nll"][c], key=out["nll"][c].get) == c for c in rows}
    out["true_below_none"] = {c: out["nll"][c][c] < out["nll"][c]["none"] for c in rows}
    out["true_below_every_wrong"] = {c: all(out["nll"][c][c] < v for k, v in out["nll"][c].items() if k not in (c,))
                                     for c in rows}
    return out


def _test_docs(data: Path) -> list[tuple[int, Path]]:
    """(doc index, original MIDI path) of every test document."""
    manifest = read_manifest(data)
    root = Path(manifest["source_dir"])
    return [(int(s["doc"]), root / s["path"]) for s in manifest["sources"] if s["split"] == "test"]


def _random_gaps(data: Path, tok, n: int, seed: int) -> list[tuple[int, Path, float, float]]:
    """n (doc, path, start, end): gaps of 3-8 s with at least 10 s of music on each side."""
    rng = np.random.default_rng(seed)
    split, docs = open_split(data, "test"), _test_docs(data)
    seconds = tok.seconds_per_id()
    out = []
    while len(out) < n:
        doc, path = docs[int(rng.integers(len(docs)))]
        length = float(seconds[np.asarray(split.doc(doc), np.int64)].sum())
        gap = float(rng.uniform(3, 8))
        if length < gap + 20:
            continue
        start = round(float(rng.uniform(10, length - gap - 10)), 2)
        out.append((doc, path, start, round(start + gap, 2)))
    return out


@torch.no_grad()
def _middle_nll(model, ids: np.ndarray, first: int) -> tuple[float, int]:
    """Summed NLL of ids[first:] given what precedes them (one forward pass), and their count."""
    x = torch.from_numpy(ids[None, :-1])  # (1, T-1)
    logp = torch.log_softmax(model(x).logits[0].float(), -1)  # (T-1, V)
    targets = torch.from_numpy(ids[1:])
    nll = -logp[torch.arange(len(targets)), targets]  # (T-1,)
    return float(nll[first - 1 :].sum()), len(ids) - first


def infill_nll(model, tok, data: Path, n: int, seed: int) -> dict:
    """NLL of true middles: with the suffix (infilling), with the prefix alone (plain), with an empty suffix."""
    split = open_split(data, "test")
    sums = defaultdict(float)
    helped, count, cases = 0, 0, []
    for doc, _, start, end in _random_gaps(data, tok, n, seed):
        ids = np.asarray(split.doc(doc), np.int64)
        notes = tok.decode(ids)
        s, e = round(start / tok.time_step), round(end / tok.time_step)
        _, middle = fim.cut(ids, tok, s, e)
        prompt, _, _ = infill_prompt(tok, notes, start, end, CONTEXT)
        room = CONTEXT + 1 - len(prompt)
        middle = middle[:room]
        spans = fim.spans(tok, prompt)
        prefix = prompt[spans.suffix[1] + 1 : -1]  # [BOS] + the kept prefix, as the infilling prompt holds it
        with_suffix = _middle_nll(model, np.r_[prompt, middle], len(prompt))
        plain = _middle_nll(model, np.r_[prefix, middle], len(prefix))
        empty = np.r_[tok.suffix_id, tok.prefix_id, prefix, prompt[-1]]
        without_suffix = _middle_nll(model, np.r_[empty, middle], len(empty))
        for name, (total, k) in (("prefix_and_suffix", with_suffix), ("prefix_alone", plain),
                                 ("prefix_empty_suffix", without_suffix)):
            sums[name] += total
        count += with_suffix[1]
        helped += with_suffix[0] < plain[0]
        cases.append({"start": start, "end": end, "middle_tokens": with_suffix[1],
                      "nll_with_suffix": round(with_suffix[0] / with_suffix[1], 4),
                      "nll_prefix_alone": round(plain[0] / plain[1], 4)})
    return {"gaps": n, "middle_tokens": count, "nll": {k: round(v / count, 4) for k, v in sums.items()},
            "suffix_helped_share": round(helped / n, 3), "cases": cases}


def infill_validity(model, tok, data: Path, n: int, seed: int) -> dict:
    """Fill n random gaps with musicgpt.infill; write, read back, and check each (see the module docstring)."""
    failures, began, reasons = [], time.perf_counter(), defaultdict(int)
    new_notes, tokens, errors, exact = [], 0, [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (_, path, start, end) in enumerate(_random_gaps(data, tok, n, seed + 1)):
            original = read_notes(path)
            (sample,) = musicgpt.infill(model, original, start, end, tokenizer=tok, seed=i)
            out = sample.save(tmp, f"infill_{i:02d}")[0]
            problems, error = _check_infill(out, original, start, end)
            inside = (original.start < start) | (original.start >= end)
            kept = ~((sample.notes.start >= start) & (sample.notes.start < end))
            exact += bool(np.array_equal(np.sort(sample.notes.start[kept]), np.sort(original.start[inside])))
            errors.append(error)
            tokens += sample.n_generated
            new_notes.append(int((~sample.primer_notes).sum()))
            for p in problems:
                reasons[p] += 1
            if problems:
                failures.append({"file": str(path.name), "start": start, "end": end, "problems": problems})
    return {"infills": n, "valid": n - len(failures), "valid_share": (n - len(failures)) / n,
            "failures": failures, "problem_counts": dict(reasons),
            "kept_onsets_exact_in_memory": exact, "kept_onset_error_max_ms": round(float(np.nanmax(errors)) * 1e3, 3), "new_notes_mean": float(np.mean(new_notes)),
            "tokens_generated": tokens, "seconds": round(time.perf_counter() - began, 1)}


def _check_infill(path: Path, original, start: float, end: float) -> tuple[list[str], float]:
    """Problems of one infilled file (none: valid), and the largest onset error of its kept notes in seconds."""
    problems = []
    try:
        mido.MidiFile(path)
        midi = pretty_midi.PrettyMIDI(str(path))
    except Exception as exc:  # any parse failure is what this counts
        return [f"does not parse: {exc}"], float("nan")
    tracks = {inst.name: inst.notes for inst in midi.instruments}
    # by pitch then onset: near-simultaneous notes of different pitches may swap under tick rounding
    kept = sorted((n.pitch, n.start, n.velocity) for n in tracks.get("piece", []))
    outside = (original.start < start) | (original.start >= end)
    expected = sorted(zip(original.pitch[outside].tolist(), original.start[outside].tolist(),
                          original.velocity[outside].tolist()))
    error = max((abs(a[1] - b[1]) for a, b in zip(kept, expected)), default=0.0)
    if len(kept) != len(expected) or any(a[0] != b[0] or a[2] != b[2] for a, b in zip(kept, expected)):
        problems.append("kept notes differ from the input's (count, pitch or velocity)")
    elif error > TICK_TOLERANCE:
        problems.append(f"a kept note moved by {error * 1e3:.2f} ms")
    new = tracks.get("infill", [])
    if any(not (start - TICK_TOLERANCE <= n.start < end) or n.end > end + TICK_TOLERANCE for n in new):
        problems.append("a new note outside the gap")
    by_pitch = defaultdict(list)
    for inst in midi.instruments:
        for n in inst.notes:
            by_pitch[n.pitch].append((n.start, n.end))
    if any(a[1] > b[0] + TICK_TOLERANCE for spans in by_pitch.values()
           for a, b in zip(sorted(spans), sorted(spans)[1:])):
        problems.append("overlapping notes of one pitch")
    return problems, error


def guidance(model, tok, primer: Path, samples: int, seconds: float) -> dict:
    """Share of continuations measuring as the density asked, at guidance 1 and 2.5; guided/unguided speed."""
    out, timings = {"primer": str(primer.relative_to(ROOT)), "samples": samples, "seconds": seconds, "runs": []}, {}
    for scale in (1.0, 2.5, 1.0, 2.5):  # interleaved: the speed ratio compares neighbours, not drifts
        for density in ("low", "high"):
            began = time.perf_counter()
            batch = musicgpt.generate(model, primer, tokenizer=tok, primer_seconds=5.0, seconds=seconds, seed=7,
                                      num_samples=samples, controls={"density": density}, guidance=scale,
                                      stop_at_eos=False)
            elapsed = time.perf_counter() - began
            n_tokens = sum(s.n_generated for s in batch)
            timings.setdefault(scale, []).append(n_tokens / elapsed)
            measured = [computed_values(s.ids[s.primer_length :], tok, ["density"]).get("density") for s in batch]
            notes_per_s = [float((~s.primer_notes).sum()) / seconds for s in batch]
            out["runs"].append({"guidance": scale, "asked": density, "measured": measured,
                                "match_share": sum(m == density for m in measured) / samples,
                                "notes_per_second": round(float(np.mean(notes_per_s)), 2),
                                "tokens_per_s": round(n_tokens / elapsed, 1)})
    for scale in (1.0, 2.5):
        runs = [r for r in out["runs"] if r["guidance"] == scale]
        out[f"match_share_g{scale:g}"] = float(np.mean([r["match_share"] for r in runs]))
    out["guided_over_unguided_tokens_per_s"] = round(float(np.mean(timings[2.5]) / np.mean(timings[1.0])), 3)
    return out


def long_controls(model, tok, primer: Path, samples: int, seconds: float) -> dict:
    """Notes per second of continuations told density=low or high, over the first and last thirds of `seconds`,
    with the CONTROL header pinned in the sliding window (what generation does) and without (the behaviour
    before pinning, switched back on here: past n_ctx tokens the header slides out of the window)."""
    from musicgpt.generation import loop as generation_loop

    pinned_header = generation_loop.pinned_header
    out = {"primer": str(primer.relative_to(ROOT)), "samples": samples, "seconds": seconds, "runs": []}
    third = seconds / 3
    for pinned in (True, False):
        generation_loop.pinned_header = pinned_header if pinned else (lambda tokenizer, prompt: 0)
        try:
            for density in ("low", "high"):
                batch = musicgpt.generate(model, primer, tokenizer=tok, primer_seconds=5.0, seconds=seconds, seed=11,
                                          num_samples=samples, controls={"density": density}, stop_at_eos=False)
                first, last, slid = [], [], []
                for s in batch:
                    onsets = s.notes.start[~s.primer_notes] - 5.0  # seconds into the continuation
                    first.append(float(((onsets >= 0) & (onsets < third)).sum()) / third)
                    last.append(float((onsets >= seconds - third).sum()) / third)
                    clock = np.cumsum(tok.seconds_per_id()[s.ids])  # when the window first slid past the header
                    slid.append(round(float(clock[min(len(clock) - 1, model.config.n_ctx)]) - 5.0, 1))
                out["runs"].append({"pinned": pinned, "asked": density, "notes_per_second_first_third":
                                    round(float(np.mean(first)), 2), "notes_per_second_last_third":
                                    round(float(np.mean(last)), 2), "window_slid_at_seconds": slid})
        finally:
            generation_loop.pinned_header = pinned_header
    for pinned in (True, False):
        runs = {r["asked"]: r for r in out["runs"] if r["pinned"] == pinned}
        out[f"high_minus_low_last_third_{'pinned' if pinned else 'unpinned'}"] = round(
            runs["high"]["notes_per_second_last_third"] - runs["low"]["notes_per_second_last_third"], 2)
    return out


def pair_step_speed(model, steps: int, rounds: int) -> dict:
    """Decode steps/s of guidance's one pass over both caches (`Decoder.step_pair`) against two separate steps,
    batch 1, windows full (the conditional cache 3 CONTROL tokens longer), interleaved rounds in one process."""
    from musicgpt.model.decode_step import Decoder

    decoder, n_ctx = Decoder.for_model(model), model.config.n_ctx
    x = torch.randint(0, 391, (1, n_ctx + steps), generator=torch.Generator().manual_seed(0))

    def run(pair: bool) -> float:
        with torch.no_grad():
            cond, uncond = model.new_cache(pinned=3), model.new_cache()
            model(x[:, : n_ctx - 1], cache=cond)
            model(x[:, 3 : n_ctx - 1], cache=uncond)
            began = time.perf_counter()
            for t in range(n_ctx - 1, n_ctx - 1 + steps):
                if pair:
                    decoder.step_pair(x[:, t], cond, uncond)
                else:
                    decoder.step(x[:, t], cond)
                    decoder.step(x[:, t], uncond)
            return steps / (time.perf_counter() - began)

    rates = {"pair": [], "two_steps": []}
    for _ in range(rounds):
        rates["pair"].append(run(True))
        rates["two_steps"].append(run(False))
    ratios = [a / b for a, b in zip(rates["pair"], rates["two_steps"])]
    return {"steps": steps, "rounds": rounds, "threads": torch.get_num_threads(),
            "steps_per_s": {k: [round(v, 1) for v in vs] for k, vs in rates.items()},
            "pair_over_two_steps": round(float(np.median(ratios)), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/steer", help="the steerable model (a checkpoint or run dir)")
    parser.add_argument("--baseline", default="bundled", help="the plain model it replaces (or 'none')")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "asap", help="prepared ASAP (musicgpt prepare)")
    parser.add_argument("--windows", type=int, default=4, help="windows per test document for the composer matrix")
    parser.add_argument("--matrix-split", default="test", choices=["test", "valid"],
                        help="the split the composer matrix reads (valid: to choose among checkpoints)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other parts of an existing --out (same checkpoint) and replace the measured ones")
    parser.add_argument("--long-seconds", type=float, default=90.0, help="length of the long continuations")
    parser.add_argument("--parts", default="plain,composers,infill,guidance,long,pair",
                        help="comma-separated parts to measure (default all)")
    parser.add_argument("--gaps", type=int, default=60, help="gaps scored for the infill NLL")
    parser.add_argument("--infills", type=int, default=50, help="gaps filled and checked for validity")
    parser.add_argument("--samples", type=int, default=4, help="continuations per guidance setting")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 documents, few gaps and samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "steering.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.windows, args.gaps, args.infills, args.samples, args.long_seconds = 1, 6, 5, 2, 30.0
    began = time.perf_counter()
    model, tok = load_checkpoint(checkpoint.resolve(args.checkpoint))
    model.eval()
    result = {"benchmark": "steering", "machine": machine_info(torch_details=True), "caveat": CAVEAT, "gpu": NO_GPU,
              "checkpoint": str(checkpoint.resolve(args.checkpoint)), "data": str(args.data),
              "weights_sha256": checkpoint.read_config(checkpoint.resolve(args.checkpoint)).get("meta", {}).get(
                  "weights_sha256"),
              "tokenizer": tok.to_dict(), "quick": args.quick}
    max_docs = 5 if args.quick else None
    parts = set(args.parts.split(","))
    if unknown := parts - {"plain", "composers", "infill", "guidance", "long", "pair"}:
        parser.error(f"--parts: unknown part(s) {', '.join(sorted(unknown))}")
    if "plain" in parts:
        result["plain"] = {"model": plain_nll(args.checkpoint, args.data, max_docs)}
    if "plain" in parts and args.baseline != "none":
        result["plain"]["baseline"] = plain_nll(args.baseline, args.data, max_docs)
        result["plain"]["difference"] = round(result["plain"]["model"]["nll"] - result["plain"]["baseline"]["nll"], 4)
        print(f"plain: {json.dumps(result['plain'])}", file=sys.stderr)
    if tok.controls.get("composer") and "composers" in parts:
        result["composers"] = composer_matrix(model, tok, args.data, args.windows, args.matrix_split)
        print(f"composers: {json.dumps(result['composers']['nll'])}", file=sys.stderr)
    if tok.infill and "infill" in parts:
        result["infill_nll"] = infill_nll(model, tok, args.data, args.gaps, seed=1)
        print(f"infill NLL: {result['infill_nll']['nll']}", file=sys.stderr)
        result["infill_validity"] = infill_validity(model, tok, args.data, args.infills, seed=2)
        print(f"infill validity: {result['infill_validity']['valid']}/{args.infills}", file=sys.stderr)
    if "density" in tok.controls and "guidance" in parts:
        primer = ROOT / "examples" / "chopin_etude_op25_no4_taverna.mid"
        result["guidance"] = guidance(model, tok, primer, args.samples, 15.0)
        print(f"guidance: {result['guidance']['match_share_g1']} -> {result['guidance']['match_share_g2.5']}",
              file=sys.stderr)
    if "density" in tok.controls and "long" in parts:
        primer = ROOT / "examples" / "chopin_etude_op25_no4_taverna.mid"
        result["long_controls"] = long_controls(model, tok, primer, args.samples, args.long_seconds)
        print(f"long controls: {json.dumps(result['long_controls']['runs'])}", file=sys.stderr)
    if "pair" in parts:
        result["pair_step"] = pair_step_speed(model, 100 if args.quick else 400, 2 if args.quick else 5)
        print(f"pair step: {result['pair_step']['pair_over_two_steps']}x two steps", file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - began, 1)
    if args.update and args.out.is_file():
        old = json.loads(args.out.read_text())
        if old.get("weights_sha256") != result["weights_sha256"]:
            parser.error(f"--update: {args.out} measured other weights ({old.get('weights_sha256')})")
        result = {**old, **result, "seconds": round(old.get("seconds", 0) + result["seconds"], 1),
                  "updated": sorted(set(old.get("updated", [])) | parts)}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n", make_parents=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
