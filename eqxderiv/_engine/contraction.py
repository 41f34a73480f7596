"""The contraction `sum_k w_k <C_k, T_k>` of the output tangents with given
directions (a divergence), taken before the field's last linear layer."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core
from jaxtyping import Array, ArrayLike

from .jet import Jet, bind
from .registry import RULES, affine_in


__all__ = ["contract", "linear_tail"]


def _value(v: Any, env: dict[Any, Jet]) -> ArrayLike:
    return v.val if isinstance(v, core.Literal) else env[v].primal


def _linear_part(
    eqn: core.JaxprEqn, i: int, env: dict[Any, Jet]
) -> Callable[[Array], Array]:
    """`u -> eqn(..., u at operand i, ...)` minus its value at `u = 0`, for an
    equation affine in operand `i`: the other operands that it is (jointly)
    linear in are replaced by zeros, the rest (parameters, the other factor of a
    product) kept."""
    info = RULES[eqn.primitive.name]
    linear = set() if info.bilinear else info.linear_positions(len(eqn.invars))
    values = [_value(v, env) for v in eqn.invars]

    # The zeros are numpy constants: they add no equation to the program, and the
    # transpose of the linear part never reads them.
    args = [
        np.zeros(jnp.shape(a), jnp.result_type(a)) if j in linear else a
        for j, a in enumerate(values)
    ]

    def part(u: Array) -> Array:
        (y,) = bind(eqn, [u if j == i else a for j, a in enumerate(args)])
        return y

    return part


def linear_tail(
    jaxpr: core.Jaxpr, env: dict[Any, Jet]
) -> tuple[Any, Callable[[Array], Array]] | None:
    """The output as `L(mid) + c`, for the longest trailing chain of equations that
    is affine (`registry.affine_in`) in one tangent-carrying variable `mid` (a
    network's last linear layer: `dot_general` with a constant weight, a bias
    `add`, reshapes).

    Returns `(mid, L)` with `L` the *linear* part of the chain, or `None` when the
    output is not produced that way.
    """
    producer = {v: e for e in jaxpr.eqns for v in e.outvars}

    def tangent(v: Any) -> Array | None:
        return None if isinstance(v, core.Literal) else env[v].tangent

    steps: list[Callable[[Array], Array]] = []
    var = jaxpr.outvars[0]
    while not isinstance(var, core.Literal) and var in producer:
        eqn = producer[var]
        # An equation inside a run of elementwise equations evaluated as one map
        # (`chains.py`): its operands have no jets of their own.
        if any(not isinstance(v, core.Literal) and v not in env for v in eqn.invars):
            break
        live = [i for i, v in enumerate(eqn.invars) if tangent(v) is not None]
        if len(live) != 1 or len(eqn.outvars) != 1 or not affine_in(eqn, live):
            break
        (i,) = live
        steps.append(_linear_part(eqn, i, env))
        var = eqn.invars[i]
    if not steps:
        return None

    def linear(u: Array) -> Array:
        for step in reversed(steps):
            u = step(u)
        return u

    return var, linear


def contract(
    jaxpr: core.Jaxpr,
    env: dict[core.Var, Jet],
    t: Array,
    weights: Array,
    directions: Array,
) -> Array:
    """`sum_k w_k <C_k, T_k>` for the output tangents `T`.

    When the output is a linear map `L` of an intermediate `mid` (a last linear
    layer), this is `sum_k w_k <L^T C_k, T_mid[k]>`: `L^T C` does not depend on the
    sample (for the coordinate directions of a divergence it is the weight matrix
    itself), so under `vmap` it is computed once, and the per-sample cost is an
    inner product instead of the last layer's `(K, m, h)` tangent product. The
    full `T` then goes unused unless the caller wants it, and XLA drops it.
    """
    w = weights.astype(t.dtype)
    tail = linear_tail(jaxpr, env) if jaxpr.outvars else None
    mid_t = None if tail is None else env[tail[0]].tangent
    # Only through a real intermediate: the transpose of a map from complex
    # values (`real`) is complex, and its inner product with complex tangents
    # would carry an imaginary part that the output's real tangents lack.
    if tail is not None and mid_t is not None and mid_t.dtype == t.dtype:
        mid, linear = tail
        struct = jax.ShapeDtypeStruct(jnp.shape(env[mid].primal), mid_t.dtype)
        transpose = jax.linear_transpose(linear, struct)
        back = jax.vmap(lambda c: transpose(c)[0])(directions.astype(t.dtype))
        return _weighted_inner(w, back, mid_t)
    return _weighted_inner(w, directions.astype(t.dtype), t)


def _weighted_inner(w: Array, a: Array, b: Array) -> Array:
    # Multiply-and-reduce fuses into one loop over the per-sample tangents; as a
    # dot_general it needed a transpose of the batched operand first.
    wa = a * w.reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.sum(wa * b)
