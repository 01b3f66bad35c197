#!/usr/bin/env bash
# benchmarks/fidelity.py split over 4 processes of 4 cores each (a 16-core host), in the background, so that
# it outlives a 10-minute device call; each call then watches it for WATCH_SECONDS and brings back what is done.
#
#   MODE=start bash benchmarks/fidelity_split.sh     # first call: starts the 4 parts, then watches
#   MODE=watch bash benchmarks/fidelity_split.sh     # later calls on the same machine
#   here: python benchmarks/fidelity.py --merge <files>/part*.json --json benchmarks/results/cpu16-2026-11-23/fidelity_cpu.json
#
# The parts run on the CPU (JAX_PLATFORMS=cpu, 8 simulated devices each). Env: FIDELITY_ARGS (default
# "--prompts 4 --random-prompts 8"), WATCH_SECONDS (default 570), OUT (default /tmp/fidelity_out).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. "$ROOT/benchmarks/assemble_package.sh"
OUT=${OUT:-/tmp/fidelity_out}
RUN=/tmp/fidelity_split
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$RUN"
PARTS=('^(cfg|ulysses|ring|cfg\+ulysses|fsdp)$' '^lp' '^parastep' 'dualparal|reuse')

if [ "${MODE:-watch}" = start ]; then
  assemble_jaxvdm "$ROOT"
  cd "$RUN"
  for i in 0 1 2 3; do
    PIN=""; command -v taskset >/dev/null && PIN="taskset -c $((4 * i))-$((4 * i + 3))"
    # shellcheck disable=SC2086
    JAX_PLATFORMS=cpu JAXVDM_COMPILATION_CACHE=0 PYTHONPATH=/tmp/jvsrc PYTHONUNBUFFERED=1 setsid nohup \
      $PIN $PY "$ROOT/benchmarks/fidelity.py" ${FIDELITY_ARGS:---prompts 4 --random-prompts 8} \
      --only "${PARTS[$i]}" --json "$RUN/part$i.json" >"$RUN/part$i.log" 2>&1 </dev/null &
    echo $! >"$RUN/pid$i"
  done
  cd "$ROOT"
fi

running() { for i in 0 1 2 3; do kill -0 "$(cat "$RUN/pid$i" 2>/dev/null)" 2>/dev/null && return 0; done; return 1; }
end=$((SECONDS + ${WATCH_SECONDS:-570}))
while [ $SECONDS -lt $end ] && running; do sleep 5; done
running && echo "still running" || echo "all parts ended"
cp "$RUN"/part*.log "$OUT/" 2>/dev/null
cp "$RUN"/part*.json "$OUT/" 2>/dev/null
for i in 0 1 2 3; do echo "== part $i: $(grep -c '^{' "$RUN/part$i.log") rows"; tail -n 2 "$RUN/part$i.log" | cut -c1-300; done
