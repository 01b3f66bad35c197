"""The ``jaxvdm`` command line.

    jaxvdm generate "a red circle moving left" --output out.mp4 [--mesh lp=4 --strategy lp --cpu-devices 4]
    jaxvdm convert SRC DST            # a Wan transformer checkpoint -> orbax folder (faster loading)
    jaxvdm comm --model wan2.1-t2v-1.3b --frames 81 --size 480x832 --mesh sp=4 --strategy ulysses

Bad input (unknown options, impossible sizes, a mesh larger than the device count, an unwritable output
path) exits with status 2 and a one-line reason before any compute.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

__all__ = ["main"]

_SUFFIXES = (".mp4", ".gif", ".npz")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _strategy_option_flags(parser: argparse.ArgumentParser, shipped: dict) -> list[str]:
    """One group of flags per strategy with options (``--overlap`` under "lp options", ...); an option whose
    default is the model's shows the shipped model's value (preset key ``<strategy>_<option>``)."""
    from jaxvdm.sharding.registry import STRATEGIES

    names = []
    for spec in STRATEGIES.values():
        if not spec.options:
            continue
        group = parser.add_argument_group(f"{spec.name} options (with --strategy {spec.name})")
        for opt, default in spec.options.items():
            if opt in names:
                continue
            names.append(opt)
            kind = type(default) if default is not None else int
            model_value = shipped.get(f"{spec.name}_{opt}")
            shown = repr(default) if default is not None else (
                f"the model's; the shipped model's: {model_value}" if model_value is not None else "the model's")
            group.add_argument(f"--{opt.replace('_', '-')}", dest=f"opt_{opt}", type=kind, default=None,
                               metavar="NAME" if kind is str else ("N" if kind is int else "R"),
                               help=f"{spec.option_help.get(opt, opt)} (default: {shown})")
    return names


def _add_mesh_args(p: argparse.ArgumentParser) -> None:
    from jaxvdm.sharding.registry import available_strategies

    m = p.add_argument_group("devices and strategy")
    m.add_argument("--strategy", default="single", metavar="NAME",
                   help=f"strategy or composition joined with '+': {', '.join(available_strategies())} "
                        "(default: single)")
    m.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                   help="mesh axes the strategy uses, e.g. lp=4 or cfg=2,sp=4 (axes: cfg, sp, fsdp, lp, step, "
                        "stage; default: one device)")
    m.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="simulate N CPU devices, to try multi-device strategies without accelerators")


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("multi-process runs (run the same command on every host; only process 0 writes)")
    d.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="host:port of process 0, the same on every process (default $JAXVDM_COORDINATOR); "
                        "give all three of these or none (one process)")
    d.add_argument("--num-processes", type=int, default=None, metavar="N", help="process count (default $JAXVDM_NUM_PROCESSES)")
    d.add_argument("--process-id", type=int, default=None, metavar="I", help="this process's index (default $JAXVDM_PROCESS_ID)")


def _init_distributed(args) -> None:
    """Joins a multi-process run when any of the three flags or JAXVDM_* variables is given."""
    from jaxvdm.sharding.distributed import ENV_VARS, initialize_distributed

    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(v is None for v in flags) and not any(os.environ.get(v) for v in ENV_VARS.values()):
        return
    initialize_distributed(*flags)


def _shipped_defaults() -> dict:
    """The shipped model's sampling defaults, for the help texts (read from its preset, nothing loaded)."""
    from jaxvdm.models.presets import load_preset

    return load_preset("shapes")["pipeline"]


