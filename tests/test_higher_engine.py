"""The order-K collapsed Taylor engine against nested forward autodiff.

`collapsed_taylor(fn, primal, directions, weights, order)` returns `fn(primal)`
and, for every weight column `j`, $\\sum_r w_{rj}\\, \\frac{d^K}{ds^K}
fn(primal + s\\, v_r)|_{s=0}$. The oracle computes exactly that sum with `order`
nested `jax.jvp`s of the restriction of `fn` to each line, in float64, so by
JAX's own derivative rules (custom rules and the conventions at kinks and ties
included). Every entry of the zoo below is one compiled program evaluating the
engine and the oracle for orders 1 to 4 at all its points (generic points first,
then the function's special points: 0, kinks and both sides of them, ties,
bounds of `where` / `clamp`).

Non-finite oracle values: where JAX's own derivative is not finite (`pow` at a
zero base beyond the exponent's order gives `0 * inf`), an entry declares it
(`nonfinite=True`) and the engine must be non-finite at the same entries (NaN
and inf not told apart) and close elsewhere; a non-finite oracle value in an
entry that does not declare it is an error of the zoo, reported as such.

Fallbacks: the issue asks for rules for the same primitives as the order-2
engine, so a `FallbackWarning` is allowed only where an entry says so
(`fallback=True`: the abs of a complex value, which the order-2 engine also
evaluates by nested autodiff, and custom rules that the operators compute by
nested jvps of the whole field); anywhere else it fails the entry, after its
values were checked (the message says "unexpected fallback").
"""

import dataclasses
import math
import warnings
import zlib
from collections.abc import Callable, Sequence
from unittest import mock

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import pytest
from helpers import quick_jit
from jax import lax

import eqxderiv
import eqxderiv._engine.registry as registry
from eqxderiv._engine import collapsed_taylor


ORDERS = (1, 2, 3, 4)
K_ = 1e-3  # "both sides of a kink": kink +- K_


# --------------------------------------------------------------------------------
# The oracle.


def line_derivatives(fn: Callable, primal, v, order: int) -> tuple:
    """$(d^k/ds^k fn(primal + s v))_{k = 0..order}$ at $s = 0$, by `order` nested
    `jax.jvp`s: each level differentiates the previous level's last entry and
    keeps the others (one chain of jvps gives every order at once)."""
    dtype = primal.dtype
    one = jnp.ones((), dtype)

    def up(h):
        def g(s):
            p, t = jax.jvp(h, (s,), (one,))
            return (*p, t[-1])

        return g

    g = lambda s: (fn(primal + s * v),)  # noqa: E731
    for _ in range(order):
        g = up(g)
    return g(jnp.zeros((), dtype))


def oracle(fn: Callable, primal, directions, weights, orders: Sequence[int]):
    """`(fn(primal), {k: top_k})` with `top_k[j] = sum_r weights[r, j] d^k/ds^k
    fn(primal + s directions[r])` at `s = 0`."""
    per_direction = jax.vmap(lambda v: line_derivatives(fn, primal, v, max(orders)))(
        directions
    )
    tops = {}
    for k in orders:
        h = per_direction[k]
        tops[k] = jnp.tensordot(weights.astype(h.dtype).T, h, axes=1)
    return fn(primal), tops


# --------------------------------------------------------------------------------
# Comparison.


