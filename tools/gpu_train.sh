#!/usr/bin/env bash
# Train the bundled model (configs/medium.toml) and its absolute-position twin (configs/medium-abs.toml)
# side by side on one GPU, so that both get the same steps, tokens and schedule, in a fixed wall-clock time.
#
#   tools/gpu_train.sh OUT_DIR [SECONDS] [DATA_DIR]
#
# SECONDS (default 590) bounds the whole script: it checks the GPU attention path against the naive
# reference, probes both runs' speed for 60 steps side by side, sets train.steps so the slower one's
# cosine schedule ends with time to spare, trains, evaluates both best checkpoints on the test and
# valid splits, and packs float16 copies of the weights, the run logs and the figures into
# OUT_DIR/pack.tar.part-* (pieces of at most 15 MiB: `cat OUT_DIR/pack.tar.part-* | tar x`).
set -uo pipefail
out=${1:?usage: tools/gpu_train.sh OUT_DIR [SECONDS] [DATA_DIR]}
total=${2:-590}
data=${3:-data/asap}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
# EXTRA_SET="model.d_model=64 train.batch_size=2" shrinks everything for a smoke test of this script on a CPU
extra=(); for kv in ${EXTRA_SET:-}; do extra+=(--set "$kv"); done
start=$SECONDS
work=$(mktemp -d)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out" "$work/pack"
runs=(medium medium-abs)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

# 1. the relative-attention path this GPU will train with, against the naive reference
$py -m pytest -q -p no:cacheprovider tests/test_attention.py -k "sdpa or cuda" 2>&1 | tail -n 30
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "attention tests failed"; exit 1; }

# 2. probe: 60 steps of both runs side by side; tokens/s from steps 20..60 of metrics.csv
for r in "${runs[@]}"; do
    $py -m musicgpt train --config "configs/$r.toml" --data "$data" --out "$work/probe-$r" \
        --set train.steps=60 --set train.eval_every=100000 --set train.checkpoint_every=100000 \
        --set train.log_every=20 "${extra[@]}" >"$work/pack/probe-$r.log" 2>&1 &
done
wait
rate=$($py - "$work" "${runs[@]}" <<'EOF'
import csv, sys
rates = []
for r in sys.argv[2:]:
    rows = {int(row["step"]): row for row in csv.DictReader(open(f"{sys.argv[1]}/probe-{r}/metrics.csv"))
            if row["time_s"]}  # training rows (validation rows leave time_s empty)
    a, b = rows[20], rows[60]
    rates.append(40 / (float(b["time_s"]) - float(a["time_s"])))
    print(f"probe {r}: {rates[-1]:.2f} steps/s side by side", file=sys.stderr)
print(min(rates))
EOF
) || { echo "probe failed"; tail -n 20 "$work"/pack/probe-*.log; exit 1; }
reserve=100  # evaluation, packing and the runs' own start-up
train_s=$(( total - (SECONDS - start) - reserve ))
steps=$($py -c "print(int($rate * $train_s * 0.92 // 50 * 50))")
echo "training both for $steps steps ($train_s s at $rate steps/s, 8% margin)"

# 3. train side by side; a run that overruns is stopped with SIGTERM and checkpoints (resumable)
for r in "${runs[@]}"; do
    timeout -s TERM $(( train_s + 30 )) $py -m musicgpt train --config "configs/$r.toml" --data "$data" \
        --out "runs/$r" --set "train.steps=$steps" "${extra[@]}" >"$work/pack/train-$r.log" 2>&1 &
done
wait
for r in "${runs[@]}"; do tail -2 "$work/pack/train-$r.log"; done

# 4. evaluate the best checkpoints (float32 weights) on test and valid
for r in "${runs[@]}"; do
    for split in test valid; do
        $py -m musicgpt evaluate "runs/$r/best" --data "$data" --split "$split" --device "$device" --precision fp32 \
            --batch-size 32 --quiet --json "$work/pack/eval-$r-$split.json" 2>&1 | grep -E '^nll ' | sed "s/^/$r $split /"
    done
done

# 5. pack: float16 weights (the bundled format), logs, metrics, configs
$py - "$work/pack" "${runs[@]}" <<'EOF'
import sys, shutil, torch
from pathlib import Path
from musicgpt import checkpoint
pack = Path(sys.argv[1])
for r in sys.argv[2:]:
    src = Path("runs") / r / "best"
    model, tokenizer = checkpoint.load(src)
    _, raw = checkpoint.read_config(src)
    checkpoint.save(model, pack / r / "best", tokenizer, dtype=torch.float16, meta=raw.get("meta"))
    for name in ("metrics.csv", "run.json", "config.toml"):
        shutil.copy(Path("runs") / r / name, pack / r / name)
EOF
tar cf - -C "$work" pack | split -b 15M - "$out/pack.tar.part-"
ls -la "$out"
echo "done in $(( SECONDS - start )) s"
