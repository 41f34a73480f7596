"""Collapsed second-order forward (Taylor-mode) propagation over jaxprs.

Given a function `fn(*primals) -> Array`, K first-order directions `v_k` and K
weights `w_k`, [`collapsed_jet`][] pushes through the traced computation

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

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core
from jaxtyping import Array, ArrayLike, Float, Shaped


__all__ = ["FallbackWarning", "collapsed_jet"]


class FallbackWarning(UserWarning):
    """A primitive without a collapsed Taylor-mode rule, or a custom-derivative
    function that is not elementwise, was evaluated through nested `jax.jvp`
    (one JVP of a JVP per direction). The result is exact, JAX's own, but the
    compiled program may be slower. Raised once per primitive; silence it with
    `warnings.simplefilter("ignore", eqxderiv.FallbackWarning)`."""


class _Jet(NamedTuple):
    # The primal may be a jaxpr literal (a numpy or Python scalar), hence ArrayLike.
    primal: ArrayLike
    tangent: Array | None  # (K, *primal.shape); None == zero
    second: Array | None  # primal.shape; None == zero


class _Ctx(NamedTuple):
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


Rule = Callable[[_Ctx, core.JaxprEqn, list[_Jet]], list[_Jet]]


# --------------------------------------------------------------------------------
# Small helpers.


def _is_float(x: ArrayLike) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact))


def _zeros(x: ArrayLike) -> Array:
    return jnp.zeros(jnp.shape(x), jnp.result_type(x))


def _add(*xs: Array | None) -> Array | None:
    """Sum that reads `None` as zero, and stays `None` if every term is zero."""
    terms = [x for x in xs if x is not None]
    if not terms:
        return None
    out = terms[0]
    for x in terms[1:]:
        out = out + x
    return out


def _mul(c: ArrayLike | None, x: Array | None) -> Array | None:
    return None if c is None or x is None else jnp.multiply(c, x)


def _lift(t: Array | None, ndim: int) -> Array | None:
    """Let the tangent of a rank-0 operand broadcast against rank-`ndim` values.

    Elementwise lax ops accept rank-0 operands next to arrays; such an operand's
    tangent has shape (K,) and needs trailing unit axes behind the K axis.
    """
    if t is None or t.ndim - 1 == ndim:
        return t
    return t.reshape(t.shape[:1] + (1,) * ndim)


def _fit(t: Array | None, out: ArrayLike, k_axis: bool) -> Array | None:
    """Broadcast (after a rank-0 operand) and cast a term to the output's shape."""
    if t is None:
        return None
    shape = (t.shape[:1] if k_axis else ()) + jnp.shape(out)
    if t.shape != shape:
        t = jnp.broadcast_to(t, shape)
    return t.astype(jnp.result_type(out))


def _jet(y: ArrayLike, t: Array | None, s: Array | None) -> list[_Jet]:
    """The single output jet of an elementwise rule, in the output's exact shape."""
    return [_Jet(y, _fit(t, y, True), _fit(s, y, False))]


