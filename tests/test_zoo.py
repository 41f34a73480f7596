"""The zoo: every exact method agrees with nested autodiff to round-off.

For every primitive with a rule in `eqxderiv._engine.registry.RULES`, and for every
`jax.nn` / `jax.numpy` / `jax.scipy.special` function with a custom derivative
(or a kink, a tie, a branch of `where`), the zoo holds small fields `f(x)` on
`x` of shape `(2,)` or `(3,)` and a batch of points: generic points and the
function's special points (0, kinks, both sides of a kink, ties, boundaries of
`where`, branch switches).

For each entry, every applicable operator under every exact method, and
`eqxderiv.derivatives` with several operator sets, must equal an independent
oracle written directly with `jax.jacfwd` / `jax.hessian` / `jnp.trace` in
float64 ("JAX's own derivative": custom_jvp / custom_vjp rules, JAX's
conventions at kinks and ties). One entry is one compiled program evaluating
all operators and methods and the oracle at once, over all its points.

Non-finite oracle values. Where JAX's own derivative is undefined (NaN or
±inf), the order of evaluation decides between NaN and inf (`0 * inf` in forward
mode is NaN where reverse mode gives inf), so no single non-finite value is "the"
reference. The zoo therefore: (a) keeps such points only where an entry declares
them in `nonfinite` (its point indices), and there requires the library to be
non-finite exactly where the oracle is (NaN and ±inf not distinguished) and
close elsewhere; (b) treats a non-finite oracle at an undeclared point as an
error in the zoo itself, reported as such, not as a library failure.

`test_registry_complete` checks that every rule in `_RULES` is exercised by at
least one zoo field, so a new rule without a zoo entry fails.
`test_parameter_gradients` checks `jax.grad` with respect to network parameters
of a loss of each operator's output against the same loss through the oracle.
"""

import dataclasses
import sys
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.special as jss
import numpy as np
import pytest
from jax import lax
from jax.extend import core as jcore

import eqxderiv
from eqxderiv import FallbackWarning
from eqxderiv._engine import registry
from eqxderiv._methods import as_method


jax.config.update("jax_enable_x64", True)  # also set by conftest.py


# --------------------------------------------------------------------------------
# Operators and methods.

OPS: dict[str, Any] = {
    "Value": eqxderiv.Value,
    "Jacobian": eqxderiv.Jacobian,
    "Grad": eqxderiv.Grad,
    "Hessian": eqxderiv.Hessian,
    "Laplacian": eqxderiv.Laplacian,
    "Divergence": eqxderiv.Divergence,
    "GradDiv": eqxderiv.GradDiv,
    "Advection": eqxderiv.Advection,
    "Curl": eqxderiv.Curl,
}
SCALAR_OPS = ("Value", "Jacobian", "Grad", "Hessian", "Laplacian")
VECTOR_OPS = ("Value", "Jacobian", "Divergence", "GradDiv", "Laplacian", "Advection")
METHODS: dict[str, Any] = {
    "auto": "auto",
    "taylor": "taylor",
    "forward": "forward",
    "nested": "nested",
    "Taylor(compress=False)": eqxderiv.Taylor(compress=False),
}
# Operator sets passed to `eqxderiv.derivatives`, besides "all applicable ones".
SCALAR_SETS = (("Grad", "Laplacian"),)
VECTOR_SETS = (("Divergence", "Laplacian"), ("Jacobian", "GradDiv"))


def applicable(out_shape: tuple[int, ...], d: int) -> tuple[str, ...]:
    if out_shape == ():
        return SCALAR_OPS
    assert out_shape == (d,), out_shape
    return VECTOR_OPS + (("Curl",) if d in (2, 3) else ())


# --------------------------------------------------------------------------------
# The oracle: nested autodiff written directly with jax, per sample, float64.


def _curl(J: jax.Array) -> jax.Array:
    if J.shape == (2, 2):
        return J[1, 0] - J[0, 1]
    return jnp.stack([J[2, 1] - J[1, 2], J[0, 2] - J[2, 0], J[1, 0] - J[0, 1]])


def oracle(f: Callable, x: jax.Array, names: Sequence[str], mode: str = "fwd") -> dict:
    """`{name: value}` at one sample, by nested jax autodiff.

    `mode`: "fwd" (the default): first derivatives by `jax.jacfwd`, Hessians by
    `jax.hessian` (forward over reverse), the gradient of the divergence as
    `jax.jacfwd` of the trace of `jax.jacfwd`. "rev": first derivatives by
    `jax.jacrev` (custom_vjp functions have no forward mode in jax). "fwdfwd":
    forward mode only, Hessians by `jax.jacfwd(jax.jacfwd)` (jax cannot
    reverse-differentiate a while loop)."""
    jac = jax.jacrev if mode == "rev" else jax.jacfwd
    hess = jax.jacfwd(jax.jacfwd(f)) if mode == "fwdfwd" else jax.hessian(f)
    out = {}
    for name in names:
        if name == "Value":
            out[name] = f(x)
        elif name == "Jacobian":
            out[name] = jac(f)(x)
        elif name == "Grad":
            out[name] = jax.grad(f)(x) if mode != "fwdfwd" else jax.jacfwd(f)(x)
        elif name == "Hessian":
            out[name] = hess(x)
        elif name == "Laplacian":
            out[name] = jnp.trace(hess(x), axis1=-2, axis2=-1)
        elif name == "Divergence":
            out[name] = jnp.trace(jac(f)(x))
        elif name == "GradDiv":
            out[name] = jax.jacfwd(lambda y: jnp.trace(jac(f)(y)))(x)
        elif name == "Advection":
            out[name] = jac(f)(x) @ f(x)
        elif name == "Curl":
            out[name] = _curl(jac(f)(x))
        else:
            raise ValueError(name)
    return out


# --------------------------------------------------------------------------------
# Zoo entries.


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable
    points: np.ndarray  # (n, d), float64
    rtol: float = 1e-10
    atol: float = 1e-10
    # Point indices where the oracle is allowed to be non-finite (see the module
    # docstring).
    nonfinite: tuple[int, ...] = ()
    # How the oracle differentiates (see `oracle`).
    mode: str = "fwd"
    # `{method: substrings}`: errors that jax itself raises for this field, which a
    # method built on the same jax transformation may raise too ("*": any
    # method). Wrong numbers are never accepted.
    jax_errors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    note: str = ""  # why tolerances were loosened, or what the points mean

    def __repr__(self):
        return self.name


ZOO: list[Entry] = []


