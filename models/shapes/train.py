"""Trains the shipped shapes model.

    python -m jaxvdm.models.shapes.train --out runs/shapes --steps 6000 --batch-size 128
    python -m jaxvdm.models.shapes.train --out runs/varied --mix varied --init-from models/shapes/weights.safetensors

Rectified-flow objective matching the Wan samplers: ``x_σ = (1-σ)·x0 + σ·ε`` with σ uniform and shifted like
the samplers' schedules (``--sigma-shift``), the transformer (timestep ``1000·σ``) predicts the velocity ``ε - x0``. AdamW with warm-up
and cosine decay, gradient clipping, caption dropout (the empty caption, i.e. all-zero text, is the
unconditional prompt for guidance), EMA weights. Data are generated on the fly by
:mod:`jaxvdm.models.shapes.data` in worker processes. Everything is reproducible from ``--seed``.

Data mix (``--mix``, :mod:`jaxvdm.models.shapes.buckets`): ``default`` trains whole clips of ``--frames`` x
``--size`` x ``--size`` (the shipped model's data); ``varied`` trains the bucketed varied-shape mix (clips of
4 to 32 frames and 16 to 48 pixels a side, non-square ones, and windows of longer and larger clips as Latent
Parallelism and DualParal show them to the model); ``smoke`` is a tiny mix for CPU tests. Every batch is one
bucket, drawn from ``(seed, step)``; its clips are rendered on the accelerator at the bucket's size and the
model is called with the batch's RoPE offset. ``--two-shapes P`` makes a share P of the clips two-shape ones
(the word encoder then reads :data:`data.MAX_LEN_TWO_SHAPES` words). ``--init-from FILE`` starts from trained
weights (e.g. the shipped ones) with a fresh optimizer and EMA; the learning rate warms up over ``--warmup``.

Writes into ``--out``: orbax checkpoints (``ckpt/``), ``loss.png``, ``train_log.json``, the EMA weights as
``weights.safetensors`` (float16; copy it to ``models/shapes/weights.safetensors`` to ship it) and
``eval.json`` (prompt adherence of generated clips under the evaluator, for a few guidance settings; with a
bucketed mix, per view of :data:`buckets.EVAL_VIEWS`: the default clip, 8x32x32, 32x32x32, 16x48x32, and
LP and DualParal windows). ``--eval-every N`` also evaluates the EMA every N steps (into the log).

Runs longer than one sitting (one device call lasts at most 10 minutes) go in legs: ``--state DIR`` resumes
from the state in ``DIR`` when there is one and writes the state there when the leg ends; ``--call-steps``
and ``--call-time-limit`` end a leg early, while ``--steps`` and ``--time-limit`` stay the whole run's
budget (the learning-rate schedule and the data stream follow the whole run, so legs resume exactly).
``--compact-state`` leaves the optimizer moments out of the state (see
:mod:`jaxvdm.models.shapes.train_state`).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import math
import multiprocessing as mp
import os
import queue
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxvdm.models.shapes import buckets, data, device_render
from jaxvdm.models.shapes.model import init_from, init_model, save_model
from jaxvdm.models.wan.transformer import WanConfig

__all__ = ["main", "train", "pack_batch"]


def pack_batch(b: buckets.BucketBatch, two_shapes: float = 0.0):
    """A drawn batch as the training step takes it: ``(spec arrays, token ids [B, L] int32, view, window)``.
    The view holds the window's whole clip and start (float32 [3], for rendering) and the RoPE ``offset``
    (int32 [3], tokens); ``window`` is its ``(f, h, w)`` (static: one compile per size)."""
    max_len = data.MAX_LEN_TWO_SHAPES if two_shapes else data.MAX_LEN
    ids = data.tokenize_batch(b.captions, max_len)
    view = {"whole": np.asarray(b.bucket.whole, np.float32), "start": np.asarray(b.window.start, np.float32),
            "offset": np.asarray(b.offset, np.int32)}
    arrays = device_render.spec_arrays(b.specs, max_objects=2 if two_shapes else 1)
    return arrays, np.asarray(ids, np.int32), view, tuple(b.window.size)


def _batch_worker(args):
    """Batch ``step`` of a run, packed (:func:`pack_batch`): the specs of ``buckets.batch_for_step(seed, step,
    ...)``, rendered later on the accelerator (:mod:`jaxvdm.models.shapes.device_render`)."""
    seed, step, batch, mix_name, frames, size, long_travel, two_shapes = args
    mix = buckets.get_mix(mix_name, frames, size)
    b = buckets.batch_for_step(seed, step, mix, batch, long_travel=long_travel, two_shapes=two_shapes)
    return pack_batch(b, two_shapes)


class Batches:
    """Prefetches training batches (spec arrays, token ids, view, window size) from worker processes; batch
    ``i`` comes from seed ``(seed, i)``."""

    def __init__(self, seed: int, batch: int, frames: int, size: int, workers: int, prefetch: int = 16,
                 long_travel: bool = False, start: int = 0, mix: str = "default", two_shapes: float = 0.0):
        self.seed, self.batch, self.frames, self.size, self.start = seed, batch, frames, size, start
        self.long_travel, self.mix, self.two_shapes = long_travel, mix, two_shapes
        self.q: queue.Queue = queue.Queue(maxsize=prefetch)
        self.workers = workers
        self._stop = False
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _args(self, i: int):
        return (self.seed, i, self.batch, self.mix, self.frames, self.size, self.long_travel, self.two_shapes)

    def _fill(self):
        # At most ``workers + prefetch`` batches exist at once: a task is submitted only when a finished
        # batch goes into the (bounded) queue, so fast workers never pile up results in memory.
        if self.workers > 1:
            ctx = mp.get_context("spawn")
            with ctx.Pool(self.workers) as pool:
                pending = collections.deque(pool.apply_async(_batch_worker, (self._args(i),))
                                            for i in range(self.start, self.start + self.workers))
                i = self.start + self.workers
                while not self._stop:
                    item = pending.popleft().get()
                    self.q.put(item)
                    pending.append(pool.apply_async(_batch_worker, (self._args(i),)))
                    i += 1
        else:
            i = self.start
            while not self._stop:
                self.q.put(_batch_worker(self._args(i)))
                i += 1

    def next(self):
        return self.q.get()

    def close(self):
        self._stop = True


def learning_rate(lr: float, warmup: int, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5% over ``progress`` in [0, 1].

    ``progress`` is the fraction of the step budget, or of the time budget with ``--time-limit``, so a
    run that is stopped by its time limit still ends its decay.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def sample_sigma(key, n: int, shift: float) -> jax.Array:
    """Noise levels for training: ``u ~ U(0, 1)`` shifted like the samplers' schedules,
    ``σ = s·u / (1 + (s-1)·u)``. With ``s > 1`` more of the batch sits at high noise, where a clip's
    layout and motion are decided (a logit-normal σ almost never trains σ > 0.95)."""
    u = jax.random.uniform(key, (n,), minval=1e-3, maxval=1.0)
    return shift * u / (1.0 + (shift - 1.0) * u)


def _optimizer(lr: float):
    """AdamW (learning rate set every step through ``inject_hyperparams``) after global-norm clipping."""
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.inject_hyperparams(optax.adamw)(learning_rate=lr, b1=0.9, b2=0.99, weight_decay=0.01))


def _global_norm(tree) -> jax.Array:
    """The L2 norm of all leaves of ``tree`` taken together: a float32 scalar."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