def _parser() -> tuple[argparse.ArgumentParser, list[str]]:
    parser = argparse.ArgumentParser(prog="jaxvdm", description="Video diffusion transformers in JAX: generate "
                                     "videos on one device or many, convert checkpoints, measure strategies.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = _shipped_defaults()

    g = sub.add_parser("generate", help="generate a video from a prompt",
                       description="Generates a video from a text prompt and saves it. Without --model it uses "
                                   "the small shapes model shipped with jaxvdm (see --list-words for the words it "
                                   "knows); sizes, steps and guidance default to the model's settings.")
    g.add_argument("prompt", nargs="?", help="the text, e.g. \"a red circle moving left on a dark background\"")
    g.add_argument("-o", "--output", default="out.mp4", metavar="FILE",
                   help="output file: .mp4, .gif or .npz (frames, latents and settings) (default: out.mp4)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    g.add_argument("--list-words", action="store_true", help="print the shipped model's words and caption grammar")
    g.add_argument("--model", default=None, metavar="PATH",
                   help="a diffusers Wan2.1 folder, or a retrained shapes .safetensors (default: the shipped model)")
    g.add_argument("--image", default=None, metavar="PATH",
                   help="an image-to-video folder's first frame (PNG/JPEG; resized to the video)")
    g.add_argument("--last-image", default=None, metavar="PATH",
                   help="a first-last-frame (FLF2V) folder's last frame (with --image)")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="a LoRA .safetensors merged into the --model folder's transformer at SCALE (default 1.0); "
                        "repeatable")
    g.add_argument("--lora-2", action="append", default=[], metavar="FILE[:SCALE]",
                   help="a LoRA merged into a Wan2.2 two-expert folder's low-noise expert (transformer_2); repeatable")
    s = g.add_argument_group("sampling (defaults: the model's; the shipped model's in brackets)")
    s.add_argument("--num-frames", type=int, metavar="N", help=f"video frames [{d['num_frames']}]")
    s.add_argument("--height", type=int, metavar="PX", help=f"height in pixels [{d['height']}]")
    s.add_argument("--width", type=int, metavar="PX", help=f"width in pixels [{d['width']}]")
    s.add_argument("--steps", type=int, metavar="N", help=f"denoising steps [{d['steps']}]")
    s.add_argument("--guidance-scale", type=float, metavar="G",
                   help=f"classifier-free guidance; 1 turns it off [{d['guidance_scale']}]")
    s.add_argument("--guidance-scale-2", type=float, metavar="G",
                   help="a Wan2.2 A14B folder's guidance for its low-noise expert [the model's; with "
                        "--guidance-scale: that value]")
    s.add_argument("--negative-prompt", metavar="TEXT", help="the unconditional prompt [the model's; shipped: empty]")
    s.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the initial noise, the same on every mesh (default: 0)")
    s.add_argument("--scheduler", choices=["unipc", "euler"], help=f"flow-matching solver [{d['scheduler']}]")
    s.add_argument("--shift", type=float, metavar="S", help=f"flow shift of the noise schedule [{d['flow_shift']}]")
    s.add_argument("--attention", metavar="NAME",
                   help="local attention kernel: auto, xla, xla_chunked, cudnn, splash (TPU; splash:block_q=N,...) "
                        "(default: auto: cuDNN on GPUs in half precision, splash on TPUs, XLA otherwise)")
    s.add_argument("--precision", choices=["bf16", "fp8_attention", "fp8"], default="bf16",
                   help="bf16 (default); fp8_attention: cuDNN FP8 flash attention for self-attention; fp8: that "
                        "and the blocks' linear layers as FP8 matmuls (NVIDIA Hopper GPUs only; attention whose "
                        "keys are padded, e.g. Ulysses/Ring with tokens the devices do not divide, stays bf16)")
    o = g.add_argument_group("output and diagnostics")
    o.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar of finished steps (default: on when stderr is a terminal)")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    o.add_argument("--profile-dir", metavar="DIR", help="write a jax.profiler trace of the denoising loop here "
                                                        "(summarise it with 'jaxvdm profile DIR')")
    o.add_argument("--dump-hlo", metavar="DIR", help="write the optimised HLO of every compiled step here")
    _add_mesh_args(g)
    _add_distributed_args(g)
    opts = _strategy_option_flags(g, d)

    c = sub.add_parser("convert", help="convert a Wan transformer checkpoint to an orbax folder (faster loading)",
                       description="Reads a Wan transformer checkpoint strictly and writes its converted parameters "
                                   "and config with orbax; load the result with --model DST or load_transformer(DST).")
    c.add_argument("src", metavar="SRC", help="a diffusers transformer/ folder, an original-format Wan folder or "
                                              ".safetensors file (with its config.json beside it)")
    c.add_argument("dst", metavar="DST", help="a new (or empty) folder to write")

    pr = sub.add_parser("profile", help="summarise a profile directory (trace and/or HLO dump)",
                        description="Prints the time per strategy phase and op category of a jax.profiler trace, "
                                    "and the collectives of every dumped HLO.")
    pr.add_argument("directory", metavar="DIR", help="a --profile-dir or --dump-hlo folder of 'jaxvdm generate'")
    pr.add_argument("--json", action="store_true", help="print the summary as JSON")

    from jaxvdm.bench.cli import add_parser as add_bench_parser
    from jaxvdm.sharding.comm.command import add_comm_parser

    add_bench_parser(sub)
    add_comm_parser(sub)
    return parser, opts


