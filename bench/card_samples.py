"""The model card's steering and samples: controls, infilling and guidance as bench/steering.py measured them,
and the generated continuations' degeneracy next to real excerpts (bench/model_card.py assembles the card).
"""

from __future__ import annotations

from bench.format import count, fixed, piece_name, table


MEASURE_NAMES = {"repeated_4gram_share": "repeated 4-note pitch n-grams (share)",
                 "longest_silence": "longest silence (s)",
                 "notes_per_second": "notes per second",
                 "longest_pitch_run": "longest repeated-pitch run (onsets)",
                 "polyphony": "polyphony (sounding notes, time average; hanging notes raise it)"}


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
        lines += [f"- Plain continuation (no control), ASAP test NLL at context 1024 over {count(plain['model']['n_docs'])} "
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
                  f"({count(nll['middle_tokens'])} events) given prefix and suffix **{n['prefix_and_suffix']:.4f}**, "
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
        return lines + table(header, rows)
    return lines + [""]


def samples_section(s: dict, uncapped: dict | None = None) -> list[str]:
    """The card's '## Samples and degeneracy' section (and the same samples without the long-note limit)."""
    primers = ", ".join(piece_name(p["piece"]) for p in s["primers"])
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
    lines += table(["measure", "generated: mean ± std", "real: mean ± std", "generated outside the real range"], rows)
    lines += [f"**Degenerate samples: {100 * s['degenerate_share']:.0f}%** ({s['degenerate_rule']}); "
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
        lines += table(["feature", "generated mean", "real mean", "overlap", "KL"],
                       [[name, fixed(c["generated_mean"]), fixed(c["real_mean"]), f"{c['overlap']:.3f}", f"{c['kl']:.3f}"]
                        for name, c in s["set_comparison"].items()])
    return lines
