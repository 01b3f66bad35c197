"""DualParal's host-side schedule: block layout, the FIFO queue, the static pipeline slots, the noise pool.

Pure Python/numpy; everything here is computed once on the host and handed to the device code
(:mod:`jaxvdm.sharding.dualparal_pipeline`) as static per-slot arrays.

Notation (latent frames unless stated): ``B`` frames per block, ``C`` context frames, ``Nb`` blocks,
``T`` sampling steps, ``N`` pipeline stages.

**Layout.** A latent video of ``C + Nb·B`` frames: block 0 owns ``[0, B+C)``, block ``k >= 1`` owns
``[C + k·B, C + (k+1)·B)``. Every forward reads the window ``[k·B, k·B + B + C)``: the last ``C``
frames of block ``k-1`` then block ``k``'s own ``B`` (block 0: its own ``B + C``).

**Queue.** In outer iteration ``i`` (``0 … T+Nb-2``) block ``k`` takes step ``d = i - k``, for
``k`` from ``min(i, Nb-1)`` down to ``max(0, i-T+1)`` (tail to head). An *item* is one block-forward
``(k, d)``; there are ``Nb·T`` of them, and ``serial_order`` lists them in the order one device runs
them.

**Pipeline slots.** Items enter stage 0 in serial order, possibly with idle entry slots (bubbles)
between them; stage ``s`` processes in slot ``τ`` whatever entered stage 0 in slot ``τ - s``.
Timing convention (``return_delay = 0``, the one the device code implements): the last stage
processes an item in slot ``τ`` and sends its prediction to stage 0 at the end of that slot; stage 0
applies it *at the start of slot* ``τ + 1``, before it embeds the item entering in ``τ + 1``. Hence an
item entering stage 0 in slot ``e`` can use exactly the results of items whose last-stage slot is
``<= e - 1``, i.e. items that entered stage 0 in a slot ``<= e - N``. An item may enter only when

* its own previous step ``(k, d-1)`` is back (a block is never forwarded on a stale latent), and
* with ``deterministic_context`` (default), its predecessor's same step ``(k-1, d)`` is back too, so
  the prepended context is always *block k-1 after d+1 steps* (the serial/``N = 1`` semantics).

Items enter as early as these rules allow (greedy, in order), so every bubble is forced.

**Feature cache (per stage, per layer).** Every real item *writes* the cache (K/V of its first ``C``
own frames); a bubble never writes. An item *reads* the cache iff it is not the first item of its
iteration; then the previous item processed by the same stage is, by construction, block ``k+1`` at
step ``d-1`` of the same iteration (checked when the schedule is built). The first item of every
iteration never reads, which is the per-iteration reset.

**Noise pool.** ``B + C`` noise frames; a rolling template of pool indices gives each block its frames
(see :func:`noise_pool_order`).
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np

__all__ = [
    "Layout",
    "block_layout",
    "frames_for",
    "Item",
    "num_iterations",
    "queue_length",
    "queue",
    "serial_order",
    "Slot",
    "Schedule",
    "pipeline_schedule",
    "bubble_ratio",
    "num_slots",
    "as_arrays",
    "noise_pool_order",
]


def _int(name: str, value) -> int:
    if isinstance(value, bool):
        raise ValueError(f"dualparal {name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"dualparal {name} must be an integer, got {value!r}") from None


def _check_blocks(B: int, C: int) -> tuple[int, int]:
    B, C = _int("block_frames B", B), _int("context_frames C", C)
    if B < 1:
        raise ValueError(f"dualparal block_frames B must be >= 1, got B={B}; use B >= 1 (e.g. 8)")
    if C < 0:
        raise ValueError(f"dualparal context_frames C must be >= 0, got C={C}; use 0 <= C <= B")
    if C > B:
        raise ValueError(f"dualparal needs context_frames C <= block_frames B (the cache holds C of a block's B "
                         f"frames), got B={B}, C={C}; use C <= {B} or B >= {C}")
    return B, C


# ------------------------------------------------------------------------------------------ layout


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a latent video of ``total = C + num_blocks·B`` frames is cut into blocks."""

    total: int
    B: int
    C: int
    num_blocks: int

    @property
    def window(self) -> int:
        """Frames in every forward window: ``B + C``."""
        return self.B + self.C

    def owned(self, k: int) -> tuple[int, int]:
        """``[start, stop)`` latent frames block ``k`` owns (block 0: ``B + C`` frames, others ``B``)."""
        self._check_k(k)
        return (0, self.B + self.C) if k == 0 else (self.C + k * self.B, self.C + (k + 1) * self.B)

    def window_start(self, k: int) -> int:
        """First frame of block ``k``'s window ``[k·B, k·B + B + C)`` (``C`` predecessor frames, then its own)."""
        self._check_k(k)
        return k * self.B

    def _check_k(self, k: int) -> None:
        if not 0 <= k < self.num_blocks:
            raise ValueError(f"block index {k} out of range [0, {self.num_blocks})")


