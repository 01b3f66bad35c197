"""``jaxvdm bench``: speed, memory, compile time and communication per strategy, split by job.

* :mod:`.spec` -- the model size measured (random weights), its latent and analytic FLOPs;
* :mod:`.units` -- the plan of rows: which strategy on which mesh, against which reference;
* :mod:`.measure` -- measuring one row through its strategy's registry entry;
* :mod:`.isolate` -- one process per row (``--isolate``);
* :mod:`.torch_ref` -- diffusers' transformer on the same step (``--torch``);
* :mod:`.report` -- the JSON document, speedups and the printed table;
* :mod:`.cli` -- the command-line options and the run.

``jaxvdm comm`` (communication of one compiled step on abstract weights) is
:mod:`jaxvdm.sharding.comm.command`.
"""

from jaxvdm.bench.cli import DEFAULT_STRATEGIES, add_parser, run
from jaxvdm.bench.report import SCHEMA, format_table
from jaxvdm.bench.spec import ModelSpec, dit_flops, latent_shape, model_spec
from jaxvdm.bench.units import Unit, mesh_for, plan_units
from jaxvdm.sharding.comm.command import add_comm_parser, run_comm

__all__ = ["add_parser", "run", "add_comm_parser", "run_comm", "main", "dit_flops", "model_spec", "ModelSpec",
           "latent_shape", "mesh_for", "plan_units", "Unit", "SCHEMA", "format_table", "DEFAULT_STRATEGIES"]


def main(argv: list[str] | None = None) -> int:
    """``python -m jaxvdm.bench [bench args]`` (or ``python -m jaxvdm.bench comm [comm args]``)."""
    import argparse
    import shlex
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    if argv[:1] == ["--_unit"]:
        from jaxvdm.bench.isolate import child

        return child(argv[1])
    parser = argparse.ArgumentParser(prog="python -m jaxvdm.bench")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    add_comm_parser(sub)
    if not argv or argv[0] not in ("bench", "comm", "-h", "--help"):
        argv = ["bench"] + argv
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "jaxvdm.bench"] + given)
    try:
        return run_comm(args) if args.command == "comm" else run(args)
    except ValueError as e:
        print(f"jaxvdm bench: error: {e}", file=sys.stderr)
        return 2
