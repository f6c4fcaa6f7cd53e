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
    ("jitter", "a model note-on message later than due", (("jitter_p95_ms", "p95"),)),
    ("note_off_late", "a model note-off later than its time (barge-in releases included)", ()),
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


def section_soak(d: dict, img: Path) -> tuple[list[str], str]:
    """The studio over a long session: memory, the take store, /api/health, errors."""
    t, rss, store = d.get("targets") or {}, d, d.get("store_mb") or {}
    health, idle = d.get("health_s") or {}, d.get("health_idle_s") or {}
    outcomes = d.get("outcomes") or {}
    lines = [f"`musicgpt studio` ({d.get('model')} model) in a subprocess with a takes folder capped at "
             f"{d.get('limit_mb'):g} MB; {d.get('warmup')} warm-up takes, then {d.get('takes')} takes of "
             f"{d.get('max_new_tokens')} new tokens and {d.get('broken')} stopped mid-take (half with /api/cancel, "
             "half by closing the connection); `/api/health` asked every 0.25 s throughout, and with the server idle "
             f"first. Outcomes: {', '.join(f'{k} {v}' for k, v in outcomes.items())}; {d.get('wall_s')} s.", ""]
    rows = [["errors (error events, failed requests, tracebacks in the log, takes listed unlike the folder)",
             str(d.get("errors")), str(t.get("errors", 0))],
            ["server RSS after warm-up -> end (MB)",
             f"{fmt(rss.get('rss_after_warmup_mb'))} -> {fmt(rss.get('rss_end_mb'))} ({rss.get('rss_growth_mb'):+g}; "
             f"max {fmt(rss.get('rss_max_after_warmup_mb'))}; slope {rss.get('rss_slope_mb_per_100_takes'):+g} MB per "
             "100 takes)", f"<= +{t.get('rss_growth_mb', 50):g}"],
            ["take store, max after any take (MB)",
             f"{fmt(store.get('max'))} ({store.get('takes_kept')} takes kept, {store.get('takes_listed')} listed)",
             f"<= {fmt(store.get('limit'))} cap"],
            ["/api/health during takes: median / p99 / max (s)",
             f"{fmt(health.get('median'))} / {fmt(health.get('p99'))} / {fmt(health.get('max'))} "
             f"({health.get('over_target')} of {health.get('n')} at or over {t.get('health_max_s', 0.1):g})",
             f"max < {t.get('health_max_s', 0.1):g}"],
            ["/api/health with the server idle: median / max (s)",
             f"{fmt(idle.get('median'))} / {fmt(idle.get('max'))} ({idle.get('over_target')} of {idle.get('n')} over)",
             ""],
            ["uploaded primers left behind", str(d.get("uploads_left")), "0"]]
    lines += table(["measure", "result", "target"], rows)
    slow = health.get("slow") or []
    if slow:
        loads = [s[2] for s in slow if len(s) > 2]
        lines += [f"The slow health answers came at a 1-minute load average of {min(loads):.1f}-{max(loads):.1f} on "
                  f"{(d.get('machine_start') or {}).get('cores')} cores (the idle control: "
                  f"{fmt(idle.get('max'))} s max).", ""] if loads else []
    met = d.get("meets_targets") or {}
    headline = (f"{sum(outcomes.values())} takes, {d.get('errors')} errors; RSS {rss.get('rss_growth_mb'):+g} MB after "
                f"warm-up (target {t.get('rss_growth_mb', 50):g}); /api/health max {fmt(health.get('max'))} s "
                f"(target {t.get('health_max_s', 0.1):g}); {sum(bool(v) for v in met.values())}/{len(met)} targets")
    return lines, headline
