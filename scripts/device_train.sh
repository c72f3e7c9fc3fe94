#!/usr/bin/env bash
# The one command a session lent a GPU runs to train a shipped model there
# (docs/DEVICE_TRAINING.md). In the repository root, after `python
# scripts/pack_training_data.py --hold-weights all` here (real: `--profile real --hold-weights real`):
#
#     run(command="bash scripts/device_train.sh default", carry=["carry"], timeout_s=600)
#
# Usage: bash scripts/device_train.sh default|real [KEY=VALUE ...]   (overrides for hbpn train --set)
#        bash scripts/device_train.sh --rehearse [default|real] [KEY=VALUE ...]   (this CPU, ~4 min)
#
# Steps, inside DEVICE_TRAIN_DEADLINE seconds (default 560; the call's limit is 600):
#   1. GPU and torch facts into $OUT/train.log;
#   2. the throughput probe (scripts/device_probe.py): the bf16 matmul peak, the training
#      step at batch 64-512 and the fastest one compiled; keeps the best samples/s, with
#      the learning rate scaled by sqrt(batch / train.batch), at most 2x;
#   3. the training at that setting, its train.steps lowered to what fits the time left,
#      under `timeout -s INT` so it always stops with a checkpoint before the deadline;
#      the log reports samples/s, TFLOP/s and MFU;
#   4. last.safetensors (EMA weights) as fp16 into $OUT/NAME.safetensors;
#   5. hbpn eval of the new (and, if any, the starting) weights on the packed validation set
#      (default: Kodak24 crops x2-x4; real: Kodak24-mixed crops x4);
#   6. $OUT/report.json: samples_per_s, flop_per_sample, tflops, mfu, steps, val_psnr, the probe.
# $OUT gets at most 8 files (what the tool brings back): NAME.safetensors, train.log, log.jsonl,
# config.yaml, eval.md, eval.json, report.json, and eval-init.json when starting from weights.
# Exits non-zero when any step failed; what was made by then is still in $OUT.
#
# Environment (all optional; the tests use them to run on a CPU in seconds):
#   OUT                    results folder (default: out/device, out/rehearsal with --rehearse)
#   DEVICE_TRAIN_DATA      packed data folder (default: carry/data, the config's own paths)
#   DEVICE_TRAIN_INIT      weights to start from (default: the config's train.init_from)
#   DEVICE_TRAIN_WORK      scratch folder for the runs, kept (default: a new /tmp/hbpn-device.*, removed)
#   DEVICE_TRAIN_DEADLINE  seconds for the whole script (default 560; 270 with --rehearse)
#   DEVICE_TRAIN_MINUTES   training minutes aimed at (default 7; 1.5 with --rehearse)
#   DEVICE_TRAIN_MAX_STEPS upper bound on steps (default: the config's train.steps)
#   DEVICE_TRAIN_BATCHES   batch sizes the probe tries (default 64,128,256,512; 4,8 with --rehearse)
#   DEVICE_TRAIN_SHARED    the datasets folder --rehearse links (default: ../shared/datasets)
#   DEVICE_TRAIN_SMOKE=1   CPU smoke run: fp32, 32-pixel patches, batch 2, 3 steps
set -uo pipefail

REHEARSE=0
if [ "${1:-}" = --rehearse ]; then
  REHEARSE=1; shift
  case "${1:-}" in default|real) PROFILE=$1; shift ;; *) PROFILE=default ;; esac
else
  PROFILE=${1:-default}; shift $(( $# > 0 ? 1 : 0 ))
fi
ARGS=("$@")  # the rest: KEY=VALUE overrides for hbpn train --set (and the probe)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
case "$PROFILE" in
  default) CONFIG=configs/device-h100.yaml; EVAL_DATA=Kodak24; EVAL_SCALE=2,3,4 ;;
  real) CONFIG=configs/device-real-h100.yaml; EVAL_DATA=Kodak24-mixed; EVAL_SCALE=4 ;;
  -h|--help) sed -n '2,37p' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "device_train.sh: error: unknown profile '$PROFILE' (default or real)" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ $REHEARSE = 1 ]; then OUT=${OUT:-$REPO/out/rehearsal}; else OUT=${OUT:-$REPO/out/device}; fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