def _bind(eqn: core.JaxprEqn, args: Sequence[ArrayLike]) -> list[Any]:
    """Evaluate one equation on plain values; always returns a list of outputs."""
    params = eqn.primitive.get_bind_params(eqn.params)
    out = eqn.primitive.bind(*args, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _consts(xs: Sequence[ArrayLike]) -> list[_Jet]:
    return [_Jet(x, None, None) for x in xs]


def _primals(jets: Sequence[_Jet]) -> list[ArrayLike]:
    return [j.primal for j in jets]


# --------------------------------------------------------------------------------
# Rules. A rule takes (ctx, eqn, jets), where at least one jet has a tangent, and
# returns the output jets. Keyed by primitive name: names are stable across jax
# versions where the primitive objects exported by `jax.extend` are not.

_RULES: dict[str, Rule] = {}


def _zero_rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    return _consts(_bind(eqn, _primals(jets)))


# Piecewise constant, or zero derivative by definition.
for _p in ("sign", "floor", "ceil", "round", "stop_gradient"):
    _RULES[_p] = _zero_rule


# ---- linear maps ----------------------------------------------------------------


def _linear_rule(positions: Sequence[int] | None = None) -> Rule:
    """Rule for a primitive that is linear in the operands at `positions` (all if
    `None`) and merely parameterised by the others (indices, predicates).

    The tangents go through the primitive itself, `vmap`ped over the K axis: that is
    the same op with one more leading dimension, so it costs nothing extra at run
    time. An affine operand without a tangent (the constant in `concatenate([x, c])`,
    the padding value, ...) contributes a zero.
    """

    def rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
        lin = range(len(jets)) if positions is None else positions
        outs = _bind(eqn, _primals(jets))

        def through(field: str) -> list[Any] | None:
            terms = [getattr(jets[i], field) for i in lin]
            if all(t is None for t in terms):
                return None
            args: list[Any] = _primals(jets)
            axes: list[int | None] = [None] * len(jets)
            for i in lin:
                term = getattr(jets[i], field)
                args[i] = _zeros(jets[i].primal) if term is None else term
                if field == "tangent" and term is not None:
                    axes[i] = 0
            if field == "second":
                return _bind(eqn, args)
            return jax.vmap(lambda *a: _bind(eqn, a), in_axes=axes)(*args)

        ts, ss = through("tangent"), through("second")
        return [
            _Jet(o, ts[i], None if ss is None else ss[i])
            if ts is not None and _is_float(o)
            else _Jet(o, None, None)
            for i, o in enumerate(outs)
        ]

    return rule


for _p in (
    "reshape",
    "broadcast_in_dim",
    "transpose",
    "squeeze",
    "rev",
    "slice",
    "copy",
    "reduce_sum",
    "cumsum",
    "reduce_precision",
    "real",
    "imag",
    "conj",
    "dynamic_slice",  # operand 0; the start indices carry no tangent
    "gather",  # operand 0; the indices carry no tangent
    "sharding_constraint",
    "tile",
    "split",
    "unstack",
    "fft",  # every FFT type is linear over the reals
):
    _RULES[_p] = _linear_rule([0])
for _p in ("concatenate", "stack", "device_put", "optimization_barrier"):
    _RULES[_p] = _linear_rule()
_RULES["pad"] = _linear_rule([0, 1])  # pad(x, c) is affine in (x, c)
_RULES["dynamic_update_slice"] = _linear_rule([0, 1])
_RULES["scatter-add"] = _linear_rule([0, 2])  # (operand, indices, updates)


def _select_n(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    # The predicate is boolean or integer and never carries a tangent.
    return _linear_rule(range(1, len(jets)))(ctx, eqn, jets)


def _convert_element_type(
    ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]
) -> list[_Jet]:
    if not jnp.issubdtype(eqn.params["new_dtype"], jnp.inexact):
        return _zero_rule(ctx, eqn, jets)
    return _linear_rule([0])(ctx, eqn, jets)


def _add_sub(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    a, b = jets
    (y,) = _bind(eqn, [a.primal, b.primal])
    sign = -1 if eqn.primitive.name == "sub" else 1
    tb, sb = _lift(b.tangent, jnp.ndim(y)), b.second
    t = _add(_lift(a.tangent, jnp.ndim(y)), None if tb is None else sign * tb)
    s = _add(a.second, None if sb is None else sign * sb)
    return _jet(y, t, s)


def _neg(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    (x,) = jets
    assert x.tangent is not None
    s = None if x.second is None else -x.second
    return [_Jet(-jnp.asarray(x.primal), -x.tangent, s)]


_RULES["select_n"] = _select_n
_RULES["convert_element_type"] = _convert_element_type
for _p in ("add", "sub", "add_any"):
    _RULES[_p] = _add_sub
_RULES["neg"] = _neg


# ---- bilinear maps --------------------------------------------------------------


def _mul_rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    a, b = jets
    (y,) = _bind(eqn, [a.primal, b.primal])
    ta, tb = _lift(a.tangent, jnp.ndim(y)), _lift(b.tangent, jnp.ndim(y))
    t = _add(_mul(b.primal, ta), _mul(a.primal, tb))
    s = _add(_mul(b.primal, a.second), _mul(a.primal, b.second))
    if ta is not None and tb is not None:
        s = _add(s, 2 * ctx.quad(ta, tb))
    return _jet(y, t, s)


def _dot(a: ArrayLike, b: ArrayLike, dims: Any, params: dict[str, Any]) -> Array:
    return lax.dot_general(
        a,
        b,
        dims,
        precision=params.get("precision"),
        preferred_element_type=params.get("preferred_element_type"),
    )


def _shift(axes: Sequence[int]) -> tuple[int, ...]:
    return tuple(i + 1 for i in axes)


def _dot_tangent_lhs(t: Array, b: ArrayLike, params: dict[str, Any]) -> Array:
    """`dot_general(t[k], b)` for every k, with K as one more free lhs dimension."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    out = _dot(t, b, ((_shift(lc), tuple(rc)), (_shift(lb), tuple(rb))), params)
    # The result is (batch..., K, lhs free..., rhs free...): K goes to the front.
    return jnp.moveaxis(out, len(lb), 0) if lb else out


def _dot_tangent_rhs(a: ArrayLike, t: Array, params: dict[str, Any]) -> Array:
    """`dot_general(a, t[k])` for every k.

    Computed as `dot_general(t, a)`, so that the K axis comes out in front with no
    transpose in the common matrix @ vector case (`eqx.nn.Linear`).
    """
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    out = _dot(t, a, ((_shift(rc), tuple(lc)), (_shift(rb), tuple(lb))), params)
    # The result is (batch, K, rhs free, lhs free); we want (K, batch, lhs free,
    # rhs free).
    nb = len(lb)
    n_rfree = t.ndim - 1 - len(rc) - len(rb)
    n_lfree = jnp.ndim(a) - len(lc) - len(lb)
    lfree = range(nb + 1 + n_rfree, nb + 1 + n_rfree + n_lfree)
    perm = (nb, *range(nb), *lfree, *range(nb + 1, nb + 1 + n_rfree))
    return out if perm == tuple(range(out.ndim)) else lax.transpose(out, perm)


def _dot_general(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    a, b = jets
    p = eqn.params
    (y,) = _bind(eqn, [a.primal, b.primal])
    dims = p["dimension_numbers"]
    t = _add(
        None if a.tangent is None else _dot_tangent_lhs(a.tangent, b.primal, p),
        None if b.tangent is None else _dot_tangent_rhs(a.primal, b.tangent, p),
    )
    s = _add(
        None if a.second is None else _dot(a.second, b.primal, dims, p),
        None if b.second is None else _dot(a.primal, b.second, dims, p),
    )
    if a.tangent is not None and b.tangent is not None:
        # sum_k w_k B(T_a[k], T_b[k]): contract K along with the usual contracting
        # dimensions, so no (K, *out.shape) intermediate is formed.
        (lc, rc), (lb, rb) = dims
        w = ctx.weights.astype(a.tangent.dtype)
        wa = a.tangent * w.reshape((-1,) + (1,) * jnp.ndim(a.primal))
        cross_dims = (((0, *_shift(lc)), (0, *_shift(rc))), (_shift(lb), _shift(rb)))
        s = _add(s, 2 * _dot(wa, b.tangent, cross_dims, p))
    return _jet(y, t, s)


_RULES["mul"] = _mul_rule
_RULES["dot_general"] = _dot_general


def _reduce_chooser(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    (x,) = jets
    assert x.tangent is not None
    axes = tuple(eqn.params["axes"])
    (y,) = _bind(eqn, [x.primal])
    # Follow the arg-extremum; ties share the derivative evenly, as in jax.
    hit = jnp.equal(x.primal, jnp.expand_dims(y, axes)).astype(y.dtype)
    hit = hit / jnp.sum(hit, axis=axes, keepdims=True)
    t = jnp.sum(x.tangent * hit, axis=_shift(axes))
    s = None if x.second is None else jnp.sum(x.second * hit, axis=axes)
    return [_Jet(y, t, s)]


def _scatter(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    # With unique indices an overwriting scatter is linear in (operand, updates).
    # With duplicates, which update wins is up to the backend and might differ
    # between the primal and the tangents, so leave that case to jax's own rule.
    if eqn.params["unique_indices"]:
        return _linear_rule([0, 2])(ctx, eqn, jets)
    return _fallback(ctx, eqn, jets)


def _sort(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
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
        result.append(_Jet(o, t, s))
    return result


_RULES["scatter"] = _scatter
_RULES["sort"] = _sort
_RULES["reduce_max"] = _reduce_chooser
_RULES["reduce_min"] = _reduce_chooser


# ---- higher-order primitives: recurse into the inner jaxpr ----------------------


def _call_rule(*param_names: str) -> Rule:
    def rule(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
        inner = eqn.params[next(n for n in param_names if n in eqn.params)]
        if isinstance(inner, core.ClosedJaxpr):
            return _eval_jaxpr(ctx, inner.jaxpr, inner.consts, jets)
        return _eval_jaxpr(ctx, inner, (), jets)

    return rule


# jit (what `filter_jit` and many jnp functions produce), remat and plain calls are
# inlined into the surrounding trace: they only structure the primal program.
_RULES["jit"] = _call_rule("jaxpr")
_RULES["remat2"] = _call_rule("jaxpr")
_RULES["closed_call"] = _call_rule("call_jaxpr")
_RULES["call"] = _call_rule("call_jaxpr")
# custom_jvp / custom_vjp functions follow their own derivative rules: see
# `_rules_custom.py`, which registers them.
_RULES["pjit"] = _call_rule("jaxpr")  # older name of "jit"
_RULES["checkpoint"] = _call_rule("jaxpr")


# ---- fallback: nested autodiff --------------------------------------------------

_WARNED: set[str] = set()


def _internal_dirs() -> tuple[str, ...]:
    import contextlib  # noqa: PLC0415 - stdlib, for its location only

    import equinox

    mods = (jax, equinox, contextlib, warnings)
    dirs = [os.path.dirname(os.path.abspath(__file__))]
    dirs += [os.path.dirname(os.path.abspath(m.__file__ or "")) for m in mods]
    try:
        import jaxtyping

        dirs.append(os.path.dirname(os.path.abspath(jaxtyping.__file__ or "")))
    except ImportError:  # pragma: no cover - jaxtyping is a dependency
        pass
    return tuple(d + os.sep for d in dirs)


def _warn_at_user_call(message: str) -> None:
    """Warns `FallbackWarning` at the first frame outside eqxderiv, JAX, Equinox,
    jaxtyping and the standard library: the user's call that led to it."""
    internal = _internal_dirs()
    frame = sys._getframe(1)
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(internal)
        or frame.f_code.co_filename.startswith("<frozen")
    ):
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "<unknown>")
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(
        message,
        FallbackWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module,
        registry,
    )


def _fallback(ctx: _Ctx, eqn: core.JaxprEqn, jets: list[_Jet]) -> list[_Jet]:
    """Any primitive, through `jax.jvp` on `bind` (see `nested_jet`)."""
    return nested_jet(
        ctx, lambda *a: _bind(eqn, a), jets, f"primitive '{eqn.primitive.name}'"
    )


def nested_jet(
    ctx: _Ctx,
    fn: Callable[..., list[Any]],
    jets: Sequence[_Jet],
    what: str,
) -> list[_Jet]:
    """The jets of `fn(*primals)` (a list of outputs) by nested `jax.jvp`, so by
    JAX's own derivative rules, custom ones included.

    Per direction k, a `jvp` of a `jvp` gives both the first-order term and
    `d²/ds² fn(x + s T[k])`; this is `vmap`ped over K and weight-summed. The
    incoming second-order terms enter through one more (first-order) `jvp`.
    `what` names `fn` in the one-time `FallbackWarning`.
    """
    outs = list(fn(*_primals(jets)))
    float_outs = [i for i, o in enumerate(outs) if _is_float(o)]
    if not float_outs:  # comparisons, argmax, iota, ...: nothing to differentiate
        return _consts(outs)
    if what not in _WARNED:
        _WARNED.add(what)
        _warn_at_user_call(
            f"eqxderiv: {what} has no collapsed Taylor-mode rule; it is "
            "evaluated through nested autodiff (a jvp of a jvp per direction), "
            "which may be slower."
        )

    diff = [i for i, j in enumerate(jets) if j.tangent is not None]

    def f(*xs: Array) -> tuple[Array, ...]:
        args = _primals(jets)
        for i, x in zip(diff, xs):
            args[i] = x
        res = list(fn(*args))
        return tuple(res[i] for i in float_outs)

    primals = tuple(jnp.asarray(jets[i].primal) for i in diff)

    def along(t: tuple[Any, ...]) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        (_, tk), (_, hk) = jax.jvp(lambda *xs: jax.jvp(f, xs, t), primals, t)
        return tk, hk

    ts, hs = jax.vmap(along)(tuple(jets[i].tangent for i in diff))
    ss = [ctx.wsum(h) for h in hs]
    if any(jets[i].second is not None for i in diff):
        s_in = tuple(
            _zeros(p) if jets[i].second is None else jets[i].second
            for i, p in zip(diff, primals)
        )
        _, js = jax.jvp(f, primals, s_in)
        ss = [s + j for s, j in zip(ss, js)]

    result = _consts(outs)
    for n, i in enumerate(float_outs):
        result[i] = _Jet(outs[i], ts[n], ss[n])
    return result


# ---- interpreter ----------------------------------------------------------------


def _lookup(prim: core.Primitive) -> Rule:
    return _RULES.get(prim.name, _fallback)


def _last_use(jaxpr: core.Jaxpr) -> dict[Any, int]:
    """For each variable, the index of the last equation that reads it
    (`len(jaxpr.eqns)` for an output)."""
    last: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, core.Literal):
                last[v] = i
    for v in jaxpr.outvars:
        if not isinstance(v, core.Literal):
            last[v] = len(jaxpr.eqns)
    return last


