"""Two-phase probabilistic (TPP) neuron.

Bojkovic, Wu, Gu, "Temporal Misalignment in ANN-SNN Conversion and Its Mitigation via
Probabilistic Spiking Neurons", ICML 2025 (our reading: ../methods, section 4).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import torch

from .loop import is_constant_window, run_steps
from .params import TPPParams

# Phase 2 draws 16-bit uniform integers, four from every 64-bit random word: the draws
# are this neuron's main cost, and float32 uniforms (one 32-bit draw and a conversion
# each) took 2-3x longer (bench/results/tpp_draws.md). The CPU generator (mt19937) runs
# on one core, so on CPU the words are drawn in fixed blocks, each from its own
# generator seeded from the caller's, by torch.get_num_threads() threads (random_
# releases the GIL): the numbers depend on the seed and the block size only, not on the
# thread count.
RANDOM_BITS = 16
_LEVELS = float(1 << RANDOM_BITS)
_BLOCK_WORDS = 1 << 16
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool), made on first use


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] != workers:  # a forked child needs its own
        if _pool is not None and _pool[0] == os.getpid():
            _pool[2].shutdown(wait=False)
        _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="snnconv-rng"))
    return _pool[2]


def _fill_random_words(words: torch.Tensor, generator: torch.Generator | None) -> None:
    """Fill a 1-d int64 tensor with uniform 64-bit words (the full range)."""
    if words.device.type != "cpu" or words.numel() <= _BLOCK_WORDS:
        words.random_(-(1 << 63), None, generator=generator)
        return
    workers = torch.get_num_threads()
    blocks = words.split(_BLOCK_WORDS)
    seeds = torch.randint(-(1 << 63), (1 << 63) - 1, (len(blocks),), generator=generator, dtype=torch.int64).tolist()

    def fill(first: int) -> None:
        for block, seed in zip(blocks[first::workers], seeds[first::workers]):
            block.random_(-(1 << 63), None, generator=torch.Generator().manual_seed(seed))

    for done in [_thread_pool(workers).submit(fill, i) for i in range(min(workers, len(blocks)))]:
        done.result()


def uniform_levels(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Independent uniform integers in [-2^15, 2^15), as an int16 tensor of ``shape``.

    Full-range 64-bit draws (``random_(-2**63, None)``), viewed as four int16 each. On
    CPU, windows of more than 2^18 draws are filled in fixed blocks, each from its own
    generator seeded from ``generator``, so the numbers do not depend on the thread count.

    Raises:
        Nothing of its own; torch raises ``RuntimeError`` for a negative size or a
        ``generator`` on another device than ``device``.
    """
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    _fill_random_words(words, generator)
    return words.view(torch.int16)[:count].view(shape)


class TPPFireState(NamedTuple):
    """State of TPP's phase 2 between slots (tensors ``[batch, ...]``, updated in place).

    ``owed``: v / theta, the spikes still owed.  ``slots_left``: n = T - k + 1 before slot k.
    ``level``: a work buffer for the firing level, with no meaning between slots.
    """

    owed: torch.Tensor
    slots_left: int
    level: torch.Tensor


def tpp_fire_step(draw: torch.Tensor, state: TPPFireState, out: torch.Tensor, *, low: torch.Tensor) -> TPPFireState:
    """One slot of TPP's phase 2: fire with probability owed / slots left (16-bit resolution)::

        s = [draw + 2^15 + 1/2 < (owed / n) * 2^16];  owed = owed - s;  out = s

    ``draw`` + 2^15 is uniform on {0, ..., 2^16 - 1}, so p = owed / n <= 0 never fires
    and p >= 1 always does (the clip for free); p is rounded to the nearest 2^-16, so that
    a rounding residue of the sum (owed = m +- 1e-6) neither adds nor drops a spike.

    Args:
        draw: ``[batch, ...]`` uniform integers in [-2^15, 2^15), stored as floats.
        state: spikes owed and slots left before this slot (``owed`` is updated in place).
        out: ``[batch, ...]`` buffer for s in {0, 1}; it may be ``draw`` itself (read first).
        low: the scalar tensor -2^15 - 1/2 in ``owed``'s dtype and device.

    Returns:
        The state after this slot.

    Raises:
        Nothing of its own; torch raises ``RuntimeError`` if the buffers do not broadcast.
    """
    owed, slots_left, level = state
    # Rounding in owed * (2^16 / n) moves the level by far less than the margin of 1/2,
    # so p = 0 and p = 1 stay exact. One fused pass: low + (2^16 / n) * owed.
    torch.add(low, owed, alpha=_LEVELS / slots_left, out=level)
    # The draw is read once, then overwritten by its spike (1.0 / 0.0).
    owed.sub_(torch.lt(draw, level, out=out))
    return TPPFireState(owed, slots_left - 1, level)