if [ -n "${DEVICE_TRAIN_WORK:-}" ]; then
  WORK=$DEVICE_TRAIN_WORK; mkdir -p "$WORK" || exit 2
else  # the runs' checkpoints (state.pt is ~120 MB) are scratch: $OUT has what matters
  WORK=$(mktemp -d /tmp/hbpn-device.XXXXXX) && trap 'rm -rf "$WORK"' EXIT
fi
if [ $REHEARSE = 1 ]; then
  DEADLINE=${DEVICE_TRAIN_DEADLINE:-270}; MINUTES=${DEVICE_TRAIN_MINUTES:-1.5}
  BATCHES=${DEVICE_TRAIN_BATCHES:-4,8}; PROBE_SECONDS=2
else
  DEADLINE=${DEVICE_TRAIN_DEADLINE:-560}; MINUTES=${DEVICE_TRAIN_MINUTES:-7}
  BATCHES=${DEVICE_TRAIN_BATCHES:-64,128,256,512}; PROBE_SECONDS=3
fi
POST=60        # seconds kept for the export and the evals
STARTUP=45     # seconds the training run spends outside its loop (data, CUDA, a warm compile, last save)
LOG="$OUT/train.log"
fail() { echo "device_train.sh: error: $*" | tee -a "$LOG" >&2; exit 2; }
: > "$LOG"
rm -f "$OUT/report.json" "$OUT/eval-init.json"
if [ $REHEARSE = 1 ] && [ -z "${DEVICE_TRAIN_DATA:-}" ]; then
  # the packed layout, as links to the datasets: no encoding, the same code from here on
  SHARED=${DEVICE_TRAIN_SHARED:-$REPO/../shared/datasets}
  [ -d "$SHARED/train" ] || fail "$SHARED: no datasets to rehearse with (set DEVICE_TRAIN_SHARED)"
  DEVICE_TRAIN_DATA=$WORK/data
  mkdir -p "$DEVICE_TRAIN_DATA/train" || exit 2
  for d in T91 BSD200 BSDS500-test; do ln -sfn "$(cd "$SHARED/train/$d" && pwd)" "$DEVICE_TRAIN_DATA/train/$d"; done
  if [ "$PROFILE" = default ]; then
    ln -sfn "$(cd "$SHARED/val/Kodak24" && pwd)" "$DEVICE_TRAIN_DATA/Kodak24"
  else  # whole camera folders: the config's ranges keep the withheld pairs out, as with the packed crops
    for c in iPhoneX NikonD5500; do
      [ -d "$SHARED/real/City100-$c-train" ] || fail "$SHARED/real/City100-$c-train: no pairs to rehearse with"
      ln -sfn "$(cd "$SHARED/real/City100-$c-train" && pwd)" "$DEVICE_TRAIN_DATA/City100-$c"
    done
    "$PY" "$REPO/scripts/make_eval_sets.py" "$SHARED" "$WORK/evalsets" --only Kodak24-mixed >> "$LOG" 2>&1 \
      || fail "make_eval_sets.py could not write Kodak24-mixed from $SHARED/val/Kodak24 (see $LOG)"
    ln -sfn "$WORK/evalsets/Kodak24-mixed/image_SRF_4" "$DEVICE_TRAIN_DATA/Kodak24-mixed"
  fi
fi
DATA=${DEVICE_TRAIN_DATA:-$REPO/carry/data}
INIT=${DEVICE_TRAIN_INIT:-}

# -- check everything this machine can check before spending GPU time
[ -z "$INIT" ] || [ -f "$INIT" ] || fail "$INIT: no such weights file to start from"
[ -d "$DATA" ] || fail "$DATA: no packed data (python scripts/pack_training_data.py --profile $PROFILE, then carry=[\"carry\"])"
if [ -f "$DATA/MANIFEST.json" ]; then
  grep -q "\"profile\": \"$PROFILE\"" "$DATA/MANIFEST.json" \
    || fail "$DATA was packed for another profile: python scripts/pack_training_data.py --profile $PROFILE"
fi
[ -d "$DATA/$EVAL_DATA" ] || fail "$DATA/$EVAL_DATA: missing from the packed data"
DATA=$(cd "$DATA" && pwd)
SETS=()
if [ -n "$INIT" ]; then
  INIT=$(cd "$(dirname "$INIT")" && pwd)/$(basename "$INIT")
  SETS+=("train.init_from=$INIT" "model.preset=null")
