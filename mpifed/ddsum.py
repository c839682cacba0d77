"""Reproducible sums across clients: double-double accumulation (Knuth's TwoSum).

Summing client messages in plain floating point gives answers that depend on the order,
hence on how clients are spread over ranks. Carrying each partial sum as an unevaluated
pair hi + lo (about 106 bits) makes the rounded total independent of the order for all
practical purposes, so traces agree at any number of ranks (DESIGN.md rule 8).
"""
from __future__ import annotations

import numpy as np


def two_sum(a, b):
    """s, e with s = fl(a + b) and s + e = a + b exactly."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def dd_add(a_hi, a_lo, b_hi, b_lo):
    """(a_hi + a_lo) + (b_hi + b_lo) in double-double."""
    s, e = two_sum(a_hi, b_hi)
    e = e + (a_lo + b_lo)
    return two_sum(s, e)


def dd_sum_rows(X, xp=np):
    """Double-double sum over the first axis: (hi, lo), each of shape X.shape[1:].

    A pairwise tree over the rows, vectorised along the other axes.
    """
    if X.shape[0] == 0:
        return xp.zeros(X.shape[1:]), xp.zeros(X.shape[1:])
    hi = X
    lo = xp.zeros_like(X)
    while hi.shape[0] > 1:
        if hi.shape[0] % 2:
            zero = xp.zeros((1,) + hi.shape[1:], dtype=hi.dtype)
            hi, lo = xp.concatenate([hi, zero]), xp.concatenate([lo, zero])
        hi, lo = dd_add(hi[0::2], lo[0::2], hi[1::2], lo[1::2])
    return hi[0], lo[0]
