"""The head atlas (`musicgpt heads`): row measures by hand and against a whole-piece forward pass, the naming
rule, heads.json, the PNGs, and head names in the viewer, `view --heads` and `attend --heads`."""

import copy
import json
import math

import numpy as np
import pytest
import torch

from musicgpt.analysis.heads import THRESHOLDS, HeadMeasures, head_atlas, name_head, piece_ids, piece_measures
from musicgpt.arcs.capture import token_owners
from musicgpt.arcs.format import read_arcs, validate_arcs, ArcsFormatError
from musicgpt.cli import main
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.viz.heads import (MEASURES, HeadsFormatError, head_names_for, read_heads, render_measure_png,
                                validate_heads, write_heads)
from tiny_models import FIXTURES, PRIMER, tiny_checkpoint, tiny_model

TOK = PerformanceTokenizer()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_row_measures_by_hand():
    # BOS, VEL, ON 60 (note 0), ON 72 (note 1), SHIFT 0.5 s, OFF 60, OFF 72, VEL, ON 60 (note 2), ON 48 (note 3)
    ids = [TOK.bos_id, TOK.velocity(5), TOK.note_on(60), TOK.note_on(72), TOK.time_shift(50), TOK.note_off(60),
           TOK.note_off(72), TOK.velocity(9), TOK.note_on(60), TOK.note_on(48)]
    acc = HeadMeasures(TOK, ids, n_layer=1, n_head=1, window=100)
    shift_row = torch.tensor([0.4, 0.1, 0.1, 0.2, 0.2])  # the TIME_SHIFT at position 4 over keys 0..4
    on_row = torch.tensor([0.1, 0.05, 0.2, 0.1, 0.05, 0.1, 0.05, 0.15, 0.2])  # the NOTE_ON 60 at 8 over keys 0..8
    acc.add([4], 0, shift_row.view(1, 1, 1, -1))
    acc.add([8], 0, on_row.view(1, 1, 1, -1))
    m = {k: (None if v is None else float(v[0, 0])) for k, v in acc.means().items()}
    assert acc.counts == {"previous": 2, "first": 2, "self": 2, "same_pitch": 1, "same_class": 1,
                          "distance_tokens": 2, "distance_seconds": 2, "entropy": 2}
    assert m["previous"] == pytest.approx((0.2 + 0.15) / 2)  # keys 3 and 7
    assert m["first"] == pytest.approx((0.4 + 0.1) / 2)
    assert m["self"] == pytest.approx((0.2 + 0.2) / 2)
    # note 2 (60) on note 0's VELOCITY and NOTE_ON; its own VELOCITY (0.15) and the NOTE_OFF of 60 do not count
    assert m["same_pitch"] == pytest.approx(0.05 + 0.2)
    assert m["same_class"] == pytest.approx(0.1)  # 72: pitch class C an octave up; 48 comes later
    d_shift = sum(p * (4 - k) for k, p in enumerate(shift_row.tolist()))
    d_on = sum(p * (8 - k) for k, p in enumerate(on_row.tolist()))
    assert m["distance_tokens"] == pytest.approx((d_shift + d_on) / 2, rel=1e-6)
    # the clock: 0 s up to the shift, 0.5 s from it on; the shift row sees only keys at 0 s behind it
    assert m["distance_seconds"] == pytest.approx((0.5 * 0.8 + 0.5 * 0.45) / 2, rel=1e-6)
    entropy = lambda row: -sum(p * math.log(p) for p in row.tolist())
    assert m["entropy"] == pytest.approx((entropy(shift_row) + entropy(on_row)) / 2, rel=1e-6)