fi
START=$INIT  # the weights the run starts from (the config's train.init_from when INIT is empty), scored too
if [ -n "${DEVICE_TRAIN_DATA:-}" ]; then  # else the config's own ../carry/data paths
  if [ "$PROFILE" = default ]; then
    SETS+=("data.hr_dirs=[\"$DATA/train/T91\", \"$DATA/train/BSD200\", \"$DATA/train/BSDS500-test\"]"
           "val.dir=$DATA/Kodak24")
  else  # the config's pair list, each folder taken from DATA
    PAIRS=$("$PY" -c "import json, sys; from hbpn.train.config import load_config
print(json.dumps([{'dir': sys.argv[2] + '/' + p.dir.rstrip('/').rsplit('/', 1)[-1], **({'range': list(p.range)} if p.range else {})}
                  for p in load_config(sys.argv[1]).data.pairs]))" "$CONFIG" "$DATA") \
      || fail "$CONFIG: cannot read its data.pairs"
    SETS+=("data.hr_dirs=[\"$DATA/train/T91\", \"$DATA/train/BSD200\", \"$DATA/train/BSDS500-test\"]"
           "data.pairs=$PAIRS" "val.dir=$DATA/Kodak24-mixed")
  fi
fi
EVAL_LIMIT=()
if [ "${DEVICE_TRAIN_SMOKE:-0}" = 1 ]; then
  SETS+=(train.amp=none train.channels_last=false data.patch=32 data.workers=0
         val.max_images=2 schedule.warmup=1 train.log_every=1)
  BATCHES=${DEVICE_TRAIN_BATCHES:-2}; PROBE_SECONDS=0.2; DEVICE_TRAIN_MAX_STEPS=${DEVICE_TRAIN_MAX_STEPS:-3}
  EVAL_LIMIT=(--limit 2)
elif [ $REHEARSE = 1 ]; then  # this CPU: no bf16 units assumed, small patches, a few validation images
  SETS+=(train.amp=none train.channels_last=false data.patch=64 val.max_images=4 schedule.warmup=20
         train.log_every=10)
  EVAL_SCALE=4; EVAL_LIMIT=(--limit 4)
fi
# -- 1. the machine
{
  echo "== device_train.sh $PROFILE, $(date -u +%FT%TZ), config $CONFIG, start $INIT"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import os, torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
    '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', '|', os.cpu_count(), 'cpus')"
} 2>&1 | tee -a "$LOG"

# -- 2. probe: samples per second at each batch size (and compiled), on this machine
[ -n "$INIT" ] || {  # the config's own start weights, if any, must be here (not held out of the transfer)
  CFG_INIT=$("$PY" -c "import sys; from hbpn.train.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).train.init_from or '')" "$CONFIG" "${SETS[@]}" "${ARGS[@]}") \
    || fail "$CONFIG: cannot read the config (see above)"
  [ -z "$CFG_INIT" ] || [ -f "$CFG_INIT" ] \
    || fail "$CFG_INIT: the config's train.init_from is missing (held out? set DEVICE_TRAIN_INIT)"
  START=$CFG_INIT
}
PROBE_LIMIT=${DEVICE_TRAIN_PROBE_LIMIT:-200}
probe() {  # device_probe.py with extra options "$@", at most PROBE_LIMIT seconds
  timeout -s INT -k 10 "$PROBE_LIMIT" "$PY" "$REPO/scripts/device_probe.py" --config "$CONFIG" \
    --out "$WORK/probe.json" --batches "$BATCHES" --seconds "$PROBE_SECONDS" "$@" 2>&1 | tee -a "$LOG"
  return "${PIPESTATUS[0]}"
}
echo "== probe: batches $BATCHES" | tee -a "$LOG"
probe --set "${SETS[@]}" "${ARGS[@]}"; rc=$?
if [ $rc -eq 124 ]; then  # out of time, most likely compiling: the eager sizes only
  echo "== probe ran past ${PROBE_LIMIT}s: again without the compiled candidate" | tee -a "$LOG"
  probe --compile no --set "${SETS[@]}" "${ARGS[@]}"; rc=$?
