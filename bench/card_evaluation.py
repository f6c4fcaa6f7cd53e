"""The model card's evaluation: NLL per corpus, split and context, per event type and per piece, against the
base model and the absolute-position twin, and the validation curve (bench/model_card.py assembles the card).
"""

from __future__ import annotations

from bench.format import count, fixed, piece_name, table


def _eval_rows(evaluations: dict[str, dict]) -> list[list[str]]:
    """One table row per 'corpus/split/context' figure ('n/a' where the model cannot read that context)."""
    rows = []
    for key, e in evaluations.items():
        corpus, split, context = key.split("/")
        if "not_applicable" in e:
            rows.append([corpus, split, context, "-", "-", "n/a", "-", "-"])
            continue
        rows.append([corpus, split, context, count(e["n_docs"]), count(e["n_tokens"]), f"**{e['nll']:.4f}**",
                     f"{e['perplexity']:.3f}", f"{e['accuracy']:.4f}"])
    return rows


def nll_of(evaluations: dict | None, key: str) -> float | None:
    """The NLL of one 'corpus/split/context' figure, or None when it was not measured or not applicable."""
    e = (evaluations or {}).get(key)
    return None if not e or "not_applicable" in e else e["nll"]


def evaluation_section(r: dict) -> list[str]:
    """The card's '## Evaluation' section."""
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
        lines += table(["corpus", "split", "context", "documents", "events", "NLL", "perplexity", "accuracy"],
                       _eval_rows(evals))
        check = r.get("fp32_check")
        if check:
            lines += [f"The same {check['figure'].replace('/', ' ')} figure in fp32: {check['nll_fp32']:.4f} "
                      f"(bf16 autocast differs by {check['difference']:+.5f}).", ""]
        test = evals.get(f"asap/test/{n_ctx}")
        if test and test.get("per_type"):
            lines += [f"### Per event type (ASAP test, context {n_ctx})", ""]
            lines += table(["event type", "NLL", "perplexity", "accuracy", "share of events"],
                           [[name, f"{t['nll']:.4f}", f"{t['perplexity']:.3f}", f"{t['accuracy']:.4f}",
                             f"{t['share']:.3f}"] for name, t in test["per_type"].items()])
    pp = r.get("per_piece")
    if pp:
        largest = pp["largest_piece"]
        lines += [f"### Per piece (ASAP test, context {pp['context']})", "",
                  (f"One piece dominates the test split ({piece_name(largest['piece'])}: "
                   f"{100 * largest['share_of_events']:.0f}% of its events), so the pooled figure is mostly that piece. "
                   if largest["share_of_events"] > 0.4 else
                   f"The largest piece is {piece_name(largest['piece'])} ({100 * largest['share_of_events']:.0f}% of the "
                   "events). ")
                  + f"Macro average over the {len(pp['pieces'])} pieces: **{pp['macro_nll']:.4f}**; pooled "
                  f"{pp['pooled_nll']:.4f}; pooled without the largest piece "
                  f"{fixed(pp['pooled_nll_without_largest'], 4)}.", ""]
        lines += table(["composer", "piece", "performances", "events", "NLL", "accuracy"],
                       [[p["composer"], p["title"], str(p["performances"]), f"{p['events']:,}", f"{p['nll']:.4f}",
                         f"{p['accuracy']:.4f}"] for p in pp["pieces"]])
    base = r.get("base")
    if base and base.get("evaluations"):
        lines += ["### Against the plain model it was fine-tuned from", "",
                  f"The same evaluations of the base model (sha256 `{base['checkpoint']['meta'].get('weights_sha256', '')[:16]}…`, "
                  "measured by this script when it was the bundled model); lower is better:", ""]
        rows = [[key.replace("/", " "), fixed(nll_of(base["evaluations"], key), 4), fixed(nll_of(evals, key), 4),
                 f"{nll_of(evals, key) - nll_of(base['evaluations'], key):+.4f}"]
                for key in evals if nll_of(base["evaluations"], key) is not None and nll_of(evals, key) is not None]
        lines += table(["corpus split context", "base (plain)", "these weights", "difference"], rows)
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
        lines += table(header, [[f"{v['step']:,}", f"{v['valid_nll']:.4f}"]
                                + ([fixed(twin_curve.get(v["step"]), 4)] if twin_curve else []) for v in shown])
    return lines


def changes(resume: dict) -> str:
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
             f"parameters), trained with the same step budget (its best weights: step {count(tm.get('step'))}, "
             f"{count(tm.get('tokens'))} tokens). Lower is better; an absolute model cannot read past its "
             f"{twin['checkpoint']['model']['n_ctx']}-position table."
             + "".join(f" Resumed from {x.get('from')} with {changes(x)}." for x in twin["run"].get("resumes") or []),
             ""]
    rows = []
    for key in rel:
        a, b = nll_of(rel, key), nll_of(ab, key)
        diff = f"{b - a:+.4f}" if a is not None and b is not None else "-"
        rows.append([key.replace("/", " "), fixed(a, 4), fixed(b, 4), diff])
    lines += table(["corpus split context", "relative", "absolute", "absolute − relative"], rows)
    return lines
