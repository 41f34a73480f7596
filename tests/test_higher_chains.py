"""Runs of elementwise equations of one value at order K (`eqxderiv._engine.
higher.chains`): evaluated as one elementwise map, with Faà di Bruno's formula
once per run instead of once per curved step. Checked in float64 against
nested `jax.jvp`s along each direction (the top-order sums of orders 3 and 4)
and against nested `jax.jacfwd` for the third- and fourth-order operators and
their parameter gradients, at generic points, at 0 and at +-1e-9; each case
also counts the runs taken."""

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import assert_with_parameter_gradients  # noqa: E402

import eqxderiv  # noqa: E402
from eqxderiv._engine import collapsed_taylor  # noqa: E402
from eqxderiv._engine.higher import (  # noqa: E402
    chains as higher_chains,
    registry as higher_registry,
    rules as higher_rules,
)


_RNG = np.random.default_rng(7)
N = 4
DIRECTIONS = jnp.asarray(_RNG.standard_normal((3, N)))
WEIGHTS = jnp.asarray(_RNG.uniform(0.5, 1.5, size=(3, 2)))
POINTS = [
    np.array([0.3, -1.2, 0.7, 2.1]),
    np.zeros(N),
    np.array([1e-9, -1e-9, 0.0, 1.0]),
]


def _oracle(fn, x, order):
    """`sum_r W[r, j] d^K/ds^K fn(x + s v_r)` at `s = 0`, by K nested jvps."""

    def along(v):
        g = lambda s: fn(x + s * v)  # noqa: E731
        for _ in range(order):
            g = (lambda h: lambda s: jax.jvp(h, (s,), (jnp.ones_like(s),))[1])(g)
        return g(jnp.zeros(()))

    per = jax.vmap(along)(DIRECTIONS)  # (R, *out)
    return jnp.tensordot(WEIGHTS.T, per, axes=1)


def _two_outputs(x):
    # Two outputs of one run read after it (u by a roll, v directly).
    u = jnp.tanh(x)
    v = u * u * x
    return v + jnp.roll(u, 1)


def _kinked(x):
    # A `where` between two curved branches, and |x| tanh x + x^3.
    a = jnp.where(x > 0, jnp.sin(x) * x, x * x * x)
    return jnp.abs(a) * jnp.tanh(a) + a**3


# name -> (field, runs taken)
CASES = {
    "gelu_tanh": (lambda x: jax.nn.gelu(x, approximate=True), 1),
    "gelu_erf": (lambda x: jax.nn.gelu(x, approximate=False), 1),
    "silu_inline": (lambda x: x / (1 + jnp.exp(-x)), 1),
    "two_outputs": (_two_outputs, 1),
    # `jnp.where` is a call of its own (`jit` of `select_n`): one run before it,
    # one after.
    "kinked": (_kinked, 2),
    "gelu_twice": (lambda x: jax.nn.gelu(jnp.cumsum(jax.nn.gelu(x))), 2),
    # One curved step: nothing to save, interpreted equation by equation.
    "single": (lambda x: jnp.tanh(x) + 2 * x, 0),
}


def _count_runs(fn, x, order):
    taken = []
    inner = higher_registry.CHAIN[0]

    def spy(*args):
        chain = inner(*args)
        taken.append(chain is not None and chain.jets is not None)
        return chain

    higher_registry.CHAIN[0] = spy
    try:
        jax.make_jaxpr(lambda a: collapsed_taylor(fn, a, DIRECTIONS, WEIGHTS, order))(x)
    finally:
        higher_registry.CHAIN[0] = inner
    return sum(taken)


@pytest.mark.parametrize("order", [3, 4])
@pytest.mark.parametrize("name", list(CASES))
def test_top_order_sums(name, order):
    fn, runs = CASES[name]
    for x in POINTS:
        x = jnp.asarray(x)
        y, top = collapsed_taylor(fn, x, DIRECTIONS, WEIGHTS, order)
        np.testing.assert_allclose(y, fn(x), rtol=1e-13, atol=1e-13)
        want = _oracle(fn, x, order)
        np.testing.assert_allclose(top, want, rtol=1e-9, atol=1e-10)
    assert _count_runs(fn, jnp.asarray(POINTS[0]), order) == runs


def test_user_rule_is_honoured(monkeypatch):
    # An order-K rule of the user's for a primitive of the run: the run is split
    # there and the rule is called for its equation.
    calls = []
    default = higher_registry.DEFAULT[0]

    def rule(ctx, eqn, jets):
        calls.append(eqn)
        return default(ctx, eqn, jets)

    monkeypatch.setitem(higher_registry.RULES, "tanh", rule)
    fn = lambda x: jax.nn.gelu(x, approximate=True)  # noqa: E731
    x = jnp.asarray(POINTS[0])
    _, top = collapsed_taylor(fn, x, DIRECTIONS, WEIGHTS, 3)
    np.testing.assert_allclose(top, _oracle(fn, x, 3), rtol=1e-9, atol=1e-10)
    assert calls


def test_one_faa_di_bruno_per_run(monkeypatch):
    # Inline gelu (tanh form) has three curved steps: one formula, not three.
    calls = []
    inner = higher_rules.faa_di_bruno

    def spy(*args):
        calls.append(args)
        return inner(*args)

    monkeypatch.setattr(higher_rules, "faa_di_bruno", spy)
    monkeypatch.setattr(higher_chains, "faa_di_bruno", spy)
    fn = lambda x: jax.nn.gelu(x, approximate=True)  # noqa: E731
    jax.make_jaxpr(lambda a: collapsed_taylor(fn, a, DIRECTIONS, WEIGHTS, 4))(
        jnp.asarray(POINTS[0])
    )
    assert len(calls) == 1, len(calls)


def _mlp(p, x):
    h = jax.nn.gelu(p["W1"] @ x + p["b1"], approximate=True)
    h = x[0] * jax.nn.gelu(p["W2"] @ h + p["b2"], approximate=False)
    return p["W3"] @ h


def _params(zero_bias):
    rng = np.random.default_rng(3)
    p = {
        "W1": rng.standard_normal((5, 3)) / 2,
        "b1": rng.standard_normal(5) / 4,
        "W2": rng.standard_normal((5, 5)) / 2,
        "b2": rng.standard_normal(5) / 4,
        "W3": rng.standard_normal((2, 5)) / 2,
    }
    if zero_bias:
        p["b1"], p["b2"] = np.zeros(5), np.zeros(5)
    return {k: jnp.asarray(v) for k, v in p.items()}


@pytest.mark.parametrize("zero_bias", [False, True])
def test_operators_and_parameter_gradients(zero_bias, no_typecheck):
    # Third order (the gradient of the Laplacian) and fourth (the biharmonic)
    # of a gelu MLP, and the parameter gradients of losses of both.
    params = _params(zero_bias)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 3))).at[0].set(0.0)

    def ours(p):
        u = lambda a: _mlp(p, a)  # noqa: E731
        gl = eqxderiv.GradLaplacian(lambda a: u(a)[0])(x)
        bh = eqxderiv.Biharmonic(lambda a: u(a)[1])(x)
        return gl, bh

    def oracle(p):
        def lap(g):
            return lambda a: jnp.trace(jax.jacfwd(jax.jacfwd(g))(a))

        u0 = lambda a: _mlp(p, a)[0]  # noqa: E731
        u1 = lambda a: _mlp(p, a)[1]  # noqa: E731
        gl = jax.vmap(jax.jacfwd(lap(u0)))(x)
        bh = jax.vmap(lap(lap(u1)))(x)
        return gl, bh

    assert_with_parameter_gradients(ours, oracle, params)
