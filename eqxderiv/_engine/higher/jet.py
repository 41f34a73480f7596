"""Collapsed Taylor-mode propagation of order K over jaxprs: the data types.

Along R directions `v_r` and with a `(R, J)` matrix of weights `W`, every value
`u` of the traced computation carries

- its primal `u`;
- for each order `k = 1, ..., K - 1`, its k-th directional derivatives
  `u_k[r] = d^k/ds^k u(x + s v_r)` at `s = 0` (an array `(R, *u.shape)`);
- ONE collapsed top-order term per weight column,
  `u_K[j] = sum_r W[r, j] d^K/ds^K u(x + s v_r)` (an array `(J, *u.shape)`).

This is the order-K form of the collapsed Taylor mode of `../jet.py` (Dangel et
al., 2025): the top-order coefficient enters every rule linearly, so it can be
summed over the directions as soon as it appears; only the lower orders are
kept per direction. Coefficients are derivatives, not Taylor coefficients
(no `1/k!`), so that a linear map acts on every order alike, a product follows
Leibniz's rule `(ab)_k = sum_j C(k, j) a_j b_{k-j}` and an elementwise function
Faà di Bruno's formula.

`None` means "identically zero" for any coefficient; a value whose coefficients
are all `None` does not depend on the inputs.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


__all__ = ["TaylorContext", "TaylorJet"]


class TaylorJet(NamedTuple):
    """The jet of one value: primal, per-direction coefficients of orders
    `1, ..., K - 1` and the collapsed top-order term (see the module docstring).
    `None` means zero."""

    primal: ArrayLike
    lower: tuple[Array | None, ...]  # K - 1 entries, each (R, *shape) or None
    top: Array | None  # (J, *shape) or None

    @property
    def live(self) -> bool:
        """Whether the value depends on the inputs."""
        return self.top is not None or any(c is not None for c in self.lower)


class TaylorContext(NamedTuple):
    """What every rule needs besides the jets: the order and the weights."""

    order: int
    weights: Array  # (R, J)

    def wsum(self, x: Array) -> Array:
        """`sum_r W[r, j] x[r]` over the leading R axis: `(R, *s) -> (J, *s)`."""
        w = self.weights.astype(x.dtype)
        if w.shape[1] == 1:
            # Multiply-then-reduce fuses into one loop (as in `../jet.py`).
            col = w[:, 0].reshape((-1,) + (1,) * (x.ndim - 1))
            return jnp.sum(col * x, axis=0)[None]
        return jnp.tensordot(w, x, axes=[[0], [0]])


def const_jets(xs: Sequence[ArrayLike], order: int) -> list[TaylorJet]:
    return [TaylorJet(x, (None,) * (order - 1), None) for x in xs]


def coefficients(jet: TaylorJet) -> list[ArrayLike | None]:
    """`[primal, u_1, ..., u_{K-1}, u_K]`, indexed by order."""
    return [jet.primal, *jet.lower, jet.top]


def is_float(x: ArrayLike) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact))


def lift(c: Array | None, ndim: int) -> Array | None:
    """Let the coefficient `(L,)` of a rank-0 operand broadcast against values of
    rank `ndim` (trailing unit axes behind the leading axis)."""
    if c is None or c.ndim - 1 == ndim:
        return c
    return c.reshape(c.shape[:1] + (1,) * ndim)


def fit(c: Array | None, y: ArrayLike) -> Array | None:
    """A coefficient `(L, ...)` broadcast to `(L, *y.shape)`, in `y`'s dtype."""
    if c is None:
        return None
    c = lift(c, jnp.ndim(y))
    assert c is not None
    shape = c.shape[:1] + jnp.shape(y)
    if c.shape != shape:
        c = jnp.broadcast_to(c, shape)
    return c.astype(jnp.result_type(y))