def _brute_force(model, ids, window):
    """Every measure from one whole-piece forward pass with the sliding window, in numpy loops."""
    out = model(torch.from_numpy(ids)[None], return_attention=True, window=window)
    p = torch.stack(out.attentions)[:, 0].double().numpy()  # (L, H, T, T)
    notes, note_index, owner, _ = token_owners(TOK, ids)
    clock = np.cumsum(TOK.seconds_per_id()[ids])
    is_on = TOK.token_type(ids) == TOK.type_names.index("NOTE_ON")
    rows = {m: [] for m in MEASURES}
    for q in range(1, len(ids)):
        row, k = p[:, :, q, : q + 1], np.arange(q + 1)
        rows["previous"].append(row[..., q - 1])
        rows["self"].append(row[..., q])
        if q < window:
            rows["first"].append(row[..., 0])
        rows["distance_tokens"].append((row * (q - k)).sum(-1))
        rows["distance_seconds"].append((row * (clock[q] - clock[k])).sum(-1))
        rows["entropy"].append(-(row * np.log(np.where(row > 0, row, 1.0))).sum(-1))
        if is_on[q]:
            n = note_index[q]
            kp = np.where(owner[k] >= 0, notes.pitch[owner[k]], -1)
            other = (owner[k] >= 0) & (owner[k] != n)
            rows["same_pitch"].append((row * (other & (kp == notes.pitch[n]))).sum(-1))
            rows["same_class"].append((row * (other & (kp % 12 == notes.pitch[n] % 12) & (kp != notes.pitch[n]))).sum(-1))
    return {m: np.mean(v, axis=0) for m, v in rows.items()}


@pytest.mark.parametrize("chunk", [37, 256])
def test_chunked_measures_equal_a_whole_piece_forward_pass(chunk):
    """300 tokens through a 128-token window: the rows that slid past BOS, chunk boundaries, NOTE_ON rows."""
    model = tiny_model()
    ids = piece_ids(TOK, PRIMER, 300)
    assert len(ids) == 300 and model.config.n_ctx == 128
    acc = piece_measures(model, TOK, ids, chunk=chunk)
    want = _brute_force(model, ids, model.config.n_ctx)
    got = acc.means()
    for m in MEASURES:
        np.testing.assert_allclose(got[m], want[m], rtol=2e-4, atol=2e-5, err_msg=m)
    assert acc.counts["first"] == 127 and acc.counts["previous"] == 299
    assert acc.counts["same_pitch"] == int((TOK.token_type(ids[1:]) == TOK.type_names.index("NOTE_ON")).sum())


def test_naming_rule():
    base = {"previous": 0.1, "first": 0.0, "self": 0.0, "same_pitch": 0.05, "same_class": 0.0,
            "distance_tokens": 100.0, "distance_seconds": 3.0, "entropy": 3.0}
    assert name_head(base) is None
    assert name_head({**base, "previous": 0.5}) == "previous-token head"
    assert name_head({**base, "previous": 0.49}) is None
    assert name_head({**base, "first": 0.7}) == "first-token head"
    assert name_head({**base, "self": 0.6}) == "self head"
    assert name_head({**base, "same_pitch": 0.3}) == "same-pitch head"
    # shares compete relative to their thresholds: 0.3/0.25 beats 0.55/0.5
    assert name_head({**base, "previous": 0.55, "same_pitch": 0.3}) == "same-pitch head"
    assert name_head({**base, "previous": 0.6, "distance_tokens": 2.0}) == "previous-token head"  # a share first
    assert name_head({**base, "distance_tokens": 16.0}) == "local"
    assert name_head({**base, "entropy": math.log(64)}) == "broad"
    assert name_head({**base, "distance_tokens": 3.0, "entropy": 9.0}) == "local"
    assert name_head({**base, "first": None}) is None  # no row saw BOS
    assert THRESHOLDS["previous"] == 0.5 and THRESHOLDS["local_distance_tokens"] == 16.0


def test_atlas_averages_pieces_and_round_trips(tmp_path):
    model = tiny_model()
    pieces = [PRIMER, FIXTURES / "pop909_806.mid"]
    atlas, pattern = head_atlas(model, TOK, pieces, max_tokens=200, pattern_tokens=16, checkpoint="tiny")
    assert [p["tokens"] for p in atlas["pieces"]] == [200, 200]
    one = piece_measures(model, TOK, piece_ids(TOK, pieces[1], 200)).means()
    np.testing.assert_allclose(atlas["pieces"][1]["measures"]["previous"], one["previous"], rtol=1e-5)
    each = [np.array(p["measures"]["entropy"]) for p in atlas["pieces"]]
    np.testing.assert_allclose(atlas["measures"]["entropy"], (each[0] + each[1]) / 2, rtol=1e-5)
    assert atlas["names"] == [[name_head({m: atlas["measures"][m][layer][head] for m in MEASURES})
                               for head in range(2)] for layer in range(2)]
    assert atlas["thresholds"] == THRESHOLDS and atlas["queries"]["same_pitch"] == "NOTE_ON tokens"
    assert pattern.shape == (2, 2, 16, 16) and len(atlas["excerpt"]) == 16 and atlas["excerpt"][0] == "BOS"
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)  # rows of the excerpt see only the excerpt
    path = write_heads(atlas, tmp_path / "heads.json")
    assert read_heads(path) == json.loads(json.dumps(atlas))
    assert '"names": [\n  [' in path.read_text()  # a layer's heads on one line
    assert render_measure_png(atlas, "previous", tmp_path / "p.png").read_bytes()[:8] == PNG


