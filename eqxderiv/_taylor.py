"""Collapsed second-order forward (Taylor-mode) propagation over jaxprs.

Given a function `fn(*primals) -> Array`, K first-order directions and K weights,
[`collapsed_jet`][] pushes through the traced computation

- the primal value `u`,
- its K directional derivatives `T_u` (an array of shape `(K, *u.shape)`),
- ONE weighted, summed second-order term `S_u = sum_k w_k d²/ds² u(x + s v_k)`.

This is the "forward Laplacian" (Li et al. 2024) or "collapsed Taylor mode"
(Dangel et al. 2025) idea: collapsing the K second-order terms into a single
array as early as possible means no Hessian and no K second-order arrays are
ever formed. Every primitive maps `(u, T_u, S_u)` of its inputs to the same
triple for its outputs:

- linear `L`: `T_y = L(T_u)`, `S_y = L(S_u)`;
- elementwise `g`: `T_y = g' T_u`, `S_y = g' S_u + g'' sum_k w_k T_u[k]²`;
- bilinear `B`: `T_y = B(T_a, b) + B(a, T_b)`,
  `S_y = B(S_a, b) + B(a, S_b) + 2 sum_k w_k B(T_a[k], T_b[k])`.

A tangent of `None` means "identically zero", and it implies that the second-order
term is zero too (a value that does not depend on the inputs has no curvature).
`S = None` with a non-`None` tangent means the second-order term is zero, which
is the case for everything that only passed through linear maps.
"""

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core
from jax.extend.core import primitives as prims
from jaxtyping import Array, Float


__all__ = ["FallbackWarning", "collapsed_jet"]


class FallbackWarning(UserWarning):
    """A primitive without a collapsed Taylor rule was evaluated through nested
    `jax.jvp`. The result is correct but the compiled program may be slower."""


class _Jet(NamedTuple):
    primal: Array
    tangent: Array | None  # (K, *primal.shape); None == zero
    second: Array | None  # primal.shape; None == zero


class _Ctx(NamedTuple):
    weights: Array  # (K,)

    def wsum(self, x: Array) -> Array:
        """`sum_k w_k x[k]` over the leading K axis."""
        return jnp.tensordot(self.weights.astype(x.dtype), x, axes=1)

    def quad(self, a: Array, b: Array) -> Array:
        """`sum_k w_k a[k] b[k]` (the collapsed product of two tangents)."""
        return self.wsum(a * b)


# --------------------------------------------------------------------------------------
# Small helpers.


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _zeros(x: Array) -> Array:
    return jnp.zeros(jnp.shape(x), jnp.result_type(x))