def _eval_jaxpr(
    ctx: _Ctx,
    jaxpr: core.Jaxpr,
    consts: Sequence[Any],
    args: Sequence[_Jet],
    env: dict[core.Var, _Jet] | None = None,
    compress: bool = False,
    start: int = 0,
) -> list[_Jet]:
    """Evaluates `jaxpr` on jets. With `start > 0`, `env` already holds the inputs
    and the outputs of the first `start` equations, which are skipped."""
    env = {} if env is None else env

    def read(v: Any) -> _Jet:
        return _Jet(v.val, None, None) if isinstance(v, core.Literal) else env[v]

    last_use = _last_use(jaxpr) if compress else {}
    if start == 0:
        env.update(zip(jaxpr.constvars, _consts(consts)))
        env.update(zip(jaxpr.invars, args))
    for i, eqn in enumerate(jaxpr.eqns):
        if i < start:
            continue
        jets = [read(v) for v in eqn.invars]
        with eqn.ctx.manager:
            if all(j.tangent is None for j in jets):
                # Independent of the inputs: evaluated as is, at no extra cost.
                outs = _consts(_bind(eqn, _primals(jets)))
            else:
                outs = _lookup(eqn.primitive)(ctx, eqn, jets)
        env.update(zip(eqn.outvars, outs))
        if compress and len(eqn.outvars) == 1 and _narrows(ctx, outs[0]):
            (var,) = eqn.outvars
            live = (u for u, last in last_use.items() if last > i and u is not var)
            if all(u not in env or env[u].tangent is None for u in live):
                env[var], ctx = _compressed(ctx, outs[0])
                compress = False
    return [read(v) for v in jaxpr.outvars]