def test_atlas_refuses_tokenizers_without_note_on_tokens():
    from musicgpt.errors import ConfigError

    pytest.importorskip("miditok")
    from musicgpt.tokens.miditok import miditok_tokenizer

    with pytest.raises(ConfigError, match="has no NOTE_ON tokens"):
        head_atlas(tiny_model(), miditok_tokenizer("REMI"), [PRIMER])


def test_heads_json_is_checked(tmp_path):
    good = {"format": "musicgpt-heads", "version": 1, "n_layer": 1, "n_head": 2, "model": {}, "tokenizer": {},
            "thresholds": {}, "queries": {}, "pieces": [], "names": [["local", None]],
            "measures": {m: [[0.1, 0.2]] for m in MEASURES}}
    validate_heads(good)
    for bad, words in [({**good, "format": "x"}, "not a head atlas"), ({**good, "version": 2}, "version 2"),
                       ({**good, "names": [["local"]]}, "'names'"), ({**good, "names": [["", None]]}, "'names'"),
                       ({**good, "measures": {**good["measures"], "self": [[1.0, float("nan")]]}}, "measures['self']")]:
        with pytest.raises(HeadsFormatError, match=words.replace("[", r"\[").replace("]", r"\]")):
            validate_heads(bad, "h.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(HeadsFormatError, match="bad.json: not valid JSON"):
        read_heads(tmp_path / "bad.json")
    arcs = {"n_layer": 1, "n_head": 2, "model": {"d_model": 32}}
    assert head_names_for({**good, "model": {"d_model": 32}}, arcs) == [["local", None]]
    with pytest.raises(HeadsFormatError, match="another model"):
        head_names_for({**good, "model": {"d_model": 64}}, arcs)
    with pytest.raises(HeadsFormatError, match="1 layers x 2 heads"):
        head_names_for(good, {**arcs, "n_head": 4})


def test_arcs_json_head_names_and_kind_are_optional_and_checked(tmp_path):
    d = read_arcs(FIXTURES / "arcs_tiny.json")  # 1 layer x 2 heads, no such keys
    validate_arcs({**d, "head_names": [["previous-token head", None]], "kind": "piece"})
    for bad in ({"head_names": [["x"]]}, {"head_names": [[1, None]]}, {"head_names": [["x" * 61, None]]},
                {"kind": "song"}):
        with pytest.raises(ArcsFormatError):
            validate_arcs({**d, **bad})


def test_cli_heads_writes_the_atlas_and_view_and_attend_show_the_names(checkpoint, tmp_path, capsys):
    folder = tmp_path / "pieces"
    folder.mkdir()
    for f in (PRIMER, FIXTURES / "pop909_806.mid"):
        (folder / f.name).write_bytes(f.read_bytes())
    assert main(["heads", str(checkpoint), str(folder), "--out", str(tmp_path / "atlas"), "--max-tokens", "150",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'atlas' / 'heads.json'} and 9 PNGs" in out and "2 pieces, 300 tokens" in out
    atlas = read_heads(tmp_path / "atlas" / "heads.json")
    assert atlas["checkpoint"] == str(checkpoint) and atlas["max_tokens"] == 150
    for m in MEASURES + ("patterns",):
        assert (tmp_path / "atlas" / f"heads_{m}.png").read_bytes()[:8] == PNG
    # without CKPT the optional slot must not swallow the first piece (a file or a folder of pieces)
    for i, first in enumerate((folder / PRIMER.name, folder)):
        assert main(["heads", str(first), str(FIXTURES / "pop909_331.mid"), "--checkpoint", str(checkpoint),
                     "--out", str(tmp_path / f"b{i}"), "--max-tokens", "50", "--pattern-tokens", "0", "--quiet"]) == 0
        assert "and 8 PNGs" in capsys.readouterr().out  # no pattern grid with --pattern-tokens 0
        b = read_heads(tmp_path / f"b{i}" / "heads.json")
        assert len(b["pieces"]) == (2 if first.is_file() else 3) and b["checkpoint"] == str(checkpoint)
        assert not (tmp_path / f"b{i}" / "heads_patterns.png").exists()

    # names from the atlas into the page, and into arcs.json with attend --heads
    assert main(["attend", str(checkpoint), str(PRIMER), "--tokens", "60", "--out", str(tmp_path / "a"), "--quiet",
                 "--heads", str(tmp_path / "atlas" / "heads.json")]) == 0
    d = read_arcs(tmp_path / "a" / "pop909_331.arcs.json")
    assert d["head_names"] == atlas["names"]
    page = (tmp_path / "a" / "pop909_331.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script type="application/json" id="mgv-data">')[1].split("</script>")[0])
    assert data["head_names"] == atlas["names"] and data["label"] == "piece"
    d.pop("head_names")
    (tmp_path / "plain.arcs.json").write_text(json.dumps(d))
    assert main(["view", str(tmp_path / "plain.arcs.json"), "--heads", str(tmp_path / "atlas" / "heads.json"),
                 "--out", str(tmp_path / "v.html")]) == 0
    assert '"head_names":[[' in (tmp_path / "v.html").read_text(encoding="utf-8")

    # an atlas of another model is refused, in one line
    other = dict(atlas, model={**atlas["model"], "d_model": 64})
    write_heads(other, tmp_path / "other.json")
    capsys.readouterr()
    assert main(["view", str(tmp_path / "plain.arcs.json"), "--heads", str(tmp_path / "other.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "another model" in err and len(err.splitlines()) == 1
    assert main(["heads", str(checkpoint), str(tmp_path / "nothing.mid"), "--out", str(tmp_path / "x")]) == 1
    assert "nothing.mid: no such file" in capsys.readouterr().err


def test_head_importance_equals_zeroing_the_head_by_hand():
    from musicgpt.analysis.importance import head_importance, knocked_out_nll

    model = tiny_model()
    ids = piece_ids(TOK, PRIMER, 150)  # longer than n_ctx (128): the window slides
    found = head_importance(model, [ids], batch=3)

    def nll(m) -> float:
        with torch.no_grad():
            out = np.full((1, len(ids)), np.nan)
            from musicgpt.model.prefill import teacher_force

            teacher_force(m, torch.as_tensor(ids)[None], m.new_cache(), token_nll=out)
        return float(np.nanmean(out[0, 1:]))

    base = nll(model)
    assert found["base_nll"] == pytest.approx(base, abs=1e-5)
    d = model.config.d_model // model.config.n_head
    for layer in range(model.config.n_layer):
        for head in range(model.config.n_head):
            knocked = copy.deepcopy(model)
            with torch.no_grad():  # the head's columns of the output projection: its output never arrives
                knocked.blocks[layer].attn.proj.weight[:, head * d : (head + 1) * d] = 0.0
            assert found["importance"][layer, head] == pytest.approx(nll(knocked) - base, abs=1e-5)
    assert knocked_out_nll(model, ids, [None])[0] == pytest.approx(base, abs=1e-6)


def test_heads_importance_flag_writes_it_beside_the_names(checkpoint, tmp_path, capsys):
    assert main(["heads", str(checkpoint), str(PRIMER), "--out", str(tmp_path), "--importance",
                 "--importance-tokens", "80", "--max-tokens", "80", "--quiet"]) == 0
    atlas = read_heads(tmp_path / "heads.json")
    assert np.array(atlas["importance"]).shape == (2, 2) and atlas["importance_tokens"] == 80
    assert (tmp_path / "heads_importance.png").stat().st_size > 1000
    assert "most important heads" in capsys.readouterr().out
    doc = {"n_layer": 2, "n_head": 2, "model": atlas["model"]}
    names = head_names_for(atlas, doc)  # the viewer's tooltips: the name and what knocking the head out costs
    assert names[1][0] == f"{atlas['names'][1][0] or 'unnamed'} · knocked out +{atlas['importance'][1][0]:.3f} nats"
    assert head_names_for(dict(atlas, importance=None), doc) == atlas["names"]
    broken = dict(atlas, importance=[[0.1, float("nan")], [0.0, 0.0]])
    with pytest.raises(HeadsFormatError, match="'importance' must be 2 lists of 2 finite numbers"):
        validate_heads(broken)
