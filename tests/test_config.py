"""Training configs: strict TOML loading, dotted overrides, presets, and the shipped configs; bad config files,
a vocab_size that disagrees with the tokenizer, sections left to the defaults, a bad --out: one-line errors."""

import tomllib
from pathlib import Path

import pytest

from musicgpt.cli import main
from musicgpt.training.config import Config, apply_override, config_from_dict, dump_toml, load_config, parse_value
from musicgpt.errors import ConfigError
from musicgpt.model.gpt import MusicGPT
from training_fixtures import micro_config, prepare_fixtures, write_config

CONFIGS = Path(__file__).resolve().parents[1] / "musicgpt" / "configs"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_values_land_in_dataclasses(tmp_path):
    cfg = load_config(write(tmp_path, "[model]\nn_layer = 3\n[train]\nsteps = 7\nprecision = 'bf16'\n[optim]\nlr = 1\n"))
    assert cfg.model.n_layer == 3 and cfg.train.steps == 7 and cfg.train.precision == "bf16"
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int widens to float
    assert cfg.data == Config().data  # untouched sections keep their defaults


@pytest.mark.parametrize("text,key", [
    ("[train]\nstepz = 1\n", "train.stepz"),
    ("[trian]\nsteps = 1\n", "trian"),
    ("[model]\nlayers = 1\n", "model.layers"),
    ("[train]\nsteps = 'ten'\n", "train.steps"),
    ("[train]\nsteps = 1.5\n", "train.steps"),
    ("[train]\ncompile = 1\n", "train.compile"),
    ("[train]\nprecision = 'fp16'\n", "train.precision"),
    ("[optim]\nlr = true\n", "optim.lr"),
    ("[data]\npath = 3\n", "data.path"),
    ("[finetune]\nsteps = 'x'\n", "finetune.steps"),
    ("train = 3\n", "train"),
    ("[train]\nbatch_size = 0\n", "train.batch_size"),
    ("[optim]\nmin_lr = 1.0\nlr = 0.1\n", "optim.min_lr"),
    ("[model]\nd_model = 30\nn_head = 4\n", "model.d_model"),
])
def test_bad_keys_and_types_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    message = str(exc.value)
    assert key in message and "c.toml" in message


