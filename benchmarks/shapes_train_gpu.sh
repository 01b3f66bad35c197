#!/usr/bin/env bash
# A long shapes-model training run on a lent GPU, as one background process that outlives the device calls.
#
# A device call lasts at most 10 minutes, but a process started in its own session (setsid) runs on until
# the machine goes back (30 minutes held). So the first call starts training in the background and every
# call then watches it for WATCH_SECONDS and brings back its latest snapshot: no recompiling, no restarted
# optimizer between calls. The trainer writes a compact snapshot (parameters and EMA, float32) every
# SAVE_SECONDS; a call on a fresh machine resumes from the snapshot carried in .train_state/state.
#
#   device run, carry [".train_state"]:  MODE=start bash benchmarks/shapes_train_gpu.sh   (fresh or resumed)
#                                       MODE=start RECIPE=varied TOTAL_SECONDS=1700 bash benchmarks/shapes_train_gpu.sh
#   device run, no carry, while warm:    MODE=watch bash benchmarks/shapes_train_gpu.sh
#   after each call, here:  rm -rf .train_state && mkdir .train_state && cp -r <files_at>/state .train_state/
#
# $OUT gets state/ (5 files), train.log and, once the run's TOTAL_SECONDS of training are done,
# weights.safetensors (the EMA weights, float16) and eval.json (adherence over 256 prompts): 8 files at most.
# Env: TOTAL_SECONDS (the whole run's training seconds, over all machines; the learning-rate schedule
# follows it; default 2700), WATCH_SECONDS (default 560), SAVE_SECONDS (default 90), RECIPE (default: run 6's
# recipe, whole 16x32x32 clips from scratch; "varied": run 7's, the bucketed varied-shape mix fine-tuned from
# the shipped weights, see docs/shapes/NOTES.md), TRAIN_ARGS (more arguments of python -m
# jaxvdm.models.shapes.train, after the recipe's; the same on every machine).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. "$ROOT/benchmarks/assemble_package.sh"
OUT=${OUT:-/tmp/shapes_gpu_out}
RUN=/tmp/shapes_gpu
MODE=${MODE:-watch}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUN"

case "${RECIPE:-}" in
  "") RECIPE_ARGS=(--eval-settings "20,4,3;20,6,3;30,8,3") ;;
  varied) RECIPE_ARGS=(--mix varied --init-from "$ROOT/models/shapes/weights.safetensors" --lr 1e-4 --warmup 500
                       --eval-settings "20,4,3" --eval-every 5000 --eval-every-prompts 64) ;;
  *) echo "unknown RECIPE=$RECIPE (leave it unset for run 6's recipe, or RECIPE=varied)"; exit 2 ;;
esac

if [ "$MODE" = start ]; then
  assemble_jaxvdm "$ROOT"
  if [ -f "$ROOT/.train_state/state/state.json" ] && [ ! -f "$RUN/state/state.json" ]; then
    cp -r "$ROOT/.train_state/state" "$RUN/state"
    echo "resuming from the carried state: $(grep -o '"step": [0-9]*' "$RUN/state/state.json" | head -1)"
  fi
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  cd /tmp
  # the compilation cache spares a trainer restarted on this machine its compiles (one per window size)
  # shellcheck disable=SC2086
  JAX_COMPILATION_CACHE_DIR="$RUN/jax_cache" PYTHONPATH=/tmp/jvsrc setsid nohup \
    $PY -m jaxvdm.models.shapes.train --out "$RUN/run" --state "$RUN/state" \
    --compact-state --save-every "${SAVE_SECONDS:-90}" --steps 10000000 --time-limit "${TOTAL_SECONDS:-2700}" \
    --batch-size 128 --dtype bfloat16 --workers 14 --log-every 500 --eval-prompts 256 \
    --long-travel "${RECIPE_ARGS[@]}" ${TRAIN_ARGS:-} >>"$RUN/train.log" 2>&1 < /dev/null &
  echo $! >"$RUN/pid"
  cd "$ROOT"
fi

# watch: until WATCH_SECONDS pass or the trainer ends
end=$((SECONDS + ${WATCH_SECONDS:-560}))
while [ $SECONDS -lt $end ] && kill -0 "$(cat "$RUN/pid" 2>/dev/null)" 2>/dev/null; do sleep 5; done
if ! kill -0 "$(cat "$RUN/pid" 2>/dev/null)" 2>/dev/null; then echo "trainer not running (finished or failed)"; fi

for _ in 1 2 3 4 5; do   # the trainer replaces the state folder atomically; retry a copy that met a rename
  rm -rf "$OUT/state" && cp -r "$RUN/state" "$OUT/state" 2>/dev/null && \
    $PY -c "import json,sys,os; m=json.load(open(sys.argv[1]+'/state.json')); \
assert all(os.path.exists(sys.argv[1]+'/'+f) for fs in m['files'].values() for f in fs)" "$OUT/state" && break
  sleep 3
done
cp "$RUN/train.log" "$OUT/train.log"
[ -f "$RUN/run/eval.json" ] && cp "$RUN/run/eval.json" "$RUN/run/weights.safetensors" "$OUT/"
grep -v "^step\|^eval" "$RUN/train.log" | tail -n 30
grep "^eval" "$RUN/train.log" | tail -n 12
grep "^step" "$RUN/train.log" | tail -n 4
ls -la "$OUT" "$OUT/state"