def tpp_window(
    x: torch.Tensor,
    threshold: torch.Tensor,
    params: TPPParams = TPPParams(),
    generator: torch.Generator | None = None,
    *,
    inplace: bool = False,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate the whole window, then fire Bernoulli spikes owed / slots left.

    With theta the threshold and phi = ``params.initial_potential``::

        phase 1:  u = phi * theta (+ offset) + sum_{t=1..T} x(t)
        phase 2:  v = u; for k = 1..T:
                     p = clip(v / ((T - k + 1) * theta), 0, 1)
                     s(k) ~ Bernoulli(p);  v -= theta * s(k);  out(k) = theta * s(k)

    The Bernoulli draws have 16-bit resolution: s(k) = [r + 1/2 < p * 2^16] with r
    uniform on {0, ..., 2^16 - 1}, so P(s(k) = 1) is p rounded to the nearest multiple of
    2^-16: exactly 0 for p < 2^-17 and exactly 1 for p > 1 - 2^-17. Hence if u = m * theta
    (integer 0 <= m <= T, up to float rounding of the sum) exactly m spikes are emitted,
    in a uniformly random set of slots (up to that 2^-17); the output depends only on the
    sum of the inputs. Phase 2's slots are :func:`tpp_fire_step` run by
    :func:`snnconv.functional.loop.run_steps`; TPP as a whole is a window function
    (not causal: slot 1 depends on the last input step).

    Args:
        x: input window ``[T, batch, ...]``.
        threshold: theta, positive.
        params: initial potential.
        generator: source of the Bernoulli draws (same seed, same spikes on one device).
        inplace: ``x`` may be overwritten (it is dead after phase 1): the spikes are
            written into its memory. Same values either way.
        offset: optional extra v(0) in units of the input (broadcastable to
            ``x.shape[1:]``), e.g. from SNN Calibration's potential calibration.

    Returns:
        ``[T, batch, ...]`` with values in {0, theta}.

    Raises:
        Nothing of its own: the window and theta are not checked here (the neuron
        module, :class:`snnconv.neurons.TPPNeuron`, checks them and raises
        :class:`snnconv.errors.SnnconvError`); torch raises ``RuntimeError`` for a
        threshold or offset that does not broadcast to ``x.shape[1:]``.
    """
    steps = x.shape[0]
    # Half-precision windows are summed in float32: the level below spans +-2^15.
    work = torch.promote_types(x.dtype, torch.float32)
    # A static input (one step repeated, stride 0 in time) sums to T times that step.
    total = x[0].to(work) * steps if is_constant_window(x) else x.sum(0, dtype=work)
    if offset is not None:
        total = total.add_(offset.to(work))
    owed = total.div_(threshold).add_(params.initial_potential)
    # One draw for the whole window: no per-step RNG call, and the same numbers whatever
    # order the loop below consumes them in. They are copied into the float buffer the
    # spikes go to, once: comparing int16 with floats step by step made a converted
    # temporary every step, which cost more than this one pass (measured).
    draws = uniform_levels(x.shape, generator, x.device)
    exact = x.dtype in (torch.float32, torch.float64)  # holds every draw exactly
    if inplace and exact and x.is_contiguous() and not is_constant_window(x):
        noise = x.copy_(draws)  # x is dead after phase 1
    else:
        noise = draws.to(owed.dtype)
    # Phase 2: draw + 2^15 + 1/2 < p * 2^16, slot by slot (see tpp_fire_step).
    low = torch.tensor(-_LEVELS / 2 - 0.5, dtype=owed.dtype, device=owed.device)
    run_steps(partial(tpp_fire_step, low=low), noise, TPPFireState(owed, steps, torch.empty_like(owed)), noise)
    out = noise.mul_(threshold)
    return out if out.dtype == x.dtype else out.to(x.dtype)