def _valid_totals_near(total: int, B: int, C: int) -> list[int]:
    n = (total - C) // B
    cands = {C + max(n, 1) * B, C + max(n + 1, 1) * B}
    return sorted(cands)


def block_layout(total_latent_frames: int, B: int, C: int, *, vae_stride_t: int = 4) -> Layout:
    """Validates and returns the block layout of a latent video of ``total_latent_frames`` frames.

    Requires ``B >= 1``, ``0 <= C <= B`` and ``total_latent_frames = C + Nb·B`` with ``Nb >= 1``;
    otherwise raises ValueError naming valid nearby lengths (in latent frames and, through the VAE's
    temporal stride ``vae_stride_t``, in video frames).
    """
    B, C = _check_blocks(B, C)
    total = _int("latent frame count", total_latent_frames)
    if total < C + B or (total - C) % B:
        near = _valid_totals_near(total, B, C)
        alts = " or ".join(str(v) for v in near)
        if vae_stride_t == 1:
            hint = f"use {alts} frames (num_frames)"
        else:
            video = ", ".join(str(frames_for((v - C) // B, B, C, vae_stride_t)) for v in near)
            hint = f"use {alts} latent frames ({video} video frames at temporal stride {vae_stride_t})"
        raise ValueError(f"dualparal needs C + Nb*B latent frames with Nb >= 1 blocks (B={B}, C={C}), got {total}; "
                         f"{hint}, or other block_frames/context_frames")
    return Layout(total=total, B=B, C=C, num_blocks=(total - C) // B)


def frames_for(Nb: int, B: int, C: int, vae_stride_t: int = 4) -> int:
    """Video frames decoded from ``Nb`` blocks: ``stride·(C + Nb·B − 1) + 1`` (Wan's causal VAE)."""
    B, C = _check_blocks(B, C)
    Nb, stride = _int("number of blocks", Nb), _int("VAE temporal stride", vae_stride_t)
    if Nb < 1:
        raise ValueError(f"dualparal needs at least one block, got Nb={Nb}")
    if stride < 1:
        raise ValueError(f"VAE temporal stride must be >= 1, got {stride}")
    return stride * (C + Nb * B - 1) + 1


# ------------------------------------------------------------------------------------------ queue


@dataclasses.dataclass(frozen=True)
class Item:
    """One block-forward: block ``k`` at step ``d`` (0-based), in outer iteration ``iteration = k + d``.

    ``index``: position in the serial order. ``has_successor_context``: reads the successor's cached
    K/V (False for the first item of an iteration, which is always the tail, and hence always for
    the last block). ``prev_ctx_step``: steps the predecessor ``k-1`` has taken when its last ``C``
    frames are prepended (``d + 1``; None for block 0). ``prev_finished``: that predecessor has taken
    all ``T`` steps (its final latent is the context).
    """

    k: int
    d: int
    iteration: int
    index: int
    has_successor_context: bool
    is_block0: bool
    prev_ctx_step: int | None
    prev_finished: bool


def _check_run(Nb: int, T: int) -> tuple[int, int]:
    Nb, T = _int("number of blocks Nb", Nb), _int("number of steps T", T)
    if Nb < 1:
        raise ValueError(f"dualparal needs at least one block, got Nb={Nb}")
    if T < 1:
        raise ValueError(f"dualparal needs at least one sampling step, got T={T}")
    return Nb, T


def num_iterations(Nb: int, T: int) -> int:
    """Outer iterations that do work: ``T + Nb − 1`` (the reference's extra drain-only one is dropped)."""
    Nb, T = _check_run(Nb, T)
    return T + Nb - 1


def queue_length(i: int, Nb: int, T: int) -> int:
    """``Q(i) = min(i, Nb−1) − max(0, i−T+1) + 1`` (0 outside the working iterations)."""
    Nb, T = _check_run(Nb, T)
    i = _int("iteration", i)
    if i < 0:
        raise ValueError(f"iteration must be >= 0, got {i}")
    return max(0, min(i, Nb - 1) - max(0, i - T + 1) + 1)


def _first_index(i: int, Nb: int, T: int) -> int:
    """Serial index of the first item of iteration ``i`` (sum of earlier queue lengths)."""
    return sum(queue_length(j, Nb, T) for j in range(i))


def queue(i: int, Nb: int, T: int) -> list[Item]:
    """Items of outer iteration ``i`` in processing order (tail → head, decreasing ``k``), ``d = i − k``."""
    Nb, T = _check_run(Nb, T)
    n = queue_length(i, Nb, T)
    hi = min(i, Nb - 1)
    base = _first_index(i, Nb, T)
    return [_item(hi - p, i - (hi - p), base + p, p > 0, T) for p in range(n)]


def _item(k: int, d: int, index: int, succ: bool, T: int) -> Item:
    return Item(k=k, d=d, iteration=k + d, index=index, has_successor_context=succ, is_block0=k == 0,
                prev_ctx_step=None if k == 0 else d + 1, prev_finished=k > 0 and d + 1 == T)


def serial_order(Nb: int, T: int) -> list[Item]:
    """All ``Nb·T`` items in the order one device runs them (queue order over iterations)."""
    Nb, T = _check_run(Nb, T)
    out: list[Item] = []
    for i in range(T + Nb - 1):
        hi, lo = min(i, Nb - 1), max(0, i - T + 1)
        base = len(out)
        out.extend([_item(k, i - k, base + (hi - k), k != hi, T) for k in range(hi, lo - 1, -1)])
    return out


# ------------------------------------------------------------------------------------------ pipeline


@dataclasses.dataclass(frozen=True)
class Slot:
    """One pipeline tick. ``items[s]``: the item stage ``s`` processes (None = bubble).
    ``arrivals``: items whose predictions stage 0 applies at the start of this slot (at most one).
    ``read[s]`` / ``write[s]``: stage ``s`` reads / writes its layers' feature cache in this slot."""

    items: tuple[Item | None, ...]
    arrivals: tuple[Item, ...]
    read: tuple[bool, ...]
    write: tuple[bool, ...]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The static pipeline schedule of ``Nb·T`` items over ``N`` stages.

    ``items``: serial order. ``entry_slot[j]``: slot in which ``items[j]`` enters stage 0 (it leaves the
    last stage in ``entry_slot[j] + N − 1``). ``entries``: per entry slot, the index of the item entering
    stage 0 or None (a bubble); ``len(entries) + N − 1 == num_slots``. ``slots``: the ``num_slots``
    compute slots. ``final_arrivals``: predictions applied after the last compute slot (the last
    ``1 + return_delay`` ticks have no compute). ``ctx_steps[j]``: steps block ``k−1`` has taken, as
    applied at stage 0, when ``items[j]`` enters (None for block 0); equals ``d + 1`` for every item
    when ``deterministic_context``.
    """

    Nb: int
    T: int
    N: int
    deterministic_context: bool
    return_delay: int
    items: tuple[Item, ...]
    entry_slot: tuple[int, ...]
    entries: tuple[int | None, ...]
    slots: tuple[Slot, ...]
    final_arrivals: tuple[tuple[Item, ...], ...]
    ctx_steps: tuple[int | None, ...]

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    def stage_item(self, s: int, tau: int) -> Item | None:
        """The item stage ``s`` processes in slot ``tau`` (None for a bubble)."""
        return self.slots[tau].items[s]


def _arrival_slot(entry: int, N: int, return_delay: int) -> int:
    """Slot at whose start stage 0 has applied the prediction of an item that entered at ``entry``."""
    return entry + N + return_delay


def pipeline_schedule(Nb: int, T: int, N: int, *, deterministic_context: bool = True,
                      return_delay: int = 0) -> Schedule:
    """The greedy static schedule of DualParal's ``Nb·T`` block-forwards over ``N`` pipeline stages.

    ``return_delay`` adds slots between the last stage and stage 0 (0 = the device code's convention:
    a prediction made in slot ``τ`` is applied at the start of ``τ + 1``); it exists for bubble
    analysis only (:func:`as_arrays` requires 0).
    """
    Nb, T = _check_run(Nb, T)
    N = _int("number of stages N", N)
    return_delay = _int("return_delay", return_delay)
    if N < 1:
        raise ValueError(f"dualparal needs at least one pipeline stage, got N={N}")
    if return_delay < 0:
        raise ValueError(f"return_delay must be >= 0, got {return_delay}")
    items = tuple(serial_order(Nb, T))
    pos = {(it.k, it.d): it.index for it in items}

    entry: list[int] = []
    for it in items:
        deps = []
        if it.d > 0:
            deps.append(pos[(it.k, it.d - 1)])
        if deterministic_context and it.k > 0:
            deps.append(pos[(it.k - 1, it.d)])
        e = entry[-1] + 1 if entry else 0
        for j in deps:
            e = max(e, _arrival_slot(entry[j], N, return_delay))
        entry.append(e)

    entries: list[int | None] = [None] * (entry[-1] + 1)
    for j, e in enumerate(entry):
        entries[e] = j
    n_slots = len(entries) + N - 1
    arrive: dict[int, list[Item]] = {}
    for j, e in enumerate(entry):
        arrive.setdefault(_arrival_slot(e, N, return_delay), []).append(items[j])

    slots: list[Slot] = []
    prev_on_stage: list[Item | None] = [None] * N
    for tau in range(n_slots):
        row, read, write = [], [], []
        for s in range(N):
            e = tau - s
            it = items[entries[e]] if 0 <= e < len(entries) and entries[e] is not None else None
            r = False
            if it is not None:
                prev = prev_on_stage[s]
                r = prev is not None and prev.iteration == it.iteration
                if r != it.has_successor_context or (r and (prev.k, prev.d) != (it.k + 1, it.d - 1)):
                    raise AssertionError(f"cache rule broken at stage {s}, slot {tau}: {prev} then {it}")
                prev_on_stage[s] = it
            row.append(it)
            read.append(r)
            write.append(it is not None)
        slots.append(Slot(items=tuple(row), arrivals=tuple(arrive.get(tau, ())), read=tuple(read),
                          write=tuple(write)))
    final = tuple(tuple(arrive.get(tau, ())) for tau in range(n_slots, n_slots + 1 + return_delay))

    ctx: list[int | None] = []
    for it, e in zip(items, entry):
        if it.k == 0:
            ctx.append(None)
            continue
        ctx.append(sum(1 for d in range(T) if _arrival_slot(entry[pos[(it.k - 1, d)]], N, return_delay) <= e))
    return Schedule(Nb=Nb, T=T, N=N, deterministic_context=bool(deterministic_context), return_delay=return_delay,
                    items=items, entry_slot=tuple(entry), entries=tuple(entries), slots=tuple(slots),
                    final_arrivals=final, ctx_steps=tuple(ctx))


def num_slots(schedule: Schedule) -> int:
    """Compute slots of the schedule (each stage's wall time in units of one stage-forward)."""
    return schedule.num_slots


def bubble_ratio(schedule: Schedule) -> float:
    """Idle stage-slots / all stage-slots over the compute slots: ``(num_slots − Nb·T) / num_slots``.

    The trailing apply-only tick(s) (``final_arrivals``) are not counted."""
    total = schedule.N * schedule.num_slots
    busy = schedule.N * len(schedule.items)
    return (total - busy) / total


def as_arrays(schedule: Schedule, *, drain: bool = True) -> dict[str, np.ndarray]:
    """The schedule as static per-slot arrays for ``lax.scan`` (rows = slots).

    ``item_k, item_d`` int32 ``[S, N]`` (0 in a bubble), ``item_valid`` / ``item_write`` / ``item_read``
    bool ``[S, N]``; ``arrival_k, arrival_d`` int32 ``[S]`` and ``arrival_valid`` bool ``[S]``: the
    prediction stage 0 applies at the start of the slot (the item the last stage processed in the
    previous slot). With ``drain`` a last row with no work carries the final arrival, so
    ``S = num_slots + 1``; without it ``S = num_slots`` and the caller applies the prediction that
    left the last stage in the final slot itself.
    """
    if schedule.return_delay != 0:
        raise ValueError("as_arrays needs a schedule built with return_delay=0 (the device code's convention)")
    rows = list(schedule.slots)
    N = schedule.N
    if drain:
        rows.append(Slot(items=(None,) * N, arrivals=schedule.final_arrivals[0], read=(False,) * N,
                         write=(False,) * N))
    S = len(rows)
    out = {
        "item_k": np.zeros((S, N), np.int32), "item_d": np.zeros((S, N), np.int32),
        "item_valid": np.zeros((S, N), bool), "item_read": np.zeros((S, N), bool),
        "item_write": np.zeros((S, N), bool),
        "arrival_k": np.zeros((S,), np.int32), "arrival_d": np.zeros((S,), np.int32),
        "arrival_valid": np.zeros((S,), bool),
    }
    for t, slot in enumerate(rows):
        for s, it in enumerate(slot.items):
            if it is not None:
                out["item_k"][t, s], out["item_d"][t, s], out["item_valid"][t, s] = it.k, it.d, True
            out["item_read"][t, s], out["item_write"][t, s] = slot.read[s], slot.write[s]
        if len(slot.arrivals) > 1:
            raise AssertionError("more than one arrival in a slot")
        if slot.arrivals:
            a = slot.arrivals[0]
            out["arrival_k"][t], out["arrival_d"][t], out["arrival_valid"][t] = a.k, a.d, True
    return out


# ------------------------------------------------------------------------------------------ noise


def noise_pool_order(Nb: int, B: int, C: int, seed: int) -> list[np.ndarray]:
    """Pool frame indices (into a pool of ``B + C`` noise frames) for each block, in block order.

    A rolling template of pool indices starts as ``0 … B+C−1``. For each new block the template becomes
    ``[old[B:] (its last C) ‖ old[:B] in a random order]`` (one ``permutation(B)`` per block, block 0
    included, from ``numpy.random.default_rng(seed mod 2**64)``). Block 0 takes the whole template (``B + C``
    int64 indices), every later block its last ``B``. So block ``k >= 1``'s frames are exactly the pool
    minus the last ``C`` frames of block ``k − 1``. Concatenating the gathered frames gives the initial
    latent video of ``C + Nb·B`` frames.
    """
    B, C = _check_blocks(B, C)
    Nb = _int("number of blocks Nb", Nb)
    if Nb < 1:
        raise ValueError(f"dualparal needs at least one block, got Nb={Nb}")
    rng = np.random.default_rng(_int("seed", seed) % 2**64)  # any 64-bit seed, negative ones included
    template = np.arange(B + C, dtype=np.int64)
    out = []
    for k in range(Nb):
        template = np.concatenate([template[B:], template[:B][rng.permutation(B)]])
        out.append(template.copy() if k == 0 else template[C:].copy())
    return out
