"""Runs of elementwise equations of one value evaluated as one elementwise map
(`eqxderiv._engine.chains`), against independent oracles in float64: nested
forward autodiff along each direction for the collapsed jet (`check_jet`), and
`jax.hessian` / `jax.jacfwd` for the operators and their parameter gradients.
Each case also checks that the run was taken as one map, or refused, by
counting the collapsed sums over directions the engine paid and the runs it
took. The inlined activations themselves, at their special points, are in
`tests/test_rules_composite.py`."""

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import (  # noqa: E402
    assert_with_parameter_gradients,
    check_jet,
    quick_jit,
)

import eqxderiv  # noqa: E402
from eqxderiv._engine import (  # noqa: E402
    chains,
    collapsed_jet,
    interpreter,
    jet,
    registry,
)


_RNG = np.random.default_rng(1)
V = jnp.asarray(_RNG.standard_normal((4, 5)))  # K = 4 random directions
W = jnp.asarray(_RNG.uniform(0.5, 1.5, size=4))  # and positive weights
# Generic points, 0 (where x² = sin x ties and |x| has its kink) and a point
# with entries on both sides of 0.
POINTS = np.array(
    [
        [0.3, -1.2, 0.7, 2.1, -0.4],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [1e-9, -1e-9, 0.0, 1.0, -1.0],
    ]
)


def _count(monkeypatch, fn, x):
    """`(sums over directions paid, runs taken as one map)` for `fn` at `x`."""
    counts = {"quad": 0, "runs": 0}
    quad, chain_at = jet.JetContext.quad, interpreter.chain_at

    def counting_quad(self, a, b):
        counts["quad"] += 1
        return quad(self, a, b)

    def counting_chain(*args, **kwargs):
        chain = chain_at(*args, **kwargs)
        counts["runs"] += chain is not None and chain.jets is not None
        return chain

    monkeypatch.setattr(jet.JetContext, "quad", counting_quad)
    monkeypatch.setattr(interpreter, "chain_at", counting_chain)
    jax.make_jaxpr(lambda x: collapsed_jet(fn, (x,), (V,), W))(x)
    monkeypatch.undo()
    return counts


def _gelu_block(x):
    # Two outputs of one run read after it: u (by a roll) and v.
    u = jnp.tanh(x)
    v = u * u * x
    return v + jnp.roll(u, 1)


def _two_roots(x):
    # tanh(x) * tanh(y) with y = roll(x): the product reads two values that
    # carry tangents, so the run of x ends before it.
    a = jnp.tanh(x) * x
    b = jnp.sin(jnp.roll(x, 1))
    return a * b + jnp.cos(a)


def _with_constants(x):
    # Operands that carry no tangent, of the run's shape and scalars.
    c = jnp.arange(5.0) / 4
    return jnp.exp(-c * x * x) * jnp.sin(x + c) + 0.5


