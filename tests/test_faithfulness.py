"""bench/faithfulness.py on a tiny model and the test fixtures: Spearman by hand, the held-out pieces, and a
smoke run writing every figure the docs quote (influence of every past note, Spearman per layer and head and
aggregate, deletion against random and recent notes), plus the on-demand timing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from bench import faithfulness
from tiny_models import FIXTURES, tiny_checkpoint


def test_spearman_by_hand():
    assert faithfulness.spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert faithfulness.spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    # ties share their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2)
    assert faithfulness.spearman(np.array([1.0, 1, 2]), np.array([1.0, 2, 3])) == pytest.approx(np.sqrt(0.75))
    assert faithfulness.spearman(np.ones(4), np.arange(4.0)) is None


def test_a_smoke_run_writes_every_figure(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "faith.json"
    monkeypatch.setattr(sys, "argv", ["faithfulness", "--checkpoint", str(ckpt), "--data", str(FIXTURES),
                                      "--notes", "2", "--tokens", "110", "--min-context", "60", "--out", str(out)])
    faithfulness.main()
    report = json.loads(out.read_text())
    assert report["notes"] == 2 and len(report["queries"]) == 2
    for measure in ("attention", "norm", "rollout"):
        fig = report["spearman"][measure]["note_on"]
        assert np.array(fig["heads"], dtype=float).shape == (2, 2) and len(fig["layers"]) == 2
        assert -1 <= fig["viewer"]["mean"] <= 1 and fig["viewer"]["n"] == 2
    for name in ("attention", "norm", "rollout", "influence", "random", "recent"):
        assert set(report["deletion"][name]) == {"1", "3", "10"}
    query = report["queries"][0]
    assert query["past_notes"] >= 12 and query["influence_max"] > 0
    monkeypatch.setattr(sys, "argv", ["faithfulness", "--checkpoint", str(ckpt), "--data", str(FIXTURES),
                                      "--out", str(out), "--on-demand", "100"])
    faithfulness.main()
    again = json.loads(out.read_text())
    assert again["queries"] == report["queries"]  # kept
    runs = again["on_demand"]["runs"]
    assert [r["scored"] for r in runs[:2]] == [16, min(32, again["on_demand"]["past_notes"])]
    assert runs[2]["scored"] == again["on_demand"]["past_notes"] and all(r["seconds"] >= 0 for r in runs)
