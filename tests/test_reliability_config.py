"""Bad values in training configs, corpus options and the environment (issue 23): refused where they enter, with
one line naming the key, instead of a traceback, a training run that never updates, or an empty split."""

import shutil
from pathlib import Path

import pytest

from musicgpt.cli import main
from musicgpt.corpus.recipes import check_ratios, collect
from musicgpt.errors import ConfigError
from musicgpt.model import relative_kernel
from musicgpt.training.config import load_config

FIXTURES = Path(__file__).parent / "fixtures"
HUGE_SEED = "1180591620717411303424"  # 2**70


@pytest.mark.parametrize("override,words", [
    (f"train.seed={HUGE_SEED}", "train.seed: must be >= 0 and < 2**63"),
    ("train.seed=-1", "train.seed: must be >= 0 and < 2**63"),
    ("optim.eps=inf", "optim.eps: must be a finite number, got inf"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("optim.beta2=-inf", "optim.beta2: must be a finite number"),
    ("finetune.lr=inf", "finetune.lr: must be a finite number"),
    ("data.stretch=nan", "data.stretch: must be a finite number"),
    ("model.d_model=1048576", "model: 8.8e+12 parameters"),
    ("model.n_ctx=1000000000", "one 1000000000-token context"),
    ("train.batch_size=1000000000", "train.batch_size 1000000000 x model.n_ctx 128 tokens would need at least"),
])
def test_a_config_value_no_run_can_use_is_refused_by_name(override, words):
    with pytest.raises(ConfigError) as exc:
        load_config("tiny", [override])
    assert words in str(exc.value)


def test_the_same_values_in_a_toml_file_and_through_the_cli(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(f"[model]\npreset = 'tiny'\n[train]\nseed = {HUGE_SEED}\n")
    assert main(["train", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert "train.seed: must be >= 0 and < 2**63" in err and "\n" not in err
    assert main(["train", "--config", "tiny", "--set", "optim.eps=inf", "--data", str(tmp_path),
                 "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert "optim.eps: must be a finite number" in err and "\n" not in err
    config.write_text("[model]\npreset = 'tiny'\nn_ctx = 1000000000\n")
    assert main(["train", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert "would need at least" in err and "available" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_split_ratios_must_be_finite(tmp_path, capsys):
    for ratios in (("nan", 0.5, 0.5), (1, "inf", 0), (float("nan"), 1, 1)):
        with pytest.raises(ConfigError, match="three finite numbers"):
            check_ratios(ratios)
    assert main(["prepare", str(FIXTURES), "--out", str(tmp_path / "p"), "--ratios", "nan,0.5,0.5", "--quiet"]) == 1
    assert "split ratios: need three finite numbers" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("header", ["composer,midi", "Composer,MIDI", "composer,filename", "composer,file"])
def test_metadata_names_its_files_in_any_common_column(tmp_path, header):
    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("pop909_331.mid", "pop909_806.mid"):
        shutil.copy(FIXTURES / name, root / name)
    (root / "metadata.csv").write_text(f"{header}\nChopin,pop909_331.mid\n")
    _, sources = collect(root, "folder")
    assert {s.rel: s.composer for s in sources} == {"pop909_331.mid": "Chopin", "pop909_806.mid": None}


def test_metadata_without_a_file_or_composer_column_says_what_to_do(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    shutil.copy(FIXTURES / "pop909_331.mid", root / "a.mid")
    (root / "metadata.csv").write_text("composer,name\nChopin,a.mid\n")
    with pytest.raises(ConfigError, match=r"no file column \(one of: path, file, filename, midi.*--composer-from none"):
        collect(root, "folder")
    (root / "metadata.csv").write_text("file,title\na.mid,Ballade\n")
    with pytest.raises(ConfigError, match="no composer column.*--composer-from none[|]folder"):
        collect(root, "folder")
    _, sources = collect(root, "folder", composer_from="none")
    assert [s.composer for s in sources] == [None]


def test_a_bad_attention_kernel_setting_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "bogus")
    with pytest.raises(ConfigError, match="MUSICGPT_ATTENTION_KERNEL: 'bogus' is not one of"):
        relative_kernel.mode()
    assert main(["generate", str(checkpoint), "--max-new-tokens", "2", "--quiet", "--out", str(tmp_path / "g")]) == 1
    err = capsys.readouterr().err.strip()
    assert "MUSICGPT_ATTENTION_KERNEL: 'bogus'" in err and "\n" not in err
