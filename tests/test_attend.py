"""`attend` (musicgpt.attend and `musicgpt attend`): a piece teacher-forced through the model with its arcs
aggregated as it goes (the same arcs as the whole-piece aggregation, no token rows kept beyond one chunk), the
streamed arcs.json written byte for byte as `write_arcs` would, the viewer page's cap, the progress bar, a
file name that is not UTF-8, each note's NLL (its mean agrees with `musicgpt evaluate`). Long pieces come
from tiny_models.long_midi."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from musicgpt.arcs.capture import (ArcsConfig, AttentionRecorder, NoteArcsStream, attend, attend_notes, note_arcs,
                                   query_rows)
from musicgpt.arcs.format import read_arcs, write_arcs
from musicgpt.cli import main
from musicgpt.generation.primer import primer_ids
from musicgpt.model.prefill import teacher_force
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.viz import write_html
from tiny_models import FIXTURES, tiny_checkpoint, tiny_model
from training_fixtures import LATIN1, run_cli

TOK = PerformanceTokenizer()
CHOPIN = FIXTURES / "asap_chopin_etude_op25_8_Toscano02.mid"
REAL = sorted(FIXTURES.glob("*.mid"))
DENSE = ArcsConfig(row_top_k=None, top_n=10_000, min_weight=0.0)



# ---- aggregation as it goes ------------------------------------------------------------------------------

def whole_piece(model, ids, config, chunk):
    """The old way: every row kept to the end, aggregated at once."""
    recorder = AttentionRecorder(config)
    teacher_force(model, torch.from_numpy(ids)[None], model.new_cache(), [recorder], query_rows(TOK, ids)[None],
                  chunk=chunk)
    return note_arcs(TOK, ids, recorder, model.config.n_layer, model.config.n_head)


def streamed(model, ids, config, chunk):
    stream = NoteArcsStream(TOK, ids, model.config.n_layer, model.config.n_head, config)
    teacher_force(model, torch.from_numpy(ids)[None], model.new_cache(), [stream], query_rows(TOK, ids)[None],
                  chunk=chunk)
    return stream


def assert_same_arcs(a, b):
    for name in ("query", "key", "layer", "head", "weight", "note_token"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and np.array_equal(x, y), name  # weights bit for bit


@pytest.mark.parametrize("config", [ArcsConfig(), DENSE], ids=["default", "dense"])
def test_streamed_arcs_equal_the_whole_piece_aggregation(config):
    model = tiny_model()
    ids = np.r_[TOK.bos_id, TOK.encode(CHOPIN).ids].astype(np.int64)[:3000]
    for chunk in (256, 37):  # the same chunks both ways: chunking moves the attention's last bits
        notes, whole = whole_piece(model, ids, config, chunk)
        stream = streamed(model, ids, config, chunk)
        assert stream.streaming and len(stream.notes) == len(notes)
        assert_same_arcs(stream.result(), whole)
        assert len(whole) > 10_000


def test_streamed_arcs_keep_the_order_when_a_time_step_straddles_chunks():
    """Notes are numbered by (start, pitch); a time step written high pitch first, cut by a chunk boundary,
    puts a lower note id in the later chunk."""
    on, off, shift = TOK.note_on, TOK.note_off, TOK.time_shift
    step = [TOK.velocity(20), on(72), on(67), on(60), shift(20), off(72), off(67), off(60), shift(10)]
    ids = np.array([TOK.bos_id] + step * 40, np.int64)
    model = tiny_model(seed=3)
    for chunk in (2, 3, 5):
        _, whole = whole_piece(model, ids, DENSE, chunk)
        stream = streamed(model, ids, DENSE, chunk)
        assert not stream._sorted  # the chunks' arcs came out of note order ...
        assert_same_arcs(stream.result(), whole)  # ... and were put back
        assert (np.diff(whole.query) >= 0).all() and len(whole) > 1000


def test_teacher_forcing_keeps_no_token_rows_beyond_one_chunk():
    model = tiny_model()
    ids = np.r_[TOK.bos_id, TOK.encode(CHOPIN).ids].astype(np.int64)[:2000]
    stream = NoteArcsStream(TOK, ids, model.config.n_layer, model.config.n_head)
    held, end_chunk = [], stream.end_chunk

    def watched():
        held.append(len(stream.rows))  # rows taken in this chunk
        end_chunk()
        assert len(stream.rows) == 0  # ... and dropped once aggregated

    stream.end_chunk = watched
    chunk = 100
    teacher_force(model, torch.from_numpy(ids)[None], model.new_cache(), [stream], query_rows(TOK, ids)[None],
                  chunk=chunk)
    per_chunk = [int(query_rows(TOK, ids[i : i + chunk]).sum()) for i in range(0, len(ids), chunk)]
    assert held == per_chunk and len(held) == 20  # one chunk's NOTE_ON rows at a time, never more
    cfg, mc = stream.config, model.config
    assert stream.n_arcs <= len(stream.notes) * mc.n_layer * mc.n_head * cfg.top_n
    assert sum(a.itemsize for a in stream._arrays) == 20  # int32 query and key, int16 layer and head, float64 weight
    assert stream.n_arcs <= len(stream._arrays[0]) == stream.bound  # reserved once, for the bound


def test_attend_api_is_the_whole_piece_document():
    model = tiny_model()
    ids = np.r_[TOK.bos_id, TOK.encode(CHOPIN).ids].astype(np.int64)[:1500]
    recorder = AttentionRecorder(ArcsConfig())
    token_nll = np.full((1, len(ids)), np.nan)
    teacher_force(model, torch.from_numpy(ids)[None], model.new_cache(), [recorder], query_rows(TOK, ids)[None],
                  token_nll=token_nll)
    from musicgpt.arcs.capture import arcs_document, note_nll, token_owners

    notes, note_index, _, _ = token_owners(TOK, ids)
    nll = note_nll(note_index, token_nll[0], len(notes))  # the notes' surprisal, which attend's document holds
    assert attend(model, ids, TOK, primer_length=300, x=1) == \
        arcs_document(TOK, ids, recorder, model.config, 300, nll=nll, x=1)



# ---- the command and its files --------------------------------------------------------------------------

def test_cli_attend_streams_the_same_files_and_shows_progress(checkpoint, long_file, tmp_path, capsys):
    from musicgpt.model import load_checkpoint

    assert main(["attend", str(checkpoint), str(long_file), "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "attend:" in captured.err and "tok" in captured.err  # the progress bar, on stderr
    model, tok = load_checkpoint(checkpoint)
    ids = np.r_[tok.bos_id, primer_ids(long_file, tok)]
    d = attend(model, ids, tok, source="musicgpt attend long.mid")
    write_arcs(d, tmp_path / "expected.arcs.json")
    write_html(d, tmp_path / "expected.html", title="long.mid")
    assert filecmp.cmp(tmp_path / "a" / "long.arcs.json", tmp_path / "expected.arcs.json", shallow=False)
    assert filecmp.cmp(tmp_path / "a" / "long.html", tmp_path / "expected.html", shallow=False)
    assert len(d["arcs"]) > 5000 and f"{len(d['arcs'])} arcs" in captured.out

    assert main(["attend", str(checkpoint), str(long_file), "--out", str(tmp_path / "b"), "--quiet",
                 "--html-max-arcs", "1000"]) == 0
    captured = capsys.readouterr()
    assert "attend:" not in captured.err and "note: the viewer page holds the " in captured.err
    assert filecmp.cmp(tmp_path / "b" / "long.arcs.json", tmp_path / "expected.arcs.json", shallow=False)
    page = (tmp_path / "b" / "long.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script type="application/json" id="mgv-data">')[1].split("</script>")[0])
    weights = sorted((a["weight"] for a in d["arcs"]), reverse=True)
    assert 0 < len(data["arcs"]["weight"]) <= 1000
    assert min(data["arcs"]["weight"]) > weights[1000] and sorted(data["arcs"]["weight"], reverse=True) == \
        weights[: len(data["arcs"]["weight"])]  # the heaviest
    assert main(["attend", str(checkpoint), str(long_file), "--out", str(tmp_path / "c"), "--quiet",
                 "--html-max-arcs", "0"]) == 0
    assert not (tmp_path / "c" / "long.html").exists() and (tmp_path / "c" / "long.arcs.json").is_file()


def test_streamed_writer_checks_the_arcs_and_writes_nothing_when_broken(checkpoint, long_file, tmp_path):
    from musicgpt.arcs.capture import attend_notes, note_document
    from musicgpt.arcs.format import ArcsFormatError
    from musicgpt.arcs.format import write_arcs_columns
    from musicgpt.model import load_checkpoint

    model, tok = load_checkpoint(checkpoint)
    ids = np.r_[tok.bos_id, primer_ids(long_file, tok, tokens=600)]
    stream = attend_notes(model, ids, tok)
    arcs = stream.result()
    doc = note_document(stream.notes, arcs, tok, model.config, stream.config, nll=stream.note_nll())
    assert all(n["nll"] > 0 for n in doc["notes"])  # each note's surprisal goes through the streamed writer too
    write_arcs(doc, tmp_path / "expected.json")
    head = dict(doc, arcs=[])
    write_arcs_columns(head, arcs, tmp_path / "streamed.json")
    assert (tmp_path / "streamed.json").read_bytes() == (tmp_path / "expected.json").read_bytes()
    assert read_arcs(tmp_path / "streamed.json") == doc
    arcs.key[5] = len(stream.notes) - 1  # a key note that starts after its query note
    with pytest.raises(ArcsFormatError, match="not written"):
        write_arcs_columns(head, arcs, tmp_path / "broken.json")
    assert not (tmp_path / "broken.json").exists()


def test_attend_and_evaluate_on_a_name_that_is_not_utf8(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    piece = tmp_path / LATIN1
    shutil.copy(REAL[0], piece)
    done = run_cli("attend", str(ckpt), str(piece), "--seconds", "3", "--out", str(tmp_path / "a"))
    assert done.returncode == 0 and b"caf\xe9.arcs.json" in done.stdout, done.stderr.decode(errors="replace")
    page = (tmp_path / "a" / f"{Path(LATIN1).stem}.html").read_text(encoding="utf-8")
    assert "<title>caf\ufffd.mid" in page
    assert run_cli("evaluate", str(ckpt), "--data", str(piece), "--quiet").returncode == 0


def test_cli_attend_writes_nll_and_its_mean_agrees_with_evaluate(tmp_path, capsys):
    """Within the context, `musicgpt evaluate` scores every token exactly as attend does: the same mean NLL.
    Past it they differ by design: attend's window slides over a KV cache, so the keys a token sees carry
    what their own windows saw (a layer-L model reaches back L x n_ctx tokens), while evaluate reads each
    window afresh (--stride 1: the last n_ctx tokens exactly; default: non-overlapping windows, whose first
    tokens see little context). On the tiny random model the means still agree closely."""
    from musicgpt.model import load_checkpoint
    from musicgpt.music.midi import read_midi, write_midi

    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    model, tok = load_checkpoint(checkpoint)
    notes = read_midi(CHOPIN)
    for n_notes, stride, tolerance in ((25, None, 1e-5), (120, "1", 2e-3), (120, None, 2e-3)):
        piece = tmp_path / f"piece{n_notes}.mid"
        write_midi(notes[np.arange(len(notes)) < n_notes], piece)
        assert main(["attend", str(checkpoint), str(piece), "--out", str(tmp_path), "--quiet"]) == 0
        printed = float(capsys.readouterr().out.split(" NLL ")[1].split(" nats a token")[0])
        d = read_arcs(tmp_path / f"piece{n_notes}.arcs.json")
        ids = np.r_[tok.bos_id, primer_ids(piece, tok)]
        assert (len(ids) <= model.config.n_ctx) == (n_notes == 25)
        stream = attend_notes(model, ids, tok)
        assert [n["nll"] for n in d["notes"]] == [float(f"{x:.4g}") for x in stream.note_nll()]
        mean = float(np.nanmean(stream.token_nll))
        assert abs(printed - mean) < 1e-4
        assert main(["evaluate", str(checkpoint), "--data", str(piece), "--context", str(model.config.n_ctx),
                     *(["--stride", stride] if stride else []), "--quiet", "--json", str(tmp_path / "eval.json")]) == 0
        capsys.readouterr()
        report = json.loads((tmp_path / "eval.json").read_text())
        assert report["n_tokens"] == len(ids) - 1  # every token but BOS is scored by both
        assert abs(report["nll"] - mean) < tolerance, (n_notes, stride)