def _narrows(ctx: _Ctx, jet: _Jet) -> bool:
    """Whether `jet` has fewer entries than there are directions, while still an
    affine function of the inputs (so its tangents are typically the same for
    every sample)."""
    t = jet.tangent
    # Real floating tangents only: complex ones have no real Gram factor.
    if t is None or jet.second is not None or not _is_real(t):
        return False
    return math.prod(t.shape[1:]) < t.shape[0]


def _compressed(ctx: _Ctx, jet: _Jet) -> tuple[_Jet, _Ctx]:
    """Replaces the K tangents `T` of `jet` (weights `w >= 0`) by `n < K` ones `R`
    with the same weighted second moment, `R^T R = T^T diag(w) T`, and unit
    weights.

    Every later second-order term depends on the tangents only through that
    moment (`J (sum_k w_k T_k T_k^T) J^T` at each step), so when nothing else that
    carries a tangent is still needed, the rest of the pass is exact with `n`
    directions instead of `K`. `R` is the triangular factor of a QR
    decomposition of `diag(sqrt(w)) T`: exact derivatives of every order as long
    as `T` has full column rank (a first layer whose weights for the inputs have
    full rank).
    """
    assert jet.tangent is not None
    t = jet.tangent
    k, shape = t.shape[0], t.shape[1:]
    n = math.prod(shape)
    w = jnp.sqrt(jnp.maximum(ctx.weights.astype(t.dtype), 0))
    r = _gram_factor(w[:, None] * t.reshape(k, n))
    new = _Jet(jet.primal, r.reshape((n, *shape)), jet.second)
    return new, _Ctx(jnp.ones((n,), ctx.weights.dtype))


