"""Directions and weights that turn directional derivatives of order `k` into
mixed partial derivatives (polarization).

Along a direction `v`, the k-th derivative of `f` is a polynomial in `v`:

$$D^k_v f = \\sum_{|\\gamma| = k} \\frac{k!}{\\gamma!} v^\\gamma\\,
\\partial^\\gamma f.$$

So for a multi-index `alpha` of order `k`, the partial `∂^alpha f` is a weighted
sum of `D^k_v f` over directions `v`: those with non-negative integer entries
summing to `k` on the support of `alpha` (Griewank, Utke and Walther, 2000), with
the weights that solve the (square, invertible) linear system above restricted
to that support; or, where that needs fewer, directions with signs, whose
signed sums keep only the monomials of `alpha`'s parity (see `_signed`). The
systems are solved exactly, in rationals, once per pattern of orders. A
direction `g v` is replaced by `v` with its weight times `g^k`, and `-v` by `v`
with its weight times `(-1)^k`.

`biharmonic_directions` gives the smaller set the biharmonic needs, by
symmetry: with `D_v = D^4_v f`,

$$\\Delta^2 f = \\Big(1 - \\frac{d-1}{3}\\Big)\\sum_i D_{e_i}
+ \\frac16 \\sum_{i<j} \\big(D_{e_i + e_j} + D_{e_i - e_j}\\big),$$

from `D_{e_i+e_j} + D_{e_i-e_j} = 2 ∂_i^4 f + 12 ∂_i^2 ∂_j^2 f + 2 ∂_j^4 f`:
`d^2` directions in all.
"""

import functools
import itertools
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


__all__ = ["biharmonic_directions", "partial_directions"]


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Every tuple of `parts` non-negative ints summing to `total`."""
    if parts == 1:
        return [(total,)]
    return [
        (first, *rest)
        for first in range(total, -1, -1)
        for rest in _compositions(total - first, parts - 1)
    ]


def _solve(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Gaussian elimination in exact arithmetic (the system is invertible)."""
    n = len(rhs)
    a = [row[:] + [b] for row, b in zip(matrix, rhs)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(n):
            if r != col and a[r][col] != 0:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col])]
    return [a[r][n] / a[r][r] for r in range(n)]


def _coefficient(k: int, gamma: tuple[int, ...]) -> Fraction:
    """`k! / gamma!`, the multinomial coefficient of `v^gamma` in `D^k_v`."""
    return Fraction(math.factorial(k), math.prod(math.factorial(c) for c in gamma))


def _solve_on(
    k: int,
    monomials: list[tuple[int, ...]],
    bases: list[tuple[int, ...]],
    target: tuple[int, ...],
) -> list[Fraction] | None:
    """Weights `w` with `sum_b w_b (k!/g!) b^g = [g == target]` for every `g`
    of `monomials` (a square system: as many `bases`); `None` if singular."""
    matrix = [
        [
            _coefficient(k, g) * math.prod(Fraction(b) ** c for b, c in zip(base, g))
            for base in bases
        ]
        for g in monomials
    ]
    try:
        return _solve(matrix, [Fraction(int(g == target)) for g in monomials])
    except StopIteration:  # no pivot: singular
        return None


def _canonical(
    v: tuple[int, ...], w: Fraction, k: int
) -> tuple[tuple[int, ...], Fraction]:
    """`(v, w)` as a direction with coprime entries, its first nonzero entry
    positive (`D^k_{g v} = g^k D^k_v`, `D^k_{-v} = (-1)^k D^k_v`)."""
    g = math.gcd(*v)
    first = next(c for c in v if c)
    g = g if first > 0 else -g
    return tuple(c // g for c in v), w * Fraction(g) ** k


def _merge(
    terms: list[tuple[tuple[int, ...], Fraction]], k: int
) -> tuple[tuple[tuple[int, ...], Fraction], ...]:
    merged: dict[tuple[int, ...], Fraction] = {}
    for v, w in terms:
        if w == 0 or not any(v):
            continue
        v, w = _canonical(v, w, k)
        merged[v] = merged.get(v, Fraction(0)) + w
    return tuple((v, w) for v, w in merged.items() if w != 0)


def _unsigned(counts: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], Fraction], ...]:
    """Griewank, Utke and Walther's directions: every non-negative `beta` with
    `|beta| = k` on the support, one square system over all its monomials."""
    k = sum(counts)
    lattice = _compositions(k, len(counts))
    weights = _solve_on(k, lattice, lattice, counts)
    assert weights is not None  # the simplex lattice is unisolvent
    return _merge(list(zip(lattice, weights)), k)


