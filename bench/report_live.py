"""docs/benchmarks.md sections of the live parts: the duet's latency (bench/duet_latency.py) and the CPU decode speed
it rests on (bench/decode_speed.py)."""

from __future__ import annotations

from pathlib import Path

from bench.format import fmt, table

MEASURES = (  # (key in a path's figures, label, ((target key, which figure it bounds), ...))
    ("takeover", "silence of `wait` -> the model's first note sounds",
     (("takeover_median_ms", "median"), ("takeover_p95_ms", "p95"))),
    ("cache_flood", "human note-on -> in the cache, while playing 20 notes/s", (("cache_p95_ms", "p95"),)),
    ("cache", "human note-on -> in the cache, all phrases", ()),
    ("barge_in", "barge-in -> the model's sounding notes end", (("barge_in_ms", "p95"),)),
    ("jitter", "a model note message later than due", (("jitter_p95_ms", "p95"),)),
)


def section_duet(d: dict, img: Path) -> tuple[list[str], str]:
    """The duet: takeover, prefill of the human's notes, barge-in and timing, per front-end path."""
    targets = d.get("targets") or {}
    lines = [f"Model {d.get('model')}, one thread; a scripted human replays {d.get('phrases')} phrases of "
             f"{d.get('phrase_s')} s from held-out performances (`{d.get('data')}`, split {d.get('split')}), one of "
             f"them sped up to {d.get('flood_rate'):g} notes/s, and barges into each answer; wait {d.get('wait')} s, "
             f"answer {d.get('answer')} s. Milliseconds, from the client's side.", ""]
    rows, headline = [], []
    for path, f in (d.get("paths") or {}).items():
        for key, label, target_keys in MEASURES:
            m = f.get(key) or {}
            target = ", ".join(f"{which} <= {targets[k]}" for k, which in target_keys if k in targets)
            rows.append([path, label, str(m.get("n", 0)), fmt(m.get("median_ms")), fmt(m.get("p95_ms")),
                         fmt(m.get("max_ms")), target or "-"])
        rows.append([path, "human messages dropped / note-ons never echoed", str(f.get("human_note_ons")),
                     str(f.get("dropped")), str(f.get("not_echoed")), "", "0"])
        met = f.get("meets") or {}
        headline.append(f"{path}: takeover {fmt((f.get('takeover') or {}).get('median_ms'))} ms, "
                        f"{sum(bool(v) for v in met.values())}/{len(met)} targets")
    lines += table(["path", "measure", "n", "median", "p95", "max", "target"], rows)
    lines += ["Real time on a shared machine: the load averages above say how busy it was; an idle machine is "
              "faster.", ""]
    return lines, "; ".join(headline)


def section_decode_speed(d: dict, img: Path) -> tuple[list[str], str]:
    """CPU decode speed per precision against the bandwidth bound (the renderer lives with its benchmark, which
    imports torch: imported only when there is a file to render)."""
    from bench.decode_speed import section_decode_speed as render

    return render(d, img)