@functools.lru_cache(maxsize=8)
def _train_step(graphdef, lr: float, sigma_shift: float, caption_dropout: float, ema_decay: float):
    """The jitted training step for one model structure and objective; cached, so that the legs of a run
    in one process (and repeated calls of :func:`train`) compile it once per window size.

    ``train_step(params, opt_state, ema, specs, ids, view, key, step, lr, window=(f, h, w))`` renders the
    batch's clips (``window`` static; the view's ``whole`` and ``start`` traced) and calls the model with the
    view's RoPE ``offset`` (traced), so every window position of one size shares one compile."""
    tx = _optimizer(lr)

    def loss_fn(params, specs, ids, view, key, window):
        m = nnx.merge(graphdef, params)
        f, h, w = window
        clips = device_render.render(specs, f, height=h, width=w, whole=view["whole"], start=view["start"])
        x0 = jnp.transpose(clips, (0, 4, 1, 2, 3))
        k1, k2, k3 = jax.random.split(key, 3)
        b = x0.shape[0]
        sigma = sample_sigma(k1, b, sigma_shift)
        eps = jax.random.normal(k2, x0.shape)
        s = sigma[:, None, None, None, None]
        xt = (1 - s) * x0 + s * eps
        drop = jax.random.uniform(k3, (b,)) < caption_dropout
        ids = jnp.where(drop[:, None], data.PAD_ID, ids)
        v = m.transformer(xt, sigma * 1000.0, m.text(ids), offset=view["offset"])
        return jnp.mean(jnp.square(v - (eps - x0)))

    def train_step(params, opt_state, ema, specs, ids, view, key, step, lr, window):
        opt_state[1].hyperparams["learning_rate"] = lr
        loss, grads = jax.value_and_grad(loss_fn)(params, specs, ids, view, key, window)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        return params, opt_state, ema, loss, _global_norm(grads)

    return jax.jit(train_step, static_argnames=("window",))


