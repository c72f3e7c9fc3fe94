#!/usr/bin/env bash
# The one command a session lent a GPU runs to train a shipped model there
# (docs/DEVICE_TRAINING.md). In the repository root, after
# `python scripts/pack_training_data.py [--profile real]` here:
#
#     run(command="bash scripts/device_train.sh default", carry=["carry"], timeout_s=600)
#
# Usage: bash scripts/device_train.sh default|real [KEY=VALUE ...]   (overrides for hbpn train --set,
# e.g. train.batch=32 data.workers=8)
#
# Steps, inside DEVICE_TRAIN_DEADLINE seconds (default 560; the call's limit is 600):
#   1. GPU and torch facts into $OUT/train.log;
#   2. a short probe run (200 steps, no validation) to measure steps/s;
#   3. the training, its train.steps lowered to (steps/s) x the time left, under
#      `timeout -s INT` so it always stops with a checkpoint before the deadline;
#   4. last.safetensors (EMA weights) as fp16 into $OUT/NAME.safetensors;
#   5. hbpn eval of the new and the starting weights on the packed validation set.
# $OUT gets 7 files (the tool brings back 8 at most): NAME.safetensors, train.log,
# log.jsonl, config.yaml, eval.md, eval.json, eval-init.json.
# Exits non-zero when any step failed; what was made by then is still in $OUT.
#
# Environment (all optional; the tests use them to run on a CPU in seconds):
#   OUT                    results folder (default: out/device, ignored by git)
#   DEVICE_TRAIN_DATA      packed data folder (default: carry/data, the config's own paths)
#   DEVICE_TRAIN_INIT      weights to start from (default: src/hbpn/weights/default.safetensors)
#   DEVICE_TRAIN_WORK      scratch folder for the runs, kept (default: a new /tmp/hbpn-device.*, removed)
#   DEVICE_TRAIN_DEADLINE  seconds for the whole script (default 560)
#   DEVICE_TRAIN_MINUTES   training minutes aimed at (default 7.5; less if the deadline is nearer)
#   DEVICE_TRAIN_MAX_STEPS upper bound on steps (default: the config's train.steps)
#   DEVICE_TRAIN_SMOKE=1   CPU smoke run: fp32, 32-pixel patches, batch 2, no workers, 3 steps
set -uo pipefail

PROFILE=${1:-default}
shift $(( $# > 0 ? 1 : 0 ))  # the rest: KEY=VALUE overrides for hbpn train --set
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
case "$PROFILE" in
  default) CONFIG=configs/device-h100.yaml; EVAL_DATA=Set5; EVAL_SCALE=4 ;;
  real) CONFIG=configs/device-real-h100.yaml; EVAL_DATA=City100-val; EVAL_SCALE=1 ;;
  -h|--help) sed -n '2,33p' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "device_train.sh: error: unknown profile '$PROFILE' (default or real)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-$REPO/out/device}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
if [ -n "${DEVICE_TRAIN_WORK:-}" ]; then
  WORK=$DEVICE_TRAIN_WORK
else  # the runs' checkpoints (state.pt is ~120 MB) are scratch: $OUT has what matters
  WORK=$(mktemp -d /tmp/hbpn-device.XXXXXX) && trap 'rm -rf "$WORK"' EXIT
fi
DEADLINE=${DEVICE_TRAIN_DEADLINE:-560}
MINUTES=${DEVICE_TRAIN_MINUTES:-7.5}
POST=60        # seconds kept for the export and the two evals
STARTUP=45     # seconds the training run spends outside its loop (data, CUDA, last save)
LOG="$OUT/train.log"
DATA=${DEVICE_TRAIN_DATA:-$REPO/carry/data}
INIT=${DEVICE_TRAIN_INIT:-$REPO/src/hbpn/weights/default.safetensors}
fail() { echo "device_train.sh: error: $*" | tee -a "$LOG" >&2; exit 2; }
: > "$LOG"

