"""musicgpt prepare: recipes, splits, shards, manifest, bad files, incremental re-runs; names that are not UTF-8,
broken links, a second run on the same folder, an interrupted run, shards that disagree, a full disk."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from midi_factory import make_midi, note
from musicgpt.cli import main
from musicgpt.errors import ConfigError, DatasetError
from musicgpt.corpus import load_split, prepare, read_manifest
from musicgpt.corpus.recipes import collect, detect_recipe, hashed_splits, split_fraction
from musicgpt.corpus.shards import verify
from musicgpt.corpus.workdir import PartialResults, PrepareLock
from musicgpt.tokens import PerformanceTokenizer, load_tokenizer
from training_fixtures import LATIN1, micro_config, run_cli, write_config

FIXTURES = Path(__file__).parent / "fixtures"
REAL = sorted(FIXTURES.glob("*.mid"))
PRIMER = FIXTURES / "pop909_331.mid"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
BAD = {"empty.mid": "empty file", "text.mid": "not a MIDI file", "cut.mid": "corrupt or truncated",
       "silent.mid": "contains no notes", "zero_tempo.mid": "absurd tempo"}


def make_corpus(root: Path) -> Path:
    """Four real files, one duplicate and one of each kind of bad file, in nested folders."""
    (root / "a" / "b").mkdir(parents=True)
    for i, path in enumerate(REAL):
        shutil.copy(path, root / ("a" if i % 2 else "a/b") / path.name)
    shutil.copy(REAL[0], root / "copy_of_first.mid")
    (root / "empty.mid").write_bytes(b"")
    (root / "text.mid").write_text("hello, I am not music\n")
    (root / "cut.mid").write_bytes(REAL[1].read_bytes()[:700])
    make_midi(root / "silent.mid", [[(0, "cc", 64, 127)]])
    make_midi(root / "zero_tempo.mid", [note(60, 0, 480)], tempos=[(0, 0)])
    (root / "notes.txt").write_text("not picked up: wrong suffix")
    return root


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus")


def test_prepare_tiny_folder_with_bad_files(corpus, tmp_path):
    out = tmp_path / "out"
    result = prepare(corpus, out, jobs=1, progress=False)
    manifest = read_manifest(out)
    assert manifest == json.loads((out / "manifest.json").read_text()) == result.manifest
    assert manifest["recipe"] == "folder"
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    for name, reason in BAD.items():
        assert reason in reasons[name]
    dup_of = [s for s in manifest["sources"] if s["path"].endswith(REAL[0].name)][0]["path"]
    assert reasons["copy_of_first.mid"] == f"duplicate of {dup_of}"
    assert len(manifest["sources"]) == len(REAL) and len(manifest["skipped"]) == len(BAD) + 1
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok == PerformanceTokenizer()
    total = 0
    for split in ("train", "valid", "test"):
        tokens, offsets = load_split(out, split)
        assert tokens.dtype == np.dtype("<u2") and offsets.dtype == np.int64 and offsets[-1] == len(tokens)
        docs = [s for s in manifest["sources"] if s["split"] == split]
        assert [s["doc"] for s in docs] == list(range(len(docs))) == list(range(len(offsets) - 1))
        assert [s["path"] for s in docs] == sorted(s["path"] for s in docs)
        for s in docs:
            expected = tok.encode(corpus / s["path"]).ids
            assert np.array_equal(tokens[offsets[s["doc"]]:offsets[s["doc"] + 1]], expected)
            assert s["n_tokens"] == len(expected) and s["sha256"] and s["n_notes"] > 0
        assert manifest["splits"][split]["n_docs"] == len(docs)
        total += len(docs)
    assert total == len(REAL)
    assert "silent.mid: contains no notes" in result.summary()


def test_cli_prepare_exits_zero_and_names_skipped_files(corpus, tmp_path, capsys):
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "out"), "--quiet", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "prepared 4 files" in out and "zero_tempo.mid: absurd tempo" in out and "empty.mid: empty file" in out


def test_cli_prepare_on_missing_folder_fails_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "musicgpt", "prepare", str(tmp_path / "nope"), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "no such folder" in run.stderr
    assert "Traceback" not in run.stderr


def test_second_run_reuses_and_changes_are_noticed(corpus, tmp_path):
    out = tmp_path / "out"
    first = prepare(corpus, out, jobs=1, progress=False)
    assert first.tokenized == len(REAL) + len(BAD)
    shards = {split: np.array(load_split(out, split)[0]) for split in ("train", "valid", "test")}
    again = prepare(corpus, out, jobs=1, progress=False)
    assert again.tokenized == 0 and again.reused == len(REAL)
    assert again.manifest["sources"] == first.manifest["sources"]
    assert again.manifest["skipped"] == first.manifest["skipped"]
    for split, tokens in shards.items():
        assert np.array_equal(load_split(out, split)[0], tokens)
    # one file changes content; a new tokenizer re-tokenizes everything; --force too
    changed = next(corpus.rglob(REAL[2].name))
    shutil.copy(REAL[2], changed)
    make_midi(changed, [note(60, 0, 480), note(64, 480, 960)])
    third = prepare(corpus, out, jobs=1, progress=False)
    assert third.tokenized == 1 and third.reused == len(REAL) - 1
    fourth = prepare(corpus, out, jobs=1, progress=False, tokenizer=PerformanceTokenizer(velocity_bins=16))
    assert fourth.tokenized == len(REAL) + len(BAD) and load_tokenizer(out).velocity_bins == 16
    assert prepare(corpus, out, jobs=1, progress=False, force=True).reused == 0


def test_parallel_run_equals_serial_run(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(12):
        make_midi(root / f"piece{i:02d}.mid", [note(48 + i, 0, 480 + 10 * i) + note(60 + i, 240, 900)])
    (root / "broken.mid").write_bytes(b"MThd garbage")
    serial = prepare(root, tmp_path / "s", jobs=1, progress=False).manifest
    parallel = prepare(root, tmp_path / "p", jobs=2, progress=False).manifest
    assert serial["sources"] == parallel["sources"] and serial["skipped"] == parallel["skipped"]
    for split in ("train", "valid", "test"):
        assert np.array_equal(load_split(tmp_path / "s", split)[0], load_split(tmp_path / "p", split)[0])


def test_load_split_errors(tmp_path):
    with pytest.raises(DatasetError, match="no prepared 'train' split"):
        load_split(tmp_path, "train")
    with pytest.raises(DatasetError, match="unknown"):
        load_split(tmp_path, "dev")
    with pytest.raises(DatasetError, match="no MIDI files"):
        prepare(tmp_path, tmp_path / "out", progress=False)
    (tmp_path / "train.tokens.bin").write_bytes(b"\x01\x00" * 3)
    np.save(tmp_path / "train.offsets.npy", np.array([0, 2], np.int64))
    with pytest.raises(DatasetError, match="offsets do not describe"):
        load_split(tmp_path, "train")


def test_hashed_split_is_deterministic_stable_and_fills_small_corpora():
    groups = [f"piece{i}" for i in range(200)]
    split = hashed_splits(groups)
    assert split == hashed_splits(list(reversed(groups)))
    assert 150 < list(split.values()).count("train") < 200
    more = hashed_splits(groups + ["extra1", "extra2"])
    assert all(more[g] == split[g] for g in groups)  # adding files moves nothing
    small = hashed_splits(["a", "b", "c"])
    assert sorted(small.values()) == ["test", "train", "valid"]
    assert 0 <= split_fraction("x") < 1
    with pytest.raises(ConfigError):
        hashed_splits(groups, (0, 1, 1))


def test_asap_recipe_groups_by_piece(tmp_path):
    root = tmp_path / "asap"
    rows = ["composer,title,folder,midi_performance"]
    for piece in range(6):
        for perf, path in enumerate(REAL[:2]):
            rel = f"C/p{piece}/perf{perf}.mid"
            (root / "C" / f"p{piece}").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / rel)
            rows.append(f"C,Piece{piece},C/p{piece},{rel}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    assert detect_recipe(root) == "asap"
    name, sources = collect(root)
    assert name == "asap" and len(sources) == 12
    by_group = {}
    for s in sources:
        by_group.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in by_group.values())
    result = prepare(root, tmp_path / "out", jobs=1, progress=False)
    # every piece holds the same two files: only the first piece's copies survive deduplication
    assert len(result.manifest["sources"]) == 2 and len(result.manifest["skipped"]) == 10


def test_maestro_pop909_giantmidi_layouts(tmp_path):
    maestro = tmp_path / "maestro"
    (maestro / "2004").mkdir(parents=True)
    rows = ["canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration"]
    for i, (path, split) in enumerate(zip(REAL, ["train", "validation", "test", "train"])):
        shutil.copy(path, maestro / "2004" / f"f{i}.midi")
        rows.append(f"X,T{i},{split},2004,2004/f{i}.midi,2004/f{i}.wav,1.0")
    (maestro / "maestro-v3.0.0.csv").write_text("\n".join(rows) + "\n")
    name, sources = collect(maestro)
    assert name == "maestro" and [s.split for s in sources] == ["train", "valid", "test", "train"]

    pop = tmp_path / "pop" / "POP909"
    for song in ("001", "002"):
        (pop / song / "versions").mkdir(parents=True)
        shutil.copy(REAL[2], pop / song / f"{song}.mid")
        shutil.copy(REAL[3], pop / song / "versions" / f"{song}-v1.mid")
    name, sources = collect(tmp_path / "pop")
    assert name == "pop909" and len(sources) == 4
    assert {s.group for s in sources} == {"001", "002"}
    assert len({s.split for s in sources if s.group == "001"}) == 1

    giant = tmp_path / "giant"
    giant.mkdir()
    for i, title in enumerate(["Sonata", "Sonata", "Etude"]):
        shutil.copy(REAL[i], giant / f"Doe, John, {title}, abcdefghij{i}.mid")
    name, sources = collect(giant)
    assert name == "giantmidi" and {s.group for s in sources} == {"Doe, John, Sonata", "Doe, John, Etude"}
    with pytest.raises(ConfigError, match="unknown"):
        collect(giant, "nonsense")


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared corpora not available")
def test_shared_corpora_are_detected():
    for name, folder in (("asap", SHARED / "asap"), ("pop909", SHARED / "pop909")):
        recipe, sources = collect(folder)
        assert recipe == name and len(sources) > 900
        assert {s.split for s in sources} == {"train", "valid", "test"}


def test_recipes_record_composers(tmp_path):
    corpus = tmp_path / "corpus"
    for sub in ("Chopin", "Bach"):
        (corpus / sub).mkdir(parents=True)
        shutil.copy(PRIMER, corpus / sub / "a.mid")
    assert {s.rel: s.composer for s in collect(corpus, "folder", composer_from="folder")[1]} == \
        {"Chopin/a.mid": "Chopin", "Bach/a.mid": "Bach"}
    assert {s.composer for s in collect(corpus, "folder")[1]} == {None}
    with open(corpus / "metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "composer"], ["Chopin/a.mid", "F. Chopin"]])
    assert {s.rel: s.composer for s in collect(corpus, "folder")[1]} == {"Chopin/a.mid": "F. Chopin", "Bach/a.mid": None}
    with pytest.raises(ConfigError, match="only with the folder recipe"):
        collect(FIXTURES, "pop909", composer_from="folder")


# ---- odd names and links; a prepared folder is one unit ------------------------------------------------

@pytest.fixture
def real_corpus(tmp_path) -> Path:
    """The real fixture files, half of them in a subfolder."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for i, path in enumerate(REAL):
        shutil.copy(path, root / ("sub" if i % 2 else ".") / path.name)
    return root