# name -> (function, sums paid, runs taken)
CASES = {
    "two_outputs": (_gelu_block, 1, 1),
    "two_roots": (_two_roots, 4, 1),
    "with_constants": (_with_constants, 1, 1),
    # One curved equation: nothing to save, interpreted as before.
    "single": (lambda x: jnp.tanh(x) + 2 * x, 1, 0),
    "gelu_twice": (lambda x: jax.nn.gelu(jnp.cumsum(jax.nn.gelu(x))), 2, 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_collapsed_jet(name, monkeypatch):
    fn, quads, runs = CASES[name]
    for x in POINTS:
        check_jet(fn, (jnp.asarray(x),), (V,), W, rtol=1e-9, atol=1e-12)
        check_jet(fn, (jnp.asarray(x),), (jnp.eye(5),), jnp.ones(5), rtol=1e-9)
    counts = _count(monkeypatch, fn, jnp.asarray(POINTS[0]))
    assert counts == {"quad": quads, "runs": runs}, counts


def test_refused_run_is_scanned_once(monkeypatch):
    # A long run of equations that pay no sum (shifts and scales) with one
    # curved step is refused; no run begins inside it, so it is not scanned
    # again from each of its equations (trace time linear in its length, not
    # quadratic). The numbers are nested autodiff's either way.
    n = 60

    def fn(x):
        for i in range(n):
            x = 0.99 * x + 0.01 * i
        return jnp.sin(x) + x

    check_jet(fn, (jnp.asarray(POINTS[0]),), (V,), W, rtol=1e-9, atol=1e-12)
    scanned = []
    member = chains._member

    def counting_member(*args, **kwargs):
        scanned.append(args[0])
        return member(*args, **kwargs)

    monkeypatch.setattr(chains, "_member", counting_member)
    counts = _count(monkeypatch, fn, jnp.asarray(POINTS[0]))
    assert counts == {"quad": 1, "runs": 0}, counts
    # One scan over the run's 2n + 2 equations (and the one that ends it).
    assert len(scanned) <= 2 * n + 4, len(scanned)


def test_user_rule_is_honoured(monkeypatch):
    # A user's rule for a primitive of the run is called for it: the run is
    # split there, and the numbers stay nested autodiff's (the user's rule here
    # is the engine's own, wrapped).
    calls = []
    info = registry.RULES["tanh"]

    def rule(ctx, eqn, jets):
        calls.append(eqn)
        return info.rule(ctx, eqn, jets)

    monkeypatch.setitem(registry.RULES, "tanh", registry.RuleInfo(rule))
    assert not registry.is_builtin("tanh")
    fn = jax.nn.gelu
    check_jet(fn, (jnp.asarray(POINTS[0]),), (V,), W, rtol=1e-9, atol=1e-12)
    assert calls
    monkeypatch.undo()
    assert registry.is_builtin("tanh")


def test_float32_stays_float32():
    x = jnp.asarray(POINTS[0], jnp.float32)
    y, t, s = collapsed_jet(jax.nn.gelu, (x,), (V.astype(jnp.float32),), W)
    assert y.dtype == t.dtype == s.dtype == jnp.float32


def _net(width=6, d=3, seed=0):
    rng = np.random.default_rng(seed)
    p = {
        "W1": jnp.asarray(rng.standard_normal((width, d + 1))),
        "W2": jnp.asarray(rng.standard_normal((width, width)) / 2),
        "W3": jnp.asarray(rng.standard_normal((width, width)) / 2),
        "W4": jnp.asarray(rng.standard_normal((d, width)) / 2),
    }

    def f(p, x, t):
        # Three gelu layers: no closed form for the divergence, so GradDiv is
        # reverse mode over the pass.
        h = jax.nn.gelu(p["W1"] @ jnp.concatenate([x, t]))
        h = jax.nn.gelu(p["W2"] @ h)
        h = jax.nn.gelu(p["W3"] @ h) * jnp.tanh(h)
        return p["W4"] @ h

    return f, p


@pytest.mark.parametrize("method", ["taylor", "forward"])
def test_operators_and_parameter_gradients(method, no_typecheck):
    f, params = _net()
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 3)))
    x = x.at[0].set(0.0)
    t = jnp.asarray(rng.standard_normal((4, 1)))

    def ours(p):
        u = lambda x_, t_: f(p, x_, t_)  # noqa: E731
        lap = eqxderiv.Laplacian(u, method=method)(x, t)
        gd = eqxderiv.GradDiv(u, method=method)(x, t)
        div = eqxderiv.Divergence(u, method=method)(x, t)
        return lap, gd, div

    def oracle(p):
        def one(x_, t_):
            g = lambda z: f(p, z, t_)  # noqa: E731
            hess = jax.hessian(g)(x_)  # (d, d, d): out, in, in
            lap = jnp.trace(hess, axis1=1, axis2=2)
            div_fn = lambda z: jnp.trace(jax.jacfwd(g)(z))  # noqa: E731
            return lap, jax.grad(div_fn)(x_), div_fn(x_)

        return jax.vmap(one)(x, t)

    assert_with_parameter_gradients(ours, oracle, params)


def test_inside_scan(monkeypatch):
    # The body of a `scan` is interpreted by the same interpreter.
    def fn(x):
        def body(c, _):
            return jax.nn.gelu(c) * 0.9 + 0.1 * x, None

        return jax.lax.scan(body, x, None, length=3)[0]

    for x in POINTS:
        check_jet(fn, (jnp.asarray(x),), (V,), W, rtol=1e-9, atol=1e-12)
    assert _count(monkeypatch, fn, jnp.asarray(POINTS[0]))["runs"] >= 1


def _affine_end(x):
    # The run ends in affine steps (a scale, a shift), which the divergence's
    # contraction before a last linear layer must not look into: the run's
    # intermediate values have no jets of their own.
    z = jnp.asarray(np.arange(9.0).reshape(3, 3) / 5 - 0.6) @ x
    return 3.0 * (jnp.sin(z) * jnp.tanh(z)) + 1.0


@pytest.mark.parametrize("closed_form", [True, False])
def test_divergence_of_a_run_ending_affine(closed_form, no_typecheck):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 3))).at[0].set(0.0)
    method = eqxderiv.Taylor(closed_form=closed_form)

    @quick_jit
    def both(x):
        ours = (
            eqxderiv.Divergence(_affine_end, method=method)(x),
            eqxderiv.GradDiv(_affine_end, method=method)(x),
            eqxderiv.Laplacian(_affine_end, method=method)(x),
        )
        div = lambda y: jnp.trace(jax.jacfwd(_affine_end)(y))  # noqa: E731
        lap = lambda y: jnp.trace(jax.hessian(_affine_end)(y), axis1=1, axis2=2)  # noqa: E731
        want = jax.vmap(div)(x), jax.vmap(jax.grad(div))(x), jax.vmap(lap)(x)
        return ours, want

    got, want = both(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)