def test_unknown_key_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="known keys: .*batch_size"):
        load_config(write(tmp_path, "[train]\nbatchsize = 4\n"))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_overrides_with_dotted_keys(tmp_path):
    path = write(tmp_path, "[train]\nsteps = 10\n")
    cfg = load_config(path, ["train.steps=20", "optim.lr=1e-4", "train.precision=fp32", "train.compile=true",
                             "data.path=some/dir", "model.position=absolute", "finetune.steps=5"])
    assert cfg.train.steps == 20 and cfg.optim.lr == 1e-4 and cfg.train.precision == "fp32"
    assert cfg.train.compile is True and cfg.data.path == "some/dir" and cfg.model.position == "absolute"
    assert cfg.finetune.steps == 5
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config(path, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(path, ["train.steps=abc"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["train.steps"])
    with pytest.raises(ConfigError, match="train.steps: is a value"):
        load_config(path, ["train.steps.x=1"])


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("'a b'") == "a b" and parse_value("bf16") == "bf16" and parse_value("[1, 2]") == [1, 2]
    raw = {}
    apply_override(raw, "a.b.c = 1")
    assert raw == {"a": {"b": {"c": 1}}}


def test_model_preset_with_overrides():
    cfg = config_from_dict({"model": {"preset": "tiny", "dropout": 0.0}})
    assert cfg.model.n_layer == 2 and cfg.model.dropout == 0.0
    with pytest.raises(ConfigError, match="model.preset"):
        config_from_dict({"model": {"preset": "huge"}})


def test_dump_toml_round_trips():
    cfg = config_from_dict({"model": {"preset": "tiny"}, "data": {"path": 'we"ird\\path'},
                            "optim": {"lr": 3e-5, "min_lr": 1e-7}, "finetune": {"steps": 9}})
    assert config_from_dict(tomllib.loads(dump_toml(cfg))) == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.train.steps > 0 and cfg.optim.lr > cfg.finetune.lr


def test_shipped_configs_come_in_relative_and_absolute_twins():
    names = {p.stem for p in CONFIGS.glob("*.toml")}
    assert {"tiny", "small-cpu", "base"} <= names
    for name in ("tiny", "small-cpu", "base"):
        rel, absolute = load_config(CONFIGS / f"{name}.toml"), load_config(CONFIGS / f"{name}-abs.toml")
        assert rel.model.position == "relative" and absolute.model.position == "absolute"
        # The twin differs in the position scheme only.
        assert dump_toml(rel).replace('"relative"', '"absolute"') == dump_toml(absolute)


def test_base_is_music_transformer_sized():
    m = load_config(CONFIGS / "base.toml").model
    assert (m.n_layer, m.d_model, m.n_head, m.n_ctx) == (6, 512, 8, 2048)


def test_small_cpu_weights_fit_in_25_mb():
    cfg = load_config(CONFIGS / "small-cpu.toml").model
    model = MusicGPT(cfg)
    assert model.num_parameters() * 4 < 25e6  # float32 safetensors (tied head stored once)


def test_presets_ship_in_the_package_and_resolve_by_name(tmp_path, capsys):
    from importlib import resources

    from musicgpt.cli import main
    from musicgpt.training.config import preset_names

    names = preset_names()
    assert {"tiny", "small-cpu", "medium", "base"} <= set(names)
    assert all(resources.files("musicgpt").joinpath("configs", f"{n}.toml").is_file() for n in names)
    assert load_config("tiny") == load_config(CONFIGS / "tiny.toml") == load_config("tiny.toml")
    with pytest.raises(ConfigError, match="no preset of that name; presets: base"):
        load_config("tinyy")
    path = write(tmp_path, "[train]\nsteps = 3\n")
    assert load_config(path).train.steps == 3  # a path still works
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "small-cpu" in capsys.readouterr().out


# ---- configs given to `musicgpt train` --------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_fixtures(tmp_path_factory.mktemp("prepared"))


@pytest.mark.parametrize("content, message", [
    (b"[train]\nseed = -1\n", "train.seed: must be >= 0"),
    (b"[train]\nsteps = 1\n# caf\xe9\n", "not UTF-8 text"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, prepared, capsys, content, message):
    (tmp_path / "c.toml").write_bytes(content)
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--data", str(prepared), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_vocab_size_that_disagrees_with_the_tokenizer_is_refused(tmp_path, prepared, capsys):
    config = micro_config(model={"vocab_size": 10})
    assert "model.vocab_size" in config.explicit
    assert main(["train", "--config", str(write_config(config, tmp_path / "c.toml")), "--data", str(prepared),
                 "--out", str(tmp_path / "r")]) == 1
    assert "model.vocab_size: 10 disagrees with the tokenizer" in capsys.readouterr().err


def test_sections_left_to_the_defaults_are_said_and_a_bad_out_is_one_line(tmp_path, prepared, capsys):
    (tmp_path / "empty.toml").write_text("")
    from musicgpt.commands.train import _say_defaults

    _say_defaults(load_config(tmp_path / "empty.toml"), "empty.toml", fine_tuning=False)
    err = capsys.readouterr().err
    assert "sets nothing in [model]: training the default model (n_layer=6" in err and "steps=1000" in err
    _say_defaults(load_config(tmp_path / "empty.toml", ["train.steps=2", "model.n_layer=1"]), "empty.toml", False)
    assert capsys.readouterr().err == ""
    config = write_config(micro_config(), tmp_path / "c.toml")
    assert main(["train", "--config", str(config), "--data", str(prepared), "--out", "/proc/x/run"]) == 1
    assert "/proc/x/run: cannot create the run directory" in capsys.readouterr().err