def _resolve_data(args) -> tuple[int, int]:
    """``(frames, size)`` of the default mix; refuses them with a bucketed mix, whose sizes are its buckets'."""
    if args.mix != "default" and (args.frames is not None or args.size is not None):
        raise SystemExit(f"--frames/--size set the clip of --mix default; the {args.mix!r} mix trains the sizes of "
                         f"its buckets (jaxvdm.models.shapes.buckets): leave them out")
    if args.mix not in buckets.MIXES:
        raise SystemExit(f"unknown --mix {args.mix!r}; choose from {sorted(buckets.MIXES)}")
    if not 0.0 <= args.two_shapes <= 1.0:
        raise SystemExit(f"--two-shapes is a share of the clips in [0, 1], got {args.two_shapes}")
    if args.mix == "default" and args.two_shapes:
        raise SystemExit("--two-shapes trains a bucketed mix: use --mix varied (or smoke)")
    return args.frames or 16, args.size or 32


def _new_model(args, dtype, max_len: int):
    """The model to train: fresh (``--small`` or the preset) or the weights of ``--init-from``."""
    if args.init_from:
        if args.small:
            raise SystemExit("--init-from takes the architecture of its weights file; leave out --small")
        return init_from(args.init_from, args.seed, dtype=dtype, max_len=max_len)
    config = None
    if args.small:  # a very small configuration for CPU smoke tests
        config = WanConfig(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16, in_channels=3,
                           out_channels=3, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2)
    return init_model(args.seed, dtype=dtype, config=config, max_len=max_len)