def _gen(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def add(
    name: str,
    fn: Callable,
    points: Sequence[Sequence[float]] | np.ndarray,
    *,
    generic: int = 3,
    lo: float = -1.5,
    hi: float = 1.5,
    **kw,
):
    """Adds an entry with `points` and `generic` random points uniform in
    `[lo, hi]^d` (first)."""
    pts = np.asarray(points, dtype=np.float64)
    d = pts.shape[1]
    rand = _gen(name).uniform(lo, hi, (generic, d))
    ZOO.append(Entry(name, fn, np.concatenate([rand, pts]), **kw))


# Fields of several functions each: every entry costs one compilation, so the
# scalar fields of the unary functions (and the vector fields of the simpler ones)
# are grouped by domain. A failure there names the group; the per-function
# vector entries localise it.
GROUP_RANGE = {"real": (-1.5, 1.5), "positive": (0.1, 3.0), "unit": (0.05, 0.95)}
SCALAR_GROUPS: dict[str, list[tuple[Callable, list[float], dict]]] = {}
VECTOR_GROUPS: dict[str, list[tuple[Callable, list[float], dict]]] = {}


def _in_group(group: str, s: float) -> bool:
    lo, hi = GROUP_RANGE[group]
    # Large arguments stay out of the groups, where their large values would
    # swamp the other members' errors; the per-function entries keep them.
    return (lo <= s <= hi or group == "real") and abs(s) <= 10


def unary(
    name: str,
    g: Callable,
    specials: Sequence[float],
    *,
    lo: float = -1.5,
    hi: float = 1.5,
    scalar: str | None = "real",
    vec: str | None = None,
    **kw,
):
    """A vector field (d = 3) `f_i = g(x_i) (x_{i-1} + 2)` at every special value
    in every position and at generic points in `[lo, hi]` (its own entry, or a
    term of the group `vec`'s field), and a term of the scalar field of the group
    `scalar` (see `close_groups`), at the specials inside the group's domain."""
    gen = _gen(name)

    def p():
        return float(gen.uniform(lo, hi))

    if vec is None:
        points = [[s, p(), p()] for s in specials] + [[p(), s, s] for s in specials]
        add(
            f"{name}/vec",
            lambda x: g(x) * (jnp.roll(x, 1) + 2.0),
            points,
            lo=lo,
            hi=hi,
            **kw,
        )
    else:
        VECTOR_GROUPS.setdefault(vec, []).append((g, list(specials), kw))
    if scalar is not None:
        sp = [s for s in specials if _in_group(scalar, s)]
        SCALAR_GROUPS.setdefault(scalar, []).append((g, sp, kw))


def close_groups():
    """One scalar entry (d = 2) per group, `u = sum_k c_k (0.7 g_k(x_0) - 0.4
    g_k(x_1) + g_k(x_0) g_k(x_1))`, at `(s, p)`, `(p, s)`, `(s, s)` for every
    special `s` of any member; one vector entry per vector group, `f = sum_k
    g_k(x) (x_{i-1} + 2 + k / 10)`. Tolerances: the loosest member's."""
    for kind, groups in (("scal", SCALAR_GROUPS), ("vec", VECTOR_GROUPS)):
        for group, members in groups.items():
            lo, hi = GROUP_RANGE[group]
            gen = _gen(group + kind)
            specials = sorted({s for _, sp, _ in members for s in sp})
            rtol = max([1e-10] + [kw.get("rtol", 1e-10) for *_, kw in members])
            atol = max([1e-10] + [kw.get("atol", 1e-10) for *_, kw in members])
            gs = [g for g, *_ in members]

            def p():
                return float(gen.uniform(lo, hi))

            if kind == "scal":
                points = [[s, p()] for s in specials] + [[p(), s] for s in specials]
                points += [[s, s] for s in specials]

                def fn(x, gs=gs):
                    # One call of each g on the whole x: the cost of an entry
                    # grows with the size of its jaxpr.
                    gx = [g(x) for g in gs]
                    return sum(
                        (0.7 * v[0] - 0.4 * v[1] + v[0] * v[1]) / (k + 1)
                        for k, v in enumerate(gx)
                    )

            else:
                points = [[s, p(), p()] for s in specials]
                points += [[p(), s, s] for s in specials]

                def fn(x, gs=gs):
                    return sum(
                        g(x) * (jnp.roll(x, 1) + 2.0 + k / 10) for k, g in enumerate(gs)
                    )

            add(f"group_{group}/{kind}", fn, points, lo=lo, hi=hi, rtol=rtol, atol=atol)


def binary(
    name: str,
    g: Callable,
    points: Sequence[Sequence[float]],
    *,
    vec_points: Sequence[Sequence[float]] | None = None,
    **kw,
):
    """A scalar field (d = 2) `u = g(x_0, x_1) + 0.3 x_0 g(x_1, x_0)` at
    `points` (pairs), and a vector field (d = 3) `f_i = g(x_i, x_{i-1})` at
    `vec_points` (default: each pair `(a, b)` as `(a, b, a)`... the pair appears as
    `(x_1, x_0)` and `(x_0, x_2)`)."""
    add(
        f"{name}/scal",
        lambda x: g(x[0], x[1]) + 0.3 * x[0] * g(x[1], x[0]),
        points,
        **kw,
    )
    if vec_points is None:
        vec_points = [[b, a, b] for a, b in points]
    add(f"{name}/vec", lambda x: g(x, jnp.roll(x, 1)), vec_points, **kw)


K = 1e-3  # "both sides of a kink": kink +- K

# ---- jax.nn activations (custom_jvp, kinks) -------------------------------------

unary("relu", jax.nn.relu, [0.0, K, -K])
unary("relu6", jax.nn.relu6, [0.0, 6.0, K, -K, 6 + K, 6 - K], lo=-2, hi=8)
unary("leaky_relu", jax.nn.leaky_relu, [0.0, K, -K])
unary("elu", jax.nn.elu, [0.0, K, -K])
unary("celu", lambda x: jax.nn.celu(x, 0.7), [0.0, K, -K])
unary("selu", jax.nn.selu, [0.0, K, -K], scalar=None, vec="real")
unary("gelu_tanh", lambda x: jax.nn.gelu(x, approximate=True), [0.0, -3.0, 3.0])
unary("gelu_erf", lambda x: jax.nn.gelu(x, approximate=False), [0.0, -3.0, 3.0])
unary("silu", jax.nn.silu, [0.0], scalar=None, vec="real")
unary("swish", jax.nn.swish, [0.0, -5.0], scalar=None, vec="real")
unary("softplus", jax.nn.softplus, [0.0, K, -K, 40.0, -40.0])
unary("soft_sign", jax.nn.soft_sign, [0.0, K, -K])
unary("sigmoid", jax.nn.sigmoid, [0.0, 30.0], scalar=None, vec="real")
unary("log_sigmoid", jax.nn.log_sigmoid, [0.0, K, -K, 40.0, -40.0])
unary("hard_tanh", jax.nn.hard_tanh, [0.0, 1.0, -1.0, 1 + K, 1 - K, -1 - K])
unary("hard_sigmoid", jax.nn.hard_sigmoid, [0.0, 3.0, -3.0, 3 + K, -3 - K], lo=-4, hi=4)
unary("hard_silu", jax.nn.hard_silu, [0.0, 3.0, -3.0, 3 - K, -3 + K], lo=-4, hi=4)
unary("mish", jax.nn.mish, [0.0, -20.0], scalar=None)
unary("squareplus", jax.nn.squareplus, [0.0], scalar=None, vec="real")

# ---- jax.numpy / jax.scipy.special with custom derivatives or kinks --------------

unary(
    "sinc",
    jnp.sinc,
    [0.0, K, -K, 1.0, -1.0],
    atol=1e-8,
    note="at x = 1e-3 JAX's own sinc derivative cancels (error ~ eps / x^2): "
    "its forward-over-forward and forward-over-reverse Laplacians differ by 1e-9",
)
unary("abs", jnp.abs, [0.0, K, -K])
unary("sign", lambda x: jnp.sign(x) * x * x + x, [0.0, K, -K], scalar=None)
unary("where", lambda x: jnp.where(x > 0, x * x + x, jnp.sin(x)), [0.0, K, -K])
unary("clip", lambda x: jnp.clip(x, -0.5, 0.5), [0.5, -0.5, 0.5 + K, -0.5 - K])
unary(
    "clamp_const",
    lambda x: lax.clamp(-0.5, x, 0.5),
    [0.5, -0.5, 0.5 - K, -0.5 + K],
    scalar=None,
)
unary("erf", jss.erf, [0.0], scalar=None, vec="real")
unary("erfc", jss.erfc, [0.0, 3.0], scalar=None, vec="real")
unary("erfinv", jss.erfinv, [0.0, 0.5, -0.9], lo=-0.9, hi=0.9, scalar="unit")
# ndtr switches branch at |x| = 1/sqrt(2).
unary("ndtr", jss.ndtr, [0.0, 2**-0.5, -(2**-0.5), 2**-0.5 + K])
# ndtri switches branch at p = exp(-2) and 1 - exp(-2).
unary(
    "ndtri",
    jss.ndtri,
    [0.5, float(np.exp(-2.0)), float(1 - np.exp(-2.0)), 0.01],
    lo=0.05,
    hi=0.95,
    scalar=None,  # ndtri alone costs as much as ten other entries to compile
)
# log_ndtr switches branch at x = -20 and x = 8.
unary("log_ndtr", jss.log_ndtr, [0.0, -20.0, 8.0, -20 - K, 8 + K, -5.0], lo=-3, hi=3)
unary("logit", jss.logit, [0.5, 0.01, 0.99], lo=0.05, hi=0.95, scalar="unit")
unary("expit", jss.expit, [0.0], scalar=None, vec="real")
unary(
    "entr",
    jss.entr,
    [0.5, 1.0, float(np.exp(-1.0))],
    lo=0.05,
    hi=2.0,
    scalar="positive",
)
unary("gammaln", jss.gammaln, [1.0, 2.0, -0.5, 0.5], lo=0.3, hi=4.0, scalar="positive")
unary("digamma", jss.digamma, [1.0, -0.5, 2.0], lo=0.3, hi=4.0, scalar="positive")
unary(
    "polygamma",
    lambda x: jss.polygamma(1, x),
    [1.0, 2.0],
    lo=0.3,
    hi=4.0,
    scalar=None,
    vec="positive",
)
unary(
    "bessel_i0e_i1e",
    lambda x: jss.i0e(x) + jss.i1e(x),
    [0.0, K, -K],
    scalar=None,
    vec="real",
)
add(
    "gammainc",
    lambda x: jss.gammainc(2.0, x * x + 0.1) + jss.gammaincc(1.5, x + 1.5),
    [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
    note="the shape parameter `a` is constant: JAX has no second derivative "
    "in `a` (igamma_grad_a has no differentiation rule)",
)
unary("sqrt", jnp.sqrt, [1.0, 0.25, 1e-4], lo=0.1, hi=3.0, scalar="positive")
unary("cbrt", jnp.cbrt, [1.0, -1.0, -8.0, 1e-3], lo=-3.0, hi=3.0, scalar="positive")
unary("rsqrt", lax.rsqrt, [1.0, 0.25], lo=0.1, hi=3.0, scalar=None, vec="positive")
unary("pow_const", lambda x: x**2.5, [0.0, 1.0], lo=0.0, hi=2.0, scalar="positive")
unary(
    "integer_pow",
    lambda x: x**3 - 0.5 * x ** (-2) + x**0 + x**1,
    [1.0, -1.0],
    lo=0.3,
    hi=2.0,
    scalar=None,
)
unary("floor_ceil", lambda x: x * jnp.floor(x) + x * x * jnp.ceil(x), [0.0, 1.0, -1.0])
unary("round", lambda x: x * jnp.round(x), [0.5, -0.5, 1.0], scalar=None, vec="real")
unary(
    "stop_gradient",
    lambda x: x + lax.stop_gradient(x) ** 2 * x,
    [0.0],
    scalar=None,
    vec="real",
)
unary(
    "reduce_precision",
    lambda x: lax.reduce_precision(jnp.sin(x), exponent_bits=11, mantissa_bits=52),
    [0.0],
    scalar=None,
    vec="real",
)
unary(
    "logaddexp_const",
    lambda x: jnp.logaddexp(x, 0.0),
    [0.0, 30.0],
    scalar=None,
    vec="real",
)
close_groups()


def _in_place(x):
    # Primitives whose other entries put them in runs of elementwise equations of
    # one value, which `chains.py` evaluates as one map, or in `jit` calls
    # (`jnp.arccosh`, `jnp.round`) taken as one map: here each is the only
    # curved step on its operand, so its own rule is called
    # (`test_rules_called_in_place`). Every product reads two values of
    # different roots, which ends any run.
    a, b, c = x[0], x[1], x[2]
    return jnp.stack(
        [
            lax.acosh(a + 3.0) * b + jss.i0e(c) * a,
            jss.i1e(b) * c + jnp.ceil(a) * b,
            lax.round(c, lax.RoundingMethod.TO_NEAREST_EVEN) * a
            + jss.gammainc(2.0, b + 2.0) * c
            + jss.gammaincc(1.5, a + 2.0) * b,
        ]
    )


add(
    "in_place",
    _in_place,
    [[0.5, 0.0, 1.0], [-0.5, 1.0, 0.5], [0.0, -0.5, -1.0], [1.0, 0.5, 0.0]],
    rtol=1e-9,
    atol=1e-9,
)

# ---- smooth elementwise primitives (several per field) --------------------------


def _smooth_a(x):
    a, b, c = x[0], x[1], x[2]
    return jnp.stack(
        [
            jnp.exp(a) * jnp.log(b) + jnp.log1p(c) * jnp.expm1(a),
            jnp.sin(a * b) + jnp.cos(b) * jnp.tan(c),
            jnp.tanh(a - c) * jnp.exp2(b) + jnp.square(c) / b,
        ]
    )


def _smooth_b(x):
    a, b, c = x[0], x[1], x[2]
    return jnp.stack(
        [
            jnp.sinh(a) * jnp.cosh(b) + jnp.arcsin(c) * jnp.arccos(a),
            jnp.arctan(a * b) + jnp.arcsinh(c) * jnp.arccosh(b * b + 1.5),
            jnp.arctanh(c) * jax.nn.sigmoid(a) - b / (1.0 + c * c),
        ]
    )


add("smooth_a", _smooth_a, [[0.3, 0.8, 0.1]], lo=0.2, hi=0.9)
add("smooth_b", _smooth_b, [[0.0, 0.5, 0.0]], lo=-0.8, hi=0.8)
add(
    "smooth_scalar",
    lambda x: jnp.exp(x[0]) * jnp.sin(x[1]) / (1.0 + x[0] ** 2) + jnp.log1p(x[1] ** 2),
    [[0.0, 0.0]],
)

# ---- binary ---------------------------------------------------------------------

_TIES = [[0.0, 0.0], [0.7, 0.7], [-1.2, -1.2], [0.7, 0.7 + K], [0.7 + K, 0.7]]
binary("maximum", jnp.maximum, _TIES)
binary("minimum", jnp.minimum, _TIES)
binary("logaddexp", jnp.logaddexp, _TIES + [[30.0, -30.0]])
binary("logaddexp2", jnp.logaddexp2, _TIES + [[30.0, -30.0]])
binary(
    "arctan2",
    jnp.arctan2,
    [[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 1e-3]],
    vec_points=[[0.0, 1.0, -1.0], [1.0, 0.0, -1.0], [0.0, -1.0, 1e-3]],
)
binary("div", lambda a, b: a / (b * b + 0.5), [[0.0, 0.0], [1.0, -1.0]])
binary("rem", lambda a, b: lax.rem(a, b + 2.0), [[1.4, -1.3], [-1.4, -1.3], [0.0, 0.1]])
add(
    "pow/scal",
    lambda x: x[0] ** x[1],
    [[0.0, 2.0], [0.0, 3.0], [0.0, 2.5], [1.0, 0.5], [2.0, 0.0]],
    lo=0.2,
    hi=2.0,
    note="pow at a zero base: JAX's derivative in the exponent is 0 there",
)
add(
    "pow/vec",
    lambda x: (x * x + 0.5) ** jnp.roll(x, 1) + jnp.abs(x) ** 3.0,
    [[0.0, 1.0, -1.0], [0.5, 0.0, 0.0]],
)
add(
    "xlogy/scal",
    lambda x: jss.xlogy(x[0], x[1]) + 0.3 * x[0] * jss.xlogy(x[0] * x[0], x[1] + 1),
    [[0.0, 0.5], [0.0, 1.0], [0.0, 2.0], [-0.4, 1.5]],
    lo=0.1,
    hi=2.0,
)
add(
    "xlogy/vec",
    lambda x: jss.xlogy(x, 1.5 + jnp.sin(jnp.roll(x, 1))),
    [[0.0, 0.3, -0.5], [0.0, 0.0, 0.0]],
)
add(
    "xlog1py/scal",
    lambda x: jss.xlog1py(x[0], x[1]) + 0.3 * x[0] * jss.xlog1py(x[0] * x[0], x[1]),
    [[0.0, 0.0], [0.0, 0.5], [0.0, -0.5], [-0.4, 1.5]],
    lo=-0.5,
    hi=2.0,
)
add(
    "xlog1py/vec",
    lambda x: jss.xlog1py(x, 0.5 + jnp.sin(jnp.roll(x, 1))),
    [[0.0, 0.3, -0.5], [0.0, 0.0, 0.0]],
)
add(
    "clamp_traced",
    lambda x: lax.clamp(x[1], x[0], x[2]) * (1.0 + x[1]) + x[2] * x[0],
    [
        [0.0, 0.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.5, 0.0, 1.0],
        [-0.2, 0.0, 1.0],
        [1.3, 0.0, 1.0],
    ],
    note="ties of the operand with either bound, inside, below and above",
)
add(
    "clip_traced",
    lambda x: jnp.clip(x[0], x[1], x[2]) * (1.0 + x[1]) + x[2] * x[0],
    [
        [0.0, 0.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.5, 0.0, 1.0],
        [-0.2, 0.0, 1.0],
        [1.3, 0.0, 1.0],
    ],
)

# ---- reductions and normalisations ----------------------------------------------

_V_TIES = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, -0.5], [-0.5, 2.0, 2.0]]
add("logsumexp", jax.nn.logsumexp, _V_TIES + [[30.0, -30.0, 0.0]])
add(
    "logsumexp_b",
    lambda x: jss.logsumexp(x, b=jnp.array([1.0, 2.0, 0.5])),
    _V_TIES,
)
add("softmax", jax.nn.softmax, _V_TIES + [[30.0, -30.0, 0.0]])
add("log_softmax", jax.nn.log_softmax, _V_TIES + [[30.0, -30.0, 0.0]])
add(
    "standardize",
    jax.nn.standardize,
    _V_TIES,
    rtol=1e-8,
    atol=1e-8,
    note="at constant x the variance is 0 and derivatives scale like eps^(-3/2) ~ "
    "3e7 (eps = 1e-5), so cancellation costs a few more digits",
)
add("norm", jnp.linalg.norm, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], nonfinite=(4,))
add(
    "norm_ord",
    lambda x: jnp.linalg.norm(x, 1) + jnp.linalg.norm(x, jnp.inf),
    [[1.0, 0.0, -0.5], [1.0, -1.0, 0.5], [0.0, 0.0, 0.0]],
)
add(
    "norm_vec",
    lambda x: x * jnp.linalg.norm(x + 0.5),
    [[-0.5, -0.5, 0.0]],
)
add(
    "reduce_max_min",
    lambda x: jnp.max(x) * x + jnp.min(x**2) + jnp.max(jnp.sin(x)),
    _V_TIES,
)
add("argmax_take", lambda x: x[jnp.argmax(x)] * x[jnp.argmin(x)], _V_TIES)
add(
    "sort",
    lambda x: jnp.sort(x) * jnp.array([1.0, 2.0, 3.0]) + jnp.sort(x**3)[::-1],
    _V_TIES,
)
add(
    "argsort",
    lambda x: jnp.sin(x)[jnp.argsort(x)] * jnp.arange(1.0, 4.0),
    _V_TIES,
)
add("median_var", lambda x: jnp.median(x) * jnp.var(x) + jnp.std(x + 1.0), _V_TIES[2:])
add("cumsum", lambda x: jnp.cumsum(jnp.sin(x) * x) + jnp.cumsum(x[::-1]), [[0.0, 0, 0]])
add(
    "cumprod",
    lambda x: jnp.cumprod(x) + jnp.cumprod(x[::-1] + 1.0),
    [[0.0, 1.0, 2.0], [1.0, 0.0, 2.0], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0]],
)
add(
    "cummax",
    lambda x: lax.cummax(x) + lax.cummin(x**2),
    _V_TIES + [[1.0, 0.5, 1.0]],
)
add("cumlogsumexp", lambda x: lax.cumlogsumexp(x * x), [[0.0, 0.0, 0.0]])
add(
    "reduce_prod",
    lambda x: jnp.prod(x) + jnp.prod(jnp.sin(x) + x[0]) * x,
    [[0.0, 1.0, 2.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
)

# ---- structural primitives ------------------------------------------------------


def _structural_a(x):
    # reshape, broadcast_in_dim, transpose, squeeze, rev, slice, concatenate, pad,
    # reduce_sum, dot_general, copy
    m = jnp.outer(x, jnp.sin(x)).reshape(9).reshape(3, 3).T
    y = jnp.concatenate([x[::-1], jnp.pad(x[:2] ** 2, 1, constant_values=0.5)])
    z = jnp.copy(jnp.expand_dims(x, 0))[0]
    return m @ z + y[1:4] * jnp.sum(y) + jnp.squeeze(x[None, 1:2]) * m.sum(0)


def _structural_b(x):
    # gather, dynamic_slice, dynamic_update_slice, scatter (unique), scatter-add,
    # tile, stack, unstack, split
    i = jnp.argmax(x)
    w = lax.dynamic_slice(jnp.tile(x, 2), (i,), (3,))
    u = lax.dynamic_update_slice(x * x, jnp.sin(x[:1]), (1,))
    v = x.at[jnp.array([2, 0])].set(x[:2] ** 3, unique_indices=True)
    s = jnp.zeros(3).at[jnp.array([0, 0, 2])].add(x * x)
    a, b, c = jnp.unstack(x)
    p, q, r = jnp.split(jnp.stack([x, x**2]).reshape(6)[:3], 3)
    return w * u + v * s + jnp.array([b, c, a]) * jnp.concatenate([q, r, p])


def _structural_c(x):
    # gather with index arithmetic, scatter with possibly duplicate indices,
    # scatter-mul, scatter-max, select_n with an integer predicate.
    g = jnp.take(x, jnp.array([2, 2, 0])) * x[jnp.array([1, 0, 2])]
    s = x.at[jnp.array([1, 1])].set(x[1:] ** 2)
    m = x.at[1].multiply(x[0] + 2.0).at[2].max(x[0])
    k = lax.select_n(jnp.argmax(x) % 3, x, x**2, jnp.sin(x))
    return g + s * m + k


def _dtypes(x):
    # convert_element_type: float -> int (no derivative), -> complex -> real,
    # weak-typed constants, device_put, optimization_barrier, sharding_constraint
    n = x.astype(jnp.int32).astype(jnp.float64)
    y = jax.device_put(x * n + x**2)
    (y,) = lax.optimization_barrier((y,))
    s = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    y = lax.with_sharding_constraint(y, s)
    return y + jnp.real(x.astype(jnp.complex128) ** 2)


add("structural_a", _structural_a, [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


_W3 = np.random.default_rng(3).normal(size=(3, 3))
_W233 = np.random.default_rng(4).normal(size=(2, 3, 3))


def _weight_times_vector(x):
    # dot_general of a constant weight and a value that depends on x, contracted
    # whole (the engine computes it vector-first): a matrix times a vector with a
    # per-operand precision, a (2, 3, 3) weight contracted over two axes with a
    # (3, 3) matrix, and a weight times a scalar (nothing contracted).
    h = lax.dot_general(
        _W3,
        jnp.tanh(x),
        (((1,), (0,)), ((), ())),
        precision=(lax.Precision.HIGHEST, lax.Precision.DEFAULT),
    )
    m = lax.dot_general(_W233, jnp.outer(x, jnp.sin(h)), (((1, 2), (1, 0)), ((), ())))
    s = lax.dot_general(_W3, jnp.sum(x * h), (((), ()), ((), ())))
    return jnp.tanh(h) * x + m.sum() * x**2 + s @ x


add("structural_b", _structural_b, _V_TIES)
add("weight_times_vector", _weight_times_vector, [[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]])
add("structural_c", _structural_c, _V_TIES)
add("dtypes", _dtypes, [[0.0, 1.0, -1.0], [0.5, 1.5, 2.0]])
add(
    "einsum_batched",
    lambda x: jnp.einsum(
        "bi,bij->bj",
        jnp.stack([x, x**2]),
        jnp.stack([jnp.outer(x, x), jnp.diag(jnp.sin(x))]),
    ).sum(0),
    [[0.0, 0.0, 0.0]],
)

# ---- complex intermediates ------------------------------------------------------


def _complex(x):
    c = lambda a: a.astype(jnp.complex128)  # strict promotion refuses `1j * x`
    z = jnp.exp(1j * c(x)) * (c(x) + 2j) + (c(jnp.roll(x, 1)) * 1j) ** 2
    w = z * jnp.conj(z) + z**3 / (z + 3.0)
    return jnp.real(w) + jnp.imag(z) * jnp.abs(z)


add("complex", _complex, [[0.0, 0.0, 0.0]])
add(
    "complex_fft",
    lambda x: (
        jnp.abs(jnp.fft.fft(x + 1.0)) ** 2
        + jnp.real(jnp.fft.ifft(x * x))
        + jnp.fft.irfft(jnp.fft.rfft(jnp.sin(x)) ** 2, n=3)
    ),
    [[0.0, 0.0, 0.0]],
)

# ---- calls ------------------------------------------------------------------------


@jax.custom_vjp
def _cube_vjp(x):
    return x**3


def _cube_fwd(x):
    return x**3, x


def _cube_bwd(x, g):
    return (3 * x**2 * g,)


_cube_vjp.defvjp(_cube_fwd, _cube_bwd)


@jax.custom_jvp
def _odd_jvp(x):
    return jnp.sin(x)


@_odd_jvp.defjvp
def _odd_jvp_rule(primals, tangents):
    # A deliberately "wrong" derivative: JAX's is what counts.
    (x,), (t,) = primals, tangents
    return jnp.sin(x), 2.0 * jnp.cos(x) * t


add(
    "custom_jvp_user",
    lambda x: _odd_jvp(x) * jnp.roll(x, 1),
    [[0.0, 0.0, 0.0]],
    note="a custom_jvp whose rule differs from its primal's derivative",
)
add(
    "custom_vjp_user",
    lambda x: _cube_vjp(jnp.sin(x)) * jnp.roll(x, 1),
    [[0.0, 0.0, 0.0]],
    mode="rev",
    # jax has no forward mode for a custom_vjp function; the "forward" method is
    # jax's forward mode.
    jax_errors=(
        ("forward", ("forward-mode autodiff (jvp) to a custom_vjp", "custom_lin")),
    ),
)
add(
    "jit_remat",
    lambda x: (
        jax.jit(lambda y: jnp.sin(y) * y[0])(x)
        + jax.checkpoint(lambda y: jnp.cos(y) ** 2)(x)
    ),
    [[0.0, 0.0, 0.0]],
)
add(
    "gradient_field",  # add_any, from the transpose inside jax.grad
    lambda x: jax.grad(lambda y: jnp.sum(jnp.sin(y) * y[0]) + y[1] * y[2] ** 3)(x),
    [[0.0, 0.0, 0.0]],
)

# ---- control flow -----------------------------------------------------------------

add(
    "scan",
    lambda x: lax.scan(lambda c, a: (c * a + jnp.sin(c), c * a), 1.0 + x[0], x)[1],
    [[0.0, 0.0, 0.0]],
)
add(
    "fori_loop",
    lambda x: lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) * x + i, x),
    [[0.0, 0.0, 0.0]],
)
add(
    "while_loop",
    lambda x: lax.while_loop(
        lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.tanh(c[1]) * x + 0.5), (0, x)
    )[1],
    [[0.0, 0.0, 0.0]],
    mode="fwdfwd",
    # jax cannot reverse-differentiate a while loop: a method that goes through
    # jax's reverse mode (`nested`, the gradient of the divergence) may raise that.
    jax_errors=(("*", ("Reverse-mode differentiation does not work for lax.while",)),),
)
add(
    "cond",
    lambda x: lax.cond(x[0] > 0, lambda y: jnp.sin(y) * y[1], lambda y: y**2, x),
    [[0.0, 1.0, 2.0], [K, 1.0, 2.0], [-K, 1.0, 2.0]],
)
add(
    "switch",
    lambda x: lax.switch(
        jnp.clip(jnp.floor(x[0] + 1.0), 0, 2).astype(jnp.int32),
        [jnp.sin, jnp.cos, lambda y: y**3],
        x,
    ),
    [[0.0, 0.5, 1.0], [-1.0, 0.5, 1.0], [1.0, 0.5, 1.0]],
)

# ---- convolution ------------------------------------------------------------------

_CONV_W = np.random.default_rng(1).standard_normal((2, 1, 2))
_CONV_W2 = np.random.default_rng(2).standard_normal((1, 2, 3))


def _conv(x):
    # An eqx.nn.Conv1d-like stack: (channels, length) = (1, 3) -> (2, 3) -> (1, 3).
    h = lax.conv_general_dilated(x[None, None], jnp.asarray(_CONV_W), (1,), "SAME")
    h = jnp.tanh(h)
    h = lax.conv_general_dilated(
        h, jnp.asarray(_CONV_W2), (1,), [(1, 1)], rhs_dilation=(1,)
    )
    return h[0, 0] * x


add("conv", _conv, [[0.0, 0.0, 0.0]])

# ---- linear algebra ---------------------------------------------------------------

_B = np.random.default_rng(3).standard_normal((3, 3))
_SPD = _B @ _B.T + 3 * np.eye(3)
_B4 = np.random.default_rng(4).standard_normal((4, 4))


def _mat(x):
    return _SPD + jnp.outer(x, x) + jnp.diag(jnp.sin(x))


def _mat4(x):
    v = jnp.concatenate([x, x[:1] * x[1:2]])
    return _B4 + 3 * jnp.eye(4) + jnp.outer(v, jnp.cos(v))


add("solve", lambda x: jnp.linalg.solve(_mat(x), jnp.sin(x) + 1.0), [[0.0, 0, 0]])
add("inv", lambda x: jnp.linalg.inv(_mat(x)) @ x, [[0.0, 0, 0]])
add(
    "slogdet_det",
    lambda x: jnp.linalg.slogdet(_mat(x))[1] + jnp.linalg.det(_mat4(x)),
    [[0.0, 0, 0]],
)
add("det3", lambda x: jnp.linalg.det(_mat(x)), [[0.0, 0, 0]])
add("cholesky", lambda x: jnp.linalg.cholesky(_mat(x)) @ x, [[0.0, 0, 0]])
add(
    "solve_triangular",
    lambda x: (
        jsl.solve_triangular(jnp.tril(_mat(x)), jnp.cos(x), lower=True)
        + jsl.solve_triangular(jnp.triu(_mat(x)), x, lower=False, trans=1)
    ),
    [[0.0, 0, 0]],
)


def _lu(x):
    perm, lower, upper = jsl.lu(_mat4(x))
    lu, pivots, _ = lax.linalg.lu(_mat4(x))
    order = lax.linalg.lu_pivots_to_permutation(pivots, 4)
    return (perm @ lower @ upper)[:3, 1] + jnp.diag(upper)[:3] * lu[order[:3], 0]


add("lu", _lu, [[0.0, 0, 0]])
add(
    "eigh",
    lambda x: jnp.linalg.eigh(_mat(x))[0] + jnp.abs(jnp.linalg.eigh(_mat(x))[1][0]),
    [[0.0, 0, 0]],
)
add(
    "cho_solve",
    lambda x: jsl.cho_solve(jsl.cho_factor(_mat(x)), x + 1.0),
    [[0.0, 0, 0]],
)

# ---- networks ---------------------------------------------------------------------


def mlp(in_size, out_size, width, depth, activation, seed, zero_bias=False):
    """An `eqx.nn.MLP` with NumPy-drawn parameters."""
    shapes = eqx.filter_eval_shape(
        eqx.nn.MLP,
        in_size,
        out_size,
        width,
        depth,
        activation,
        key=jax.random.key(0),
    )
    gen = np.random.default_rng(seed)

    def draw(s):
        if not isinstance(s, jax.ShapeDtypeStruct):
            return s
        if zero_bias and len(s.shape) == 1:
            return jnp.zeros(s.shape)
        return jnp.asarray(gen.standard_normal(s.shape) / np.sqrt(s.shape[-1]))

    return jax.tree.map(
        draw, shapes, is_leaf=lambda s: isinstance(s, jax.ShapeDtypeStruct)
    )


MLP_SOFTPLUS = mlp(2, 2, 8, 2, jax.nn.softplus, 10)
MLP_RELU = mlp(3, 3, 8, 2, jax.nn.relu, 11, zero_bias=True)
# Narrower than the input (width 2 < d = 3): the compressed Laplacian path.
MLP_GELU = mlp(3, "scalar", 2, 2, jax.nn.gelu, 12)
MLP_TANH_NARROW = mlp(3, 3, 2, 2, jnp.tanh, 13)
# Three hidden layers (no closed form for the divergence) of width 2 < d = 3:
# the divergence from the narrow first layer's 2 directions; gelu inlined (runs
# of elementwise equations as one map); zero biases put x = 0 at every layer's 0.
MLP_GELU_NARROW_DEEP = mlp(3, 3, 2, 3, jax.nn.gelu, 14, zero_bias=True)

add("mlp_softplus", MLP_SOFTPLUS, [[0.0, 0.0]])
add("mlp_relu_zero_bias", MLP_RELU, [[0.0, 0.0, 0.0]])
add("mlp_gelu_narrow", MLP_GELU, [[0.0, 0.0, 0.0]])
add("mlp_tanh_narrow", MLP_TANH_NARROW, [[0.0, 0.0, 0.0]])
add("mlp_gelu_narrow_deep", MLP_GELU_NARROW_DEEP, [[0.0, 0.0, 0.0]])


# --------------------------------------------------------------------------------
# Comparison.


def _fmt(a: np.ndarray) -> str:
    return np.array2string(np.asarray(a), precision=12, separator=", ")


def mismatches(
    got: np.ndarray,
    want: np.ndarray,
    rtol: float,
    atol: float,
    nonfinite: Sequence[int],
) -> list[tuple[int, str]]:
    """`[(point index, description)]` of the points where `got` differs from
    `want` (leading axis: points)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return [(-1, f"shape {got.shape}, expected {want.shape}")]
    bad = []
    for i in range(want.shape[0]):
        g, w = got[i], want[i]
        fin = np.isfinite(w)
        if not fin.all() and i not in nonfinite:
            continue  # reported as a zoo error by the caller
        ok = np.array_equal(np.isfinite(g), fin) and np.all(
            np.abs(g[fin] - w[fin]) <= atol + rtol * np.abs(w[fin])
        )
        if not ok:
            with np.errstate(invalid="ignore"):
                err = np.max(np.abs(g - w), initial=0.0)
            bad.append((i, f"got {_fmt(g)}, expected {_fmt(w)} (max |err| {err:.3g})"))
    return bad


def distinct_methods() -> dict[str, Any]:
    """`METHODS` with equal methods merged: `"auto"` is `"taylor"` (the same
    method object), so the pair is evaluated once, as "auto=taylor"; should they
    ever differ, both are evaluated."""
    groups: list[tuple[str, Any]] = []
    for name, method in METHODS.items():
        obj = as_method(method)
        for i, (gname, gobj) in enumerate(groups):
            if gobj == obj:
                groups[i] = (f"{gname}={name}", gobj)
                break
        else:
            groups.append((name, obj))
    return dict(groups)


def _evaluate(entry: Entry):
    """Runs every operator under every method, `eqxderiv.derivatives` and the
    oracle as one compiled program over all the entry's points. An error raised
    while tracing one operator / method is recorded (so the others still run).

    `derivatives` is called with all applicable operators under every method,
    and with the smaller sets of `SCALAR_SETS` / `VECTOR_SETS` under the default
    method only (each call is one more trace and compilation)."""
    x = entry.points
    out_shape = jax.eval_shape(entry.fn, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
    names = applicable(out_shape.shape, x.shape[1])
    extra = SCALAR_SETS if out_shape.shape == () else VECTOR_SETS
    methods = distinct_methods()
    default = next(iter(methods))
    calls: list[tuple[str, str, tuple[str, ...]]] = []  # (label, method, ops)
    for mname in methods:
        calls += [(n, mname, (n,)) for n in names]
        for ops in (names,) + (extra if mname == default else ()):
            calls.append(("derivatives(" + ", ".join(ops) + ")", mname, ops))
    accepted = {m: subs for m, subs in entry.jax_errors}
    errors: dict[tuple[str, str], str] = {}
    jax_errors: dict[tuple[str, str], str] = {}

    def guarded(label, mname, thunk):
        try:
            with warnings.catch_warnings():
                # The fallback is exact; that rules exist is another test's job.
                warnings.simplefilter("ignore", FallbackWarning)
                return thunk()
        except Exception as e:  # noqa: BLE001 -- reported as a failure
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            subs = [
                sub
                for m, ss in accepted.items()
                if m == "*" or m in mname.split("=")
                for sub in ss
            ]
            if any(sub in str(e) for sub in subs):
                jax_errors[(label, mname)] = msg
            else:
                errors[(label, mname)] = msg
            return None

    @jax.jit
    def run(x):
        res: dict[str, Any] = {}
        for label, mname, ops in calls:
            method = methods[mname]
            if label == ops[0]:
                thunk = lambda: (OPS[label](entry.fn, method=method)(x),)  # noqa: B023
            else:
                thunk = lambda: eqxderiv.derivatives(  # noqa: B023
                    entry.fn, x, None, tuple(OPS[n] for n in ops), method=method
                )
            r = guarded(label, mname, thunk)
            if r is not None:
                for n, v in zip(ops, r):
                    res[f"{label}|{mname}|{n}"] = v
        want = jax.vmap(lambda y: oracle(entry.fn, y, names, entry.mode))(x)
        for n, v in want.items():
            res[f"oracle|{n}"] = v
        return res

    out = jax.tree.map(np.asarray, run(x))
    return out, errors, names, calls


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_zoo(entry: Entry, no_typecheck):
    # `no_typecheck`: jaxtyping's runtime checks (a pytest hook) run on every
    # function of the engine while it is traced; the zoo checks numbers, and
    # without them it traces about twice as fast.
    res, errors, names, calls = _evaluate(entry)
    x = entry.points
    lines = [f"{label} | {m}: raised {v}" for (label, m), v in errors.items()]
    # A non-finite oracle at an undeclared point is a mistake in the zoo.
    for n in names:
        want = res[f"oracle|{n}"]
        for i in range(len(x)):
            if not np.isfinite(want[i]).all() and i not in entry.nonfinite:
                lines.append(
                    f"ZOO ERROR: oracle {n} non-finite at undeclared point {i} "
                    f"x={_fmt(x[i])}: {_fmt(want[i])}"
                )
    for label, mname, ops in calls:
        for n in ops:
            key = f"{label}|{mname}|{n}"
            if key not in res:
                continue
            if label == n:  # a single operator: against the oracle
                want, tag, nonfinite = res[f"oracle|{n}"], n, entry.nonfinite
            else:  # derivatives(...): against the single operator
                single = f"{n}|{mname}|{n}"
                if single not in res:
                    continue
                want, tag, nonfinite = (
                    res[single],
                    f"{label}[{n}] vs {n}",
                    range(len(x)),
                )
            for i, msg in mismatches(res[key], want, entry.rtol, entry.atol, nonfinite):
                lines.append(f"{tag} | {mname} | point {i} x={_fmt(x[i])}: {msg}")
    assert not lines, f"zoo entry {entry.name!r} ({len(lines)} failures):\n" + (
        "\n".join(f"  {entry.name} | {line}" for line in lines)
    )


# --------------------------------------------------------------------------------
# Registry completeness.


def _subjaxprs(value: Any):
    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def primitives(jaxpr: Any, found: dict[str, bool] | None = None) -> dict[str, bool]:
    """`{name: differentiable}` of the primitives of a jaxpr and every jaxpr
    nested in its equations' parameters; `differentiable` when some equation
    of that name has a float input and a float output (where the engine needs
    a rule rather than treating the result as a constant)."""
    found = {} if found is None else found

    def is_float(v):
        dt = getattr(getattr(v, "aval", None), "dtype", None)
        return dt is not None and jnp.issubdtype(dt, jnp.inexact)

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        diff = any(map(is_float, eqn.invars)) and any(map(is_float, eqn.outvars))
        found[name] = found.get(name, False) or diff
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                primitives(sub, found)
    return found


def zoo_primitives() -> dict[str, set[str]]:
    """`{primitive: {entries using it}}` over every zoo field."""
    used: dict[str, set[str]] = {}
    for entry in ZOO:
        jaxpr = jax.make_jaxpr(entry.fn)(entry.points[0])
        for name in primitives(jaxpr.jaxpr):
            used.setdefault(name, set()).add(entry.name)
    return used


def _jax_primitive_names() -> set[str]:
    names = set()
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.split(".")[0] != "jax" or mod is None:
            continue
        for value in list(vars(mod).values()):
            if isinstance(value, jcore.Primitive):
                names.add(value.name)
    return names


# Rule names no zoo field can exercise with this jax, each with the reason.
# `test_registry_complete` checks the reasons still hold.
# - Names of older jax versions, not primitives of the installed one:
LEGACY = {
    "pjit": "the name of `jit` before jax 0.4.36",
    "custom_vjp_call_jaxpr": "the name of `custom_vjp_call` in older jax",
    "checkpoint": "the name of `remat2` (jax.checkpoint) in older jax",
}
# - Primitives of the installed jax that no public API emits into a jaxpr
#   (`jax.core.call_p.bind` needs a private `lu.WrappedFun`):
PRIVATE = {
    "call": "core.call_p: no public API binds it",
    "closed_call": "core.closed_call_p: no public API binds it",
}


def test_registry_complete():
    used = zoo_primitives()
    rules = set(registry.RULES)
    missing = sorted(rules - set(used) - set(LEGACY) - set(PRIVATE))
    assert not missing, (
        f"rules without a zoo entry exercising them: {missing}; add an entry to "
        "tests/test_zoo.py for each"
    )
    jax_names = _jax_primitive_names()
    assert jax_names, "found no jax primitives"
    stale = sorted(n for n in LEGACY if n in jax_names)
    assert not stale, f"LEGACY names that are primitives of this jax: {stale}"
    unknown = sorted(n for n in PRIVATE if n not in jax_names)
    assert not unknown, f"PRIVATE names that are not primitives of this jax: {unknown}"


# Primitives the zoo uses that deliberately have no rule: rare in fields, and the
# exact fallback (nested autodiff, a `FallbackWarning`) costs no more than nested
# autodiff itself.
FALLBACK_BY_DESIGN = {"scatter-max", "scatter-mul"}


def test_zoo_primitives_have_rules():
    """Every differentiable primitive the zoo's fields use has a dedicated rule
    (else it goes through the exact but slow fallback), except those listed in
    `FALLBACK_BY_DESIGN`."""
    used: dict[str, set[str]] = {}
    for entry in ZOO:
        jaxpr = jax.make_jaxpr(entry.fn)(entry.points[0])
        for name, diff in primitives(jaxpr.jaxpr).items():
            if diff:
                used.setdefault(name, set()).add(entry.name)
    missing = {
        n: sorted(e)
        for n, e in sorted(used.items())
        if n not in registry.RULES and n not in FALLBACK_BY_DESIGN
    }
    assert not missing, "primitives without a rule (fallback), with entries:\n" + (
        "\n".join(f"  {n}: {', '.join(e)}" for n, e in missing.items())
    )


# --------------------------------------------------------------------------------
# Gradients with respect to parameters.

PARAM_FIELDS = {
    "mlp_softplus": (MLP_SOFTPLUS, [[0.3, -0.7], [0.0, 0.0], [1.2, 0.4]]),
    # Zero biases at x = 0: every pre-activation is exactly 0 (relu's kink).
    "mlp_relu_zero_bias": (MLP_RELU, [[0.0, 0.0, 0.0], [0.5, -0.3, 0.8]]),
    # Width 2 < d = 3: the Laplacian alone takes the compressed path.
    "mlp_gelu_narrow": (MLP_GELU, [[0.0, 0.0, 0.0], [0.5, -0.3, 0.8]]),
}


@pytest.mark.parametrize("name", list(PARAM_FIELDS))
def test_parameter_gradients(name: str, no_typecheck):
    field, pts = PARAM_FIELDS[name]
    x = np.asarray(pts, dtype=np.float64)
    out_shape = jax.eval_shape(field, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
    names = applicable(out_shape.shape, x.shape[1])
    errors: dict[tuple[str, str], str] = {}

    def weights(shape):
        return jnp.asarray(_gen(name).standard_normal(shape))

    def loss_of(values: jax.Array) -> jax.Array:
        # A weighted sum plus a square, so the cotangent depends on the value.
        c = weights(values.shape)
        return jnp.sum(c * values) + 0.5 * jnp.sum(values**2)

    methods = distinct_methods()

    @eqx.filter_jit
    def run(field, x):
        res = {}
        for n in names:
            for mname, method in methods.items():

                def loss(fld, n=n, method=method):
                    return loss_of(OPS[n](fld, method=method)(x))

                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FallbackWarning)
                        res[f"{n}|{mname}"] = eqx.filter_grad(loss)(field)
                except Exception as e:  # noqa: BLE001 -- reported as a failure
                    errors[(n, mname)] = f"{type(e).__name__}: {str(e)[:300]}"

            def oracle_loss(fld, n=n):
                return loss_of(jax.vmap(lambda y: oracle(fld, y, (n,))[n])(x))

            res[f"{n}|oracle"] = eqx.filter_grad(oracle_loss)(field)
        return res

    res = run(field, x)
    lines = [f"{k[0]} | {k[1]}: raised {v}" for k, v in errors.items()]
    for n in names:
        want = res[f"{n}|oracle"]
        want_leaves = [np.asarray(v) for v in jax.tree.leaves(want)]
        assert all(np.isfinite(v).all() for v in want_leaves), ("ZOO ERROR", n)
        for mname in methods:
            key = f"{n}|{mname}"
            if key not in res:
                continue
            paths = jax.tree_util.tree_leaves_with_path(res[key])
            for (path, g), w in zip(paths, want_leaves):
                g = np.asarray(g)
                if g.shape != w.shape or not np.allclose(
                    g, w, rtol=1e-10, atol=1e-10, equal_nan=False
                ):
                    err = np.max(np.abs(g - w)) if g.shape == w.shape else np.nan
                    lines.append(
                        f"d/dparams {n} | {mname} | {jax.tree_util.keystr(path)}: "
                        f"max |err| {err:.3g}; got {_fmt(g.ravel()[:6])}..., "
                        f"expected {_fmt(w.ravel()[:6])}..."
                    )
    assert not lines, f"parameter gradients of {name!r}:\n" + "\n".join(
        f"  {name} | {line}" for line in lines
    )


def test_rules_called_in_place(monkeypatch):
    """Every elementwise rule the zoo's fields use is also called for an equation
    of its own by some field: a run of elementwise equations of one value is
    evaluated as one map (`eqxderiv._engine.chains`), which bypasses the rules
    of its equations, so the zoo must still exercise each of those rules where
    no run absorbs it."""
    from eqxderiv._engine import collapsed_jet, interpreter
    from eqxderiv._engine.elementwise import ELEMENTWISE

    called: set[str] = set()
    lookup = interpreter.lookup

    def spy(primitive):
        called.add(primitive.name)
        return lookup(primitive)

    monkeypatch.setattr(interpreter, "lookup", spy)
    used: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        for entry in ZOO:
            x = jnp.asarray(entry.points[0])
            d = x.shape[0]
            used.update(primitives(jax.make_jaxpr(entry.fn)(x).jaxpr))
            eye, ones = jnp.eye(d), jnp.ones(d)
            jax.make_jaxpr(
                lambda x, fn=entry.fn: collapsed_jet(fn, (x,), (eye,), ones)
            )(x)
    rules = {n for n in ELEMENTWISE if n in registry.RULES and n in used}
    missing = sorted(rules - called)
    assert not missing, f"elementwise rules only ever absorbed into runs: {missing}"