def _is_real(x: ArrayLike) -> bool:
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.floating))


def _gram_factor(a: Array) -> Array:
    """An `(n, n)` factor `R` with `R^T R = a^T a`, for `a` of shape `(K, n)`,
    `K > n`: the triangular factor of a QR decomposition.

    Its derivatives are QR's where `a` has full column rank. Where `a` is
    rank-deficient (a first layer with zero rows, as at some initialisations),
    QR has no derivative (its JVP divides by the zero diagonal of `R`, which
    gives NaN gradients); there `R` is computed as `Q^T a` with `Q` held
    constant, which is the same value and whose first derivative gives the exact
    first derivative of `R^T R` (as `Q Q^T a = a`), so parameter gradients stay
    exact. Half precision is factored in float32 (LAPACK has no float16 QR).
    """
    dtype = a.dtype
    work = a.astype(jnp.float32) if jnp.finfo(dtype).bits < 32 else a
    q0, r0 = jnp.linalg.qr(lax.stop_gradient(work))
    diag = jnp.abs(jnp.diagonal(r0))
    tol = 16 * max(work.shape) * jnp.finfo(work.dtype).eps
    full = jnp.min(diag) > tol * jnp.max(diag)
    # Feed QR a well-conditioned matrix where `a` is rank-deficient, so that its
    # (unused) derivative there is finite and no NaN leaks through `where`.
    safe = jnp.where(full, work, jnp.eye(*work.shape, dtype=work.dtype))
    r = jnp.where(full, jnp.linalg.qr(safe, mode="r"), q0.T @ work)
    return r.astype(dtype)