fi
PICKED=0; for kv in "${SETS[@]}" "${ARGS[@]}"; do [[ $kv == data.pipeline=* ]] && PICKED=1; done
if [ $rc -ne 0 ] && [ $PICKED = 0 ]; then
  # never tried on a GPU before this loan: fall back to the loader path rather than lose the call
  echo "== probe failed (status $rc) on the device data path: again with data.pipeline=loader" | tee -a "$LOG"
  SETS+=(data.pipeline=loader "data.workers=$(( $(nproc) > 4 ? $(nproc) - 4 : 0 ))")
  probe --compile no --set "${SETS[@]}" "${ARGS[@]}"; rc=$?
fi
[ $rc -eq 0 ] || fail "the probe failed (status $rc): see $LOG"

# -- plan: the probe's choice, and the steps that fit the time left; validation and checkpoints four times
LEFT=$((DEADLINE - SECONDS - POST))
PLAN=$("$PY" - "$WORK/probe.json" "$CONFIG" "$MINUTES" "$LEFT" "$STARTUP" "${DEVICE_TRAIN_MAX_STEPS:-0}" <<'EOF'
import json, math, sys
from hbpn.train.config import load_config
probe, config, minutes, left, startup, cap = sys.argv[1:7]
report = json.load(open(probe, encoding="utf-8"))
c = report["choice"]
rate = c["samples_per_s"] / c["batch"]  # steps per second
seconds = max(10.0, min(float(minutes) * 60, float(left) - float(startup)))
cap = int(cap) or load_config(config).train.steps
steps = max(1, min(cap, int(0.9 * rate * seconds)))
peak = report["peak_flops"]
print(steps, max(1, math.ceil(steps / 4)), f"{seconds / 60 + 0.5:.2f}", c["batch"], f"{c['lr']:.6g}",
      str(bool(c["compile"])).lower(), peak if peak else "null")
print(f"plan: batch {c['batch']} {'compiled' if c['compile'] else 'eager'}, {rate:.2f} steps/s; "
      f"training {steps} steps in about {steps / rate / 60:.1f} of {seconds / 60:.1f} minutes")
EOF
)
echo "$PLAN" | tail -n +2 | tee -a "$LOG"
read -r STEPS EVERY MAXMIN BATCH LR COMPILE PEAK <<< "$(echo "$PLAN" | head -n 1)"
[ -n "${PEAK:-}" ] || fail "could not plan the run from the probe ($WORK/probe.json)"
SETS+=("train.batch=$BATCH" "optim.lr=$LR" "train.compile=$COMPILE" "train.peak_flops=$PEAK")
SETS+=("${ARGS[@]}")  # the command line's overrides win

# -- 3. train; SIGINT at the deadline makes hbpn train write its checkpoint and stop
LIMIT=$((DEADLINE - SECONDS - POST))
[ $LIMIT -gt 30 ] || fail "only ${LIMIT}s left before the deadline: nothing trained"
# the loop's own clock starts after start-up: stop it STARTUP + 15 s before the kill, so the final
# validation and checkpoint happen in time and SIGINT is only the backstop
MAXMIN=$("$PY" -c "import sys; print(f'{max(0.25, min(float(sys.argv[1]), (int(sys.argv[2]) - int(sys.argv[3]) - 15) / 60)):.2f}')" \
  "$MAXMIN" "$LIMIT" "$STARTUP")
echo "== train: $STEPS steps, validation and checkpoints every $EVERY, backstop ${MAXMIN} min, kill at ${LIMIT}s" \
  | tee -a "$LOG"
timeout -s INT -k 30 "$LIMIT" "$PY" -m hbpn train --config "$CONFIG" --out "$WORK/run" --steps "$STEPS" --quiet \
  --set "${SETS[@]}" val.every=$EVERY train.ckpt_every=$EVERY train.max_minutes=$MAXMIN 2>&1 | tee -a "$LOG"
TRAIN_RC=$?
if [ $TRAIN_RC -eq 124 ] && [ -f "$WORK/run/last.safetensors" ]; then
  TRAIN_RC=3  # stopped by the deadline with a checkpoint (124 would read as the tool's own timeout)
fi
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
dtype = torch.float16
if bad:  # keep the run anyway: bf16 has fp32's range at fp16's size
    print(f"{src}: not finite in fp16 ({', '.join(bad[:3])}): writing bf16")
    dtype = torch.bfloat16
