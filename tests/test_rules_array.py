"""Tests of the collapsed Taylor-mode rules for convolutions, `reduce_prod` and the
cumulative reductions against an independent oracle: nested forward autodiff
(`jax.jvp` of `jax.jvp` along each direction, `jax.hessian`) in float64, at
generic points and at the special ones (zeros of a product, ties of a maximum)."""

import warnings

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import (  # noqa: E402
    check_jet as check,
    quick_jit,
)
from jax import lax  # noqa: E402

import eqxderiv  # noqa: E402
from eqxderiv import FallbackWarning  # noqa: E402
from eqxderiv._engine import collapsed_jet, registry  # noqa: E402


def assert_close(a, b, rtol=1e-10, atol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def no_fallback(monkeypatch):
    """Every `FallbackWarning` is raised afresh (and, with the suite's
    `filterwarnings = error`, fails the test): these rules must cover their
    primitives without nested autodiff."""
    monkeypatch.setattr(registry, "_WARNED", set())


K = 3


def probes(seed, *shapes):
    """Random directions (K of them, for each shape) and random signed weights."""
    rng = np.random.default_rng(seed)
    dirs = [jnp.asarray(rng.normal(size=(K, *s))) for s in shapes]
    return dirs, jnp.asarray(rng.normal(size=K))


# ---- reduce_prod ----------------------------------------------------------------


def _point(shape, kind, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    flat = x.reshape(-1)
    if kind == "one_zero":
        flat[1] = 0.0
    elif kind == "two_zeros":
        flat[1] = flat[2] = 0.0  # in the same product for every case below
    elif kind == "all_zero":
        flat[:] = 0.0
    return jnp.asarray(flat.reshape(shape))


@pytest.mark.parametrize(
    "shape, axes",
    [((5,), (0,)), ((3, 4), (1,)), ((4, 3), (0, 1)), ((2, 3, 5), (0, 2))],
)
@pytest.mark.parametrize("kind", ["generic", "one_zero", "two_zeros", "all_zero"])
def test_reduce_prod(shape, axes, kind):
    x = _point(shape, kind, seed=len(shape))
    (v,), w = probes(1, shape)

    def f(x):
        # Plain (no incoming second-order term) and after x e^x (which has one,
        # and keeps zeros of x with a non-zero slope).
        return jnp.stack([jnp.prod(x, axis=axes), jnp.prod(x * jnp.exp(x), axis=axes)])

    check(f, (x,), (v,), w)


def test_reduce_prod_empty():
    x = jnp.ones((3, 0))
    v = jnp.ones((K, 3, 0))
    _, t, s = collapsed_jet(
        lambda x: jnp.prod(x, axis=1) * x.sum(), (x,), (v,), jnp.ones(K)
    )
    assert_close(t, jnp.zeros((K, 3)))
    assert_close(s, jnp.zeros(3))


# ---- cumulative reductions ------------------------------------------------------

_CUMULATIVE = {
    "cumprod": lax.cumprod,
    "cummax": lax.cummax,
    "cummin": lax.cummin,
    "cumlogsumexp": lax.cumlogsumexp,
}


def _tie_point(shape, seed):
    """Small integers: many exact ties (and zeros) along every axis."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(-2, 3, size=shape).astype(np.float64))


@pytest.mark.parametrize("name", list(_CUMULATIVE))
@pytest.mark.parametrize("shape, axis", [((7,), 0), ((3, 5), 0), ((3, 5), 1)])
@pytest.mark.parametrize("kind", ["generic", "ties"])
def test_cumulative(name, shape, axis, kind):
    op = _CUMULATIVE[name]
    if kind == "generic":
        x = jnp.asarray(np.random.default_rng(2).normal(size=shape))
    else:
        x = _tie_point(shape, seed=axis)
    (v,), w = probes(3, shape)

    def f(x):
        # g(x) = x + x^3/3 is strictly increasing, so it keeps the ties of x, and
        # brings a second-order term into the reduction.
        g = x + x * x * x / 3
        return jnp.stack(
            [op(u, axis=axis, reverse=r) for u in (x, g) for r in (False, True)]
        )

    check(f, (x,), (v,), w)


def test_cummax_all_ties_split_like_jax():
    # Equal entries share the derivative through jax's tree of pairwise maxima
    # (not evenly): compare the full Jacobian and Hessian with jax's.
    x = jnp.full((6,), 0.5)
    f = lambda x: (
        jnp.sum(lax.cummax(x) * jnp.arange(1.0, 7.0))
        + jnp.sum(  # noqa: E731
            lax.cummin(x * x, reverse=True)
        )
    )
    eye = jnp.eye(6)
    _, t, s = collapsed_jet(f, (x,), (eye,), jnp.ones(6))
    assert_close(t, jax.jacfwd(f)(x))
    assert_close(s, jnp.trace(jax.hessian(f)(x)))


def test_jnp_cumulative_wrappers():
    # jnp's functions go through a `jit` around the primitive.
    x = _tie_point((4, 3), seed=5)
    (v,), w = probes(6, (4, 3))
    f = lambda x: jnp.stack([jnp.cumprod(x, axis=0), jnp.cumsum(x * x, axis=0)])  # noqa: E731
    check(f, (x,), (v,), w)


# ---- conv_general_dilated -------------------------------------------------------

_CONVS = {
    "1d_strided_padded_dilated": (
        (2, 4, 9),
        (6, 4, 3),
        dict(window_strides=(2,), padding=[(1, 2)], rhs_dilation=(2,)),
    ),
    "1d_feature_groups": (
        (2, 4, 9),
        (6, 2, 3),
        dict(window_strides=(1,), padding="SAME", feature_group_count=2),
    ),
    "1d_batch_groups": (
        (4, 3, 9),
        (6, 3, 3),
        dict(window_strides=(1,), padding="VALID", batch_group_count=2),
    ),
    "1d_precision_dtype": (
        (1, 2, 6),
        (3, 2, 2),
        dict(
            window_strides=(1,),
            padding=[(0, 1)],
            precision=lax.Precision.HIGHEST,
            preferred_element_type=jnp.float64,
        ),
    ),
    "2d_nhwc_dilations": (
        (2, 5, 6, 3),
        (3, 2, 3, 4),
        dict(
            window_strides=(1, 2),
            padding=[(1, 1), (0, 2)],
            lhs_dilation=(2, 1),
            rhs_dilation=(1, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
    ),
    "2d_feature_groups": (
        (1, 5, 5, 6),
        (2, 2, 2, 9),
        dict(
            window_strides=(1, 1),
            padding="VALID",
            feature_group_count=3,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
    ),
    "2d_batch_groups_permuted": (
        (5, 2, 4, 4),  # H, C, N, W
        (2, 2, 6, 2),  # H, W, O, I
        dict(
            window_strides=(2, 1),
            padding="SAME",
            batch_group_count=2,
            dimension_numbers=("HCNW", "HWOI", "WNCH"),
        ),
    ),
}


@pytest.mark.parametrize("case", list(_CONVS))
@pytest.mark.parametrize("which", ["lhs", "rhs", "both"])
def test_conv(case, which):
    lhs_shape, rhs_shape, kw = _CONVS[case]
    (lhs, rhs), _ = probes(7, lhs_shape, rhs_shape)
    lhs, rhs = lhs[0], rhs[0]
    (tl, tr), w = probes(8, lhs_shape, rhs_shape)

    def f(lhs, rhs):
        # Nonlinear in each operand first, so incoming second-order terms meet the
        # cross term sum_k w_k conv(T_lhs[k], T_rhs[k]).
        return lax.conv_general_dilated(jnp.sin(lhs), rhs + rhs * rhs, **kw)

    tangents = (None if which == "rhs" else tl, None if which == "lhs" else tr)
    check(f, (lhs, rhs), tangents, w)


def test_conv_bilinear_cross_term_only():
    # Plain conv(l, r): with both tangents the second-order term is the cross term.
    lhs_shape, rhs_shape, kw = _CONVS["2d_feature_groups"]
    (lhs, rhs), _ = probes(9, lhs_shape, rhs_shape)
    (tl, tr), w = probes(10, lhs_shape, rhs_shape)
    f = lambda a, b: lax.conv_general_dilated(a, b, **kw)  # noqa: E731
    check(f, (lhs[0], rhs[0]), (tl, tr), w)


# ---- library level: a small CNN field -------------------------------------------


class CNN(eqx.Module):
    """A scalar field on R^8: x as a one-channel signal through two convolutions
    (the second strided, dilated and grouped)."""

    c1: eqx.nn.Conv1d
    c2: eqx.nn.Conv1d
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.c1 = eqx.nn.Conv1d(1, 4, 3, padding=1, key=k1)
        self.c2 = eqx.nn.Conv1d(
            4, 2, 3, stride=2, dilation=2, padding=2, groups=2, key=k2
        )
        self.out = eqx.nn.Linear(8, "scalar", key=k3)

    def __call__(self, x):
        h = jnp.tanh(self.c1(x[None]))
        h = jnp.tanh(self.c2(h))
        return self.out(h.reshape(-1))


def _cnn_and_points():
    model = CNN(jax.random.key(0))
    xs = jnp.asarray(np.random.default_rng(11).normal(size=(3, 8)))
    return model, xs


def _hessian_trace(f, xs):
    return jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x)))(xs)


def test_cnn_laplacian():
    model, xs = _cnn_and_points()
    params, static = eqx.partition(model, eqx.is_array)

    @quick_jit
    def run(params, xs):
        f = eqx.combine(params, static)
        return eqxderiv.Laplacian(f)(xs), _hessian_trace(f, xs)

    got, want = run(params, xs)
    assert got.shape == (3,)
    assert_close(got, want)


def test_cnn_laplacian_parameter_gradient():
    model, xs = _cnn_and_points()
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, laplacian):
        return jnp.sum(laplacian(eqx.combine(params, static), xs) ** 2)

    ours = lambda f, xs: eqxderiv.Laplacian(f)(xs)  # noqa: E731
    run = quick_jit(
        lambda p: (
            jax.grad(loss)(p, ours),
            jax.grad(loss)(p, _hessian_trace),
        )
    )
    got, want = run(params)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_parameter_gradient_through_products_and_scans():
    # Reverse mode over the rules of `reduce_prod` and the cumulative reductions,
    # with respect to a closed-over parameter, at a point with a zero and ties.
    x = jnp.array([0.5, 0.0, -1.0, 0.5, 2.0])
    theta = jnp.array([0.7, -0.3, 1.1])

    def field(theta):
        def f(x):
            u = theta[0] * x + theta[1] * x * x
            return (
                jnp.prod(u)
                + jnp.sum(lax.cumprod(u) * theta[2])
                + jnp.sum(lax.cummax(u, reverse=True) ** 2)
                + jnp.sum(lax.cummin(u) * u)
                + jnp.sum(lax.cumlogsumexp(u * theta[2]))
            )

        return f

    ours = lambda t: collapsed_jet(field(t), (x,), (jnp.eye(5),), jnp.ones(5))[2]  # noqa: E731
    want = lambda t: jnp.trace(jax.hessian(field(t))(x))  # noqa: E731
    got, ref = quick_jit(lambda t: (jax.grad(ours)(t), jax.grad(want)(t)))(theta)
    assert_close(got, ref)


# ---- coverage -------------------------------------------------------------------


def test_no_fallback():
    # One program through every rule of this module; any fallback would warn.
    def f(x):
        kernel = jnp.outer(x[:3], x[3:7]).reshape(3, 2, 2)
        u = lax.conv_general_dilated(x.reshape(1, 2, 6), kernel, (1,), "SAME")
        u = u.reshape(-1)
        return jnp.stack(
            [
                jnp.prod(u),
                jnp.sum(lax.cumprod(x)),
                jnp.sum(lax.cummax(x)),
                jnp.sum(lax.cummin(x)),
                jnp.sum(lax.cumlogsumexp(x)),
            ]
        )

    for name in ("conv_general_dilated", "reduce_prod", "cumprod", "cummax"):
        assert name in registry.RULES
    x = jnp.linspace(-1.0, 1.0, 12)
    (v,), w = probes(12, (12,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        check(f, (x,), (v,), w)