def test_a_name_that_is_not_utf8_and_broken_links_do_not_stop_prepare(real_corpus, tmp_path):
    shutil.copy(REAL[0], real_corpus / "sub" / LATIN1)
    os.symlink(real_corpus / "gone.mid", real_corpus / "dangling.mid")
    os.symlink(real_corpus / "loop.mid", real_corpus / "loop.mid")
    os.symlink(real_corpus, real_corpus / "sub" / "back")  # a directory loop
    done = run_cli("prepare", str(real_corpus), "--out", str(tmp_path / "out"), "--quiet", "--jobs", "1")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    manifest = read_manifest(tmp_path / "out")
    assert f"sub/{LATIN1}" in [s["path"] for s in manifest["sources"]] + [s["path"] for s in manifest["skipped"]]
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["dangling.mid"].startswith("dangling symlink") and reasons["loop.mid"] == "symlink loop"
    assert reasons["sub/back"].startswith("directory loop")
    assert b"dangling.mid: dangling symlink" in done.stdout and b"caf\xe9.mid" in done.stdout  # printed as it is


def test_a_second_prepare_into_the_same_folder_is_refused_with_the_holders_pid(real_corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with PrepareLock(out):
        done = run_cli("prepare", str(real_corpus), "--out", str(out), "--quiet")
        assert done.returncode == 1 and f"pid {os.getpid()}".encode() in done.stderr
    prepare(real_corpus, out, jobs=1, progress=False)  # released: the next run goes ahead


def test_an_interrupted_prepare_keeps_what_it_tokenized(real_corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    added = []
    keep = PartialResults.add

    def interrupt_after_two(self, *args):
        keep(self, *args)
        added.append(args[0])
        if len(added) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or a kill, in the middle of the run

    monkeypatch.setattr(PartialResults, "add", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(real_corpus, out, jobs=1, progress=False)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(PartialResults, "add", keep)
    result = prepare(real_corpus, out, jobs=1, progress=False)
    assert result.reused == 2 and result.tokenized == len(REAL) - 2
    assert not list(out.glob(".partial-*")) and verify(out)
    clean = prepare(real_corpus, tmp_path / "clean", jobs=1, progress=False)
    for name in result.manifest["shards"]:
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    assert clean.manifest["shards"] == result.manifest["shards"]


def test_shards_that_disagree_with_the_manifest_are_refused(real_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    prepare(real_corpus, out, jobs=1, progress=False)
    data = bytearray((out / "train.tokens.bin").read_bytes())
    data[10] ^= 1  # another run's shard, same size
    (out / "train.tokens.bin").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="train.tokens.bin: does not match manifest.json"):
        verify(out)
    config = write_config(micro_config(), tmp_path / "c.toml")
    assert main(["train", "--config", str(config), "--data", str(out), "--out", str(tmp_path / "run")]) == 1
    assert "does not match manifest.json" in capsys.readouterr().err
    (out / "train.tokens.bin").write_bytes(bytes(data[:10]) + bytes([data[10] ^ 1]) + bytes(data[11:]))
    verify(out)
    (out / "valid.offsets.npy").unlink()  # a broken validation split is not "no validation"
    assert main(["train", "--config", str(config), "--data", str(out), "--out", str(tmp_path / "run2")]) == 1
    assert "valid.offsets.npy: missing" in capsys.readouterr().err


def test_a_full_disk_during_prepare_leaves_the_previous_folder_and_one_line(real_corpus, tmp_path):
    out = tmp_path / "out"
    prepare(real_corpus, out, jobs=1, progress=False)
    files = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".prepare.lock"}  # noqa
    before = files()
    done = run_cli("prepare", str(real_corpus), "--out", str(out), "--quiet", "--jobs", "1", limit_bytes=3000)
    err = done.stderr.decode().strip()
    assert done.returncode == 1 and len(err.splitlines()) == 1 and f"{out}/" in err and ": cannot write (" in err, err
    assert "tokens.bin: cannot write" in err and files() == before and verify(out)
    assert not list(out.glob(".*.tmp"))