def _signed(
    counts: tuple[int, ...],
) -> tuple[tuple[tuple[int, ...], Fraction], ...] | None:
    """Directions with signs: summing `chi(s) D^k_{s * beta}` over the sign
    vectors `s`, with `chi(s) = prod_i s_i^{counts_i}`, keeps only the monomials
    `g` of the same parity as `counts` in every coordinate, so the system needs
    only those (`∂_a ∂_b` from `e_a ± e_b`: 2 directions instead of 3;
    `∂_a ∂_b ∂_c` from 4 instead of 10). `None` if that system is singular."""
    k, n = sum(counts), len(counts)
    cls = [
        g
        for g in _compositions(k, n)
        if all((a - b) % 2 == 0 for a, b in zip(g, counts))
    ]
    weights = _solve_on(k, cls, cls, counts)
    if weights is None:
        return None
    terms = []
    for base, w in zip(cls, weights):
        for signs in itertools.product((1, -1), repeat=n):
            chi = math.prod(s**c for s, c in zip(signs, counts))
            v = tuple(s * b for s, b in zip(signs, base))
            terms.append((v, w * chi / 2**n))
    return _merge(terms, k)


@functools.cache
def _pattern(counts: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], Fraction], ...]:
    """For positive `counts` (the orders of a partial on its support), the
    directions on that support and their weights, `∂^counts f = sum w D^k_v f`:
    the smaller of the signed and the unsigned sets, both exact."""
    unsigned = _unsigned(counts)
    signed = _signed(counts)
    if signed is not None and len(signed) < len(unsigned):
        return signed
    return unsigned


def partial_directions(
    partials: Sequence[Sequence[int]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Directions and weights for the partials `partials[j]` (each a multi-index:
    `n` non-negative orders, all of the same total order `k >= 1`).

    **Returns:** `(V, W)`, float64 arrays of shapes `(R, n)` and `(R, J)` with
    `∂^{partials[j]} f = sum_r W[r, j] D^k_{V[r]} f`.
    """
    rows: dict[tuple[int, ...], np.ndarray] = {}
    J = len(partials)
    for j, alpha in enumerate(partials):
        support = [i for i, a in enumerate(alpha) if a]
        for v_s, w in _pattern(tuple(alpha[i] for i in support)):
            v = [0] * n
            for i, c in zip(support, v_s):
                v[i] = c
            row = rows.setdefault(tuple(v), np.zeros(J))
            row[j] += float(w)
    V = np.array(list(rows), dtype=np.float64).reshape(-1, n)
    W = np.array(list(rows.values()), dtype=np.float64).reshape(-1, J)
    return V, W


def biharmonic_directions(d: int) -> tuple[np.ndarray, np.ndarray]:
    """The `d^2` directions and weights of the biharmonic (see the module
    docstring): `Δ^2 f = sum_r w[r] D^4_{V[r]} f`, `V` `(d^2, d)`, `w` `(d^2,)`."""
    eye = np.eye(d)
    pairs = list(itertools.combinations(range(d), 2))
    plus = np.array([eye[i] + eye[j] for i, j in pairs]).reshape(-1, d)
    minus = np.array([eye[i] - eye[j] for i, j in pairs]).reshape(-1, d)
    V = np.concatenate([eye, plus, minus])
    w = np.concatenate([np.full(d, 1 - (d - 1) / 3), np.full(2 * len(pairs), 1 / 6)])
    return V, w
