#!/usr/bin/env bash
# Train the bundled model (the `medium` preset, musicgpt/configs/medium.toml) and its absolute-position twin
# (`medium-abs`) side by side on one GPU, so that both get the same steps, tokens and schedule, in a fixed wall-clock time.
#
#   tools/gpu_train.sh OUT_DIR [SECONDS] [DATA_DIR]
#
# The runs go to RUNS_DIR/medium and RUNS_DIR/medium-abs (RUNS_DIR defaults to runs; both must not exist yet).
# SECONDS (default 590) bounds the whole script: it checks the GPU attention path against the naive
# reference, probes both runs' speed for 60 steps side by side, sets train.steps so the slower one's
# cosine schedule ends with time to spare, trains, evaluates both best checkpoints on the test and
# valid splits, and packs the weights as they would be bundled (float16 above 25 MB), the run logs and the figures into
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
declare -A pids
runs_dir=${RUNS_DIR:-runs}
fail() { echo "gpu_train.sh: $*"; exit 1; }
for r in "${runs[@]}"; do
    [ ! -e "$runs_dir/$r" ] || fail "$runs_dir/$r already exists: move it away or set RUNS_DIR"
done

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"

# 1. the relative-attention path this GPU will train with, against the naive reference
$py -m pytest -q -p no:cacheprovider tests/test_attention.py -k "sdpa or cuda" 2>&1 | tail -n 30
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "attention tests failed"

# 2. probe: 60 steps of both runs side by side; tokens/s from steps 20..60 of metrics.csv
for r in "${runs[@]}"; do
    $py -m musicgpt train --config "$r" --data "$data" --out "$work/probe-$r" \
        --set train.steps=60 --set train.eval_every=100000 --set train.checkpoint_every=100000 \
        --set train.log_every=20 "${extra[@]}" >"$work/pack/probe-$r.log" 2>&1 &
    pids[$r]=$!
done
for r in "${runs[@]}"; do wait "${pids[$r]}" || { tail -n 20 "$work/pack/probe-$r.log"; fail "probe of $r failed"; }; done
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
) || fail "could not read the probes' speed"
reserve=100  # evaluation, packing and the runs' own start-up
train_s=$(( total - (SECONDS - start) - reserve ))
# 15% margin: the probe's time_s leaves out the validation and checkpoint pauses the real runs take
steps=$($py -c "print(max(0, int($rate * $train_s * 0.85 // 50 * 50)))")
[ "$steps" -ge 100 ] || fail "only $steps steps fit in $train_s s; give it more time"
echo "training both for $steps steps ($train_s s at $rate steps/s, 15% margin)"

# 3. train side by side; a run that overruns is stopped with SIGTERM and checkpoints (resumable)
for r in "${runs[@]}"; do
    timeout -s TERM $(( train_s + 30 )) $py -m musicgpt train --config "$r" --data "$data" \
        --out "$runs_dir/$r" --set "train.steps=$steps" "${extra[@]}" >"$work/pack/train-$r.log" 2>&1 &
    pids[$r]=$!
done
for r in "${runs[@]}"; do
    wait "${pids[$r]}"; code=$?
    tail -n 2 "$work/pack/train-$r.log"
    case $code in
        0) ;;
        143) echo "warning: $r ran out of time and stopped at its last checkpoint (its schedule did not finish)" ;;
        *) fail "training $r failed (exit $code)" ;;
    esac
done
# the runs' hardware record: which run shared the GPU
$py - "$runs_dir" "${runs[@]}" <<'EOF' || fail "could not update run.json"
import json, sys
from pathlib import Path
from musicgpt._io import atomic_write_text
runs_dir, names = Path(sys.argv[1]), sys.argv[2:]
for r in names:
    path = runs_dir / r / "run.json"
    run = json.loads(path.read_text())
    others = ", ".join(str(runs_dir / o) for o in names if o != r)
    run.setdefault("hardware", {})["shared_with"] = f"{others} (trained side by side on the same GPU, tools/gpu_train.sh)"
    atomic_write_text(path, json.dumps(run, indent=2) + "\n")
EOF

# 4. evaluate the best checkpoints (float32 weights) on test and valid
for r in "${runs[@]}"; do
    for split in test valid; do
        $py -m musicgpt evaluate "$runs_dir/$r/best" --data "$data" --split "$split" --device "$device" \
            --precision fp32 --batch-size 32 --quiet --json "$work/pack/eval-$r-$split.json" \
            >"$work/pack/eval-$r-$split.log" 2>&1 || { tail -n 20 "$work/pack/eval-$r-$split.log"; fail "evaluating $r failed"; }
        grep -E '^nll ' "$work/pack/eval-$r-$split.log" | sed "s/^/$r $split /"
    done
done

# 5. pack: the best weights as `python -m tools.install_pretrained` would bundle them (float16 above 25 MB, reloaded and
#    checked against the source), logs, metrics
$py - "$work/pack" "$runs_dir" "${runs[@]}" <<'EOF' || fail "packing failed"
import sys, shutil
from pathlib import Path
from musicgpt._io import atomic_write
from tools.install_pretrained import install
pack, runs_dir = Path(sys.argv[1]), Path(sys.argv[2])
for r in sys.argv[3:]:
    done = install(runs_dir / r / "best", pack / r / "best")
    print(f"packed {done['source']} as {done['stored_dtype']} (max logit difference {done['max_logit_diff']:.3g})")
    for name in ("metrics.csv", "run.json", "config.toml"):
        atomic_write(pack / r / name, lambda tmp, name=name: shutil.copyfile(runs_dir / r / name, tmp))
EOF
tar cf - -C "$work" pack | split -b 15M - "$out/pack.tar.part-"
ls -la "$out"
echo "done in $(( SECONDS - start )) s"
