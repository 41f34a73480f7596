"""The order-K rules: linear maps, products (Leibniz), elementwise functions
(Faà di Bruno), calls and custom-derivative functions. Registered on import;
what is not registered here is decided by the order-2 table (see
`registry.py`)."""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core

from .. import registry as order2
from ..elementwise import CURVATURE, HOLOMORPHIC, partial_derivative
from ..jet import bind, zeros
from ..rules.array import logaddexp
from ..rules.custom import forward_rule_of_vjp
from ..rules.linear import zero_rule
from ..structure import diagonal_jvp, elementwise_eqn, flat_jvp
from .fallback import taylor_fallback
from .interpreter import eval_taylor_jaxpr
from .jet import TaylorContext, TaylorJet, coefficients, const_jets, fit, is_float, lift
from .registry import DEFAULT, ELEMENTWISE, register_taylor_rule


__all__ = ["faa_di_bruno"]


Coefs = list[Any]  # one entry per order 1..K: a list over outputs, or None


def _add(a: Any, b: Any) -> Any:
    return b if a is None else (a if b is None else a + b)


def _assemble(ys: Sequence[Any], per: Coefs, order: int) -> list[TaylorJet]:
    """The output jets from the primal outputs and, per order, the coefficients
    of every output (or `None` for an order where all are zero)."""
    outs = []
    for n, y in enumerate(ys):
        if not is_float(y) or all(p is None or p[n] is None for p in per):
            outs.append(const_jets([y], order)[0])
            continue
        cs = [None if p is None else fit(p[n], y) for p in per]
        outs.append(TaylorJet(y, tuple(cs[: order - 1]), cs[order - 1]))
    return outs


def _linear(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet], lin: Sequence[int]
) -> list[TaylorJet]:
    """A primitive linear in the operands at `lin` (parameterised by the rest):
    every coefficient goes through the primitive itself, `vmap`ped over its
    leading axis."""
    primals = [j.primal for j in jets]
    ys = bind(eqn, primals)

    def through(order: int) -> list[Any] | None:
        cs = {i: coefficients(jets[i])[order] for i in lin}
        if all(c is None for c in cs.values()):
            return None
        args: list[Any] = list(primals)
        axes: list[int | None] = [None] * len(jets)
        for i, c in cs.items():
            args[i] = zeros(primals[i]) if c is None else c
            axes[i] = None if c is None else 0
        return jax.vmap(lambda *a: bind(eqn, a), in_axes=axes)(*args)

    return _assemble(ys, [through(k) for k in range(1, ctx.order + 1)], ctx.order)