# Ops through which the output can depend linearly on one tangent-carrying operand.
_TAIL_UNARY = {"reshape", "convert_element_type", "copy", "squeeze", "transpose"}


def _value(v: Any, env: dict[core.Var, _Jet]) -> ArrayLike:
    return v.val if isinstance(v, core.Literal) else env[v].primal


def _linear_tail(
    jaxpr: core.Jaxpr, env: dict[core.Var, _Jet]
) -> tuple[Any, Callable[[Array], Array]] | None:
    """The output as `L(mid)`, for the longest trailing chain of equations that is
    affine in one tangent-carrying variable `mid` (a network's last linear layer:
    `dot_general` with a constant weight, a bias `add`, reshapes).

    Returns `(mid, L)` with `L` the *linear* part of the chain, or `None` when the
    output is not produced that way.
    """
    producer = {v: e for e in jaxpr.eqns for v in e.outvars}

    def tangent(v: Any) -> Array | None:
        return None if isinstance(v, core.Literal) else env[v].tangent

    steps: list[tuple[core.JaxprEqn, int]] = []
    var = jaxpr.outvars[0]
    while not isinstance(var, core.Literal) and var in producer:
        eqn = producer[var]
        name = eqn.primitive.name
        live = [i for i, v in enumerate(eqn.invars) if tangent(v) is not None]
        if len(live) != 1 or len(eqn.outvars) != 1:
            break
        (i,) = live
        if name == "dot_general" or name in _TAIL_UNARY:
            pass
        elif name in ("add", "sub", "add_any"):
            shapes = [jnp.shape(_value(v, env)) for v in eqn.invars]
            if shapes[0] != shapes[1]:
                break  # a broadcast bias: keep the rule simple, stop here
        else:
            break
        steps.append((eqn, i))
        var = eqn.invars[i]
    if not steps:
        return None

    def linear(u: Array) -> Array:
        for eqn, i in reversed(steps):
            name = eqn.primitive.name
            if name in ("add", "add_any"):
                continue  # the bias drops out of the linear part
            if name == "sub":
                u = u if i == 0 else -u
                continue
            args = [u if j == i else _value(v, env) for j, v in enumerate(eqn.invars)]
            (u,) = _bind(eqn, args)
        return u

    return var, linear


# Primitives that are affine in their operands that depend on the input (for `mul`
# and `dot_general`: when only one operand does; for `pad`: the operand, not the
# padding value).
_AFFINE = {
    "reshape",
    "broadcast_in_dim",
    "transpose",
    "squeeze",
    "slice",
    "rev",
    "concatenate",
    "pad",
    "convert_element_type",
    "copy",
    "neg",
    "add",
    "sub",
    "add_any",
    "reduce_sum",
    "mul",
    "dot_general",
}


def _identity_bottleneck(jaxpr: core.Jaxpr, x: core.Var, d: int) -> int | None:
    """The index of the first equation whose single output `z` is affine in the
    input `x` (shape `(d,)`), has fewer than `d` entries, and is, once computed,
    the only value still needed that depends on `x`; `None` if there is none
    before the first non-affine step."""
    last_use = _last_use(jaxpr)
    dep = {x}
    for i, eqn in enumerate(jaxpr.eqns):
        ins = [
            j
            for j, v in enumerate(eqn.invars)
            if not isinstance(v, core.Literal) and v in dep
        ]
        if not ins:
            continue
        name = eqn.primitive.name
        if name not in _AFFINE or len(eqn.outvars) != 1:
            return None
        if name in ("mul", "dot_general") and len(ins) != 1:
            return None
        if name == "pad" and ins != [0]:
            return None
        (z,) = eqn.outvars
        dep.add(z)
        shape, dtype = getattr(z.aval, "shape", None), getattr(z.aval, "dtype", None)
        if shape is None or dtype is None:
            return None
        if math.prod(shape) < d and jnp.issubdtype(dtype, jnp.floating):
            if not any(v is not z and last_use.get(v, -1) > i for v in dep):
                return i
    return None


