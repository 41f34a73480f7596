"""Collapsed Taylor-mode rules for convolutions, products and cumulative
reductions (registered into the engine's rule table on import).

Notation as in `eqxderiv._engine.jet`: a value `u` carries the jet `(u, T_u, S_u)`
with `T_u[k]` its derivative along the direction `v_k` and
`S_u = sum_k w_k d²/ds² u(x + s v_k)`.

- `conv_general_dilated` is bilinear, `y = B(l, r)`:
  `T_y[k] = B(T_l[k], r) + B(l, T_r[k])`,
  `S_y = B(S_l, r) + B(l, S_r) + 2 sum_k w_k B(T_l[k], T_r[k])`.
  The K directions are folded into a dimension of the convolution itself, so each
  term is one convolution.
- `reduce_prod` is a balanced tree of elementwise products, each propagated with
  the product rule; no division by the product, so zeros are exact.
- `cumprod`, `cummax`, `cummin` and `cumlogsumexp` are differentiated by jax as
  `lax.associative_scan` of their combining function; the jaxpr of that scan is
  interpreted here, so the tie conventions of `max`/`min` are jax's own.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core
from jaxtyping import Array, ArrayLike

from ..interpreter import eval_jaxpr
from ..jet import Jet, JetContext, add_terms, bind
from ..registry import register_rule


__all__: list[str] = []


# ---- conv_general_dilated -------------------------------------------------------


def _conv(eqn: core.JaxprEqn, lhs: ArrayLike, rhs: ArrayLike) -> Array:
    """The equation's convolution applied to other operands with the same layout
    and group counts (only the sizes of batch and feature dimensions may differ)."""
    if eqn.params.get("out_sharding") is not None:
        # A sharding names the primal output's shape; the folded outputs differ.
        eqn = eqn.replace(params={**eqn.params, "out_sharding": None})
    (out,) = bind(eqn, [lhs, rhs])
    return out


def _fold(t: Array, dim: int, groups: int = 1) -> Array:
    """Merges the leading K axis of `t` into dimension `dim` of `t[k]`.

    That dimension, of size `G n` with `G = groups` contiguous groups, becomes one
    of size `G K n`, laid out `(G, K, n)`: every group keeps its own entries,
    now for all K directions. A grouped convolution then sees, per group, K times
    as many batch elements or features, and the groups still line up.
    """
    k = t.shape[0]
    t = jnp.moveaxis(t, 0, dim)  # (..., K, G n, ...)
    head, size, tail = t.shape[:dim], t.shape[dim + 1], t.shape[dim + 2 :]
    if groups > 1:
        t = t.reshape(head + (k, groups, size // groups) + tail)
        t = jnp.swapaxes(t, dim, dim + 1)
    return t.reshape(head + (k * size,) + tail)


def _unfold(y: Array, dim: int, k: int, groups: int = 1) -> Array:
    """The inverse of `_fold`: dimension `dim` of `y`, laid out `(G, K, n)`, is
    split and its K axis moved to the front."""
    head, size, tail = y.shape[:dim], y.shape[dim], y.shape[dim + 1 :]
    n = size // (k * groups)
    y = y.reshape(head + (groups, k, n) + tail)
    y = jnp.moveaxis(y, dim + 1, 0)
    return y.reshape((k,) + head + (groups * n,) + tail)


def _conv_tangent_lhs(eqn: core.JaxprEqn, t: Array, rhs: ArrayLike) -> Array:
    """`conv(t[k], rhs)` for every k, as one convolution with K folded into the
    batch dimension."""
    p = eqn.params
    lhs_spec, _, out_spec = p["dimension_numbers"]
    k = t.shape[0]
    # With batch groups, the lhs batch is `B` contiguous groups and output batch
    # element j of group g comes from lhs batch element `g (N / B) + j`; folding
    # `(B, K, N / B)` keeps that, and the output batch comes out `(K, N / B)`.
    lhs = _fold(t, lhs_spec[0], p["batch_group_count"])
    return _unfold(_conv(eqn, lhs, rhs), out_spec[0], k)


def _conv_tangent_rhs(eqn: core.JaxprEqn, lhs: ArrayLike, t: Array) -> Array:
    """`conv(lhs, t[k])` for every k, as one convolution with K folded into the
    kernel's output features."""
    p = eqn.params
    _, rhs_spec, out_spec = p["dimension_numbers"]
    k = t.shape[0]
    # Feature groups and batch groups both split the output features into
    # contiguous groups (at most one of the two counts exceeds one).
    groups = p["feature_group_count"] * p["batch_group_count"]
    rhs = _fold(t, rhs_spec[0], groups)
    return _unfold(_conv(eqn, lhs, rhs), out_spec[1], k, groups)


def _conv_cross(eqn: core.JaxprEqn, wa: Array, b: Array) -> Array:
    """`sum_k conv(wa[k], b[k])`: K is folded into the contracted (input feature)
    dimension of both operands, so the sum over k is part of the convolution's own
    contraction and no `(K, *out.shape)` intermediate is formed."""
    p = eqn.params
    lhs_spec, rhs_spec, _ = p["dimension_numbers"]
    # lhs features are `G` contiguous groups of `C / G`, matched with the kernel's
    # `C / G` input features: fold as `(G, K, C / G)` against `(K, C / G)`.
    lhs = _fold(wa, lhs_spec[1], p["feature_group_count"])
    rhs = _fold(b, rhs_spec[1])
    return _conv(eqn, lhs, rhs)


