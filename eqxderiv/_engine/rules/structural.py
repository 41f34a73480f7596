"""Collapsed Taylor-mode rules for primitives that select or rearrange entries
by value: the extrema of `reduce_max`/`reduce_min`, `sort`, an overwriting
`scatter`. Each is locally a fixed selection or permutation, which every term
follows.
"""

import jax.numpy as jnp
from jax import lax
from jax.extend import core

from ..jet import Jet, JetContext, bind, shift_axes
from ..registry import fallback, linear_rule, register_rule


__all__: list[str] = []


def _reduce_chooser(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    (x,) = jets
    assert x.tangent is not None
    axes = tuple(eqn.params["axes"])
    (y,) = bind(eqn, [x.primal])
    # Follow the arg-extremum; ties share the derivative evenly, as in jax.
    hit = jnp.equal(x.primal, jnp.expand_dims(y, axes)).astype(y.dtype)
    hit = hit / jnp.sum(hit, axis=axes, keepdims=True)
    t = jnp.sum(x.tangent * hit, axis=shift_axes(axes))
    s = None if x.second is None else jnp.sum(x.second * hit, axis=axes)
    return [Jet(y, t, s)]


def _scatter(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    # With unique indices an overwriting scatter is linear in (operand, updates).
    # With duplicates, which update wins is up to the backend and might differ
    # between the primal and the tangents, so leave that case to jax's own rule.
    if eqn.params["unique_indices"]:
        return linear_rule([0, 2])(ctx, eqn, jets)
    return fallback(ctx, eqn, jets)


def _sort(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    # Sorting permutes: sort an iota along with the operands to learn the
    # permutation, then apply it to the tangents and second-order terms.
    dim = eqn.params["dimension"]
    shape = jnp.shape(jets[0].primal)
    iota = lax.broadcasted_iota(jnp.int32, shape, dim)
    *outs, perm = lax.sort(
        (*(jnp.asarray(j.primal) for j in jets), iota),
        dimension=dim,
        is_stable=eqn.params["is_stable"],
        num_keys=eqn.params["num_keys"],
    )
    result = []
    for o, j in zip(outs, jets):
        t = s = None
        if j.tangent is not None:
            t = jnp.take_along_axis(j.tangent, perm[None], axis=dim + 1)
        if j.second is not None:
            s = jnp.take_along_axis(j.second, perm, axis=dim)
        result.append(Jet(o, t, s))
    return result


register_rule("scatter", _scatter)
register_rule("sort", _sort)
register_rule("reduce_max", _reduce_chooser)
register_rule("reduce_min", _reduce_chooser)