def _identity_compressed(
    closed: core.ClosedJaxpr, primals: tuple[Array, ...], index: int
) -> tuple[Array, Array] | None:
    """`(out, out_second)` for the coordinate directions of `primals[index]` with
    unit weights, when the computation narrows to an intermediate `z` affine in
    that input (see `_identity_bottleneck`). The tangents of `z` along the d
    coordinate directions are the rows of its `(n, d)` Jacobian, computed by
    reverse mode (n passes) instead of pushing an identity matrix through, then
    compressed to `n` rows as in `_compressed`."""
    jaxpr = closed.jaxpr
    x = primals[index]
    if x.ndim != 1:
        return None
    d = x.shape[0]
    i = _identity_bottleneck(jaxpr, jaxpr.invars[index], d)
    if i is None:
        return None
    (z,) = jaxpr.eqns[i].outvars

    def prefix(xv: Array) -> dict[Any, Any]:
        values: dict[Any, Any] = dict(zip(jaxpr.constvars, closed.consts))
        values.update(zip(jaxpr.invars, primals))
        values[jaxpr.invars[index]] = xv
        read = lambda v: v.val if isinstance(v, core.Literal) else values[v]
        for eqn in jaxpr.eqns[: i + 1]:
            with eqn.ctx.manager:
                outs = _bind(eqn, [read(v) for v in eqn.invars])
            values.update(zip(eqn.outvars, outs))
        return values

    values = prefix(x)
    zv = jnp.asarray(values[z])
    jac = jax.jacrev(lambda xv: prefix(xv)[z])(x)  # (*z.shape, d)
    n = zv.size
    tangents = jnp.moveaxis(jac.reshape(n, d), 1, 0)  # (d, n)
    r = _gram_factor(tangents)
    env: dict[core.Var, _Jet] = {v: _Jet(val, None, None) for v, val in values.items()}
    env[z] = _Jet(zv, r.reshape((n, *zv.shape)), None)
    ctx = _Ctx(jnp.ones((n,), zv.dtype))
    (out,) = _eval_jaxpr(ctx, jaxpr, closed.consts, (), env, start=i + 1)
    y = jnp.asarray(out.primal)
    return y, jnp.zeros(y.shape, y.dtype) if out.second is None else out.second