def _add(*xs: Array | None) -> Array | None:
    """Sum that treats `None` as zero (and stays `None` if everything is zero)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _mul(c: Array | None, x: Array | None) -> Array | None:
    return None if c is None or x is None else c * x


def _lift(t: Array | None, ndim: int) -> Array | None:
    """Make a tangent of a rank-0 operand broadcast against rank-`ndim` values.

    lax lets scalars broadcast in elementwise ops; a scalar's tangent has shape (K,)
    so it needs trailing unit axes to line up behind the K axis.
    """
    if t is None or t.ndim - 1 == ndim:
        return t
    return t.reshape(t.shape[:1] + (1,) * ndim)


def _fit_tangent(t: Array | None, out: Array) -> Array | None:
    if t is None:
        return None
    shape = t.shape[:1] + jnp.shape(out)
    return t.astype(out.dtype) if t.shape == shape else jnp.broadcast_to(t, shape).astype(out.dtype)


def _fit_second(s: Array | None, out: Array) -> Array | None:
    if s is None:
        return None
    return s.astype(out.dtype) if s.shape == jnp.shape(out) else jnp.broadcast_to(s, jnp.shape(out)).astype(out.dtype)


def _bind(eqn: core.JaxprEqn, args: Sequence[Any]) -> list[Any]:
    """Evaluate one equation on plain values; always returns a list of outputs."""
    out = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def _const(xs: Sequence[Any]) -> list[_Jet]:
    return [_Jet(x, None, None) for x in xs]


# --------------------------------------------------------------------------------------
# Rules. Each takes (ctx, eqn, jets) with at least one non-None tangent among the
# jets and returns the list of output jets.

Rule = Callable[[_Ctx, core.JaxprEqn, list[_Jet]], list[_Jet]]
_RULES: dict[core.Primitive, Rule] = {}


def _rule(*ps: core.Primitive) -> Callable[[Rule], Rule]:
    def register(f: Rule) -> Rule:
        for p in ps:
            _RULES[p] = f
        return f

    return register


def _zero_rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    return _const(_bind(eqn, [j.primal for j in jets]))


# Piecewise-constant or non-differentiable-by-design: the derivative is zero.
for _p in (prims.sign_p, prims.floor_p, prims.ceil_p, prims.round_p, prims.stop_gradient_p):
    _RULES[_p] = _zero_rule


# ---- linear maps --------------------------------------------------------------------


def _linear_rule(positions: Sequence[int] | None = None) -> Rule:
    """Rule for a primitive that is linear in the operands at `positions` (all if None)
    and merely parameterised by the others (indices, predicates).

    The primitive itself is applied to the tangents, mapped over the K axis with
    `vmap`; this is exactly the op with one more leading dimension, so there is no
    overhead in the compiled program.
    """

    def rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
        lin = range(len(jets)) if positions is None else positions
        outs = _bind(eqn, [j.primal for j in jets])

        def apply(field: str, mapped: bool) -> list[Any] | None:
            vals = [getattr(jets[i], field) if i in lin else None for i in range(len(jets))]
            if all(vals[i] is None for i in lin):
                return None
            args, axes = [], []
            for i, (j, v) in enumerate(zip(jets, vals)):
                if i in lin and v is None:
                    v = _zeros(j.primal)  # an affine operand; its zero is unbatched
                args.append(j.primal if i not in lin else v)
                axes.append(0 if (i in lin and vals[i] is not None) else None)
            if mapped:
                return jax.vmap(lambda *a: _bind(eqn, a), in_axes=axes)(*args)
            return _bind(eqn, args)

        ts = apply("tangent", mapped=True)
        ss = apply("second", mapped=False)
        return [
            _Jet(o, None if ts is None or not _is_float(o) else ts[i], None if ss is None or not _is_float(o) else ss[i])
            for i, o in enumerate(outs)
        ]

    return rule


for _p in (
    prims.reshape_p,
    prims.broadcast_in_dim_p,
    prims.transpose_p,
    prims.squeeze_p,
    prims.rev_p,
    prims.slice_p,
    prims.copy_p,
    prims.reduce_sum_p,
    prims.cumsum_p,
    prims.reduce_precision_p,
    prims.real_p,
    prims.imag_p,
    prims.conj_p,
    prims.dynamic_slice_p,
    prims.gather_p,
):
    _RULES[_p] = _linear_rule([0])
for _p in (prims.concatenate_p, prims.device_put_p):
    _RULES[_p] = _linear_rule()
_RULES[prims.pad_p] = _linear_rule([0, 1])  # pad(x, c) is affine in (x, c)
_RULES[prims.dynamic_update_slice_p] = _linear_rule([0, 1])
_RULES[prims.scatter_add_p] = _linear_rule([0, 2])
_RULES[prims.sharding_constraint_p] = _linear_rule([0])


@_rule(prims.select_n_p)
def _select_n(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    # The predicate is boolean/integer, so it never carries a tangent.
    return _linear_rule(range(1, len(jets)))(ctx, eqn, jets)


# Some primitives only exist in some jax versions; register them by name.
_LINEAR_BY_NAME = {"stack": None, "tile": [0], "split": [0], "unstack": [0], "optimization_barrier": None}


@_rule(prims.convert_element_type_p)
def _convert(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    if not jnp.issubdtype(eqn.params["new_dtype"], jnp.inexact):
        return _zero_rule(ctx, eqn, jets)
    return _linear_rule([0])(ctx, eqn, jets)


@_rule(prims.add_p, prims.sub_p, prims.add_jaxvals_p)
def _add_sub(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    (a, b) = jets
    y = _bind(eqn, [a.primal, b.primal])[0]
    sign = -1 if eqn.primitive is prims.sub_p else 1
    nd = jnp.ndim(y)
    tb = _lift(b.tangent, nd)
    t = _add(_lift(a.tangent, nd), None if tb is None else sign * tb)
    s = _add(a.second, None if b.second is None else sign * b.second)
    return [_Jet(y, _fit_tangent(t, y), _fit_second(s, y))]


@_rule(prims.neg_p)
def _neg(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    (x,) = jets
    return [_Jet(-x.primal, -x.tangent, None if x.second is None else -x.second)]


# ---- bilinear maps ------------------------------------------------------------------


@_rule(prims.mul_p)
def _mul_rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    a, b = jets
    y = _bind(eqn, [a.primal, b.primal])[0]
    nd = jnp.ndim(y)
    ta, tb = _lift(a.tangent, nd), _lift(b.tangent, nd)
    t = _add(_mul(ta, b.primal), _mul(a.primal, tb))
    s = _add(_mul(a.second, b.primal), _mul(a.primal, b.second))
    if ta is not None and tb is not None:
        s = _add(s, 2 * ctx.quad(ta, tb))
    return [_Jet(y, _fit_tangent(t, y), _fit_second(s, y))]


def _dot_tangent_lhs(t: Array, b: Array, params: dict) -> Array:
    """`dot_general(t[k], b)` for every k, with K as an extra free lhs dimension."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    dn = ((tuple(i + 1 for i in lc), tuple(rc)), (tuple(i + 1 for i in lb), tuple(rb)))
    out = lax.dot_general(t, b, dn, precision=params.get("precision"), preferred_element_type=params.get("preferred_element_type"))
    # Output is (batch..., K, lhs free..., rhs free...): bring K to the front.
    return jnp.moveaxis(out, len(lb), 0) if lb else out


