"""Collapsed second-order forward (Taylor-mode) propagation over jaxprs.

Given a function `fn(*primals) -> Array`, K first-order directions `v_k` and K
weights `w_k`, `collapsed_jet` pushes through the traced computation

- the primal value `u`,
- its K directional derivatives `T_u` (an array of shape `(K, *u.shape)`),
- ONE weighted, summed second-order term `S_u = sum_k w_k d²/ds² u(x + s v_k)`.

This is the "forward Laplacian" (Li et al. 2024) or "collapsed Taylor mode"
(Dangel et al. 2025) idea: summing the K second-order terms as soon as they appear
means neither a Hessian nor K separate second-order arrays is ever formed. Every
primitive maps the triple `(u, T_u, S_u)` of its inputs to that of its outputs:

- linear `L`: `T_y = L(T_u)`, `S_y = L(S_u)`;
- elementwise `g`: `T_y = g' T_u`, `S_y = g' S_u + g'' sum_k w_k T_u[k]²`;
- bilinear `B`: `T_y = B(T_a, b) + B(a, T_b)`,
  `S_y = B(S_a, b) + B(a, S_b) + 2 sum_k w_k B(T_a[k], T_b[k])`.

A tangent of `None` means "identically zero" and implies a zero second-order term
(a value that does not depend on the inputs has no curvature), so constants and
parameters cost nothing. A second-order term of `None` next to a real tangent
means "zero", which is the case for anything that has only passed through linear
maps; it lets those maps skip their second-order work.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.extend import core
from jaxtyping import Array, ArrayLike


__all__ = ["Jet", "JetContext", "Rule"]


class Jet(NamedTuple):
    """The jet `(u, T_u, S_u)` of one value: its primal, its K directional
    derivatives and its collapsed second-order term (see the module docstring).
    `None` means zero."""

    # The primal may be a jaxpr literal (a numpy or Python scalar), hence ArrayLike.
    primal: ArrayLike
    tangent: Array | None  # (K, *primal.shape); None == zero
    second: Array | None  # primal.shape; None == zero


class JetContext(NamedTuple):
    """What every rule may need besides the jets: the K weights."""

    weights: Array  # (K,)

    def wsum(self, x: Array) -> Array:
        """`sum_k w_k x[k]` over the leading K axis."""
        # Multiply-then-reduce fuses into one loop in XLA; a dot with the weight
        # vector (tensordot) was measurably slower on CPU in the MLP benchmark.
        w = self.weights.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.sum(w * x, axis=0)

    def quad(self, a: Array, b: Array) -> Array:
        """`sum_k w_k a[k] b[k]`: the collapsed product of two tangents."""
        return self.wsum(a * b)


# A rule maps `(ctx, eqn, jets)`, where at least one of the equation's input jets
# carries a tangent, to the jets of the equation's outputs.
Rule = Callable[[JetContext, core.JaxprEqn, list[Jet]], list[Jet]]


def is_float(x: ArrayLike) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact))


def zeros(x: ArrayLike) -> Array:
    return jnp.zeros(jnp.shape(x), jnp.result_type(x))


def add_terms(*xs: Array | None) -> Array | None:
    """Sum that reads `None` as zero, and stays `None` if every term is zero."""
    terms = [x for x in xs if x is not None]
    if not terms:
        return None
    out = terms[0]
    for x in terms[1:]:
        out = out + x
    return out


def mul_terms(c: ArrayLike | None, x: Array | None) -> Array | None:
    return None if c is None or x is None else jnp.multiply(c, x)


def lift(t: Array | None, ndim: int) -> Array | None:
    """Let the tangent of a rank-0 operand broadcast against rank-`ndim` values.

    Elementwise lax ops accept rank-0 operands next to arrays; such an operand's
    tangent has shape (K,) and needs trailing unit axes behind the K axis.
    """
    if t is None or t.ndim - 1 == ndim:
        return t
    return t.reshape(t.shape[:1] + (1,) * ndim)


def fit(t: Array | None, out: ArrayLike, k_axis: bool) -> Array | None:
    """Broadcast (after a rank-0 operand) and cast a term to the output's shape."""
    if t is None:
        return None
    shape = (t.shape[:1] if k_axis else ()) + jnp.shape(out)
    if t.shape != shape:
        t = jnp.broadcast_to(t, shape)
    return t.astype(jnp.result_type(out))


def single_jet(y: ArrayLike, t: Array | None, s: Array | None) -> list[Jet]:
    """The single output jet of an elementwise rule, in the output's exact shape."""
    return [Jet(y, fit(t, y, True), fit(s, y, False))]


def bind(eqn: core.JaxprEqn, args: Sequence[ArrayLike]) -> list[Any]:
    """Evaluate one equation on plain values; always returns a list of outputs."""
    params = eqn.primitive.get_bind_params(eqn.params)
    out = eqn.primitive.bind(*args, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def const_jets(xs: Sequence[ArrayLike]) -> list[Jet]:
    return [Jet(x, None, None) for x in xs]


def primals_of(jets: Sequence[Jet]) -> list[ArrayLike]:
    return [j.primal for j in jets]


def is_real(x: ArrayLike) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.floating))


def shift_axes(axes: Sequence[int]) -> tuple[int, ...]:
    return tuple(i + 1 for i in axes)
