#!/usr/bin/env bash
# The "On TPU" table of the README: Wan's denoising step compiled for TPU topologies on a CPU host
# (deviceless: abstract weights, libtpu's compiler, nothing allocated; `pip install -e '.[tpu]'`).
# Every row is `jaxvdm comm --target`: per-chip memory from the compiled memory analysis against the chip's
# HBM, FLOPs and bytes from the cost analysis, the collectives of the TPU HLO, and a roofline estimate.
#   bash benchmarks/tpu_table.sh [OUT_DIR]      # 23 compiles of 50-130 s each on a busy 2-core host
#   python benchmarks/tpu_table_md.py OUT_DIR   # the README table from the JSON
set -euo pipefail
OUT=${1:-benchmarks/results/tpu-deviceless-$(date +%F)}
mkdir -p "$OUT"
run() {  # NAME ARGS...   (a row whose JSON exists is kept: rerun after deleting it)
  local name=$1; shift
  [ -s "$OUT/$name.json" ] && { echo "kept $OUT/$name.json"; return; }
  echo "+ jaxvdm comm $*" | tee "$OUT/$name.log"
  JAX_PLATFORMS=cpu jaxvdm comm "$@" --json "$OUT/$name.json" 2>&1 | tee -a "$OUT/$name.log"
}
for t in v5e-8 v6e-8 v5p-8; do
  run "wan1.3b-480p-$t" --model wan2.1-t2v-1.3b --frames 81 --size 480x832 --target "$t" \
    --strategy cfg+ulysses,ulysses,lp,fsdp
done
run "wan1.3b-480p-v5e-4" --model wan2.1-t2v-1.3b --frames 81 --size 480x832 --target v5e-4 --strategy cfg+ulysses,lp
for t in v5e-8 v6e-8 v5p-8 v6e-16; do
  run "wan14b-720p-$t" --model wan2.1-t2v-14b --frames 81 --size 720x1280 --target "$t" \
    --mesh fsdp=4 --strategy fsdp+ulysses,ulysses,cfg+ulysses   # fsdp=4 x sp (the rest of the chips)
done