def _conv_general_dilated(
    ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]
) -> list[Jet]:
    a, b = jets
    y = _conv(eqn, a.primal, b.primal)
    t = add_terms(
        None if a.tangent is None else _conv_tangent_lhs(eqn, a.tangent, b.primal),
        None if b.tangent is None else _conv_tangent_rhs(eqn, a.primal, b.tangent),
    )
    s = add_terms(
        None if a.second is None else _conv(eqn, a.second, b.primal),
        None if b.second is None else _conv(eqn, a.primal, b.second),
    )
    if a.tangent is not None and b.tangent is not None:
        w = ctx.weights.astype(a.tangent.dtype)
        wa = a.tangent * w.reshape((-1,) + (1,) * (a.tangent.ndim - 1))
        s = add_terms(s, 2 * _conv_cross(eqn, wa, b.tangent))
    return [Jet(y, t, s)]


register_rule("conv_general_dilated", _conv_general_dilated, bilinear=True)


# ---- reduce_prod ----------------------------------------------------------------


def _reduce_prod(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
    """`prod_i x_i` as a balanced tree of pairwise products.

    Each product `c = a b` is propagated with the product rule,
    `T_c = b T_a + a T_b`, `S_c = b S_a + a S_b + 2 sum_k w_k T_a[k] T_b[k]`,
    which never divides by a value: exact with any number of zero entries (the
    closed form `T_y = sum_i (y / x_i) T_x[i]` is not). The tree has depth
    `log2 n`, and its total work is that of a flat product.
    """
    (x,) = jets
    assert x.tangent is not None
    (y,) = bind(eqn, [x.primal])
    axes = tuple(eqn.params["axes"])
    p = jnp.asarray(x.primal)
    n = math.prod(p.shape[i] for i in axes)
    if n == 0:
        return [Jet(y, None, None)]  # the empty product is the constant 1
    keep = tuple(i for i in range(p.ndim) if i not in axes)
    perm = axes + keep
    out_shape = tuple(p.shape[i] for i in keep)

    # The reduced entries along one leading axis (behind K for the tangents).
    def flat(v: Array, lead: tuple[int, ...]) -> Array:
        order = tuple(range(len(lead))) + tuple(len(lead) + i for i in perm)
        return lax.transpose(v, order).reshape(lead + (n,) + out_shape)

    k = x.tangent.shape[0]
    u = flat(p, ())
    t = flat(x.tangent, (k,))
    s = None if x.second is None else flat(x.second, ())
    while n > 1:
        h = n // 2
        ua, ub = u[:h], u[h : 2 * h]
        ta, tb = t[:, :h], t[:, h : 2 * h]
        prod_t = ub * ta + ua * tb
        prod_s = 2 * ctx.quad(ta, tb)
        if s is not None:
            prod_s = prod_s + ub * s[:h] + ua * s[h : 2 * h]
        if n % 2:
            # The odd one out goes on to the next level as it is.
            rest_s = jnp.zeros_like(u[2 * h :]) if s is None else s[2 * h :]
            u = jnp.concatenate([ua * ub, u[2 * h :]])
            t = jnp.concatenate([prod_t, t[:, 2 * h :]], axis=1)
            s = jnp.concatenate([prod_s, rest_s])
        else:
            u, t, s = ua * ub, prod_t, prod_s
        n = h + n % 2
    return [Jet(y, t[:, 0], None if s is None else s[0])]


register_rule("reduce_prod", _reduce_prod)


# ---- cumulative reductions ------------------------------------------------------


def logaddexp(a: Array, b: Array) -> Array:
    """`log(exp(a) + exp(b))`, written so that its derivatives of every order come
    out right through the elementwise rules.

    `lax.logaddexp` is a `custom_jvp` whose primal takes `|a - b|`, which has a
    kink at `a == b`: the engine, which propagates through primal
    implementations, would give a wrong second derivative at ties. Here the shift
    `m` only guards the exponentials against overflow; the expression is
    `log(exp(a) + exp(b))` for every `m`, and `m` carries no derivative. (Where
    both are infinite `m` is replaced by 0, which gives the same value.)
    """
    m = lax.stop_gradient(lax.max(a, b))
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))
    return m + jnp.log(jnp.exp(a - m) + jnp.exp(b - m))


def _cumulative_rule(combine: Callable[[Array, Array], Array]) -> Callable:
    """Rule for a cumulative reduction that jax differentiates as
    `lax.associative_scan(combine)` (see `_cumulative_jvp_rule` in jax's
    `lax/control_flow/loops.py`).

    The jaxpr of that same scan is interpreted on the jets, so every derivative,
    of first and second order, is that of nested `jax.jvp` of the primitive: in
    particular, for `cummax` and `cummin` ties share the derivative through the
    same tree of pairwise `max`/`min` as in jax (`max(a, b)` gives `1/2` to each
    of two equal operands), which makes the split at repeated values depend on
    their positions exactly as jax's does. The primal is the primitive's own.
    """

    def rule(ctx: JetContext, eqn: core.JaxprEqn, jets: list[Jet]) -> list[Jet]:
        (x,) = jets
        (y,) = bind(eqn, [x.primal])
        scan = functools.partial(
            lax.associative_scan,
            combine,
            axis=eqn.params["axis"],
            reverse=eqn.params["reverse"],
        )
        spec = jax.ShapeDtypeStruct(jnp.shape(x.primal), jnp.result_type(x.primal))
        closed = jax.make_jaxpr(scan)(spec)
        (out,) = eval_jaxpr(ctx, closed.jaxpr, closed.consts, [x])
        return [Jet(y, out.tangent, out.second)]

    return rule


register_rule("cumprod", _cumulative_rule(lax.mul))
register_rule("cummax", _cumulative_rule(lax.max))
register_rule("cummin", _cumulative_rule(lax.min))
register_rule("cumlogsumexp", _cumulative_rule(logaddexp))
