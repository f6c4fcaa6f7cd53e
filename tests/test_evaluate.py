"""`musicgpt evaluate`: NLL per event against a direct computation, strides, long contexts, inputs, CLI, and
under controls (each document's own composer, or the one given)."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from musicgpt.cli import main
from musicgpt.corpus.shards import Split
from musicgpt.training.data import Specials, windows
from musicgpt.errors import ConfigError, DatasetError
from musicgpt.training.evaluate import EVENT_TYPES, evaluate_checkpoint, score
from musicgpt.model import GPTConfig, MusicGPT, load_checkpoint, save_model
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import steering_model
from training_fixtures import FIXTURES, prepare_fixtures


def tiny_checkpoint(path, position="relative", seed=0):
    torch.manual_seed(seed)
    model = MusicGPT(GPTConfig.preset("tiny", n_ctx=64, max_relative_distance=64, position=position))
    return save_model(model, path, PerformanceTokenizer())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "relative")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_fixtures(tmp_path_factory.mktemp("prepared"))


def test_nll_equals_the_models_own_loss_on_one_window(tmp_path, ckpt):
    model, tok = load_checkpoint(ckpt)
    doc = tok.encode(FIXTURES / "pop909_331.mid").ids[:40]
    split = Split(np.asarray(doc, np.uint16), np.array([0, len(doc)]))
    totals = score(model, windows(split, 64), 64, 4)
    ids = torch.tensor(np.concatenate([[tok.bos_id], doc]))[None]  # (1, 41)
    with torch.no_grad():
        expected = model(ids[:, :-1], ids[:, 1:]).loss.item()
    assert totals.count == 40
    assert totals.nll_sum / totals.count == pytest.approx(expected, rel=1e-5)


def test_report_per_type_and_accuracy(ckpt, data_dir):
    r = evaluate_checkpoint(ckpt, [data_dir], split="test", progress=False)
    assert r.split == "test" and r.n_docs == 1 and r.context == 64 and r.stride == 64
    assert set(r.per_type) == set(EVENT_TYPES)
    assert sum(t["count"] for t in r.per_type.values()) == r.n_tokens
    assert sum(t["share"] for t in r.per_type.values()) == pytest.approx(1.0)
    weighted = sum(t["nll"] * t["share"] for t in r.per_type.values())
    assert weighted == pytest.approx(r.nll, rel=1e-9)
    assert r.perplexity == pytest.approx(math.exp(r.nll))
    assert 0.0 <= r.accuracy <= 1.0 and 3.0 < r.nll < 8.0  # an untrained model: about log(391) = 5.97


def test_stride_and_longer_context_score_every_token_once(ckpt, data_dir):
    base = evaluate_checkpoint(ckpt, [data_dir], split="valid", progress=False)
    strided = evaluate_checkpoint(ckpt, [data_dir], split="valid", stride=16, progress=False)
    longer = evaluate_checkpoint(ckpt, [data_dir], split="valid", context=256, stride=64, progress=False)
    assert base.n_tokens == strided.n_tokens == longer.n_tokens
    assert longer.context == 256 and longer.trained_context == 64
    assert base.nll != strided.nll and math.isfinite(longer.nll)


def test_absolute_positions_refuse_longer_contexts_clearly(tmp_path, data_dir):
    ckpt = tiny_checkpoint(tmp_path / "abs", position="absolute")
    ok = evaluate_checkpoint(ckpt, [data_dir], split="valid", context=64, progress=False)
    assert math.isfinite(ok.nll)
    with pytest.raises(ConfigError, match="absolute position embeddings for 64 positions"):
        evaluate_checkpoint(ckpt, [data_dir], split="valid", context=65, progress=False)


def test_midi_files_and_folders_are_tokenized(ckpt, tmp_path):
    one = evaluate_checkpoint(ckpt, [FIXTURES / "pop909_331.mid"], progress=False)
    folder = evaluate_checkpoint(ckpt, [FIXTURES], progress=False)
    assert one.split is None and one.n_docs == 1 and folder.n_docs == 4
    (tmp_path / "bad.mid").write_bytes(b"not midi")
    mixed = evaluate_checkpoint(ckpt, [tmp_path / "bad.mid", FIXTURES / "pop909_331.mid"], progress=False)
    assert mixed.n_tokens == one.n_tokens and mixed.nll == pytest.approx(one.nll)
    assert len(mixed.skipped) == 1 and "bad.mid" in mixed.skipped[0]
    with pytest.raises(DatasetError):
        evaluate_checkpoint(ckpt, [tmp_path / "bad.mid"], progress=False)
    with pytest.raises(DatasetError, match="no such file"):
        evaluate_checkpoint(ckpt, [tmp_path / "absent"], progress=False)


def test_prepared_data_with_another_tokenizer_is_refused(tmp_path, data_dir):
    other = save_model(MusicGPT(GPTConfig.preset("tiny")), tmp_path / "other", PerformanceTokenizer(velocity_bins=16))
    with pytest.raises(DatasetError, match="different tokenizer"):
        evaluate_checkpoint(other, [data_dir], progress=False)


def test_cli_prints_nll_line_and_writes_json(ckpt, data_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(ckpt), "--data", str(data_dir), "--split", "valid", "--stride", "32",
                 "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    nll = float(re.search(r"^nll (\S+)$", printed, re.M).group(1))
    figures = json.loads(out.read_text())
    assert figures["nll"] == pytest.approx(nll, abs=1e-6) and figures["stride"] == 32
    assert set(figures["per_type"]) == set(EVENT_TYPES)
    assert main(["evaluate", str(tmp_path / "nope"), "--data", str(data_dir), "--quiet"]) == 1
    assert "no such directory" in capsys.readouterr().err


def test_bos_is_the_first_input_of_every_document():
    split = Split(np.arange(10, 20, dtype=np.uint16), np.array([0, 4, 10]))
    firsts = [w[0] for w, _ in windows(split, 8, 8, Specials(bos=1))]
    assert firsts == [1, 1]


@pytest.fixture(scope="module")
def steering_checkpoint(tmp_path_factory):
    """The tiny steerable model (composer and density controls, infilling) saved with its tokenizer."""
    model, tokenizer = steering_model()
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "steer", tokenizer=tokenizer)


def test_evaluate_reads_each_files_composer_or_the_given_control(steering_checkpoint, tmp_path, capsys):
    from musicgpt.corpus.prepare import prepare

    corpus = tmp_path / "corpus"
    for composer, name in (("Bach", "pop909_331.mid"), ("Chopin", "pop909_806.mid")):
        (corpus / composer).mkdir(parents=True)
        shutil.copy(FIXTURES / name, corpus / composer / "a.mid")
    prepared = tmp_path / "prepared"
    prepare(corpus, prepared, composer_from="folder", ratios=(1, 0, 0), jobs=1, progress=False)
    own = evaluate_checkpoint(steering_checkpoint, [prepared], split="train", progress=False)
    given = evaluate_checkpoint(steering_checkpoint, [prepared], split="train", progress=False,
                                controls=["composer=Bach"])
    plain = evaluate_checkpoint(steering_checkpoint, [prepared], split="train", progress=False,
                                own_controls=False)
    assert own.controls == "each document's own composer (2 of 2 known)" and given.controls == "composer=Bach"
    assert plain.controls == "none" and own.n_tokens == given.n_tokens == plain.n_tokens
    assert len({round(r.nll, 6) for r in (own, given, plain)}) == 3  # three different readings
    assert main(["evaluate", str(steering_checkpoint), "--data", str(prepared), "--split", "train", "--control",
                 "composer=Bach", "--quiet"]) == 0
    assert "controls    composer=Bach" in capsys.readouterr().out


def test_evaluate_names_each_bad_file_and_why(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"")
    assert main(["evaluate", str(ckpt), "--data", str(bad), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}: empty file" in err and "none of 1 MIDI file" in err
