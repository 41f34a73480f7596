"""The control-flow rules (`scan`, `cond`, `while`) against independent oracles:
nested forward autodiff along each direction (`jax.jvp` of `jax.jvp`), and
`jax.hessian` / `jax.jacfwd` / `jax.grad` of them at the library level. pytest turns
warnings into errors, so a case that reaches the nested-autodiff fallback fails."""

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import (  # noqa: E402
    check_jet as check,
    line_oracle as oracle,
    quick_jit,
)
from jax import lax  # noqa: E402

import eqxderiv  # noqa: E402
from eqxderiv._engine import collapsed_jet, registry  # noqa: E402
from eqxderiv._engine.rules import control  # noqa: E402


def assert_close(a, b, rtol=1e-10, atol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.fixture(autouse=True)
def _warn_afresh(monkeypatch):
    # The fallback warns once per primitive and process: forget earlier warnings,
    # so that any use of it in these tests raises (filterwarnings = error).
    monkeypatch.setattr(registry, "_WARNED", set(), raising=False)


def test_rules_are_registered():
    for name in ("scan", "cond", "while"):
        assert registry.RULES[name].rule.__module__ == control.__name__


_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.uniform(-1, 1, size=4))
V = jnp.asarray(_RNG.standard_normal((3, 4)))  # K = 3 random directions
W = jnp.asarray(_RNG.uniform(0.5, 1.5, size=3))  # and positive weights
M = jnp.asarray(_RNG.standard_normal((4, 4)) / 2)  # a constant (a parameter)


def probe(f, x=X):
    """Random directions and the coordinate ones (the Laplacian)."""
    check(f, (x,), (V,), W)
    check(f, (x,), (jnp.eye(x.shape[0]),), jnp.ones(x.shape[0]))


# --------------------------------------------------------------------------------
# scan


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_xs_ys_consts(reverse):
    # Consts with a tangent (x) and without (M); xs with a tangent (rows built
    # from x) and without (a constant sequence); a float ys and an integer carry.
    def f(x):
        seq = jnp.stack([x, jnp.cos(x), x**2])
        fixed = jnp.arange(3.0)

        def body(carry, inp):
            i, h = carry
            row, c = inp
            h = jnp.tanh(M @ h + row * x + c)
            return (i + 1, h), h * jnp.sin(row) + i

        (_, h), ys = lax.scan(body, (0, x), (seq, fixed), reverse=reverse)
        return jnp.sum(ys, axis=0) + h**2

    probe(f)


def test_scan_carry_gains_terms_after_first_steps():
    # `a` starts constant: no tangent before step 1; `b` = product of `a`'s gets
    # a tangent at step 1 but a nonzero second-order term only from step 2 (the
    # first step is linear in x); `c` never depends on x; `d` reads `b` only.
    def f(x):
        def body(carry, _):
            a, b, c, d = carry
            return (x, b * a, c * 2.0, d + b), None

        init = (jnp.zeros(4), jnp.ones(4), jnp.ones(4), jnp.zeros(4))
        (a, b, c, d), _ = lax.scan(body, init, None, length=4)
        return a + b + c + jnp.sin(d)

    probe(f)


def test_scan_xs_only_tangent_and_scalar_carry():
    # The sequence is x itself: the tangent's scan axis sits after K.
    def f(x):
        def body(c, xi):
            c = jnp.sin(c) + xi * c + xi**3
            return c, c * xi

        c, ys = lax.scan(body, 0.5, x)
        return ys * c

    probe(f)


def test_fori_loop_static_bounds():
    f = lambda x: lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) * x + i, x)  # noqa: E731
    probe(f)


def test_scan_of_length_zero():
    f = lambda x: lax.scan(lambda c, _: (jnp.sin(c), None), x, None, length=0)[0]  # noqa: E731
    probe(f)


# --------------------------------------------------------------------------------
# cond


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_two_branches_only_one_depends_on_x(sign):
    # The first branch returns a constant; the second is nonlinear in x. The
    # integer output never has a tangent; the third output is x itself in one
    # branch (a tangent but no second-order term) and curved in the other.
    def f(x):
        def yes(x):
            return jnp.ones(4), 1, x

        def no(x):
            return jnp.sin(x) * x, 2, jnp.exp(x)

        a, i, b = lax.cond(x[0] * sign > 0, yes, no, x)
        return a * i + b

    probe(f, X.at[0].set(0.5))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_switch_three_branches(index):
    def f(x):
        branches = [
            lambda x: jnp.tanh(M @ x),
            lambda x: x**3 * x[1],
            lambda x: jnp.zeros_like(x),
        ]
        k = jnp.clip(jnp.floor(x[0]), 0, 2).astype(jnp.int32)
        return lax.switch(k, branches, x) + x

    probe(f, X.at[0].set(index + 0.5))


# --------------------------------------------------------------------------------
# while


def test_fori_loop_dynamic_bounds():
    def f(x):
        n = 2 + (x[0] > 0).astype(jnp.int32) + (x[1] > 0).astype(jnp.int32)
        return lax.fori_loop(0, n, lambda i, c: jnp.tanh(c) * x + c, jnp.zeros(4))

    probe(f)


