"""The order-K fallback: nested `jax.jvp` along each direction, exact for any
primitive (and any function with custom rules), since it is JAX's own
differentiation of that one equation.

For `y = f(u)` and one direction, the curve `u(s) = u + sum_{k<K} s^k/k! u_k`
gives `y_1, ..., y_{K-1}` and the part of `y_K` that does not involve `u_K`, as
the derivatives at `s = 0` of `f(u(s))` (K nested JVPs in `s`); the top-order
coefficient enters linearly, through one JVP of `f` along the collapsed `u_K`.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .. import registry as order2
from .jet import TaylorContext, TaylorJet, const_jets, is_float


__all__ = ["derivatives_along", "taylor_fallback"]


def derivatives_along(
    h: Callable[[Array], Any], order: int
) -> Callable[[Array], list[Any]]:
    """`s -> [h(s), h'(s), ..., h^(order)(s)]` for `h` of a scalar `s`, by nested
    `jax.jvp` (each level differentiates the list of the ones below)."""

    def level0(s: Array) -> list[Any]:
        return [h(s)]

    f = level0
    for _ in range(order):

        def nxt(s: Array, f: Callable[[Array], list[Any]] = f) -> list[Any]:
            p, t = jax.jvp(f, (s,), (jnp.ones_like(s),))
            return [*p, t[-1]]

        f = nxt
    return f


def _real_dtype(x: Any) -> Any:
    return jnp.real(jnp.zeros((), jnp.result_type(x))).dtype


def taylor_fallback(
    ctx: TaylorContext,
    fn: Callable[..., Sequence[Any]],
    jets: Sequence[TaylorJet],
    what: str,
    warn: bool = True,
) -> list[TaylorJet]:
    """The jets of `fn(*primals)` (a list of outputs) by nested `jax.jvp`; with
    `warn`, a one-time `FallbackWarning` naming `what`. (Without: the rule of an
    elementwise map of several operands, whose nested JVPs are elementwise work
    that XLA fuses, about what Faà di Bruno's products would cost.)"""
    if warn:
        _warn(what)
    K = ctx.order
    primals = [jnp.asarray(j.primal) for j in jets]
    live = [i for i, j in enumerate(jets) if j.live]
    x0 = [primals[i] for i in live]
    structs = jax.eval_shape(lambda *a: list(fn(*a)), *primals)
    floats = [n for n, s in enumerate(structs) if is_float(jnp.zeros((), s.dtype))]

    def f(*xs: Any) -> list[Any]:
        new = list(primals)
        for i, x in zip(live, xs):
            new[i] = x
        outs = list(fn(*new))
        return [outs[n] for n in floats]

    ys = list(fn(*primals))
    R = ctx.weights.shape[0]
    lower: list[list[Any]] = [[None] * len(floats) for _ in range(K - 1)]
    top: list[Any] = [None] * len(floats)
    if any(c is not None for i in live for c in jets[i].lower):

        def coef(i: int, k: int) -> Array:
            c = jets[i].lower[k - 1]
            return (
                jnp.zeros((R, *primals[i].shape), primals[i].dtype) if c is None else c
            )

        def one(cs: list[list[Array]]) -> list[Any]:
            def curve(s: Array) -> list[Any]:
                xs = []
                for x, c in zip(x0, cs):
                    for k, ck in enumerate(c, 1):
                        x = x + (s**k / math.factorial(k)).astype(ck.dtype) * ck
                    xs.append(x)
                return f(*xs)

            s0 = jnp.zeros((), _real_dtype(x0[0]))
            return derivatives_along(curve, K)(s0)[1:]

        res = jax.vmap(one)([[coef(i, k) for k in range(1, K)] for i in live])
        lower = [list(r) for r in res[: K - 1]]
        top = [ctx.wsum(r) for r in res[K - 1]]
    if any(jets[i].top is not None for i in live):
        J = ctx.weights.shape[1]
        tops = [
            jnp.zeros((J, *primals[i].shape), primals[i].dtype)
            if jets[i].top is None
            else jets[i].top
            for i in live
        ]
        along = jax.vmap(lambda ts: jax.jvp(f, tuple(x0), tuple(ts))[1])(tops)
        top = [a if t is None else t + a for t, a in zip(top, along)]
    outs = const_jets(ys, K)
    for pos, n in enumerate(floats):
        outs[n] = TaylorJet(ys[n], tuple(lower[k][pos] for k in range(K - 1)), top[pos])
    return outs


def _warn(what: str) -> None:
    key = f"order-K: {what}"
    if key in order2._WARNED:
        return
    order2._WARNED.add(key)
    order2._warn_at_user_call(
        f"eqxderiv: {what} has no higher-order collapsed Taylor-mode rule; it is "
        "evaluated by nested jax.jvp along each direction (exact, but slower)."
    )