# -- check everything this machine can check before spending GPU time
[ -f "$INIT" ] || fail "$INIT: no such weights file to start from"
[ -d "$DATA" ] || fail "$DATA: no packed data (python scripts/pack_training_data.py --profile $PROFILE, then carry=[\"carry\"])"
if [ -f "$DATA/MANIFEST.json" ]; then
  grep -q "\"profile\": \"$PROFILE\"" "$DATA/MANIFEST.json" \
    || fail "$DATA was packed for another profile: python scripts/pack_training_data.py --profile $PROFILE"
fi
[ -d "$DATA/$EVAL_DATA" ] || fail "$DATA/$EVAL_DATA: missing from the packed data"
INIT=$(cd "$(dirname "$INIT")" && pwd)/$(basename "$INIT")
DATA=$(cd "$DATA" && pwd)
SETS=("train.init_from=$INIT")
if [ -n "${DEVICE_TRAIN_DATA:-}" ]; then  # else the config's own ../carry/data paths
  if [ "$PROFILE" = default ]; then
    SETS+=("data.hr_dirs=[\"$DATA/train/T91\", \"$DATA/train/BSD200\"]" "val.dir=$DATA/Set5/image_SRF_4")
  else
    SETS+=("data.paired_dir=$DATA/City100-train" "val.dir=$DATA/City100-val")
  fi
fi
PROBE_STEPS=200; PROBE_LOG=50
if [ "${DEVICE_TRAIN_SMOKE:-0}" = 1 ]; then
  SETS+=(train.amp=none train.channels_last=false train.compile=false data.patch=32 data.workers=0
         train.batch=2 val.max_images=2 schedule.warmup=1 train.log_every=1)
  PROBE_STEPS=4; PROBE_LOG=2; DEVICE_TRAIN_MAX_STEPS=${DEVICE_TRAIN_MAX_STEPS:-3}
fi
SETS+=("$@")  # the command line's overrides win

# -- 1. the machine
{
  echo "== device_train.sh $PROFILE, $(date -u +%FT%TZ), config $CONFIG, start $INIT"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import os, torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
    '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', '|', os.cpu_count(), 'cpus')"
} 2>&1 | tee -a "$LOG"

# -- 2. probe: steps per second with this config on this machine
echo "== probe: $PROBE_STEPS steps" | tee -a "$LOG"
"$PY" -m hbpn train --config "$CONFIG" --out "$WORK/probe" --steps "$PROBE_STEPS" --quiet \
  --set "${SETS[@]}" train.log_every=$PROBE_LOG train.ckpt_every=1000000 train.max_minutes=1 val.dir=null \
  2>&1 | tee -a "$LOG"
rc=$?
[ $rc -eq 0 ] || fail "the probe run failed (status $rc): see $LOG"

# -- plan: steps that fit the time left; validation and checkpoints four times
LEFT=$((DEADLINE - SECONDS - POST))
PLAN=$("$PY" - "$WORK/probe/log.jsonl" "$CONFIG" "$MINUTES" "$LEFT" "$STARTUP" \
  "${DEVICE_TRAIN_MAX_STEPS:-0}" <<'EOF'
import json, math, sys
from hbpn.train.config import load_config
log, config, minutes, left, startup, cap = sys.argv[1:7]
rows = [json.loads(line) for line in open(log, encoding="utf-8")]
loss = [r for r in rows if "loss" in r]
if len(loss) >= 2:  # from the first log line on: start-up and cuDNN autotuning are before it
    a, b = loss[0], loss[-1]
    rate = (b["step"] - a["step"]) / max(1e-6, b["elapsed"] - a["elapsed"])
else:  # stopped by its time limit: count the start-up too (a low estimate)
    end = [r for r in rows if r.get("event") == "end"][-1]
    rate = end["step"] / max(1e-6, end["elapsed"])
seconds = max(10.0, min(float(minutes) * 60, float(left) - float(startup)))
cap = int(cap) or load_config(config).train.steps
steps = max(1, min(cap, int(0.9 * rate * seconds)))
print(steps, max(1, math.ceil(steps / 4)), f"{seconds / 60 + 0.5:.2f}")
print(f"probe: {rate:.2f} steps/s; training {steps} steps in about {steps / rate / 60:.1f} of "
      f"{seconds / 60:.1f} minutes")
EOF
)
echo "$PLAN" | tail -n +2 | tee -a "$LOG"
read -r STEPS EVERY MAXMIN <<< "$(echo "$PLAN" | head -n 1)"
[ -n "${STEPS:-}" ] || fail "could not plan the run from the probe's log ($WORK/probe/log.jsonl)"