def test_while_newton_iteration():
    # y <- y - (y^3 - a) / (3 y^2): the cube root of a = 1 + x^2, to convergence.
    # The derivative is that of the iterates actually computed, as in nested AD.
    def f(x):
        a = 1 + x**2

        def cond(c):
            y, k = c
            return (jnp.max(jnp.abs(y**3 - a)) > 1e-14) & (k < 50)

        def body(c):
            y, k = c
            return y - (y**3 - a) / (3 * y**2), k + 1

        y, _ = lax.while_loop(cond, body, (jnp.ones(4), 0))
        return y

    probe(f)
    # The fixed point has the derivatives of the exact cube root, too.
    g = lambda x: (1 + x**2) ** (1 / 3)  # noqa: E731
    got = collapsed_jet(f, (X,), (jnp.eye(4),), jnp.ones(4))
    want = oracle(g, (X,), (jnp.eye(4),), jnp.ones(4))
    for a, b in zip(got, want):
        assert_close(a, b, rtol=1e-8, atol=1e-8)


# --------------------------------------------------------------------------------
# nesting


@pytest.mark.parametrize("shift", [0.5, -0.5])
def test_scan_in_cond_and_cond_in_scan(shift):
    def inner(x):
        def body(c, xi):
            c = lax.cond(xi > 0, lambda c: c * xi, lambda c: jnp.sin(c) + xi, c)
            return c, c

        return lax.scan(body, x[1], x)[1]

    def f(x):
        return lax.cond(x[0] > 0, inner, lambda x: jnp.cos(x) * x[2], x)

    probe(f, X.at[0].set(shift))


def test_while_in_scan():
    def f(x):
        def body(c, xi):
            c = lax.while_loop(
                lambda c: c[1] < 2, lambda c: (c[0] * xi + 1, c[1] + 1), (c, 0)
            )[0]
            return c, None

        return lax.scan(body, jnp.sin(x), x)[0]

    probe(f)


# --------------------------------------------------------------------------------
# library level


def rnn_field(params, x):
    """A small RNN-like field R^3 -> R^3: the inputs are fed one per step; then a
    branch that also uses the parameters."""
    a, b, c = params

    def body(h, xi):
        h = jnp.tanh(a @ h + b * xi)
        return h, None

    h, _ = lax.scan(body, jnp.zeros(3), x)
    return c @ h + lax.cond(x[0] > 0, lambda: c @ x**2, lambda: jnp.sin(b * x))


def loop_field(x):
    n = 2 + (x[2] > 0).astype(jnp.int32)
    return lax.fori_loop(0, n, lambda i, c: jnp.sin(c) * x + c, x)


def narrow_field(x):
    # The input narrows to one affine intermediate before the loop: the
    # Laplacian's pass then runs the scan with fewer directions than inputs.
    z = jnp.asarray(PARAMS[1]) @ x
    h = lax.scan(lambda h, _: (jnp.sin(h) * z + h, None), z, None, length=3)[0]
    return jnp.asarray(PARAMS[1]) * h**2


PARAMS = tuple(  # (a, b, c)
    jnp.asarray(_RNG.standard_normal(s)) for s in [(3, 3), (3,), (3, 3)]
)
BATCH = jnp.asarray(_RNG.uniform(-1, 1, size=(4, 3)))


FIELDS = {
    "rnn": lambda x: rnn_field(PARAMS, x),
    "loop": loop_field,
    "narrow": narrow_field,
}


@pytest.mark.parametrize("field", list(FIELDS))
def test_library_operators(field):
    f = FIELDS[field]

    @quick_jit
    def run(x):
        ours = [
            eqxderiv.Laplacian(f)(x),
            eqxderiv.Divergence(f)(x),
            eqxderiv.Jacobian(f)(x),
        ]
        jac = jax.vmap(jax.jacfwd(f))(x)
        # Forward over forward: reverse mode cannot go through a while loop.
        hess = jax.vmap(jax.jacfwd(jax.jacfwd(f)))(x)
        lap = jnp.trace(hess, axis1=-2, axis2=-1)
        return ours, [lap, jnp.trace(jac, axis1=-2, axis2=-1), jac]

    got, want = run(BATCH)
    for g, w in zip(got, want):
        assert_close(g, w)


def test_parameter_gradient_through_scan_field():
    def ours(params, x):
        return jnp.sum(eqxderiv.Laplacian(lambda x: rnn_field(params, x))(x) ** 2)

    def ref(params, x):
        hess = jax.vmap(jax.hessian(lambda x: rnn_field(params, x)))(x)
        return jnp.sum(jnp.trace(hess, axis1=-2, axis2=-1) ** 2)

    @quick_jit
    def run(params, x):
        return jax.grad(ours)(params, x), jax.grad(ref)(params, x)

    got, want = run(PARAMS, BATCH)
    for g, w in zip(got, want):
        assert_close(g, w)


def test_reverse_mode_in_x_through_scan_and_cond():
    # GradDiv is reverse mode over the forward pass: grad of the divergence.
    f = lambda x: rnn_field(PARAMS, x)  # noqa: E731

    @quick_jit
    def run(x):
        div = lambda x: jnp.trace(jax.jacfwd(f)(x))  # noqa: E731
        return eqxderiv.GradDiv(f)(x), jax.vmap(jax.grad(div))(x)

    got, want = run(BATCH)
    assert_close(got, want)


def test_eager():
    # Outside of jit, lax.cond and lax.scan run op by op on concrete jets.
    def f(x):
        h = lax.scan(lambda c, xi: (jnp.sin(c) * xi, c), x[0], x)[1]
        h = lax.cond(x[1] > 0, lambda h: h**2, lambda h: h, h)
        return lax.fori_loop(0, (x[2] > 0).astype(jnp.int32) + 1, lambda i, c: c * x, h)

    got = collapsed_jet(f, (X,), (V,), W)
    want = oracle(f, (X,), (V,), W)
    for a, b in zip(got, want):
        assert_close(a, b)