def _gen(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    fn: Callable
    points: np.ndarray  # (P, n)
    rtol: float = 1e-9
    atol: float = 1e-9
    orders: tuple[int, ...] = ORDERS
    # The function whose nested jvps are the oracle, where JAX cannot
    # differentiate `fn` forward (custom_vjp): the same function, written
    # without the custom rule.
    oracle_fn: Callable | None = None
    nonfinite: bool = False
    fallback: bool = False
    num_directions: int = 3
    num_weights: int = 2
    note: str = ""

    def __repr__(self):
        return self.name


def _directions(name: str, r: int, n: int, j: int):
    gen = _gen(name + "/directions")
    directions = gen.standard_normal((r, n)) * gen.uniform(0.5, 2.0, (r, 1))
    weights = gen.standard_normal((r, j))
    return jnp.asarray(directions), jnp.asarray(weights)


class _Fallbacks:
    """Records `FallbackWarning`s, with the engine's one-time memory of them
    emptied for the duration, so that whether one is seen does not depend on
    which test ran before."""

    def __enter__(self):
        self._patch = mock.patch.object(registry, "_WARNED", set())
        self._patch.__enter__()
        self._catch = warnings.catch_warnings(record=True)
        self.records = self._catch.__enter__()
        warnings.simplefilter("always", eqxderiv.FallbackWarning)
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        self._patch.__exit__(*exc)

    @property
    def messages(self) -> list[str]:
        return [
            str(w.message)
            for w in self.records
            if issubclass(w.category, eqxderiv.FallbackWarning)
        ]


def _compare(label, got, want, rtol, atol, nonfinite: bool):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (label, got.shape, want.shape)
    bad = ~np.isfinite(want)
    if bad.any():
        assert nonfinite, (
            f"zoo error, not a library failure: {label}: the oracle is "
            f"non-finite at {np.argwhere(bad).tolist()} in an entry that does "
            "not declare it"
        )
        assert np.array_equal(~np.isfinite(got), bad), (
            label,
            "non-finite where the oracle is not, or finite where it is not",
            np.argwhere(np.isfinite(got) != ~bad).tolist(),
        )
        got, want = np.where(bad, 0.0, got), np.where(bad, 0.0, want)
    err = np.abs(got - want)
    ok = err <= atol + rtol * np.abs(want)
    if not ok.all():
        first = tuple(np.argwhere(~ok)[0])
        raise AssertionError(
            f"{label}: max error {float(err.max()):.3g}; first bad index "
            f"{list(first)}: got {got[first]}, want {want[first]}"
        )


def check(case: Case, directions=None, weights=None):
    """The engine against the oracle at every point of `case` and every order,
    in one compiled program."""
    points = jnp.asarray(case.points)
    if directions is None:
        directions, weights = _directions(
            case.name, case.num_directions, points.shape[1], case.num_weights
        )
    oracle_fn = case.oracle_fn or case.fn

    @quick_jit
    def both(points, directions, weights):
        got = {
            k: jax.vmap(lambda p: collapsed_taylor(case.fn, p, directions, weights, k))(
                points
            )
            for k in case.orders
        }
        want_value, want_tops = jax.vmap(
            lambda p: oracle(oracle_fn, p, directions, weights, case.orders)
        )(points)
        return {k: (got[k], (want_value, want_tops[k])) for k in case.orders}

    with _Fallbacks() as fallbacks:
        results = both(points, directions, weights)
    for k, ((value, top), (want_value, want_top)) in results.items():
        assert value.dtype == want_value.dtype, (case.name, k, value.dtype)
        assert top.dtype == want_top.dtype, (case.name, k, top.dtype)
        _compare(f"{case.name} value", value, want_value, 1e-12, 1e-12, False)
        _compare(
            f"{case.name} order {k}",
            top,
            want_top,
            case.rtol,
            case.atol,
            case.nonfinite,
        )
    if not case.fallback:
        assert not fallbacks.messages, (
            case.name,
            "unexpected fallback",
            fallbacks.messages,
        )
    return results


# --------------------------------------------------------------------------------
# The zoo.

ZOO: list[Case] = []


def add(
    name,
    fn,
    specials: Sequence[Sequence[float]],
    *,
    d=None,
    generic=3,
    lo=-1.5,
    hi=1.5,
    **kw,
):
    pts = np.asarray(specials, dtype=np.float64).reshape(-1, d or len(specials[0]))
    rand = _gen(name).uniform(lo, hi, (generic, pts.shape[1]))
    ZOO.append(Case(name, fn, np.concatenate([rand, pts]), **kw))


def unary(name, g, specials, *, lo=-1.5, hi=1.5, oracle_g=None, **kw):
    """`f_i = g(x_i) (x_{i-1} + 2)` on d = 3, with each special value in the
    first coordinate and in the last two. `oracle_g`: the function the oracle
    differentiates in place of `g` (see `Case.oracle_fn`)."""
    gen = _gen(name + "/points")

    def p():
        return float(gen.uniform(lo, hi))

    def field(g):
        return lambda x: g(x) * (jnp.roll(x, 1) + 2.0)

    if oracle_g is not None:
        kw["oracle_fn"] = field(oracle_g)
    points = [[s, p(), p()] for s in specials] + [[p(), s, s] for s in specials]
    add(name, field(g), points, lo=lo, hi=hi, **kw)


# ---- elementwise, with kinks and special points --------------------------------

unary("abs", jnp.abs, [0.0, K_, -K_])
unary("jax.nn.relu", jax.nn.relu, [0.0, K_, -K_])
unary("sign_times", lambda x: jnp.sign(x) * x**3, [0.0, K_, -K_])
unary("where", lambda x: jnp.where(x > 0, x**3 + x, jnp.sin(x)), [0.0, K_, -K_])
unary("select_n", lambda x: lax.select(x < 0.2, jnp.exp(x), x * x), [0.2, 0.2 + K_])
unary(
    "clamp",
    lambda x: lax.clamp(-0.5, x, 0.5) ** 3,
    [0.5, -0.5, 0.5 + K_, -0.5 - K_, 0.5 - K_],
)
unary("clip", lambda x: jnp.clip(x, -0.5, 0.5) * jnp.exp(x), [0.5, -0.5, 0.0])
unary(
    "sqrt",
    jnp.sqrt,
    [1e-3, 0.25, 1.0],
    lo=0.1,
    hi=3.0,
    rtol=1e-8,
    note="near 0 the fourth derivative is ~1e11: relative error only",
)
unary("rsqrt", lax.rsqrt, [0.25, 1.0], lo=0.1, hi=3.0)
unary("log", jnp.log, [1.0, 0.05], lo=0.1, hi=3.0)
unary("log1p", jnp.log1p, [0.0, -0.5, K_], lo=-0.5, hi=2.0)
unary("expm1", jnp.expm1, [0.0, K_, -K_])
unary("exp", jnp.exp, [0.0, -2.0, 2.0])
unary("tanh", jnp.tanh, [0.0, 3.0, -3.0])
unary("logistic", jax.nn.sigmoid, [0.0, 30.0, -30.0])
unary("sin", jnp.sin, [0.0, math.pi / 2, math.pi])
unary("cos", jnp.cos, [0.0, math.pi / 2, math.pi])
unary("erf", jss.erf, [0.0, 3.0])
unary("softplus", jax.nn.softplus, [0.0, K_, -K_, 40.0, -40.0])
unary("silu", jax.nn.silu, [0.0, -5.0])
unary("gelu_tanh", lambda x: jax.nn.gelu(x, approximate=True), [0.0, -3.0, 3.0])
unary("gelu_erf", lambda x: jax.nn.gelu(x, approximate=False), [0.0, -3.0, 3.0])
unary(
    "integer_pow",
    lambda x: x**3 - 0.5 * x ** (-2) + x**5,
    [1.0, -1.0, 0.5],
    lo=0.3,
    hi=2.0,
)
unary("integer_pow_at_0", lambda x: x**3 + x**4 + x**6, [0.0])
unary("pow_const", lambda x: x**2.5, [1.0, 0.25], lo=0.1, hi=2.0)
unary(
    "pow_const_at_0",
    lambda x: x**4.0,
    [0.0],
    lo=0.1,
    hi=2.0,
    note="x ** 4.0 at 0: JAX's nested jvp is finite up to order 4 (24 x^0)",
)
unary(
    "pow_const_at_0_nonfinite",
    lambda x: x**2.5,
    [0.0],
    lo=0.1,
    hi=2.0,
    nonfinite=True,
    note="x ** 2.5 at 0: the third derivative is infinite",
)
unary("div_by_const", lambda x: jnp.sin(x) / 3.0, [0.0])

# ---- binary ---------------------------------------------------------------------

_TIES = [[0.7, 0.7, 0.7], [0.0, 0.0, 0.0], [0.7, 0.7 + K_, 0.7 - K_], [-1.2, -1.2, 0.3]]
add("maximum", lambda x: jnp.maximum(x, jnp.roll(x, 1)) ** 3 + x, _TIES)
add("minimum", lambda x: jnp.minimum(x, jnp.roll(x, 1)) * jnp.exp(x), _TIES)
add(
    "maximum_const",
    lambda x: jnp.maximum(x, 0.0) * (x + 2) + jnp.minimum(x, 0.7) ** 2,
    [[0.0, 0.7, 0.0], [K_, -K_, 0.7 + K_]],
)
add(
    "div_by_input",
    lambda x: jnp.roll(x, 1) / (x * x + 0.5) + jnp.sin(x) / (x + 3.0),
    [[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]],
)
add(
    "atan2",
    lambda x: jnp.arctan2(x, jnp.roll(x, 1)),
    [[0.0, 1.0, -1.0], [1.0, 0.0, -1.0], [0.0, -1.0, 1e-3]],
)
add(
    "pow_live",
    lambda x: (x * x + 0.5) ** jnp.roll(x, 1),
    [[0.0, 1.0, -1.0], [0.5, 0.0, 0.0]],
)
add(
    "logaddexp",
    lambda x: jnp.logaddexp(x, jnp.roll(x, 1)),
    _TIES + [[30.0, -30.0, 0.0]],
)
add(
    "mul_live",
    lambda x: x * jnp.roll(x, 1) * jnp.sin(x) + x * x * x,
    [[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]],
)

# ---- reductions -----------------------------------------------------------------


def _logsumexp(x):
    return jax.nn.logsumexp(jnp.stack([x[0], x[1], x[2], 2 * x[0]])) * x[1]


add("logsumexp", _logsumexp, [[0.3, 0.3, 0.3], [0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
add(
    "reduce_max_ties",
    lambda x: jnp.max(jnp.stack([x[0], x[1], 0.5 * x[2], jnp.sin(x[0])])) ** 3,
    [[0.4, 0.4, 0.8], [0.0, 0.0, 0.0], [-0.2, 0.5, 1.0]],
)
add(
    "reduce_min",
    lambda x: jnp.min(jnp.tanh(x) * jnp.array([1.0, 2.0, 3.0])) * x,
    [[0.0, 0.0, 0.0], [-1.0, -0.5, 0.2]],
)
add(
    "prod",
    lambda x: jnp.prod(jnp.stack([x[0], x[1], x[0] + x[2], jnp.sin(x[1])])),
    [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, -1.0]],
)
add(
    "cumulative",
    lambda x: (
        jnp.cumprod(jnp.sin(x) + 0.5)
        + jax.lax.cummax(x * x)
        + jax.lax.cummin(jnp.cos(x), reverse=True)
        + jax.lax.cumlogsumexp(x * x[0])
    ),
    [[0.0, 0.0, 0.0], [0.3, -0.3, 0.3], [1.0, 1.0, -1.0]],
)
add(
    "triangular_solve",
    lambda x: jnp.concatenate(
        [
            jax.lax.linalg.triangular_solve(
                jnp.outer(jnp.sin(x), jnp.cos(x)) + jnp.diag(x + 3.0),
                jnp.stack([jnp.tanh(x), x**2], axis=-1),
                left_side=True,
                lower=True,
            ).ravel(),
            jax.lax.linalg.triangular_solve(
                jnp.outer(x, x) + 2.0 * jnp.eye(3),
                jnp.exp(x)[None],
                left_side=False,
                lower=False,
                transpose_a=True,
                unit_diagonal=True,
            ).ravel(),
        ]
    ),
    [[0.0, 0.0, 0.0]],
)
add(
    "sort",
    lambda x: jnp.sort(jnp.sin(x) * jnp.array([1.0, -1.0, 2.0])) * x[::-1],
    [[0.0, 0.0, 0.0], [0.4, -0.4, 0.2]],
)
add(
    "scatter_unique",
    lambda x: (
        jnp.zeros(5).at[jnp.array([4, 0, 2])].set(jnp.tanh(x), unique_indices=True)
        * jnp.exp(jnp.sum(x))
    ),
    [[0.0, 0.0, 0.0]],
)
add(
    "reduce_sum_cumsum",
    lambda x: jnp.cumsum(jnp.sin(x) * x) * jnp.sum(x**2),
    [[0.0, 0.0, 0.0]],
)

# ---- linear and structural ops --------------------------------------------------


def _structural(x):
    # d = 6
    a = jnp.sin(x).reshape((2, 3))
    b = jnp.transpose(a)  # (3, 2)
    c = jnp.concatenate([b[:, 0], b[1:, 1], jnp.broadcast_to(x[0], (2,))])  # (7,)
    c = jnp.pad(c, (1, 2)) * 0.5 + jnp.pad(c, ((2, 1),), mode="edge")  # (10,)
    e = c[jnp.array([0, 3, 3, 9, 5])] + lax.dynamic_slice(c, (2,), (5,))
    e = e + jnp.flip(jnp.cumsum(c))[:5] + jnp.sum(c * c)
    return jnp.tanh(e)[::2] * jnp.expand_dims(x[1], 0)


add("structural", _structural, [[0.0] * 6, [0.3, -0.2, 0.5, 0.0, 1.0, -1.0]])


def _gather_scatter(x):
    # d = 4: x.at[].set/add, take_along_axis, dynamic_update_slice, squeeze, rev
    y = jnp.exp(x)
    z = jnp.zeros(6).at[jnp.array([0, 2, 2, 5])].add(y * x)
    z = lax.dynamic_update_slice(z, jnp.sin(x[:2]), (3,))
    w = jnp.take_along_axis(z, jnp.array([5, 1, 0, 3]), axis=0)
    return jnp.squeeze(jnp.tanh(w * y)[None, :] @ jnp.ones((4, 1)) + x[3] ** 2)


add("gather_scatter", _gather_scatter, [[0.0] * 4, [1.0, -1.0, 0.5, 0.2]])

# ---- bilinear -------------------------------------------------------------------


def _bilinear(x):
    # d = 4: matmul and einsum of two live operands, dot with a constant
    a = jnp.sin(x).reshape((2, 2))
    b = jnp.outer(x, jnp.cos(x))[:2, :3]
    m = a @ b  # (2, 3)
    e = jnp.einsum("ij,ik,k->j", b, a, x[:2])
    c = jnp.asarray(np.arange(12.0).reshape(4, 3) / 10)
    return jnp.concatenate([m.ravel(), e, jnp.tanh(x @ c)])


add("bilinear", _bilinear, [[0.0] * 4, [1.0, -0.5, 0.3, 2.0]])


def _conv(x):
    # d = 5: a 1-D convolution of a signal and a kernel both computed from x
    lhs = jnp.sin(x)[None, None, :]  # (1, 1, 5)
    rhs = jnp.tanh(x[:3])[None, None, :]  # (1, 1, 3)
    y = lax.conv_general_dilated(lhs, rhs, (1,), "SAME")
    return y.ravel() * x


add("conv", _conv, [[0.0] * 5], generic=2)

# ---- control flow ---------------------------------------------------------------


def _cond(x):
    return lax.cond(
        x[0] > 0,
        lambda y: jnp.sin(y) * y[::-1],
        lambda y: jnp.exp(y) - y**3,
        x,
    )


def _scan(x):
    def body(c, a):
        c = jnp.tanh(c * a + x)
        return c, jnp.sum(c * a)

    c, ys = lax.scan(body, jnp.ones(3) * 0.1, jnp.stack([x, x**2, jnp.sin(x)]))
    return c * jnp.sum(ys)


def _fori(x):
    return lax.fori_loop(0, 3, lambda i, y: jnp.sin(y) * x + 0.1 * i, x)


def _while(x):
    def body(c):
        i, y = c
        return i + 1, jnp.sin(y) * x[::-1] + x

    return lax.while_loop(lambda c: c[0] < 3, body, (0, x))[1]


def _inner_jit(x):
    inner = jax.jit(lambda y: jnp.tanh(y) * jnp.sum(y**2))
    return inner(jnp.sin(x)) + eqx.filter_jit(jnp.exp)(x)


def _checkpoint(x):
    return jax.checkpoint(lambda y: jnp.cos(y) ** 2 * y[::-1])(x) * x


add("cond", _cond, [[0.5, 0.2, -0.3], [-0.5, 0.2, 0.3], [0.0, 1.0, 1.0]])
add("scan", _scan, [[0.0, 0.0, 0.0]])
add("fori_loop", _fori, [[0.0, 0.0, 0.0]])
add(
    "while_loop",
    _while,
    [[0.0, 0.0, 0.0]],
)
add("inner_jit", _inner_jit, [[0.0, 0.0, 0.0]])
add("checkpoint", _checkpoint, [[0.0, 0.0, 0.0]])

# ---- linear algebra -------------------------------------------------------------


def _matrix(x):
    # d = 3: a well-conditioned 3x3 matrix built from x
    return 3.0 * jnp.eye(3) + jnp.outer(jnp.sin(x), jnp.cos(x)) + jnp.diag(x**2)


def _linalg(x):
    m = _matrix(x)
    return jnp.concatenate(
        [
            jnp.linalg.solve(m, jnp.exp(x)),
            jnp.linalg.det(m)[None],
            jnp.linalg.inv(m)[0],
        ]
    )


add("linalg_solve_det_inv", _linalg, [[0.0, 0.0, 0.0]], generic=2)

# ---- complex intermediates ------------------------------------------------------


def _c(x):
    # strict dtype promotion refuses `1j * x` for a real `x`
    return x.astype(jnp.complex128)


add(
    "complex_real_exp",
    lambda x: jnp.real(jnp.exp(1j * _c(x)) * _c(jnp.roll(x, 1))),
    [[0.0, 0.0, 0.0]],
)
add(
    "complex_abs",
    lambda x: jnp.abs(jnp.exp(1j * _c(x)) * _c(x) + 2.0) ** 2,
    [[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]],
    fallback=True,
    note="the order-2 engine has no rule for the abs of a complex value either",
)

# ---- custom derivative rules ----------------------------------------------------


@jax.custom_jvp
def consistent(x):
    return jnp.log1p(jnp.exp(x))


@consistent.defjvp
def _consistent_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # The true derivative, with the primal output computed by the function itself.
    return consistent(x), jax.nn.sigmoid(x) * dx


@jax.custom_jvp
def inconsistent(x):
    return jnp.sin(x)


@inconsistent.defjvp
def _inconsistent_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # Not the derivative of sin, and its primal computed by other code: nested
    # jvp applies the rule once and then differentiates the rule's own code.
    return jnp.sin(x), 2.0 * jnp.cos(x) * dx + 0.3 * x * dx


@jax.custom_jvp
def calls_itself(x):
    return jnp.sin(x)


@calls_itself.defjvp
def _calls_itself_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # Not the derivative, but the primal output is the function itself: nested
    # jvp applies the rule again at every order.
    return calls_itself(x), 0.5 * jnp.cos(x) * dx


unary("custom_jvp_consistent", consistent, [0.0, 3.0])
unary(
    "custom_jvp_inconsistent",
    inconsistent,
    [0.0],
    fallback=True,
    note="the operators compute fields with such rules by nested jvps of the "
    "whole field, with a warning: one is allowed here too",
)
unary("custom_jvp_calls_itself", calls_itself, [0.0])


@jax.custom_vjp
def vjp_sin(x):
    return jnp.sin(x)


vjp_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))

unary(
    "custom_vjp",
    vjp_sin,
    [0.0],
    oracle_g=jnp.sin,
    fallback=True,
    note="JAX has no jvp of a custom_vjp function: the oracle is sin itself",
)


@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_zoo(case):
    check(case)


def test_oracle_cannot_jvp_a_custom_vjp_function():
    # Why the custom_vjp entry's oracle is the function without its rule.
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(vjp_sin, (jnp.ones(()),), (jnp.ones(()),))


# --------------------------------------------------------------------------------
# Directions, weights, output shapes, dtypes.


def _field(x):
    # d = 3, output (3,)
    return jnp.tanh(x) * jnp.exp(jnp.roll(x, 1)) + x[0] * x**2


@pytest.mark.parametrize("r, j", [(1, 1), (1, 3), (4, 1), (5, 3)])
def test_directions_and_weight_columns(r, j):
    case = Case(f"field r={r} j={j}", _field, _gen("dw").uniform(-1, 1, (3, 3)))
    directions, weights = _directions(case.name, r, 3, j)
    got = check(case, directions, weights)
    for k, ((_, top), _) in got.items():
        assert top.shape == (3, j, 3), (k, top.shape)


def test_zero_and_repeated_directions():
    # A zero direction contributes nothing; a repeated one twice its weight.
    gen = _gen("zero-repeat")
    v = gen.standard_normal((2, 3)) * 3.0
    directions = jnp.asarray(np.stack([v[0], np.zeros(3), v[1], v[0]]))
    weights = jnp.asarray(gen.standard_normal((4, 2)))
    check(Case("zero-repeat", _field, gen.uniform(-1, 1, (3, 3))), directions, weights)


@pytest.mark.parametrize(
    "name, fn, out",
    [
        ("scalar", lambda x: jnp.sum(jnp.sin(x) * x[::-1]) + x[0] ** 4, ()),
        ("matrix", lambda x: jnp.outer(jnp.tanh(x[:2]), jnp.exp(x) * x), (2, 3)),
    ],
)
def test_output_shapes(name, fn, out):
    got = check(Case(name, fn, _gen(name).uniform(-1, 1, (3, 3))))
    for k, ((value, top), _) in got.items():
        assert value.shape == (3, *out)
        assert top.shape == (3, 2, *out), (k, top.shape)


def test_unjitted_single_point():
    p = jnp.asarray([0.3, -0.4, 0.8])
    directions, weights = _directions("eager", 2, 3, 2)
    value, top = collapsed_taylor(_field, p, directions, weights, 3)
    want_value, want_top = oracle(_field, p, directions, weights, (3,))
    _compare("value", value, want_value, 1e-12, 1e-12, False)
    _compare("order 3", top, want_top[3], 1e-9, 1e-9, False)


def test_float32_stays_float32():
    p = jnp.asarray([0.3, -0.4, 0.8])
    directions, weights = _directions("float32", 2, 3, 2)

    @quick_jit
    def run(p, directions, weights):
        return [
            collapsed_taylor(
                _field,
                p.astype(jnp.float32),
                directions.astype(jnp.float32),
                weights.astype(jnp.float32),
                k,
            )
            for k in ORDERS
        ], oracle(_field, p, directions, weights, ORDERS)

    got, (want_value, want_tops) = run(p, directions, weights)
    for k, (value, top) in zip(ORDERS, got):
        want_top = want_tops[k]
        assert value.dtype == jnp.float32, (k, value.dtype)
        assert top.dtype == jnp.float32, (k, top.dtype)
        scale = float(np.max(np.abs(want_top)))
        _compare("value", value, want_value.astype(jnp.float32), 1e-5, 1e-5, False)
        _compare(
            f"order {k}", top, want_top.astype(jnp.float32), 1e-4, 1e-4 * scale, False
        )


# --------------------------------------------------------------------------------
# Networks and high orders.


def _mlps(key):
    k1, k2 = jax.random.split(key)
    tanh = eqx.nn.MLP(3, 2, 8, 2, activation=jnp.tanh, key=k1)
    softplus = eqx.nn.MLP(3, 2, 8, 2, activation=jax.nn.softplus, key=k2)
    return tanh, softplus


def test_mlp_orders_3_and_4():
    tanh, softplus = _mlps(jax.random.key(0))

    def fn(x):
        return tanh(x) + softplus(x)

    gen = _gen("mlp")
    check(
        Case(
            "mlp",
            fn,
            gen.uniform(-1, 1, (4, 3)),
            orders=(3, 4),
            rtol=1e-8,
            atol=1e-8,
            num_directions=3,
            num_weights=2,
        )
    )


def test_high_orders():
    # Order 5 on a tanh network; order 6 on a closed-form product, whose sixth
    # derivative along v is also known by hand (below).
    tanh, _ = _mlps(jax.random.key(1))
    gen = _gen("high")
    check(
        Case(
            "mlp order 5",
            tanh,
            gen.uniform(-1, 1, (3, 3)),
            orders=(5,),
            rtol=1e-8,
            atol=1e-8,
        )
    )

    def g(x):
        return jnp.sin(x[0]) * jnp.exp(x[1])

    p = jnp.asarray([0.3, -0.2])
    v = jnp.asarray([[0.7, 1.1]])
    w = jnp.asarray([[2.0]])
    _, top = quick_jit(lambda p: collapsed_taylor(g, p, v, w, 6))(p)
    # sin(a + s v0) exp(b + s v1) = Im(exp((a + b i... ): the line is
    # Im(e^{i a + b} e^{s (i v0 + v1)}), whose 6th derivative is
    # Im(e^{i a + b} (v1 + i v0)^6).
    z = np.exp(1j * 0.3 - 0.2) * (1.1 + 0.7j) ** 6
    np.testing.assert_allclose(np.asarray(top), [2.0 * z.imag], rtol=1e-10)