def _bilinear(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """A product `B(a, b)` (`mul`, `dot_general`, a convolution), by Leibniz's
    rule; the top order sums the products of lower coefficients over the
    directions at once."""
    live = [i for i in (0, 1) if jets[i].live]
    if len(live) == 1:
        return _linear(ctx, eqn, jets, live)
    K = ctx.order
    rest = [j.primal for j in jets[2:]]
    a, b = coefficients(jets[0]), coefficients(jets[1])
    (y,) = bind(eqn, [jets[0].primal, jets[1].primal, *rest])

    def prod(i: int, j: int) -> Any:
        """`B(a_i, b_j)`, with `i, j` orders (0: the primal, unbatched)."""
        x, z = a[i], b[j]
        if x is None or z is None:
            return None
        axes = (None if i == 0 else 0, None if j == 0 else 0)
        B = lambda u, v: bind(eqn, [u, v, *rest])[0]  # noqa: E731
        return jax.vmap(B, in_axes=axes)(x, z)

    per: Coefs = []
    for k in range(1, K):
        acc = None
        for i in range(k + 1):
            term = prod(i, k - i)
            if term is not None:
                acc = _add(acc, math.comb(k, i) * term if 0 < i < k else term)
        per.append(None if acc is None else [acc])
    inner = None
    for i in range(1, K):
        term = prod(i, K - i)
        if term is not None:
            inner = _add(inner, math.comb(K, i) * term)
    top = _add(prod(K, 0), prod(0, K))
    if inner is not None:
        top = _add(top, ctx.wsum(inner))
    per.append(None if top is None else [top])
    return _assemble([y], per, K)


@functools.cache
def _partitions(k: int, m: int) -> tuple[tuple[int, tuple[tuple[int, int], ...]], ...]:
    """The terms of the Bell polynomial `B_{k,m}`: `(coefficient, ((part, count),
    ...))` over the partitions of `k` into `m` parts."""

    def split(n: int, parts: int, largest: int) -> list[list[int]]:
        if parts == 0:
            return [[]] if n == 0 else []
        return [
            [p, *rest]
            for p in range(min(n, largest), 0, -1)
            for rest in split(n - p, parts - 1, p)
        ]

    terms = []
    for parts in split(k, m, k):
        counts = {p: parts.count(p) for p in set(parts)}
        denom = math.prod(
            math.factorial(c) * math.factorial(p) ** c for p, c in counts.items()
        )
        terms.append((math.factorial(k) // denom, tuple(sorted(counts.items()))))
    return tuple(terms)


def _bell(k: int, m: int, lows: Sequence[Any]) -> Any:
    """`B_{k,m}(u_1, ..., u_{k-m+1})` of the per-direction coefficients `lows`
    (`lows[i - 1]` is `u_i`, `None` for zero)."""
    acc = None
    for coef, counts in _partitions(k, m):
        if any(lows[p - 1] is None for p, _ in counts):
            continue
        term = functools.reduce(
            lambda x, y: x * y,
            (lows[p - 1] ** c if c > 1 else lows[p - 1] for p, c in counts),
        )
        acc = _add(acc, term if coef == 1 else coef * term)
    return acc


def faa_di_bruno(
    ctx: TaylorContext, g: Callable[[Any], Any], x: TaylorJet, flat: bool
) -> TaylorJet:
    """The jet of `g(x)` for an elementwise `g` of one operand, by Faà di Bruno's
    formula `y_k = sum_m g^(m)(x) B_{k,m}(x_1, ..., x_{k-m+1})`, the derivatives
    `g^(m)` taken by nested `jax.jvp` along ones (so with JAX's conventions at
    kinks and JAX's custom rules). `flat`: `g`'s second derivative vanishes
    identically (a piecewise linear `g`), so only `g'` is needed."""
    K = ctx.order
    x0 = jnp.asarray(x.primal)
    y = jnp.asarray(g(x0))
    nd = y.ndim
    top_m = 1 if flat else K
    derivs: list[Any] = [y]
    d = g
    for _ in range(top_m):
        d = partial_derivative(d, 0)
        derivs.append(d(x0))
    lows = [lift(c, nd) for c in x.lower]
    per: Coefs = []
    for k in range(1, K):
        acc = None
        for m in range(1, min(k, top_m) + 1):
            bell = _bell(k, m, lows)
            if bell is not None:
                acc = _add(acc, derivs[m] * bell)
        per.append(None if acc is None else [acc])
    top = None if x.top is None else derivs[1] * lift(x.top, nd)
    for m in range(2, min(K, top_m) + 1):
        bell = _bell(K, m, lows)
        if bell is not None:
            top = _add(top, derivs[m] * ctx.wsum(bell))
    per.append(None if top is None else [top])
    return _assemble([y], per, K)[0]


def _in_operand(
    fn: Callable[..., Any], primals: Sequence[Any], i: int
) -> Callable[[Any], Any]:
    """`fn` as a function of its operand `i` alone, the others at `primals`."""

    def g(a: Any) -> Any:
        new = list(primals)
        new[i] = a
        return fn(*new)

    return g


def _curved(name: str, eqn: core.JaxprEqn, i: int, j: int) -> bool:
    curvature = CURVATURE.get(name, "all")
    if name == "integer_pow" and eqn.params["y"] in (0, 1):
        return False
    return curvature == "all" or (i, j) in frozenset(curvature)


def _elementwise(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    name = eqn.primitive.name
    primals = [jnp.asarray(j.primal) for j in jets]
    ys = bind(eqn, primals)
    if not is_float(ys[0]):
        return const_jets(ys, ctx.order)
    fn = lambda *a: bind(eqn, a)[0]  # noqa: E731
    dtypes = [p.dtype for p in primals] + [jnp.result_type(ys[0])]
    if name not in HOLOMORPHIC and any(
        jnp.issubdtype(t, jnp.complexfloating) for t in dtypes
    ):
        return taylor_fallback(
            ctx, lambda *a: [fn(*a)], jets, f"'{name}' of a complex value"
        )
    live = [i for i, j in enumerate(jets) if j.live]
    if len(live) == 1:
        (i,) = live
        g = _in_operand(fn, primals, i)
        return [faa_di_bruno(ctx, g, jets[i], not _curved(name, eqn, i, i))]
    if not any(_curved(name, eqn, i, j) for i in live for j in live):
        # Piecewise linear in every operand (`max`, `min`, `clamp`): every order
        # is the first-order map, with JAX's partials (ties split evenly).
        y = ys[0]
        parts = {i: partial_derivative(fn, i)(*primals) for i in live}
        per: Coefs = []
        for k in range(1, ctx.order + 1):
            acc = None
            for i in live:
                c = coefficients(jets[i])[k]
                if c is not None:
                    acc = _add(acc, parts[i] * lift(jnp.asarray(c), y.ndim))
            per.append(None if acc is None else [acc])
        return _assemble([y], per, ctx.order)
    # Several live operands with curvature (`div`, `pow`, `atan2`): the
    # univariate expansion along each direction, elementwise.
    return taylor_fallback(ctx, lambda *a: [fn(*a)], jets, name, warn=False)


def _elementwise_in_each(
    fn: Callable[..., Sequence[Any]], jets: list[TaylorJet]
) -> bool:
    """Whether `fn` (one real output) is an elementwise function of each of its
    live operands, all real and of its output's shape (its JVP included, as JAX
    traces it)."""
    live = [i for i, j in enumerate(jets) if j.live]
    primals = [jnp.asarray(j.primal) for j in jets]
    structs = jax.eval_shape(lambda *a: list(fn(*a)), *primals)
    if len(structs) != 1 or not jnp.issubdtype(structs[0].dtype, jnp.floating):
        return False
    for i in live:
        z = primals[i]
        if z.shape != structs[0].shape or not jnp.issubdtype(z.dtype, jnp.floating):
            return False
        g = _in_operand(lambda *a: fn(*a)[0], primals, i)
        if not diagonal_jvp(g, z):
            return False
    return True


def _elementwise_function(
    ctx: TaylorContext, fn: Callable[..., Sequence[Any]], jets: list[TaylorJet]
) -> list[TaylorJet] | None:
    """The jet of `fn` (one output) through `faa_di_bruno`, where it is an
    elementwise function of its one live, real operand (and so is its JVP, as
    JAX traces it, custom rules included); `None` where it is not."""
    live = [i for i, j in enumerate(jets) if j.live]
    if len(live) != 1:
        return None
    (i,) = live
    primals = [jnp.asarray(j.primal) for j in jets]
    z = primals[i]
    structs = jax.eval_shape(lambda *a: list(fn(*a)), *primals)
    if len(structs) != 1 or structs[0].shape != z.shape:
        return None
    if not (
        jnp.issubdtype(z.dtype, jnp.floating)
        and jnp.issubdtype(structs[0].dtype, jnp.floating)
    ):
        return None
    g = _in_operand(lambda *a: fn(*a)[0], primals, i)
    if not diagonal_jvp(g, z):
        return None
    return [faa_di_bruno(ctx, g, jets[i], flat_jvp(g, z))]


def _call(param: str) -> Callable[..., list[TaylorJet]]:
    def rule(
        ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
    ) -> list[TaylorJet]:
        live = [j.live for j in jets]
        shape = tuple(jnp.shape(jets[live.index(True)].primal))
        if len(eqn.outvars) == 1 and elementwise_eqn(eqn, live, shape):
            # A call of an elementwise function (an activation): one rule.
            outs = _elementwise_function(ctx, lambda *a: bind(eqn, a), jets)
            if outs is not None:
                return outs
        inner = eqn.params[param]
        if isinstance(inner, core.ClosedJaxpr):
            return eval_taylor_jaxpr(ctx, inner.jaxpr, inner.consts, jets)
        return eval_taylor_jaxpr(ctx, inner, (), jets)

    return rule


def _custom(
    ctx: TaylorContext,
    fn: Callable[..., Sequence[Any]],
    jets: list[TaylorJet],
    what: str,
) -> list[TaylorJet]:
    """A function with a custom derivative rule: elementwise ones by their
    derivatives as JAX's `jvp` gives them (the rule, then the rule
    differentiated, as nested autodiff does), any other by the fallback."""
    outs = _elementwise_function(ctx, fn, jets)
    if outs is not None:
        return outs
    # Elementwise in several live operands (`logaddexp`): elementwise work.
    warn = not _elementwise_in_each(fn, jets)
    return taylor_fallback(ctx, fn, jets, what, warn=warn)


def _custom_jvp(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    return _custom(ctx, lambda *a: bind(eqn, a), jets, "a custom_jvp function")


def _custom_vjp(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    live = [i for i, j in enumerate(jets) if j.live]
    primals = [j.primal for j in jets]

    def restricted(*xs: Any) -> list[Any]:
        new = list(primals)
        for i, x in zip(live, xs):
            new[i] = x
        return bind(eqn, new)

    g = forward_rule_of_vjp(restricted)
    sub = [jets[i] for i in live]
    return _custom(ctx, lambda *a: list(g(*a)), sub, "a custom_vjp function")


def _inexact(v: Any) -> bool:
    dtype = getattr(v.aval, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.inexact))


def _default(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """A primitive without a rule of its own: what the order-2 table records
    about it decides (see `registry.py`)."""
    name = eqn.primitive.name
    if not any(_inexact(v) for v in eqn.outvars):
        # A comparison, an integer: no derivative at all.
        return const_jets(bind(eqn, [j.primal for j in jets]), ctx.order)
    live = [i for i, j in enumerate(jets) if j.live]
    info = order2.RULES.get(name)
    if info is not None:
        if info.rule is zero_rule:
            return const_jets(bind(eqn, [j.primal for j in jets]), ctx.order)
        if info.bilinear and set(live) <= {0, 1}:
            return _bilinear(ctx, eqn, jets)
        positions = info.linear_positions(len(jets))
        if info.linear_in is not None and set(live) <= positions:
            return _linear(ctx, eqn, jets, sorted(positions))
    if name in CURVATURE or name == "integer_pow":
        return _elementwise(ctx, eqn, jets)
    return taylor_fallback(ctx, lambda *a: bind(eqn, a), jets, f"primitive '{name}'")


def _reduce_chooser(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """`reduce_max` / `reduce_min`: every order follows the extremum (ties share
    it evenly, as JAX's rule does; the selection is piecewise constant)."""
    (x,) = jets
    axes = tuple(eqn.params["axes"])
    (y,) = bind(eqn, [x.primal])
    hit = jnp.equal(x.primal, jnp.expand_dims(y, axes)).astype(y.dtype)
    hit = hit / jnp.sum(hit, axis=axes, keepdims=True)
    shifted = tuple(a + 1 for a in axes)
    per: Coefs = [
        None if c is None else [jnp.sum(c * hit, axis=shifted)]
        for c in coefficients(x)[1:]
    ]
    return _assemble([y], per, ctx.order)


def _tree_prod(a: Any, axes: tuple[int, ...]) -> Any:
    """The product over `axes` as a tree of elementwise products (halves
    multiplied, padded with ones), `log2(n)` levels deep."""
    rest = [i for i in range(a.ndim) if i not in axes]
    a = jnp.transpose(a, (*axes, *rest))
    kept = a.shape[len(axes) :]
    a = a.reshape((-1, *kept))
    while a.shape[0] > 1:
        if a.shape[0] % 2:
            a = jnp.concatenate([a, jnp.ones((1, *kept), a.dtype)])
        a = a[0::2] * a[1::2]
    return a[0]


def _reduce_prod(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """`reduce_prod` as the products of `_tree_prod`, interpreted (Leibniz's
    rule at every level): a polynomial, whose derivatives have no conventions
    to follow."""
    axes = tuple(eqn.params["axes"])
    x = jnp.asarray(jets[0].primal)
    closed = jax.make_jaxpr(lambda a: _tree_prod(a, axes))(x)
    return eval_taylor_jaxpr(ctx, closed.jaxpr, closed.consts, jets)


def _user_elementwise(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """A primitive its user declared elementwise (`register_taylor_rule`)."""
    primals = [jnp.asarray(j.primal) for j in jets]
    ys = bind(eqn, primals)
    if not is_float(ys[0]):
        return const_jets(ys, ctx.order)
    fn = lambda *a: bind(eqn, a)[0]  # noqa: E731
    live = [i for i, j in enumerate(jets) if j.live]
    if len(live) == 1:
        (i,) = live
        return [faa_di_bruno(ctx, _in_operand(fn, primals, i), jets[i], False)]
    return taylor_fallback(ctx, lambda *a: [fn(*a)], jets, "", warn=False)


def _cumulative(combine: Callable[[Any, Any], Any]) -> Callable[..., list[TaylorJet]]:
    """A cumulative reduction, which JAX differentiates as
    `lax.associative_scan(combine)`: that scan's jaxpr, interpreted (as the
    order-2 rule does, `../rules/array.py`); the primal is the primitive's."""

    def rule(
        ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
    ) -> list[TaylorJet]:
        (x,) = jets
        (y,) = bind(eqn, [x.primal])
        scan = functools.partial(
            jax.lax.associative_scan,
            combine,
            axis=eqn.params["axis"],
            reverse=eqn.params["reverse"],
        )
        closed = jax.make_jaxpr(scan)(jnp.asarray(x.primal))
        (out,) = eval_taylor_jaxpr(ctx, closed.jaxpr, closed.consts, [x])
        return [TaylorJet(y, out.lower, out.top)]

    return rule


def _sort(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    """`sort` permutes: an iota sorted along with the operands gives the
    permutation, which every coefficient follows."""
    dim = eqn.params["dimension"]
    shape = jnp.shape(jets[0].primal)
    iota = jax.lax.broadcasted_iota(jnp.int32, shape, dim)
    *outs, perm = jax.lax.sort(
        (*(jnp.asarray(j.primal) for j in jets), iota),
        dimension=dim,
        is_stable=eqn.params["is_stable"],
        num_keys=eqn.params["num_keys"],
    )
    take = lambda c: (
        None
        if c is None
        else jnp.take_along_axis(  # noqa: E731
            c, perm[None], axis=dim + 1
        )
    )
    return [
        TaylorJet(o, tuple(take(c) for c in j.lower), take(j.top))
        for o, j in zip(outs, jets)
    ]


def _scatter(
    ctx: TaylorContext, eqn: core.JaxprEqn, jets: list[TaylorJet]
) -> list[TaylorJet]:
    # With unique indices an overwriting scatter is linear in (operand,
    # updates); with duplicates, which update wins is the backend's choice, so
    # JAX's own rule decides (the fallback).
    if eqn.params["unique_indices"]:
        return _linear(ctx, eqn, jets, [0, 2])
    return taylor_fallback(ctx, lambda *a: bind(eqn, a), jets, "primitive 'scatter'")


def _register() -> None:
    DEFAULT.append(_default)
    for name, combine in (
        ("cumprod", jax.lax.mul),
        ("cummax", jax.lax.max),
        ("cummin", jax.lax.min),
        ("cumlogsumexp", logaddexp),
    ):
        register_taylor_rule(name, _cumulative(combine))
    register_taylor_rule("sort", _sort)
    register_taylor_rule("scatter", _scatter)
    ELEMENTWISE.append(_user_elementwise)
    register_taylor_rule("reduce_prod", _reduce_prod)
    register_taylor_rule("reduce_max", _reduce_chooser)
    register_taylor_rule("reduce_min", _reduce_chooser)
    for name, param in (
        ("jit", "jaxpr"),
        ("pjit", "jaxpr"),
        ("closed_call", "call_jaxpr"),
        ("core_call", "call_jaxpr"),
        ("call", "call_jaxpr"),
        ("remat2", "jaxpr"),
        ("checkpoint", "jaxpr"),
    ):
        register_taylor_rule(name, _call(param))
    register_taylor_rule("custom_jvp_call", _custom_jvp)
    register_taylor_rule("custom_vjp_call", _custom_vjp)
    register_taylor_rule("custom_vjp_call_jaxpr", _custom_vjp)


_register()
