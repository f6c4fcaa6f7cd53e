"""The primer: a long one is cut by default to the model's first context, never right after a VELOCITY, with one
warning (one note line in the CLI); an explicit or a short primer is kept whole. Long pieces come from
tiny_models.long_midi."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import musicgpt
from musicgpt.cli import main
from musicgpt.generation.primer import PrimerCutWarning, primer_ids
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import long_midi, tiny_model

TOK = PerformanceTokenizer()


def test_a_long_primer_is_cut_to_its_first_context_with_a_warning(long_file):
    model = tiny_model()  # n_ctx 128
    whole = primer_ids(long_file, TOK)
    assert len(whole) > 10 * model.config.n_ctx
    with pytest.warns(PrimerCutWarning) as caught:
        (s,) = musicgpt.generate(model, long_file, max_new_tokens=5, seed=1, stop_at_eos=False)
    caught = [w for w in caught if issubclass(w.category, PrimerCutWarning)]
    assert issubclass(PrimerCutWarning, UserWarning) and len(caught) == 1
    kept = primer_ids(long_file, TOK, tokens=model.config.n_ctx - 1)  # drops a trailing VELOCITY too
    assert s.ids[: s.primer_length].tolist() == [TOK.bos_id, *kept.tolist()]
    assert s.primer_length <= model.config.n_ctx
    seconds = TOK.seconds_per_id()
    expected = (f"primer cut to its first {len(kept)} tokens ({seconds[kept].sum():.1f} s of "
                f"{seconds[whole].sum():.1f} s); pass primer_seconds or primer_tokens to choose")
    assert str(caught[0].message) == expected
    assert caught[0].filename == __file__  # points at the caller of generate


def test_the_default_cut_never_ends_on_a_velocity(long_file):
    ids = primer_ids(long_file, TOK)
    velocity = np.flatnonzero(TOK.token_type(ids) == TOK.type_names.index("VELOCITY"))
    at = int(velocity[velocity > 50][0])  # a cut right after this VELOCITY would split it from its NOTE_ON
    with pytest.warns(PrimerCutWarning, match=f"first {at} tokens"):
        cut = primer_ids(long_file, TOK, max_tokens=at + 1)
    assert cut.tolist() == ids[:at].tolist()


def test_an_explicit_or_short_primer_is_not_cut(long_file, tmp_path):
    model = tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrimerCutWarning)
        (a,) = musicgpt.generate(model, long_file, primer_tokens=400, max_new_tokens=3, seed=1, stop_at_eos=False)
        (b,) = musicgpt.generate(model, long_file, primer_seconds=20.0, max_new_tokens=3, seed=1, stop_at_eos=False)
        short = long_midi(tmp_path / "short.mid", bars=1)
        (c,) = musicgpt.generate(model, short, max_new_tokens=3, seed=1, stop_at_eos=False)
    assert a.ids[1 : a.primer_length].tolist() == primer_ids(long_file, TOK, tokens=400).tolist()
    assert a.primer_length > 300  # honoured past the context: the window slides
    assert b.ids[1 : b.primer_length].tolist() == primer_ids(long_file, TOK, seconds=20.0).tolist()
    assert c.primer_length == len(primer_ids(short, TOK)) + 1


def test_cli_generate_prints_one_note_line_for_the_default_cut(long_file, checkpoint, tmp_path, capsys):
    args = ["generate", "--checkpoint", str(checkpoint), "--primer", str(long_file), "--max-new-tokens", "4",
            "--seed", "1", "--quiet", "--out", str(tmp_path / "a")]
    assert main(args) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "primer" in line]
    assert len(err) == 1 and err[0].startswith("note: primer cut to its first ")  # one line, no traceback
    assert err[0].endswith("s); pass --primer-seconds or --primer-tokens to choose")
    assert main(args[:-2] + ["--primer-tokens", "200", "--out", str(tmp_path / "b")]) == 0
    assert "primer cut" not in capsys.readouterr().err