def _list_words() -> str:
    """The shipped model's vocabulary, by kind, and its caption grammar."""
    from jaxvdm.models.shapes import data

    lines = ["The shipped shapes model draws one shape per caption:",
             '  "a [size] COLOUR SHAPE MOTION [on a BACKGROUND background]"',
             f"  size:       {', '.join(data.SIZE_WORDS)} (optional; not with growing/shrinking)",
             f"  colour:     {', '.join(data.COLOURS)}",
             f"  shape:      {', '.join(data.SHAPES)}",
             f"  motion:     {', '.join(data.MOTION_PHRASES.values())}",
             f"  background: {', '.join(data.BACKGROUNDS)} (optional)",
             'e.g. "a small red circle moving left on a dark background", "a blue square growing"']
    return "\n".join(lines)


def _check_output(path: str, overwrite: bool) -> Path:
    out = Path(path)
    if out.is_dir():
        raise CLIError(f"output {path!r} is a directory; give a file name such as {path.rstrip('/')}/out.mp4")
    if out.suffix.lower() not in _SUFFIXES:
        raise CLIError(f"output {path!r}: unsupported suffix {out.suffix or '(none)'!r}; use one of {', '.join(_SUFFIXES)}")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise CLIError(f"output {path!r}: directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"output {path!r}: directory {str(parent)!r} is not writable")
    try:  # os.access trusts permission bits (always true for root): try it, as the save will
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise CLIError(f"output {path!r}: cannot write in directory {str(parent)!r} ({e.strerror or e})") from None
    if out.exists() and not overwrite:
        raise CLIError(f"output {path!r} exists; pass --overwrite to replace it")
    return out


def _set_cpu_devices(n: int | None) -> None:
    from jaxvdm.sharding.mesh import simulate_cpu_devices

    try:
        simulate_cpu_devices(n)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _mesh(spec: str | None):
    if not spec:
        return None
    import jax

    from jaxvdm.sharding.mesh import make_mesh, parse_mesh_spec

    axes = parse_mesh_spec(spec)
    need = 1
    for v in axes.values():
        need *= v
    have = len(jax.devices())
    if need > have:
        hint = f" (on a CPU machine add --cpu-devices {need})" if jax.default_backend() == "cpu" else ""
        raise CLIError(f"mesh {spec} needs {need} devices but only {have} are available{hint}")
    return make_mesh(axes)


def _generate(args, opt_names) -> int:
    if args.list_words:
        print(_list_words())
        return 0
    if args.prompt is None:
        raise CLIError("give a prompt, e.g. jaxvdm generate \"a red circle moving left\" (--list-words shows the "
                       "shipped model's words)")
    out = _check_output(args.output, args.overwrite)
    _set_cpu_devices(args.cpu_devices)
    _init_distributed(args)
    import jaxvdm

    mesh = _mesh(args.mesh)
    if args.lora or args.lora_2:
        args.model = _with_loras(args.model, args.lora, args.lora_2)
    options = {k: getattr(args, f"opt_{k}") for k in opt_names if getattr(args, f"opt_{k}") is not None}
    kwargs = dict(model=args.model, image=args.image, last_image=args.last_image, mesh=mesh, strategy=args.strategy, num_frames=args.num_frames, height=args.height,
                  width=args.width, steps=args.steps, guidance_scale=args.guidance_scale,
                  guidance_scale_2=args.guidance_scale_2, negative_prompt=args.negative_prompt, seed=args.seed, scheduler=args.scheduler, shift=args.shift,
                  attention=args.attention, precision=args.precision, progress=args.progress,
                  profile_dir=args.profile_dir, dump_hlo=args.dump_hlo, **options)
    _validate_before_compute(kwargs)
    video = jaxvdm.generate(args.prompt, **kwargs)
    video.save(out, overwrite=args.overwrite)  # re-checked: a file may have appeared while generating
    if not jaxvdm.sharding.is_main_process():
        return 0  # process 0 writes and reports
    s = video.settings
    t = s["timings"]
    print(f"wrote {out} ({video.frames.shape[0]} frames, {video.frames.shape[2]}x{video.frames.shape[1]}, {video.fps} fps)")
    print(f"model {s['model']}, strategy {s['strategy']}, steps {s['steps']}, guidance {s['guidance_scale']}, "
          f"scheduler {s['scheduler']} (shift {s['shift']}), seed {s['seed']}")
    print(f"time: compile {t.get('compile_s', 0):.2f}s, denoise {t['denoise_s']:.2f}s, decode {t['decode_s']:.2f}s, "
          f"total {t['total_s']:.2f}s")
    return 0


def _lora_arg(text: str, target: str) -> tuple[str, float, str]:
    """``FILE[:SCALE]`` -> ``(FILE, SCALE, target)`` (scale 1.0 when absent); raises CLIError for a bad scale
    or a missing file."""
    file, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            file, scale = head, float(tail)
        except ValueError:
            file, scale = text, 1.0  # a colon in the path, no scale
    if not Path(file).is_file():
        raise CLIError(f"--lora {text!r}: no such file {file!r}; give FILE[:SCALE], e.g. --lora style.safetensors:0.8")
    return file, scale, target


def _with_loras(model, loras, loras_2):
    """The --model folder loaded with its --lora / --lora-2 files merged (a Pipeline for generate)."""
    if model is None or not Path(model).is_dir():
        raise CLIError("--lora / --lora-2 merge into a diffusers Wan folder: give it with --model PATH")
    from jaxvdm.models.wan.pipeline import load_pipeline

    entries = [_lora_arg(t, "transformer") for t in loras] + [_lora_arg(t, "transformer_2") for t in loras_2]
    return load_pipeline(model, lora=entries)  # a LoRA that does not fit is a ValueError: main reports it


def _validate_before_compute(kwargs) -> None:
    """Loads the model and checks sizes and strategy (cheap) so errors come before denoising."""
    from jaxvdm.pipeline import get_pipeline
    from jaxvdm.sharding.registry import STRATEGIES, resolve

    pipe = get_pipeline(kwargs["model"])
    d = pipe.defaults
    pipe.latent_shape(*(d[k] if kwargs[k] is None else kwargs[k] for k in ("num_frames", "height", "width")))
    known = {o for s in STRATEGIES.values() for o in s.options}
    resolve(kwargs["strategy"], kwargs["mesh"], {k: v for k, v in kwargs.items() if k in known})
    steps = kwargs["steps"]
    if steps is not None and steps < 1:
        raise CLIError(f"--steps must be at least 1, got {steps}")
    for flag, path in (("--image", kwargs.get("image")), ("--last-image", kwargs.get("last_image"))):
        if path is not None and not Path(path).is_file():
            raise CLIError(f"{flag} {path!r}: no such file; give the path of a PNG or JPEG image")
    if pipe.encode_image is None and (kwargs.get("image") or kwargs.get("last_image")):
        raise CLIError(f"model {pipe.name!r} is text-to-video: --image/--last-image need an image-to-video folder")
    if pipe.encode_image is not None and not kwargs.get("image") and pipe.defaults.get("task") != "ti2v":
        raise CLIError(f"model {pipe.name!r} is image-to-video: give its first frame with --image PATH")


def _convert(args) -> int:
    from jaxvdm.models.wan.transformer import load_transformer, save_converted

    dst = Path(args.dst)
    if dst.exists() and not dst.is_dir():
        raise CLIError(f"destination {args.dst!r} is a file; give a new folder to write the converted checkpoint in")
    if dst.exists() and any(dst.iterdir()):
        raise CLIError(f"destination {args.dst!r} exists and is not empty; give a new folder")
    model = load_transformer(args.src)
    save_converted(model, dst)
    print(f"wrote {dst} (orbax; load with jaxvdm.models.wan.load_transformer({str(dst)!r}))")
    return 0


def _profile(args) -> int:
    import json

    from jaxvdm.profiling import format_summary, summarize

    s = summarize(args.directory)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, opt_names = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args, opt_names)
        if args.command == "convert":
            return _convert(args)
        if args.command == "profile":
            return _profile(args)
        if args.command in ("bench", "comm"):
            from jaxvdm.bench.cli import run as run_bench
            from jaxvdm.sharding.comm.command import run_comm

            args.command_line = shlex.join(["jaxvdm"] + list(sys.argv[1:] if argv is None else argv))
            return run_bench(args) if args.command == "bench" else run_comm(args)
    except CLIError as e:
        print(f"jaxvdm: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, MemoryError) as e:  # OSError: e.g. a permission or disk error while saving
        msg = "; ".join(line.strip() for line in str(e).splitlines()) or type(e).__name__
        print(f"jaxvdm: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxvdm: interrupted (no output written)", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