# -- 3. train; SIGINT at the deadline makes hbpn train write its checkpoint and stop
LIMIT=$((DEADLINE - SECONDS - POST))
[ $LIMIT -gt 30 ] || fail "only ${LIMIT}s left before the deadline: nothing trained"
echo "== train: $STEPS steps, validation and checkpoints every $EVERY, backstop ${MAXMIN} min, kill at ${LIMIT}s" \
  | tee -a "$LOG"
timeout -s INT -k 30 "$LIMIT" "$PY" -m hbpn train --config "$CONFIG" --out "$WORK/run" --steps "$STEPS" --quiet \
  --set "${SETS[@]}" val.every=$EVERY train.ckpt_every=$EVERY train.max_minutes=$MAXMIN 2>&1 | tee -a "$LOG"
TRAIN_RC=$?
[ $TRAIN_RC -eq 0 ] || echo "device_train.sh: training exited with status $TRAIN_RC" | tee -a "$LOG" >&2
for f in log.jsonl config.yaml; do [ -f "$WORK/run/$f" ] && cp "$WORK/run/$f" "$OUT/$f"; done
[ -f "$WORK/run/last.safetensors" ] || fail "no checkpoint was written (training status $TRAIN_RC)"

# -- 4. fp16 weights for the repository
echo "== export $OUT/$PROFILE.safetensors" | tee -a "$LOG"
"$PY" - "$WORK/run/last.safetensors" "$OUT/$PROFILE.safetensors" <<'EOF' 2>&1 | tee -a "$LOG"
import sys
import torch
from hbpn.weights import load_model, save_weights
src, dst = sys.argv[1:3]
model = load_model(src, device="cpu")
bad = [k for k, v in model.state_dict().items() if not torch.isfinite(v.half()).all()]
if bad:
    sys.exit(f"{src}: not finite in fp16: {', '.join(bad[:3])}")
meta = {k: v for k, v in model.metadata.items() if k not in ("format", "config")}
meta["trained_on"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
save_weights(model, dst, dtype=torch.float16, metadata=meta)
back = load_model(dst, device="cpu")
err = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(), back.state_dict().values()))
print(f"wrote {dst}: step {meta.get('step')}, largest fp16 rounding {err:.2e}")
EOF
EXPORT_RC=$?

# -- 5. the packed validation set: the new weights, then the starting ones
EVAL_RC=0
if [ $EXPORT_RC -eq 0 ]; then
  for which in new init; do
    if [ $which = new ]; then model="$OUT/$PROFILE.safetensors"; else model="$INIT"; fi
    echo "== eval ($which): $model on $EVAL_DATA" | tee -a "$LOG"
    "$PY" -m hbpn eval "$model" --data "$EVAL_DATA=$DATA/$EVAL_DATA" --scale $EVAL_SCALE --samples 0 --quiet \
      --out "$WORK/eval-$which" 2>&1 | tee -a "$LOG"
    rc=$?; [ $rc -eq 0 ] || EVAL_RC=$rc
  done
  if [ -f "$WORK/eval-new/report.json" ]; then cp "$WORK/eval-new/report.json" "$OUT/eval.json"; fi
  if [ -f "$WORK/eval-init/report.json" ]; then cp "$WORK/eval-init/report.json" "$OUT/eval-init.json"; fi
  {
    echo "# $PROFILE after the device run ($OUT/$PROFILE.safetensors)"; echo
    cat "$WORK/eval-new/report.md" 2>/dev/null; echo
    echo "# before: the starting weights ($INIT)"; echo
    cat "$WORK/eval-init/report.md" 2>/dev/null
  } > "$OUT/eval.md"
fi

echo "== done in ${SECONDS}s: training $TRAIN_RC, export $EXPORT_RC, eval $EVAL_RC; files in $OUT:" | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
for rc in $TRAIN_RC $EXPORT_RC $EVAL_RC; do [ "$rc" -eq 0 ] || exit "$rc"; done
exit 0
