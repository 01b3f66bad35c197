"""The README's "On TPU" table from the JSON files `benchmarks/tpu_table.sh` wrote.

    python benchmarks/tpu_table_md.py benchmarks/results/tpu-deviceless-2026-12-02
"""

import json
import sys
from pathlib import Path

GIB = 2**30


def rows(folder: Path):
    for f in sorted(folder.glob("*.json")):
        d = json.loads(f.read_text())
        for r in d["results"]:
            t = r["tpu"]
            mem = t["memory"]
            est = t.get("estimate") or {}
            sent = r.get("bytes_per_device")
            yield (d["model"], f"{d['latent'][2]}x{d['latent'][3] * 8}x{d['latent'][4] * 8}", t["target"],
                   r["strategy"], r["mesh"], mem, sent, est)


def main(argv) -> int:
    folder = Path(argv[0])
    print("| model | target | strategy (mesh) | memory per chip | fits | sent per chip per step | "
          "estimated step | estimated 50 steps |")
    print("|---|---|---|---|---|---|---|---|")
    for model, _, target, strategy, mesh, mem, sent, est in rows(folder):
        need = mem.get("gib_per_chip")
        need_s = f"{need:.2f} GiB of {mem['hbm_gib']:.0f}" if need is not None else mem["message"]
        sent_s = "—" if sent is None else f"{sent / GIB:.2f} GiB" if sent >= GIB / 4 else f"{sent / 2**20:.0f} MiB"
        step = f"{est['unit_s']:.2f} s" if est else "—"
        video = f"{est['video_s']:.0f} s" if est else "—"
        print(f"| {model} | {target} | {strategy} ({mesh}) | {need_s} | {'yes' if mem['fits'] else '**no**'} | "
              f"{sent_s} | {step} | {video} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