def collapsed_jet(
    fn: Callable[..., Array],
    primals: tuple[ArrayLike, ...],
    tangents: tuple[Float[ArrayLike, "K ..."] | None, ...],
    weights: Shaped[ArrayLike, " K"],
    contract: Float[ArrayLike, "K ..."] | None = None,
    compress: bool = False,
    identity: bool = False,
) -> tuple[Any, ...]:
    """Collapsed second-order Taylor-mode evaluation of `fn` at `primals`.

    **Arguments:**

    - `fn`: a function of `len(primals)` arrays returning one array.
    - `primals`: the point to expand around.
    - `tangents`: for each primal, an array of shape `(K, *primal.shape)` whose row
        `k` is that input's part of the direction `v_k`, or `None` to hold that input
        fixed (no work is spent on it; required for integer inputs).
    - `weights`: shape `(K,)`; may be traced.

    **Returns:** `(out, out_tangents, out_second)` where

    - `out = fn(*primals)`;
    - `out_tangents[k]` is the derivative of `fn` along `v_k`, shape
        `(K, *out.shape)`;
    - `out_second = sum_k weights[k] d²/ds² fn(primals + s v_k)` at `s = 0`, shape
        `out.shape`.

    With the coordinate directions of `x` and unit weights `out_second` is the
    Laplacian; with random probes and weights `1/K`, Hutchinson's estimator.

    With `contract` (shape `(K, *out.shape)`), a fourth result
    `sum_k weights[k] <contract[k], out_tangents[k]>` is returned: with
    `contract` the input directions themselves this is the divergence (or its
    Hutchinson estimate). It is computed before the field's last linear layer
    when there is one, which saves that layer's tangent product per sample.

    With `compress=True` (only for `weights >= 0`, without `contract`) only the
    value and `out_second` are wanted and `out_tangents` is returned as `None`:
    where the computation narrows to one intermediate with `n < K` entries (a
    first layer narrower than the input), the K directions are replaced there by
    `n` with the same weighted second moment, which leaves `out_second` exact
    and makes the rest of the pass cost `n` directions instead of `K`.
    `identity=True` (with `compress`) promises that the one input with a tangent
    is a vector of size `K`, its tangents the identity matrix and the weights
    all one: the narrowing intermediate's tangents then come from its Jacobian by
    reverse mode, and the identity matrix is never used.

    Works under `jax.jit`, `jax.vmap` and reverse-mode autodiff (also with respect to
    arrays that `fn` closes over). A primitive without a dedicated rule is evaluated
    through nested `jax.jvp` and raises a `FallbackWarning` once per primitive.
    Functions with custom derivatives (`jax.custom_jvp`/`custom_vjp`) follow their
    own rules (see `_rules_custom.py`).
    """
    if len(primals) != len(tangents):
        raise ValueError(f"got {len(primals)} primals but {len(tangents)} tangents")
    weights = jnp.asarray(weights)
    if weights.ndim != 1:
        raise ValueError(f"weights must have shape (K,); got {weights.shape}")
    num = weights.shape[0]
    primals = tuple(jnp.asarray(p) for p in primals)
    args = []
    for i, (p, t) in enumerate(zip(primals, tangents)):
        if t is not None:
            t = jnp.asarray(t)
            if t.shape != (num, *p.shape):
                raise ValueError(
                    f"tangents[{i}] has shape {t.shape}; expected "
                    f"(K, *primals[{i}].shape) = {(num, *p.shape)}"
                )
            if not _is_float(p):
                raise ValueError(
                    f"primals[{i}] has dtype {p.dtype}; only floating inputs can "
                    "carry a tangent (pass None)"
                )
            t = t.astype(p.dtype)
        args.append(_Jet(p, t, None))

    closed = jax.make_jaxpr(fn)(*primals)
    if len(closed.jaxpr.outvars) != 1:
        raise ValueError(
            f"fn must return a single array; got {len(closed.jaxpr.outvars)} outputs"
        )
    # The user's code was traced above under the user's own settings. The
    # engine's own array code broadcasts rank-0 and K-leading operands on
    # purpose, so it runs under JAX's default promotion rules even where the
    # user asked for `jax_numpy_rank_promotion="raise"` or strict dtype
    # promotion.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        if compress and contract is not None:
            raise ValueError("compress=True does not go with a contraction")
        if identity:
            live = [i for i, t in enumerate(tangents) if t is not None]
            if not compress or len(live) != 1:
                raise ValueError(
                    "identity=True needs compress=True and one tangent input"
                )
            found = _identity_compressed(closed, primals, live[0])
            if found is not None:
                return found[0], None, found[1]
        env: dict[core.Var, _Jet] = {}
        (out,) = _eval_jaxpr(
            _Ctx(weights), closed.jaxpr, closed.consts, args, env, compress
        )
        y = jnp.asarray(out.primal)
        s = jnp.zeros(y.shape, y.dtype) if out.second is None else out.second
        if compress:
            return y, None, s
        t = jnp.zeros((num, *y.shape), y.dtype) if out.tangent is None else out.tangent
        if contract is None:
            return y, t, s
        return y, t, s, _contract(closed.jaxpr, env, t, weights, jnp.asarray(contract))


def _contract(
    jaxpr: core.Jaxpr,
    env: dict[core.Var, _Jet],
    t: Array,
    weights: Array,
    contract: Array,
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
    tail = _linear_tail(jaxpr, env) if jaxpr.outvars else None
    if tail is not None:
        mid, linear = tail
        mid_jet = env[mid]
        assert mid_jet.tangent is not None
        struct = jax.ShapeDtypeStruct(jnp.shape(mid_jet.primal), mid_jet.tangent.dtype)
        transpose = jax.linear_transpose(linear, struct)
        back = jax.vmap(lambda c: transpose(c)[0])(contract.astype(t.dtype))
        return _weighted_inner(w, back, mid_jet.tangent)
    return _weighted_inner(w, contract.astype(t.dtype), t)


def _weighted_inner(w: Array, a: Array, b: Array) -> Array:
    # Multiply-and-reduce fuses into one loop over the per-sample tangents; as a
    # dot_general it needed a transpose of the batched operand first.
    wa = a * w.reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.sum(wa * b)
