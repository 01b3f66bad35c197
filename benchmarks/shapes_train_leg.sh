#!/usr/bin/env bash
# One leg of a long shapes-model training run on a lent GPU: resumes from .train_state/ (carried), trains
# for LEG_SECONDS, and leaves the compact state and the leg's log in $OUT (the last leg: also eval.json).
#
#   device run, carry [".train_state"]:  bash benchmarks/shapes_train_leg.sh
#   then here:  rm -rf .train_state && mkdir .train_state && cp -r <files_at>/state .train_state/state
#   and call again until state/state.json says "finished": true (the last leg also evaluates adherence);
#   then here, the weights, loss plot and log from the state (no training, no evaluation):
#   python -m jaxvdm.models.shapes.train --out runs/shapes --state .train_state/state --compact-state \
#     --steps 10000000 --time-limit $TOTAL_SECONDS --eval-prompts 0
#
# Env: TOTAL_SECONDS (the whole run's training time, which the learning-rate schedule follows; default
# 3000), LEG_SECONDS (default 450: one call is at most 600 s with start-up and compile), TRAIN_ARGS (more
# arguments of python -m jaxvdm.models.shapes.train, the same on every leg).
# The compact state (float32 parameters and EMA, no optimizer moments: ~39 MiB for the shipped size) is
# what fits both ways: the carried tree is at most 64 MiB, and at most 8 files of 16 MiB come back.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-/tmp/shapes_leg_out}
mkdir -p "$OUT" "$ROOT/.train_state"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

cd /tmp   # the repository root would shadow the assembled package
if ! $PY -c "import jaxvdm.models" 2>/dev/null; then
  rm -rf /tmp/jvsrc && mkdir -p /tmp/jvsrc
  cp -r "$ROOT/jaxvdm" /tmp/jvsrc/ && cp -r "$ROOT/models" /tmp/jvsrc/jaxvdm/models \
    && cp -r "$ROOT/sharding" /tmp/jvsrc/jaxvdm/sharding && cp -r "$ROOT/configs" /tmp/jvsrc/jaxvdm/configs
  export PYTHONPATH=/tmp/jvsrc${PYTHONPATH:+:$PYTHONPATH}
fi

# shellcheck disable=SC2086
$PY -m jaxvdm.models.shapes.train --out /tmp/shapes_run --state "$ROOT/.train_state/state" --compact-state \
  --steps 10000000 --time-limit "${TOTAL_SECONDS:-3000}" --call-time-limit "${LEG_SECONDS:-450}" \
  --batch-size 128 --dtype bfloat16 --workers 14 --log-every 500 --eval-prompts 256 --eval-settings "20,4,3" \
  ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/leg.log" | grep -v "^step" || true

mkdir -p "$OUT/state"
cp "$ROOT"/.train_state/state/* "$OUT/state/"
if [ -f /tmp/shapes_run/eval.json ]; then cp /tmp/shapes_run/eval.json "$OUT/"; fi   # 7 files at most
ls -la "$OUT" "$OUT/state"
