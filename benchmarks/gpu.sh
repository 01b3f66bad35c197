#!/usr/bin/env bash
# One GPU call (<= 9 minutes wall): jaxvdm vs diffusers, and the strategy table, on random weights.
#
#   bash benchmarks/gpu.sh                    # on the GPU machine; results in $OUT (default /tmp/bench_out)
#   BENCH_TINY=1 bash benchmarks/gpu.sh       # the same logic on CPU with the tiny model (a check)
#   BENCH_PARTS="b" bash benchmarks/gpu.sh    # only some parts (a, b, c)
#
# Parts, by priority, each under `timeout` so a hang loses only that part (every bench JSON is also
# rewritten after each row, so a killed part keeps the rows it finished):
#   (a) Wan2.1 1.3B, 480x832x81, one CFG step on one device: jaxvdm (cuDNN attention, bf16) vs diffusers'
#       WanTransformer3DModel (SDPA, bf16; torch.compile off and on)   -> a_single_vs_diffusers.json
#   (b) more than one GPU: the strategy table for 1.3B at 480p on all GPUs: cfg, ulysses, lp, cfg+ulysses,
#       ring (per step, vs the single step of (a)), parastep N=#GPUs on a 20-step schedule (vs the exact
#       sampler), dualparal on a long video (161 frames, 10 blocks, vs its serial oracle)  -> b_strategies.json
#   (r) Ring attention: its cuDNN kernel with log-sum-exp checked, then ring and ulysses per step   -> r_ring.json
#   (c) time permitting: Wan2.1 14B, 720x1280x81, per-step time of ulysses+fsdp and lp (one GPU: the
#       single-device step)                                                            -> c_14b.json
#   (f) FP8: the 1.3B CFG step in bf16, fp8_attention and fp8 beside diffusers (eager, torch.compile) -> f_fp8_1p3b.json
#   (g) FP8: the 14B 720p CFG step, bf16 and fp8                                               -> g_fp8_14b.json
#   (h) FP8 fidelity (benchmarks/fp8_fidelity.py): predictions, 50-step latents, shapes adherence -> h_fp8_fidelity.json
# Also writes env.txt (nvidia-smi, versions) and one log per part.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. "$ROOT/benchmarks/assemble_package.sh"
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${BENCH_BUDGET:-530}          # seconds for the whole script
PARTS=${BENCH_PARTS:-a b c}
left() { echo $((BUDGET - ($(date +%s) - START))); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
has_part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

export PYTHONUNBUFFERED=1 JAXVDM_PROGRESS=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1   # never NVLink multicast

if [ "${BENCH_TINY:-0}" = "1" ]; then
  PY=${PYTHON:-python}
  NGPU=${BENCH_TINY_DEVICES:-4}
  DEV="--cpu-devices $NGPU"
  M=tiny; SIZE=64x64; FRAMES=17; BIG=tiny; BIGSIZE=64x64; BIGFRAMES=17
  DT=f32; ATT=xla; TCOMPILE=off; DPFRAMES=25; DPSTEPS=3; E2E=6; REP="--warmup 1 --repeats 2"
  export JAX_PLATFORMS=cpu
else
  PY=${PYTHON:-python3}
  DEV=""
  M=wan2.1-t2v-1.3b; SIZE=480x832; FRAMES=81; BIG=wan2.1-t2v-14b; BIGSIZE=720x1280; BIGFRAMES=81
  DT=bf16; ATT=cudnn; TCOMPILE=off,on; DPFRAMES=${BENCH_DP_FRAMES:-161}; DPSTEPS=10; E2E=${BENCH_E2E:-20}; REP="--warmup 2 --repeats 5"
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
fi

{
  echo "== $(date -u +%FT%TZ) benchmarks/gpu.sh parts: $PARTS tiny=${BENCH_TINY:-0}"
  git -C "$ROOT" log -1 --oneline 2>/dev/null || true
  command -v nvidia-smi >/dev/null && nvidia-smi
  $PY -c "import sys, platform; print('python', sys.version.split()[0], platform.machine())"
} 2>&1 | tee "$OUT/env.txt"

# -- diffusers from the wheels in .whl (no network on the GPU machine; fetch them here first with
#    bash benchmarks/fetch_wheels.sh and carry .whl) ------------------------------------------------------
if ! $PY -c "import diffusers" 2>/dev/null; then
  if ls .whl/diffusers-*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --find-links .whl diffusers 2>&1 | tail -2
    if ! $PY -c "import diffusers" 2>/dev/null; then   # a dependency missing: diffusers alone + what is missing
      $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/diffusers-*.whl 2>&1 | tail -2
      for mod in requests idna urllib3 certifi charset_normalizer importlib_metadata zipp; do
        if ! $PY -c "import $mod" 2>/dev/null; then
          $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/${mod}-*.whl 2>&1 | tail -1
        fi
      done
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
  fi
fi

# -- jaxvdm importable without installing (models/, sharding/, configs/ are jaxvdm.* subpackages) ------
# (run from /tmp: in the repository root, its jaxvdm/ folder would shadow the assembled package)
cd /tmp
if ! $PY -c "import jaxvdm.models" 2>/dev/null; then
  assemble_jaxvdm "$ROOT"
  export PYTHONPATH=/tmp/jvsrc${PYTHONPATH:+:$PYTHONPATH}
fi

{
  $PY - <<'EOF'
import importlib
for m in ("jax", "jaxlib", "flax", "torch", "diffusers", "transformers", "jaxvdm"):
    try:
        print(f"{m} {getattr(importlib.import_module(m), '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"{m} MISSING ({type(e).__name__}: {e})")
EOF
} 2>&1 | tee -a "$OUT/env.txt"

if [ "${BENCH_TINY:-0}" != "1" ]; then
  NGPU=$(timeout 120 $PY -c "import jax; print(jax.device_count())" 2>/dev/null | tail -1)
  NGPU=${NGPU:-1}
fi
echo "devices: $NGPU   time left: $(left) s" | tee -a "$OUT/env.txt"

BENCH="$PY -m jaxvdm.bench"
COMMON="--dtype $DT --attention $ATT $DEV"

# -- (a) one CFG step on one device, jaxvdm vs diffusers -----------------------------------------------
A_JSON="$OUT/a_single_vs_diffusers.json"
if has_part a; then
  T=$(min 330 $(($(left) - 20)))
  echo "== (a) $M ${SIZE}x$FRAMES single step vs diffusers (timeout ${T}s)"
  timeout -k 15 "$T" $BENCH --model $M --size $SIZE --frames $FRAMES --strategies single $COMMON $REP \
    --isolate --unit-timeout 240 --torch --torch-compile $TCOMPILE --torch-script "$ROOT/benchmarks/diffusers_step.py" \
    --json "$A_JSON" 2>&1 | tee "$OUT/a.log"
fi

# -- (b) the strategy table on all devices ---------------------------------------------------------------
if has_part b && [ "$NGPU" -gt 1 ] && [ "$(left)" -gt 60 ]; then
  BASE=""
  if [ -f "$A_JSON" ] && $PY -c "import json,sys; r=json.load(open(sys.argv[1])); \
      sys.exit(0 if any(x.get('name')=='single' and x.get('status')=='ok' for x in r['rows']) else 1)" "$A_JSON"; then
    BASE="--baseline-from $A_JSON"
  fi
  T=$(($(left) - 15))
  STRATS=${BENCH_STRATEGIES:-cfg,ulysses,lp,cfg+ulysses,ring,parastep,dualparal}
  OTHERS=$(echo "$STRATS" | tr ',' '\n' | grep -v '^dualparal' | paste -sd, -)
  DUAL=$(echo "$STRATS" | tr ',' '\n' | grep '^dualparal' | paste -sd, -)
  if [ -n "$OTHERS" ]; then
    echo "== (b) $M ${SIZE}x$FRAMES $OTHERS on $NGPU devices (timeout ${T}s)"
    timeout -k 15 "$T" $BENCH --model $M --size $SIZE --frames $FRAMES $COMMON $BASE \
      --strategies "$OTHERS" --opt overlap=${BENCH_LP_OVERLAP:-0.25} --warmup 1 --repeats 3 \
      --e2e-steps $E2E --e2e-runs 1 --json "$OUT/b_strategies.json" 2>&1 | tee "$OUT/b.log"
  fi
  if [ -n "$DUAL" ] && [ "$(left)" -gt 60 ]; then
    T=$(($(left) - 15))
    echo "== (b) $M ${SIZE}x$DPFRAMES $DUAL on $NGPU devices, $DPSTEPS steps (timeout ${T}s)"
    timeout -k 15 "$T" $BENCH --model $M --size $SIZE --frames $FRAMES $COMMON --no-baseline \
      --strategies "$DUAL" --e2e-frames $DPFRAMES --e2e-steps $DPSTEPS --e2e-runs 1 \
      --json "$OUT/b_dualparal.json" 2>&1 | tee "$OUT/b_dualparal.log"
  fi
fi

# -- (r) Ring attention's cuDNN kernel checked, then ring and ulysses timed beside the single step ---------
if has_part r && [ "${BENCH_TINY:-0}" != "1" ]; then
  timeout -k 10 120 $PY "$ROOT/benchmarks/check_cudnn_lse.py" 2>&1 | tee "$OUT/r_check.log"
fi
if has_part r && [ "${BENCH_TINY:-0}" != "1" ] && [ "${BENCH_R_BENCH:-1}" = "1" ]; then
  T=$(min 200 $(($(left) - 20)))
  echo "== (r) $M ${SIZE}x$FRAMES single, ring, ulysses (timeout ${T}s)"
  timeout -k 15 "$T" $BENCH --model $M --size $SIZE --frames $FRAMES $COMMON \
    --strategies single,ring,ulysses --warmup 1 --repeats 3 --json "$OUT/r_ring.json" 2>&1 | tee "$OUT/r.log"
fi

# -- (c) 14B at 720p, per-step time --------------------------------------------------------------------------
if has_part c && [ "$(left)" -gt 150 ]; then
  if [ "$NGPU" -gt 1 ]; then
    if [ "$NGPU" -ge 4 ]; then CMESH="fsdp=2,sp=$((NGPU / 2))"; else CMESH="fsdp=$NGPU,sp=1"; fi
    CSTRATS=${BENCH_C_STRATEGIES:-ulysses+fsdp,lp}; CBASE="--no-baseline --mesh ${BENCH_C_MESH:-$CMESH}"
  else
    CSTRATS="single"; CBASE=""
  fi
  T=$(($(left) - 10))
  echo "== (c) $BIG ${BIGSIZE}x$BIGFRAMES $CSTRATS (timeout ${T}s)"
  timeout -k 15 "$T" $BENCH --model $BIG --size $BIGSIZE --frames $BIGFRAMES $COMMON $CBASE --opt overlap=${BENCH_LP_OVERLAP:-0.25} \
    --strategies $CSTRATS --warmup 1 --repeats 2 --no-warm-compile --json "$OUT/c_14b.json" 2>&1 | tee "$OUT/c.log"
fi

# -- (f) FP8: Wan 1.3B 480p CFG step in bf16, FP8 attention, FP8 attention + linears, beside diffusers ------
if has_part f && [ "$(left)" -gt 120 ]; then
  T=$(min 330 $(($(left) - 20)))
  echo "== (f) $M ${SIZE}x$FRAMES single step bf16 / fp8_attention / fp8 vs diffusers (timeout ${T}s)"
  timeout -k 15 "$T" $BENCH --model $M --size $SIZE --frames $FRAMES --strategies single $COMMON $REP \
    --precision bf16,fp8_attention,fp8 --torch --torch-compile $TCOMPILE \
    --torch-script "$ROOT/benchmarks/diffusers_step.py" --json "$OUT/f_fp8_1p3b.json" 2>&1 | tee "$OUT/f.log"
fi

# -- (g) FP8: Wan 14B 720p CFG step, bf16 vs fp8 ---------------------------------------------------------------
if has_part g && [ "$(left)" -gt 150 ]; then
  T=$(($(left) - 10))
  echo "== (g) $BIG ${BIGSIZE}x$BIGFRAMES single step bf16 / fp8 (timeout ${T}s)"
  timeout -k 15 "$T" $BENCH --model $BIG --size $BIGSIZE --frames $BIGFRAMES --strategies single $COMMON \
    --precision bf16,fp8 --warmup 1 --repeats 2 --no-warm-compile --json "$OUT/g_fp8_14b.json" 2>&1 | tee "$OUT/g.log"
fi

# -- (h) FP8 fidelity: per-step predictions and 50-step latents (Wan 1.3B), the shipped model's adherence ---
if has_part h && [ "$(left)" -gt 60 ]; then
  T=$(($(left) - 10))
  echo "== (h) FP8 fidelity (timeout ${T}s)"
  timeout -k 15 "$T" $PY "$ROOT/benchmarks/fp8_fidelity.py" --json "$OUT/h_fp8_fidelity.json" 2>&1 | tee "$OUT/h.log"
fi

echo "== done in $(($(date +%s) - START)) s; files in $OUT:"
ls -la "$OUT"