meta = {k: v for k, v in model.metadata.items() if k not in ("format", "config")}
meta["trained_on"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
save_weights(model, dst, dtype=dtype, metadata=meta)
back = load_model(dst, device="cpu")
err = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(), back.state_dict().values()))
print(f"wrote {dst}: step {meta.get('step')}, largest {str(dtype)[6:]} rounding {err:.2e}")
EOF
EXPORT_RC=$?

# -- 5. the packed validation set: the new weights, then the starting ones (if any)
EVAL_RC=0
if [ $EXPORT_RC -eq 0 ]; then
  for which in new init; do
    if [ $which = new ]; then model="$OUT/$PROFILE.safetensors"; else model="$START"; fi
    [ -n "$model" ] || continue
    echo "== eval ($which): $model on $EVAL_DATA" | tee -a "$LOG"
    "$PY" -m hbpn eval "$model" --data "$EVAL_DATA=$DATA/$EVAL_DATA" --scale $EVAL_SCALE --samples 0 --quiet \
      "${EVAL_LIMIT[@]}" --out "$WORK/eval-$which" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}; [ $rc -eq 0 ] || EVAL_RC=$rc
  done
  if [ -f "$WORK/eval-new/report.json" ]; then cp "$WORK/eval-new/report.json" "$OUT/eval.json"; fi
  if [ -f "$WORK/eval-init/report.json" ]; then cp "$WORK/eval-init/report.json" "$OUT/eval-init.json"; fi
  {
    echo "# $PROFILE after the device run ($OUT/$PROFILE.safetensors)"; echo
    cat "$WORK/eval-new/report.md" 2>/dev/null; echo
    if [ -n "$START" ]; then
      echo "# before: the starting weights ($START)"; echo
      cat "$WORK/eval-init/report.md" 2>/dev/null
    fi
  } > "$OUT/eval.md"
fi

# -- 6. report.json: what the call achieved, in numbers
"$PY" - "$WORK/probe.json" "$OUT/log.jsonl" "$OUT/report.json" "$PROFILE" "$SECONDS" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from hbpn.io.files import atomic_path
probe_path, log_path, out, profile, seconds = sys.argv[1:6]
probe = json.load(open(probe_path, encoding="utf-8"))
rows = [json.loads(line) for line in open(log_path, encoding="utf-8")]
train = [r for r in rows if "samples_per_s" in r][1:] or [r for r in rows if "samples_per_s" in r]  # past warm-up
val = [r["val_psnr"] for r in rows if "val_psnr" in r]
end = [r for r in rows if r.get("event") == "end"]
rate = sum(r["samples_per_s"] for r in train) / len(train) if train else None
fps, peak = probe["flop_per_sample"], probe["peak_flops"]
report = {
    "profile": profile,
    "device": probe["device"],
    "batch": probe["choice"]["batch"],
    "compiled": probe["choice"]["compile"],
    "lr": probe["choice"]["lr"],
    "samples_per_s": rate,
    "flop_per_sample": fps,
    "tflops": rate * fps / 1e12 if rate else None,
    "peak_flops": peak,
    "mfu": rate * fps / peak if rate and peak else None,
    "steps": end[-1]["step"] if end else max((r.get("step", 0) for r in rows), default=0),
    "stop": end[-1]["reason"] if end else None,
    "val_psnr": max(val) if val else None,
    "val_psnr_last": val[-1] if val else None,
    "seconds": int(seconds),
    "probe": probe["candidates"],
}
with atomic_path(out) as tmp:
    tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
mfu = f", MFU {100 * report['mfu']:.1f} %" if report["mfu"] is not None else ""
tf = f"{report['tflops']:.3f}" if report["tflops"] is not None else "?"
print(f"report: {report['steps']} steps at batch {report['batch']}, {rate or 0:.1f} samples/s, {tf} TFLOP/s{mfu}, "
      f"best val PSNR {report['val_psnr']}")
EOF
REPORT_RC=${PIPESTATUS[0]}

echo "== done in ${SECONDS}s: training $TRAIN_RC, export $EXPORT_RC, eval $EVAL_RC, report $REPORT_RC; files in $OUT:" | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
for rc in $TRAIN_RC $EXPORT_RC $EVAL_RC $REPORT_RC; do [ "$rc" -eq 0 ] || exit "$rc"; done
exit 0