def _dot_tangent_rhs(a: Array, t: Array, params: dict) -> Array:
    """`dot_general(a, t[k])` for every k.

    Computed as `dot_general(t, a)` so that the K axis comes out in front without a
    transpose in the common matrix-vector case.
    """
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    dn = ((tuple(i + 1 for i in rc), tuple(lc)), (tuple(i + 1 for i in rb), tuple(lb)))
    out = lax.dot_general(t, a, dn, precision=params.get("precision"), preferred_element_type=params.get("preferred_element_type"))
    # Output is (batch, K, rhs free, lhs free); we want (K, batch, lhs free, rhs free).
    nb = len(lb)
    n_rfree = t.ndim - 1 - len(rc) - len(rb)
    n_lfree = a.ndim - len(lc) - len(lb)
    perm = (nb, *range(nb), *range(nb + 1 + n_rfree, nb + 1 + n_rfree + n_lfree), *range(nb + 1, nb + 1 + n_rfree))
    return out if perm == tuple(range(out.ndim)) else lax.transpose(out, perm)


@_rule(prims.dot_general_p)
def _dot_general(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    a, b = jets
    p = eqn.params
    y = _bind(eqn, [a.primal, b.primal])[0]

    def dot(x: Array, z: Array) -> Array:
        return lax.dot_general(x, z, p["dimension_numbers"], precision=p.get("precision"), preferred_element_type=p.get("preferred_element_type"))

    t = _add(
        None if a.tangent is None else _dot_tangent_lhs(a.tangent, b.primal, p),
        None if b.tangent is None else _dot_tangent_rhs(a.primal, b.tangent, p),
    )
    s = _add(
        None if a.second is None else dot(a.second, b.primal),
        None if b.second is None else dot(a.primal, b.second),
    )
    if a.tangent is not None and b.tangent is not None:
        # sum_k w_k B(T_a[k], T_b[k]): contract K together with the usual contracting
        # dims, so no (K, *out.shape) intermediate is formed.
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        wa = a.tangent * ctx.weights.astype(a.tangent.dtype).reshape((-1,) + (1,) * a.primal.ndim)
        dn = (((0, *(i + 1 for i in lc)), (0, *(i + 1 for i in rc))), (tuple(i + 1 for i in lb), tuple(i + 1 for i in rb)))
        cross = lax.dot_general(wa, b.tangent, dn, precision=p.get("precision"), preferred_element_type=p.get("preferred_element_type"))
        s = _add(s, 2 * cross)
    return [_Jet(y, _fit_tangent(t, y), _fit_second(s, y))]


# ---- elementwise unary --------------------------------------------------------------

# Each entry maps (x, y, params) to (g'(x), g''(x)); g'' is None where it vanishes.
# Written in terms of the output y where that is cheaper or more stable.
_Derivs = Callable[[Array, Array, dict], tuple[Array, Array | None]]


def _ipow(x: Array, n: int) -> Array:
    return jnp.ones_like(x) if n == 0 else x if n == 1 else lax.integer_pow(x, n)


def _integer_pow_derivs(x: Array, y: Array, params: dict) -> tuple[Array, Array | None]:
    n = params["y"]
    d2 = None if n in (0, 1) else n * (n - 1) * _ipow(x, n - 2)
    return n * _ipow(x, n - 1), d2


def _logistic_derivs(x: Array, y: Array, params: dict) -> tuple[Array, Array | None]:
    d1 = y * (1 - y)
    return d1, d1 * (1 - 2 * y)


def _erf_derivs(x: Array, y: Array, params: dict) -> tuple[Array, Array | None]:
    d1 = (2 / math.sqrt(math.pi)) * jnp.exp(-x * x)
    return d1, -2 * x * d1


def _exp2_derivs(x: Array, y: Array, params: dict) -> tuple[Array, Array | None]:
    d1 = math.log(2) * y
    return d1, math.log(2) * d1


_UNARY: dict[core.Primitive, _Derivs] = {
    prims.tanh_p: lambda x, y, p: (1 - y * y, -2 * y * (1 - y * y)),
    prims.exp_p: lambda x, y, p: (y, y),
    prims.exp2_p: _exp2_derivs,
    prims.expm1_p: lambda x, y, p: (y + 1, y + 1),
    prims.log_p: lambda x, y, p: (1 / x, -1 / (x * x)),
    prims.log1p_p: lambda x, y, p: (1 / (1 + x), -1 / ((1 + x) * (1 + x))),
    prims.sin_p: lambda x, y, p: (jnp.cos(x), -y),
    prims.cos_p: lambda x, y, p: (-jnp.sin(x), -y),
    prims.tan_p: lambda x, y, p: (1 + y * y, 2 * y * (1 + y * y)),
    prims.sinh_p: lambda x, y, p: (jnp.cosh(x), y),
    prims.cosh_p: lambda x, y, p: (jnp.sinh(x), y),
    prims.asin_p: lambda x, y, p: (lax.rsqrt(1 - x * x), x * lax.rsqrt(1 - x * x) ** 3),
    prims.acos_p: lambda x, y, p: (-lax.rsqrt(1 - x * x), -x * lax.rsqrt(1 - x * x) ** 3),
    prims.atan_p: lambda x, y, p: (1 / (1 + x * x), -2 * x / (1 + x * x) ** 2),
    prims.asinh_p: lambda x, y, p: (lax.rsqrt(1 + x * x), -x * lax.rsqrt(1 + x * x) ** 3),
    prims.acosh_p: lambda x, y, p: (lax.rsqrt(x * x - 1), -x * lax.rsqrt(x * x - 1) ** 3),
    prims.atanh_p: lambda x, y, p: (1 / (1 - x * x), 2 * x / (1 - x * x) ** 2),
    prims.logistic_p: _logistic_derivs,
    prims.sqrt_p: lambda x, y, p: (0.5 / y, -0.25 / (y * y * y)),
    prims.rsqrt_p: lambda x, y, p: (-0.5 * y * y * y, 0.75 * y * y * y * y * y),
    prims.cbrt_p: lambda x, y, p: (1 / (3 * y * y), -2 / (9 * y * y * y * y * y)),
    prims.erf_p: _erf_derivs,
    prims.erfc_p: lambda x, y, p: tuple(-d for d in _erf_derivs(x, y, p)),
    prims.lgamma_p: lambda x, y, p: (lax.digamma(x), lax.polygamma(jnp.ones_like(x), x)),
    prims.digamma_p: lambda x, y, p: (lax.polygamma(jnp.ones_like(x), x), lax.polygamma(2 * jnp.ones_like(x), x)),
    prims.abs_p: lambda x, y, p: (jnp.sign(x), None),
    prims.integer_pow_p: _integer_pow_derivs,
    prims.square_p: lambda x, y, p: (2 * x, jnp.full_like(x, 2)),
}


def _unary_rule(derivs: _Derivs) -> Rule:
    def rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
        (x,) = jets
        y = _bind(eqn, [x.primal])[0]
        d1, d2 = derivs(x.primal, y, eqn.params)
        t = d1 * x.tangent
        s = _mul(d1, x.second)
        if d2 is not None:
            s = _add(s, d2 * ctx.quad(x.tangent, x.tangent))
        return [_Jet(y, _fit_tangent(t, y), _fit_second(s, y))]

    return rule


for _p, _d in _UNARY.items():
    _RULES[_p] = _unary_rule(_d)


# ---- elementwise binary -------------------------------------------------------------

# Each entry maps (a, b, y, need_a, need_b) to the partials
# (f_a, f_b, f_aa, f_ab, f_bb); None means zero or not needed.
_Partials = Callable[[Array, Array, Array, bool, bool], tuple[Array | None, ...]]


def _div_partials(a: Array, b: Array, y: Array, na: bool, nb: bool) -> tuple[Array | None, ...]:
    inv = 1 / b
    if not nb:
        return inv, None, None, None, None
    return inv, -y * inv, None, -inv * inv, 2 * y * inv * inv


def _pow_partials(a: Array, b: Array, y: Array, na: bool, nb: bool) -> tuple[Array | None, ...]:
    fa = faa = fb = fab = fbb = None
    if na:
        # a^(b-1) computed directly rather than y / a, which breaks at a == 0.
        am1 = lax.pow(a, b - 1)
        fa, faa = b * am1, b * (b - 1) * lax.pow(a, b - 2)
    if nb:
        la = jnp.log(a)
        fb, fbb = y * la, y * la * la
        if na:
            fab = am1 * (1 + b * la)
    return fa, fb, faa, fab, fbb


def _atan2_partials(a: Array, b: Array, y: Array, na: bool, nb: bool) -> tuple[Array | None, ...]:
    r2 = a * a + b * b
    r4 = r2 * r2
    return b / r2, -a / r2, -2 * a * b / r4, (a * a - b * b) / r4, 2 * a * b / r4


def _chooser_partials(a: Array, b: Array, y: Array, na: bool, nb: bool) -> tuple[Array | None, ...]:
    # max/min are piecewise linear; ties split the derivative evenly (as jax does).
    ca = jnp.where(a == y, jnp.where(b == y, 0.5, 1.0), 0.0).astype(y.dtype)
    return ca, 1 - ca, None, None, None


def _rem_partials(a: Array, b: Array, y: Array, na: bool, nb: bool) -> tuple[Array | None, ...]:
    return jnp.ones_like(y), -jnp.trunc(a / b) if nb else None, None, None, None


_BINARY: dict[core.Primitive, _Partials] = {
    prims.div_p: _div_partials,
    prims.pow_p: _pow_partials,
    prims.atan2_p: _atan2_partials,
    prims.max_p: _chooser_partials,
    prims.min_p: _chooser_partials,
    prims.rem_p: _rem_partials,
}


def _binary_rule(partials: _Partials) -> Rule:
    def rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
        a, b = jets
        y = _bind(eqn, [a.primal, b.primal])[0]
        nd = jnp.ndim(y)
        ta, tb = _lift(a.tangent, nd), _lift(b.tangent, nd)
        fa, fb, faa, fab, fbb = partials(a.primal, b.primal, y, ta is not None, tb is not None)
        t = _add(_mul(fa, ta), _mul(fb, tb))
        s = _add(_mul(fa, a.second), _mul(fb, b.second))
        if faa is not None and ta is not None:
            s = _add(s, faa * ctx.quad(ta, ta))
        if fbb is not None and tb is not None:
            s = _add(s, fbb * ctx.quad(tb, tb))
        if fab is not None and ta is not None and tb is not None:
            s = _add(s, 2 * fab * ctx.quad(ta, tb))
        return [_Jet(y, _fit_tangent(t, y), _fit_second(s, y))]

    return rule


for _p, _d in _BINARY.items():
    _RULES[_p] = _binary_rule(_d)


@_rule(prims.clamp_p)
def _clamp(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    lo, x, hi = jets
    y = _bind(eqn, [lo.primal, x.primal, hi.primal])[0]
    nd = jnp.ndim(y)
    # Piecewise linear: each output element copies exactly one operand.
    masks = (x.primal < lo.primal, x.primal > hi.primal)
    masks = (*masks, ~(masks[0] | masks[1]))
    t = s = None
    for m, j in zip(masks, (lo, hi, x)):
        m = m.astype(y.dtype)
        t = _add(t, _mul(m, _lift(j.tangent, nd)))
        s = _add(s, _mul(m, j.second))
    return [_Jet(y, _fit_tangent(t, y), _fit_second(s, y))]


@_rule(prims.reduce_max_p, prims.reduce_min_p)
def _reduce_chooser(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    (x,) = jets
    axes = tuple(eqn.params["axes"])
    y = _bind(eqn, [x.primal])[0]
    # Follow the arg-extremum; ties share the derivative evenly (as jax does).
    hit = (x.primal == jnp.expand_dims(y, axes)).astype(y.dtype)
    hit = hit / jnp.sum(hit, axis=axes, keepdims=True)
    t = jnp.sum(x.tangent * hit, axis=tuple(a + 1 for a in axes))
    s = None if x.second is None else jnp.sum(x.second * hit, axis=axes)
    return [_Jet(y, t, s)]


# ---- higher-order primitives: recurse into the inner jaxpr ---------------------------


def _as_closed(j: Any) -> tuple[core.Jaxpr, Sequence[Any]]:
    return (j.jaxpr, j.consts) if isinstance(j, core.ClosedJaxpr) else (j, ())


def _call_rule(*param_names: str) -> Rule:
    def rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
        name = next(n for n in param_names if n in eqn.params)
        jaxpr, consts = _as_closed(eqn.params[name])
        return _eval_jaxpr(ctx, jaxpr, consts, jets)

    return rule


# jit/pjit (also what filter_jit and many jnp functions produce) and remat: the inner
# jaxpr is inlined into our trace; the surrounding jit/remat only matters for the
# primal program, and XLA sees the whole thing anyway.
_RULES[prims.jit_p] = _call_rule("jaxpr")
_RULES[prims.remat_p] = _call_rule("jaxpr")
_RULES[prims.closed_call_p] = _call_rule("call_jaxpr")
_RULES[prims.call_p] = _call_rule("call_jaxpr")
# custom_jvp/custom_vjp: differentiate the primal implementation. The custom rules
# exist for numerical stability or to define derivatives at kinks (relu at 0, ...);
# for the smooth or piecewise-linear functions they wrap, the primal is as good.
_RULES[prims.custom_jvp_call_p] = _call_rule("call_jaxpr")
_RULES[prims.custom_vjp_call_p] = _call_rule("call_jaxpr", "fun_jaxpr")
_BY_NAME: dict[str, Rule] = {"custom_vjp_call_jaxpr": _call_rule("fun_jaxpr", "call_jaxpr"), "pjit": _call_rule("jaxpr")}
for _name, _pos in _LINEAR_BY_NAME.items():
    _BY_NAME[_name] = _linear_rule(_pos)


# ---- fallback: nested autodiff --------------------------------------------------------

_WARNED: set[str] = set()


def _fallback(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    """Any primitive: first order via `jvp`, the collapsed second order via
    `jvp`-of-`jvp` along each direction (both `vmap`ped over K), plus the first-order
    map applied to the incoming second-order terms."""
    outs = _bind(eqn, [j.primal for j in jets])
    float_out = [i for i, o in enumerate(outs) if _is_float(o)]
    if not float_out:
        return _const(outs)
    name = eqn.primitive.name
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"eqxderiv: primitive '{name}' has no collapsed Taylor-mode rule; it is "
            "evaluated through nested autodiff (jvp of jvp), which may be slower.",
            FallbackWarning,
            stacklevel=2,
        )

    diff = [i for i, j in enumerate(jets) if j.tangent is not None]

    def f(*xs: Array) -> tuple[Array, ...]:
        args = [j.primal for j in jets]
        for i, x in zip(diff, xs):
            args[i] = x
        res = _bind(eqn, args)
        return tuple(res[i] for i in float_out)

    primals = tuple(jets[i].primal for i in diff)

    def along(t: tuple[Array, ...]) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        (_, tk), (_, hk) = jax.jvp(lambda *xs: jax.jvp(f, xs, t), primals, t)
        return tk, hk

    ts, hs = jax.vmap(along)(tuple(jets[i].tangent for i in diff))
    ss = [ctx.wsum(h) for h in hs]
    if any(jets[i].second is not None for i in diff):
        s_in = tuple(_zeros(jets[i].primal) if jets[i].second is None else jets[i].second for i in diff)
        _, js = jax.jvp(f, primals, s_in)
        ss = [s + j for s, j in zip(ss, js)]

    result = _const(outs)
    for n, i in enumerate(float_out):
        result[i] = _Jet(outs[i], ts[n], ss[n])
    return result


# ---- interpreter ----------------------------------------------------------------------


def _lookup(prim: core.Primitive) -> Rule:
    rule = _RULES.get(prim)
    if rule is None:
        rule = _BY_NAME.get(prim.name, _fallback)
    return rule


def _eval_jaxpr(ctx: _Ctx, jaxpr: core.Jaxpr, consts: Sequence[Any], args: Sequence[_Jet]) -> list[_Jet]:
    env: dict[core.Var, _Jet] = {}

    def read(v: Any) -> _Jet:
        return _Jet(v.val, None, None) if isinstance(v, core.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = _Jet(c, None, None)
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        jets = [read(v) for v in eqn.invars]
        with eqn.ctx.manager:
            if all(j.tangent is None for j in jets):
                # Nothing depends on the inputs: plain evaluation, no extra work.
                outs = _const(_bind(eqn, [j.primal for j in jets]))
            else:
                outs = _lookup(eqn.primitive)(ctx, eqn, jets)
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def collapsed_jet(
    fn: Callable[..., Array],
    primals: tuple[Array, ...],
    tangents: tuple[Float[Array, "K ..."] | None, ...],
    weights: Float[Array, " K"],
) -> tuple[Array, Float[Array, "K ..."], Array]:
    """Collapsed second-order Taylor-mode evaluation of `fn(*primals)`.

    **Arguments:**

    - `fn`: a function of `len(primals)` arrays returning one array.
    - `primals`: the point to expand around.
    - `tangents`: for each primal, either an array of shape `(K, *primal.shape)` whose
      row `k` is that input's part of direction `v_k`, or `None` for "this input is
      held fixed" (no work is spent on it).
    - `weights`: shape `(K,)`; may be traced.

    **Returns:** `(out, out_tangents, out_second)` with

    - `out = fn(*primals)`;
    - `out_tangents[k]` the directional derivative of `fn` along `v_k`, shape
      `(K, *out.shape)`;
    - `out_second = sum_k weights[k] d²/ds² fn(primals + s v_k)|_{s=0}`, shape
      `out.shape`.

    With `v_k` the coordinate directions of `x` and unit weights, `out_second` is the
    Laplacian; with random probes and weights `1/K` it is Hutchinson's estimator.

    Primitives without a rule are evaluated through nested `jax.jvp` and trigger a
    [`FallbackWarning`][] (once per primitive).
    """
    if len(primals) != len(tangents):
        raise ValueError(f"got {len(primals)} primals but {len(tangents)} tangents")
    primals = tuple(jnp.asarray(p) for p in primals)
    weights = jnp.asarray(weights)
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape (K,), got {weights.shape}")
    num = weights.shape[0]
    args = []
    for i, (p, t) in enumerate(zip(primals, tangents)):
        if t is not None:
            t = jnp.asarray(t)
            if t.shape != (num, *p.shape):
                raise ValueError(f"tangents[{i}] has shape {t.shape}, expected {(num, *p.shape)}")
            if not _is_float(p):
                raise ValueError(f"primals[{i}] has non-float dtype {p.dtype}; give it a None tangent")
            t = t.astype(p.dtype)
        args.append(_Jet(p, t, None))

    closed = jax.make_jaxpr(fn)(*primals)
    if len(closed.jaxpr.outvars) != 1:
        raise ValueError(f"fn must return a single array, got {len(closed.jaxpr.outvars)} outputs")
    ctx = _Ctx(weights)
    (out,) = _eval_jaxpr(ctx, closed.jaxpr, closed.consts, args)
    y = jnp.asarray(out.primal)
    t = jnp.zeros((num, *y.shape), y.dtype) if out.tangent is None else out.tangent
    s = jnp.zeros(y.shape, y.dtype) if out.second is None else out.second
    return y, t, s
