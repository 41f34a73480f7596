"""Collapsed Taylor-mode rules for bilinear primitives, `y = B(a, b)`:

$$T_y = B(T_a, b) + B(a, T_b), \\qquad
S_y = B(S_a, b) + B(a, S_b) + 2 \\textstyle\\sum_k w_k B(T_a[k], T_b[k]).$$
"""

from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.extend import core
from jaxtyping import Array, ArrayLike

from .. import jet
from ..jet import Jet, JetContext
from ..registry import register_rule


__all__: list[str] = []


def _mul_rule(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    a, b = jets
    (y,) = jet.bind(eqn, [a.primal, b.primal])
    ta, tb = jet.lift(a.tangent, jnp.ndim(y)), jet.lift(b.tangent, jnp.ndim(y))
    t = jet.add_terms(jet.mul_terms(b.primal, ta), jet.mul_terms(a.primal, tb))
    s = jet.add_terms(
        jet.mul_terms(b.primal, a.second), jet.mul_terms(a.primal, b.second)
    )
    if ta is not None and tb is not None:
        s = jet.add_terms(s, 2 * ctx.quad(ta, tb))
    return jet.single_jet(y, t, s)


def _dot(a: ArrayLike, b: ArrayLike, dims: Any, params: dict[str, Any]) -> Array:
    return lax.dot_general(
        a,
        b,
        dims,
        precision=params.get("precision"),
        preferred_element_type=params.get("preferred_element_type"),
    )


def _dot_tangent_lhs(t: Array, b: ArrayLike, params: dict[str, Any]) -> Array:
    """`dot_general(t[k], b)` for every k, with K as one more free lhs dimension."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    out = _dot(
        t, b, ((jet.shift_axes(lc), tuple(rc)), (jet.shift_axes(lb), tuple(rb))), params
    )
    # The result is (batch..., K, lhs free..., rhs free...): K goes to the front.
    return jnp.moveaxis(out, len(lb), 0) if lb else out


def _dot_tangent_rhs(a: ArrayLike, t: Array, params: dict[str, Any]) -> Array:
    """`dot_general(a, t[k])` for every k.

    Computed as `dot_general(t, a)`, so that the K axis comes out in front with no
    transpose in the common matrix @ vector case (`eqx.nn.Linear`).
    """
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    out = _dot(
        t, a, ((jet.shift_axes(rc), tuple(lc)), (jet.shift_axes(rb), tuple(lb))), params
    )
    # The result is (batch, K, rhs free, lhs free); we want (K, batch, lhs free,
    # rhs free).
    nb = len(lb)
    n_rfree = t.ndim - 1 - len(rc) - len(rb)
    n_lfree = jnp.ndim(a) - len(lc) - len(lb)
    lfree = range(nb + 1 + n_rfree, nb + 1 + n_rfree + n_lfree)
    perm = (nb, *range(nb), *lfree, *range(nb + 1, nb + 1 + n_rfree))
    return out if perm == tuple(range(out.ndim)) else lax.transpose(out, perm)


def _dot_general(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    a, b = jets
    p = eqn.params
    (y,) = jet.bind(eqn, [a.primal, b.primal])
    dims = p["dimension_numbers"]
    t = jet.add_terms(
        None if a.tangent is None else _dot_tangent_lhs(a.tangent, b.primal, p),
        None if b.tangent is None else _dot_tangent_rhs(a.primal, b.tangent, p),
    )
    s = jet.add_terms(
        None if a.second is None else _dot(a.second, b.primal, dims, p),
        None if b.second is None else _dot(a.primal, b.second, dims, p),
    )
    if a.tangent is not None and b.tangent is not None:
        # sum_k w_k B(T_a[k], T_b[k]): contract K along with the usual contracting
        # dimensions, so no (K, *out.shape) intermediate is formed.
        (lc, rc), (lb, rb) = dims
        w = ctx.weights.astype(a.tangent.dtype)
        wa = a.tangent * w.reshape((-1,) + (1,) * jnp.ndim(a.primal))
        cross_dims = (
            ((0, *jet.shift_axes(lc)), (0, *jet.shift_axes(rc))),
            (jet.shift_axes(lb), jet.shift_axes(rb)),
        )
        s = jet.add_terms(s, 2 * _dot(wa, b.tangent, cross_dims, p))
    return jet.single_jet(y, t, s)


register_rule("mul", _mul_rule, bilinear=True)
register_rule("dot_general", _dot_general, bilinear=True)
