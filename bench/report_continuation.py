"""The docs/benchmarks.md section of bench/results/continuation.json (bench/continuation.py)."""

from __future__ import annotations

from bench.format import table

SETS = {"generated": "generated", "ceiling": "another performance (ceiling)", "floor": "another piece (floor)",
        "looped": "primer looped"}
WHAT = {
    "density": "notes per second",
    "polyphony": "sounding notes (time-averaged)",
    "pitch_range": "highest - lowest pitch",
    "pitch_mean": "mean pitch",
    "pitch_class_profile": "pitch-class histogram",
    "velocity_mean": "mean velocity",
    "velocity_spread": "velocity standard deviation",
    "ioi_histogram": "inter-onset interval histogram",
    "pitch_ngram_return": "share of pitch 4-grams found in the primer",
    "interval_ngram_return": "share of interval 4-grams found in the primer",
}


def _share(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def section_continuation(d: dict, img=None) -> tuple[list[str], str]:
    """(Markdown lines, one-line headline) of a continuation results file."""
    sets = {k: v for k, v in d["sets"].items() if v.get("windows")}
    options = ", ".join(f"{k}={v}" for k, v in d.get("options", {}).items()) or "none: the set-up's defaults"
    sampling = d.get("resolved", {}).get("sampling", {})
    lines = [f"`python -m bench.continuation` ({d['checkpoint']} model{', ' + d['label'] if d.get('label') else ''}): "
             f"{d['primers']} held-out primers of {d['primer_seconds']:g} s ({d['split']} split by piece of "
             f"{', '.join(d['corpora'])}; at several points of each piece), each continued for {d['seconds']:g} s "
             f"with {d['seeds']} seeds through the generation set-up; options given: {options}; sampling as "
             f"resolved: " + ", ".join(f"{k} {v}" for k, v in sampling.items())
             + f"; max note {d.get('resolved', {}).get('max_note_seconds', '-')} s. Generation took "
             f"{d['generation_seconds']:.0f} s on {d['threads']} thread(s).", "",
             "Each window is measured against the real next seconds of the same performance: *within* when it lies "
             "in the spread of the real continuation and the piece's real music around it (the windows just after "
             "it and just before the primer, and the same place of up to two other performances): no farther from "
             "the real continuation than the farthest of them (absolute difference of a value, Euclidean distance "
             "of a histogram; silence is within nothing; `musicgpt.metrics.continuation`). Share of windows within, "
             "per measure:", ""]
    rows = [[f"{name}: {WHAT.get(name, name)}", *(_share(s["per_measure"][name]) for s in sets.values())]
            for name in d["measures"]]
    rows.append(["**summary share** (mean of the above)", *(f"**{_share(s['summary'])}**" for s in sets.values())])
    rows.append(["windows", *(str(s["windows"]) for s in sets.values())])
    rows.append(["degenerate windows", *(f"{s['degenerate']} of {s['windows']}" for s in sets.values())])
    rows.append(["copies of ASAP train (longest run; flagged)", *(
        f"{s['copies']['longest_run_max']}; {s['copies']['flagged']}" if "copies" in s else "-"
        for s in sets.values())])
    lines += table(["measure", *(SETS.get(k, k) for k in sets)], rows)
    by = d.get("by_corpus", {})
    if by:
        lines += ["Summary share per corpus:", ""]
        lines += table(["corpus", *(SETS.get(k, k) for k in sets)],
                       [[c, *(_share(v.get(k)) for k in sets)] for c, v in by.items()])
    f = d.get("issue_figures", {})
    lines += [f"The issue's first figures, generated windows: density within 0.67-1.5x of the real next seconds "
              f"{_share(f.get('density_within_0.67_1.5'))}, pitch-class profile closer to the real continuation than "
              f"the floor's {_share(f.get('pitch_classes_closer_than_floor'))}, both {_share(f.get('both'))}; "
              f"density ratio median {_share(f.get('density_ratio_median'))}, largest "
              f"{_share(f.get('density_ratio_max'))}. Copies: the primer's own notes are left out "
              f"(`CopyIndex.longest_run(..., exclude=primer)`); flagged above {_copy_threshold(sets)} notes.", ""]
    levers = d.get("levers") or []
    if levers:
        lines += ["Levers, each measured with this benchmark at a smaller size (same primers within a size; the "
                  "set-up's defaults unless an option is named):", ""]
        lines += table(["setting", "options", "primers x seeds", "summary share", "density", "pitch-class profile",
                        "degenerate", *(f"{c}" for c in levers[0]["by_corpus"])],
                       [[lv["label"] or lv["file"], ", ".join(f"{k}={v}" for k, v in lv["options"].items()) or "-",
                         f"{lv['primers']} x {lv['seeds']}", _share(lv["summary"]),
                         _share(lv["per_measure"]["density"]), _share(lv["per_measure"]["pitch_class_profile"]),
                         f"{lv['degenerate']} of {lv['windows']}", *(_share(v) for v in lv["by_corpus"].values())]
                        for lv in levers])
    g = sets["generated"]
    ref = ", ".join(f"{SETS[k].split(' (')[0]} {_share(sets[k]['summary'])}" for k in ("ceiling", "floor", "looped")
                    if k in sets)
    return lines, (f"summary share within the real spread {_share(g['summary'])} ({ref}); "
                   f"degenerate {g['degenerate']} of {g['windows']}")


def _copy_threshold(sets: dict) -> str:
    return next((str(s["copies"]["threshold"]) for s in sets.values() if "copies" in s), "-")
