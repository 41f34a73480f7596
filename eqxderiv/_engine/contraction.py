"""The contraction `sum_k w_k <C_k, T_k>` of the output tangents with given
directions (a divergence), taken before the field's trailing affine equations
(its last linear layer, a residual block's sum)."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core
from jaxtyping import Array, ArrayLike

from .jet import Jet, bind
from .registry import RULES, affine_in


__all__ = ["contract", "tail_cotangents"]


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


def tail_cotangents(
    jaxpr: core.Jaxpr, env: dict[Any, Jet], directions: Array, dtype: Any
) -> dict[Any, Array]:
    """The contraction with `directions` pulled back through the trailing affine
    equations that lead only to the output (a network's last linear layer, its
    bias, a residual sum `h + Linear(u)`, reshapes).

    An equation is pulled back through when it is affine (`registry.affine_in`)
    in its operands that carry a tangent, its one output is read by nothing but
    equations already pulled back through (or is the output `jaxpr.outvars[0]`
    and read by nothing else; a value other equations also read has its
    tangents formed anyway, so pulling back past it would only add inner
    products), and each such operand's tangents are real of
    `dtype` (the transpose of a map from complex values, `real`, is complex, and
    its inner product with complex tangents would carry an imaginary part that
    the output's real tangents lack). Where it is, its output's cotangent goes
    to those operands through the transpose of its linear part, which for a
    weight matrix and the coordinate directions of a divergence is the weight
    itself: the same for every sample, so computed once under `vmap`.

    **Returns:** `{var: C_var}`, the cotangents `(K, *var.shape)` of the values
    where the pull-back stops, such that `sum_k w_k <C_k, T_out[k]>` is
    `sum_var sum_k w_k <C_var[k], T_var[k]>`; `{outvars[0]: directions}` when
    there is nothing to pull back through.
    """
    out = jaxpr.outvars[0]
    if isinstance(out, core.Literal):
        return {}
    readers: dict[Any, list[int]] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, core.Literal):
                readers.setdefault(v, []).append(i)
    # Read as another output of the jaxpr: its tangents are wanted as they are.
    external = {v for v in jaxpr.outvars[1:] if not isinstance(v, core.Literal)}

    def tangent(v: Any) -> Array | None:
        return None if isinstance(v, core.Literal) else env[v].tangent

    cts: dict[Any, Array] = {out: directions}
    through: set[int] = set()
    for i in reversed(range(len(jaxpr.eqns))):
        eqn = jaxpr.eqns[i]
        if len(eqn.outvars) != 1 or eqn.outvars[0] not in cts:
            continue
        (y,) = eqn.outvars
        if y in external or any(r not in through for r in readers.get(y, ())):
            continue
        # An equation inside a run of elementwise equations evaluated as one map
        # (`chains.py`): its operands have no jets of their own.
        if any(not isinstance(v, core.Literal) and v not in env for v in eqn.invars):
            continue
        live = [k for k, v in enumerate(eqn.invars) if tangent(v) is not None]
        if not live or not affine_in(eqn, live):
            continue
        if any(jnp.result_type(tangent(eqn.invars[k])) != dtype for k in live):
            continue
        ct = cts.pop(y)
        for k in live:
            v = eqn.invars[k]
            struct = jax.ShapeDtypeStruct(jnp.shape(env[v].primal), dtype)
            transpose = jax.linear_transpose(_linear_part(eqn, k, env), struct)
            back = jax.vmap(lambda c, tr=transpose: tr(c)[0])(ct)
            cts[v] = cts[v] + back if v in cts else back
        through.add(i)
    return cts


def contract(
    jaxpr: core.Jaxpr,
    env: dict[core.Var, Jet],
    t: Array,
    weights: Array,
    directions: Array,
) -> Array:
    """`sum_k w_k <C_k, T_k>` for the output tangents `T`.

    Where the output is an affine map of earlier values (a last linear layer, a
    residual block's sum), this is taken at those values, with the directions
    pulled back (`tail_cotangents`): for the coordinate directions of a
    divergence the pulled-back directions are products of weight matrices,
    computed once under `vmap`, and the per-sample cost is an inner product
    instead of the last layer's `(K, m, h)` tangent product (and, for a
    residual block `h + Linear(u)`, instead of that block's). The tangents past
    those values then go unused unless the caller wants them, and XLA drops
    them.
    """
    w = weights.astype(t.dtype)
    directions = directions.astype(t.dtype)
    if not jaxpr.outvars:
        return _weighted_inner(w, directions, t)
    out = jaxpr.outvars[0]
    pairs = []
    for v, c in tail_cotangents(jaxpr, env, directions, t.dtype).items():
        # The output's own tangents as the caller has them (instantiated, of the
        # output's shape); any other value's from the pass.
        tv = t if v is out else env[v].tangent
        if tv is None:
            continue
        if jnp.shape(tv) != jnp.shape(c):
            # Not the K directions of the contraction (tangents that are not
            # `(K, *shape)`): contracted at the output instead.
            return _weighted_inner(w, directions, t)
        pairs.append((c, tv))
    total = jnp.zeros((), t.dtype)
    for c, tv in pairs:
        total = total + _weighted_inner(w, c, tv)
    return total


def _weighted_inner(w: Array, a: Array, b: Array) -> Array:
    # Multiply-and-reduce fuses into one loop over the per-sample tangents; as a
    # dot_general it needed a transpose of the batched operand first.
    wa = a * w.reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.sum(wa * b)
