"""DDP: the same `musicgpt train` command under torchrun with 2 CPU processes (gloo)."""

import os
import re
import subprocess
import sys

import pytest
import torch.distributed as dist

from musicgpt import checkpoint
from musicgpt.model import load_model
from musicgpt.training.loop import weights_fingerprint
from musicgpt.training.log import read_metrics
from training_fixtures import ROOT, micro_config, prepare_fixtures, write_config


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_processes_finish_with_identical_weights(tmp_path):
    data_dir = prepare_fixtures(tmp_path / "data")
    config = write_config(micro_config(train={"steps": 4, "eval_every": 2, "checkpoint_every": 2}), tmp_path / "c.toml")
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "musicgpt", "train", "--config", str(config), "--data", str(data_dir), "--out", str(run_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    prints = dict(re.findall(r"rank (\d)/2: step 4, weights fingerprint ([0-9a-f]{16})", proc.stdout))
    assert set(prints) == {"0", "1"}, proc.stdout
    assert prints["0"] == prints["1"]
    # Rank 0 wrote the checkpoint, and it holds those very weights.
    final = run_dir / "checkpoints" / "step-0000004"
    assert weights_fingerprint(load_model(final)) == prints["0"]
    # One writer: one header and one row per logged step in metrics.csv.
    rows = read_metrics(run_dir / "metrics.csv")
    train_rows = [r for r in rows if r["train_loss"] is not None]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert train_rows[-1]["tokens"] == 4 * 2 * 2 * 32  # steps x ranks x batch x context
    assert len([r for r in rows if r["valid_nll"] is not None]) == 2
    state = checkpoint.load_state(final, "trainer")
    assert state["world_size"] == 2 and len(state["torch_rng"]) == 2
    assert not (state["torch_rng"][0] == state["torch_rng"][1]).all()  # ranks draw their own dropout