def train(args) -> dict:
    from jaxvdm.models.shapes import train_state

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    frames, size = _resolve_data(args)
    max_len = data.MAX_LEN_TWO_SHAPES if args.two_shapes else data.MAX_LEN
    model = _new_model(args, dtype, max_len)
    graphdef, params = nnx.split(model, nnx.Param)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    tx = _optimizer(args.lr)
    opt_state = tx.init(params)
    ema = jax.tree.map(jnp.copy, params)
    key = jax.random.key(args.seed)
    log = {"step": [], "loss": [], "grad_norm": [], "time": []}
    start, seconds_before, rewarm_from, compile_s = 0, 0.0, None, 0.0
    losses = []  # losses since the last log line
    if train_state.has_state(args.state):
        trees, meta = train_state.load_state(args.state, {"params": params, "ema": ema, "adam": opt_state})
        if meta["seed"] != args.seed:
            raise SystemExit(f"--state {args.state} was trained with --seed {meta['seed']}, not {args.seed}")
        stored = (meta.get("mix", "default"), meta.get("two_shapes", 0.0))
        if stored != (args.mix, args.two_shapes):
            raise SystemExit(f"--state {args.state} was trained with --mix {stored[0]} --two-shapes {stored[1]}, not "
                             f"--mix {args.mix} --two-shapes {args.two_shapes} (its data stream would change)")
        params, ema = trees["params"], trees["ema"]
        if "adam" in trees:
            opt_state = trees["adam"]
        else:  # a compact state: a fresh optimizer, whose learning rate warms up again
            rewarm_from = meta["step"]
        start, seconds_before, log = meta["step"], meta["train_seconds"], meta["log"]
        compile_s = meta.get("compile_seconds", 0.0)
        losses = [np.float32(x) for x in meta.get("unlogged_losses", [])]
        key = jax.random.wrap_key_data(np.asarray(meta["key"], np.uint32))
        print(f"resumed from {args.state} at step {start} ({seconds_before:.0f}s trained"
              f"{', compact: optimizer restarted' if rewarm_from is not None else ''})", flush=True)

    train_step = _train_step(graphdef, args.lr, args.sigma_shift, args.caption_dropout, args.ema)
    mix = buckets.get_mix(args.mix, frames, size)

    def run_done(step: int, trained_s: float) -> bool:  # the whole run's budget, over all legs
        return step >= args.steps or bool(args.time_limit and trained_s >= args.time_limit)

    def save(step_: int, trained_s: float, finished_: bool) -> None:
        trees = {"params": params, "ema": ema} if args.compact_state else {"params": params, "ema": ema,
                                                                             "adam": opt_state}
        train_state.save_state(args.state, trees, {
            "step": step_, "train_seconds": trained_s, "compile_seconds": compile_s + leg_compile_s, "seed": args.seed,
            "mix": args.mix, "two_shapes": args.two_shapes,
            "key": np.asarray(jax.random.key_data(key)).tolist(), "log": log, "finished": finished_,
            "unlogged_losses": [float(x) for x in jax.device_get(losses)]})

    finished = run_done(start, seconds_before)
    compiled: set = set()  # window sizes compiled in this leg
    leg_compile_s = 0.0
    last_save = time.time()
    batches = None if finished else Batches(args.seed, args.batch_size, frames, size, args.workers,
                                            long_travel=args.long_travel, start=start, mix=args.mix,
                                            two_shapes=args.two_shapes)
    t0 = time.time()
    step = start
    try:
        while not finished:
            specs, ids, view, window = batches.next()
            key, sub = jax.random.split(key)
            trained_s = seconds_before + time.time() - t0
            progress = trained_s / args.time_limit if args.time_limit else step / max(args.steps - 1, 1)
            lr = learning_rate(args.lr, args.warmup, step, progress)
            if rewarm_from is not None:
                lr *= min(1.0, (step - rewarm_from + 1) / max(args.warmup, 1))
            new_size = window not in compiled
            if new_size:  # a window size's first step compiles: the time budget leaves it out
                jax.block_until_ready(params)
                t_compile = time.time()
            params, opt_state, ema, loss, gn = train_step(params, opt_state, ema, specs, ids, view, sub,
                                                          jnp.float32(step), jnp.float32(lr), window=window)
            losses.append(loss)
            if new_size:
                jax.block_until_ready(loss)
                compiled.add(window)
                spent = time.time() - t_compile
                leg_compile_s += spent
                t0 += spent
                print(f"compiled the {'x'.join(map(str, window))} step in {spent:.1f}s", flush=True)
            step += 1
            trained_s = seconds_before + time.time() - t0
            if step % args.log_every == 0 or step == 1:
                vals = [float(x) for x in jax.device_get(losses)]
                losses = []
                log["step"].append(step)
                log["loss"].append(float(np.mean(vals)))
                log["grad_norm"].append(float(gn))
                log["time"].append(trained_s)
                print(f"step {step:6d}  loss {np.mean(vals):.4f}  |g| {float(gn):.3f}  lr {lr:.2e}  "
                      f"{trained_s:7.1f}s", flush=True)
            if args.eval_every and step % args.eval_every == 0 and not run_done(step, trained_s):
                t_eval = time.time()
                log.setdefault("evals", []).append(
                    {"step": step, **_evaluate(args, nnx.merge(graphdef, ema, nnx.state(model, nnx.Not(nnx.Param))),
                                               mix, frames, size, max_len, args.eval_every_prompts)})
                t0 += time.time() - t_eval  # evaluation is not training time
            finished = run_done(step, trained_s)
            if finished and args.time_limit and step < args.steps:
                print(f"time limit {args.time_limit}s reached at step {step}", flush=True)
            if args.state and args.save_every and not finished and time.time() - last_save > args.save_every:
                save(step, trained_s, False)  # a snapshot to resume from if this process is lost
                last_save = time.time()
            if (args.call_steps and step - start >= args.call_steps) or \
                    (args.call_time_limit and time.time() - t0 > args.call_time_limit):
                break
    finally:
        if batches is not None:
            batches.close()
    steps_done = step
    train_s = seconds_before + (time.time() - t0 if step > start else 0.0)
    if args.state:
        save(steps_done, train_s, finished)
        print(f"training state at step {steps_done} written to {args.state}"
              f"{'' if finished else ' (not finished: run the same command again to go on)'}", flush=True)

    model_ema = nnx.merge(graphdef, ema, nnx.state(model, nnx.Not(nnx.Param)))
    info = {"steps": steps_done, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "mix": args.mix,
            "two_shapes": args.two_shapes, "init_from": str(args.init_from) if args.init_from else None,
            "final_loss": log["loss"][-1] if log["loss"] else None, "train_seconds": train_s,
            "compile_seconds": compile_s + leg_compile_s, "params": n_params, "finished": finished,
            "device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "command": args.command}
    save_model(model_ema, out / "weights.safetensors", info=info)
    _save_orbax(out / "ckpt", {"params": params, "ema": ema, "opt_state": opt_state}, steps_done)
    (out / "train_log.json").write_text(json.dumps({"info": info, "log": log}, indent=1))
    _plot(log, out / "loss.png")
    result = {"info": info}
    if args.eval_prompts and finished:
        result["eval"] = _evaluate(args, model_ema, mix, frames, size, max_len, args.eval_prompts)
        (out / "eval.json").write_text(json.dumps(result["eval"], indent=1))
    print(json.dumps(result, indent=1), flush=True)
    return result


def _evaluate(args, model, mix, frames: int, size: int, max_len: int, prompts: int) -> dict:
    """Training's evaluation: the default clip for ``--mix default``; per view of :data:`buckets.EVAL_VIEWS`
    for the varied mix (the smoke mix: its own buckets)."""
    from jaxvdm.models.shapes.eval_views import evaluate_views

    if args.mix == "default":
        return evaluate(model, prompts, seed=args.seed + 1, size=size, frames=frames, settings=args.eval_settings)
    views = buckets.EVAL_VIEWS if args.mix == "varied" else mix
    return evaluate_views(model, views, prompts, seed=args.seed + 1, settings=args.eval_settings, max_len=max_len)


def evaluate(model, num_prompts: int, *, seed: int, size: int, frames: int, settings: list[tuple] | None = None) -> dict:
    """Prompt adherence of generated clips for random captions, for each (steps, guidance, shift)."""
    from jaxvdm.models.shapes import evaluate as ev
    from jaxvdm.models.shapes.sample import sample_clips

    rng = np.random.default_rng(seed)
    specs = [data.sample_spec(rng) for _ in range(num_prompts)]
    captions = [data.caption(s) for s in specs]
    ids = np.stack([data.tokenize(c) for c in captions])
    results = {}
    for steps, guidance, shift in settings or [(20, 4.0, 2.0)]:
        t0 = time.time()
        clips = np.asarray(sample_clips(model, ids, jax.random.key(seed), steps=steps, guidance=guidance, shift=shift,
                                        num_frames=frames, size=size))
        scores = ev.score_batch(clips, captions)
        scores["seconds"] = time.time() - t0
        results[f"steps={steps},guidance={guidance},shift={shift}"] = scores
        print(f"eval steps={steps} guidance={guidance} shift={shift}: {scores}", flush=True)
    return results


def _save_orbax(path: Path, tree, step: int) -> None:
    """Saves ``tree`` (params, EMA, optimizer state) with orbax as a flat ``{key path: array}`` dict."""
    import orbax.checkpoint as ocp

    from jaxvdm.models.shapes.train_state import flatten_tree

    path = path.absolute()
    path.mkdir(parents=True, exist_ok=True)
    flat = flatten_tree(tree)
    ocp.PyTreeCheckpointer().save(path / f"step_{step}", flat, force=True)


def _plot(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(log["step"], log["loss"], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow loss")
    ax.set_title("shapes model training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _parse_settings(text: str) -> list[tuple]:
    out = []
    for part in text.split(";"):
        if part.strip():
            s, g, sh = part.split(",")
            out.append((int(s), float(g), float(sh)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxvdm.models.shapes.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--sigma-shift", type=float, default=3.0, help="shift of the training noise levels")
    p.add_argument("--frames", type=int, default=None, help="frames of the --mix default clips (16)")
    p.add_argument("--size", type=int, default=None, help="height and width of the --mix default clips (32)")
    p.add_argument("--mix", default="default", help=f"training data: one of {sorted(buckets.MIXES)} "
                   "(jaxvdm.models.shapes.buckets)")
    p.add_argument("--two-shapes", type=float, default=0.0,
                   help="share of two-shape clips in a bucketed mix (the text encoder then reads 18 words)")
    p.add_argument("--init-from", default=None,
                   help="start from these weights (e.g. models/shapes/weights.safetensors): fresh optimizer and EMA")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate the EMA every this many steps")
    p.add_argument("--eval-every-prompts", type=int, default=32, help="prompts per view of --eval-every")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)))
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="stop training after this many seconds (the learning-rate decay then follows time)")
    p.add_argument("--eval-prompts", type=int, default=128)
    p.add_argument("--eval-settings", type=_parse_settings, default=None,
                   help="'steps,guidance,shift;...' e.g. '20,4,2;20,5,3'")
    p.add_argument("--long-travel", action="store_true",
                   help="moving shapes cross most of the frame (start near the edge they leave)")
    p.add_argument("--small", action="store_true", help="a very small model (CPU smoke tests)")
    p.add_argument("--state", default=None,
                   help="resume from the training state in this folder if it holds one; write it there at the end")
    p.add_argument("--call-steps", type=int, default=0, help="end this leg after this many steps (0: no limit)")
    p.add_argument("--call-time-limit", type=float, default=0.0,
                   help="end this leg after this many seconds of training (0: no limit)")
    p.add_argument("--save-every", type=float, default=0.0,
                   help="also write --state every this many seconds while training (0: only at the end)")
    p.add_argument("--compact-state", action="store_true",
                   help="leave the optimizer moments out of --state (resuming restarts the optimizer)")
    args = p.parse_args(argv)
    args.command = "python -m jaxvdm.models.shapes.train " + " ".join(argv if argv is not None else os.sys.argv[1:])
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
