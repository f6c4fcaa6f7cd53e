"""The report's section of faithfulness.json (bench/faithfulness.py): its tables, then what they say, read from
the per-query figures the file keeps (paired differences: each query note against itself), so a new run's
section says what its own numbers say."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def paired(queries: list[dict], a, b) -> tuple[float, float]:
    """Mean and standard error over the query notes of a(q) - b(q) (queries where both are known)."""
    d = np.array([a(q) - b(q) for q in queries if a(q) is not None and b(q) is not None], np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def section_faithfulness(d: dict, img: Path | None = None) -> tuple[list[str], str]:
    """faithfulness.json's tables (`bench.faithfulness.section`) and what its figures say."""
    from bench.faithfulness import section
    from musicgpt.arcs.format import DEFAULT_MEASURE

    lines, headline = section(d)
    qs, sp, de = d["queries"], d["spearman"], d["deletion"]
    rho = lambda m, agg: (lambda q: q["spearman"][m]["note_on"][agg])
    cut = lambda name, k: (lambda q: q["deletion"][name][str(k)])
    mean = lambda name, k: de[name][str(k)]["mean"]
    best = max(sp, key=lambda m: sp[m]["note_on"]["all"]["mean"])
    lead, se = paired(qs, rho(best, "all"), rho("attention", "all")) if best != "attention" else (0.0, 0.0)
    wins = best != "attention" and lead > 2 * se
    out = ["**What the figures say** (computed from the file's per-query figures; paired: each query note "
           "against itself, mean ± standard error).", ""]
    out.append(f"- Spearman with influence over all layers and heads: "
               + ", ".join(f"{m} {sp[m]['note_on']['all']['mean']:+.3f}" for m in sp)
               + (f"; {best} leads attention by {lead:+.3f} ± {se:.3f} (paired), "
                  + ("more than twice its standard error" if wins else "within twice its standard error")
                  if best != "attention" else "; attention ranks first")
               + f". The default measure (`DEFAULT_MEASURE`) is `{DEFAULT_MEASURE}`"
               + (": a measure replaces it only when it leads by more than twice its paired standard error."
                  if not wins else f", though {best} leads by more than twice its standard error: revisit it."))
    gain, gain_se = paired(qs, rho("attention", "all"), rho("attention", "viewer"))
    out.append(f"- All layers against the last layer alone (attention): Spearman "
               f"{sp['attention']['note_on']['all']['mean']:+.3f} against {sp['attention']['note_on']['viewer']['mean']:+.3f} "
               f"(paired {gain:+.3f} ± {gain_se:.3f}).")
    if "attention_all_layers" in de:
        vs = {other: paired(qs, cut("attention_all_layers", 3), cut(other, 3)) for other in ("random", "recent", "attention")}
        out.append(f"- Hiding the top 3 past notes by attention over all layers raises the query note's NLL by "
                   f"{mean('attention_all_layers', 3):.2f} nats; 3 random past notes {mean('random', 3):.2f} (paired "
                   f"{vs['random'][0]:+.2f} ± {vs['random'][1]:.2f}), the 3 most recent {mean('recent', 3):.2f} "
                   f"({vs['recent'][0]:+.2f} ± {vs['recent'][1]:.2f}), the last layer's top 3 "
                   f"{mean('attention', 3):.2f} ({vs['attention'][0]:+.2f} ± {vs['attention'][1]:.2f}). The viewer opens "
                   "on all layers for this reason.")
    if "influence" in de:
        out.append(f"- Hiding the top 3 by influence itself raises it by {mean('influence', 3):.2f} nats: the room a "
                   "better cheap measure would have.")
    row = sp["attention"]
    out.append(f"- The row an arc is read from (last layer, attention): the query note's NOTE_ON row "
               f"{row['note_on']['viewer']['mean']:+.3f}, the row that predicts the note {row['before']['viewer']['mean']:+.3f}; "
               "the arcs keep the NOTE_ON row.")
    if "rollout" in sp:
        out.append(f"- rollout in the last layer: {sp['rollout']['note_on']['viewer']['mean']:+.3f} (propagated through "
                   "the layers with the residual, a note's share spreads over its whole context).")
    if "on_demand" in d:
        o = d["on_demand"]
        first = o["runs"][0]
        out.append(f"- Influence on demand (the viewer's button in the studio): {first['scored']} of {o['past_notes']} "
                   f"past notes scored in {first['seconds']} s for a note with {o['context_tokens']} tokens of context; "
                   "the others are given up (a note the ranking measure overlooks is never found).")
    return lines + out + [""], headline
