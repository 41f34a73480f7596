"""The divergence through a narrow affine layer (`Taylor`, `_engine.entry.
divergence_jet`): for `f = F(A x + c)` with `A` of shape `(n, d)`,
`n < d`, `tr(J_F A)` from `n` directions. Checked in float64 against nested
autodiff (`jnp.trace(jax.jacfwd)`, `jax.grad` of it, and parameter gradients
of losses of both), with a spy on which path was taken."""

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import assert_with_parameter_gradients  # noqa: E402

import eqxderiv  # noqa: E402
from eqxderiv._engine import entry  # noqa: E402


D = 9


def _fourier(p, x, t):
    # Fourier features of (x, t) through a narrow layer, then a tanh MLP of two
    # hidden layers: three elementwise layers, so no closed form.
    z = p["B"] @ jnp.concatenate([x, t])
    h = jnp.concatenate([jnp.sin(z), jnp.cos(z)])
    h = jnp.tanh(p["W1"] @ h)
    h = jnp.tanh(p["W2"] @ h)
    return p["W3"] @ h


def _deep(p, x, t):
    # A first layer of width 4 < d, then three more tanh layers, and a skip of
    # the narrow layer's value into the last one.
    z = p["A"] @ jnp.concatenate([x, t]) + 0.5
    h = jnp.tanh(z)
    h = jnp.tanh(p["W1"] @ h) * jax.nn.gelu(p["W2"] @ h)
    return p["W3"] @ jnp.concatenate([h, z])


def _params(name, zero_rows=False):
    rng = np.random.default_rng(0)
    n = lambda *s: jnp.asarray(rng.standard_normal(s) / np.sqrt(s[-1]))  # noqa: E731
    if name == "fourier":
        p = {"B": n(4, D + 1), "W1": n(6, 8), "W2": n(6, 6), "W3": n(D, 6)}
        first = "B"
    else:
        p = {"A": n(4, D + 1), "W1": n(5, 4), "W2": n(5, 4), "W3": n(D, 9)}
        first = "A"
    if zero_rows:
        # A dead unit at initialisation: the narrow layer is rank-deficient.
        p[first] = p[first].at[1].set(0.0)
    return p


FIELDS = {"fourier": _fourier, "deep": _deep}


def _spy(monkeypatch):
    taken = []
    inner = entry._identity_divergence

    def spy(*args):
        found = inner(*args)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(entry, "_identity_divergence", spy)
    return taken


@pytest.mark.parametrize("zero_rows", [False, True])
@pytest.mark.parametrize("name", list(FIELDS))
def test_values_and_parameter_gradients(name, zero_rows, monkeypatch, no_typecheck):
    taken = _spy(monkeypatch)
    f, params = FIELDS[name], _params(name, zero_rows)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, D))).at[0].set(0.0)
    t = jnp.asarray(rng.standard_normal((3, 1)))

    def ours(p):
        u = lambda a, s: f(p, a, s)  # noqa: E731
        return eqxderiv.Divergence(u)(x, t), eqxderiv.GradDiv(u)(x, t)

    def oracle(p):
        div = lambda a, s: jnp.trace(jax.jacfwd(lambda b: f(p, b, s))(a))  # noqa: E731
        return jax.vmap(div)(x, t), jax.vmap(jax.grad(div))(x, t)

    assert_with_parameter_gradients(ours, oracle, params, atol=1e-11)
    assert taken and all(taken), taken


def test_not_taken_with_a_jacobian_or_when_wide(monkeypatch, no_typecheck):
    taken = _spy(monkeypatch)
    params = _params("fourier")
    u = lambda a, s: _fourier(params, a, s)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, D)))
    t = jnp.ones((2, 1))
    # With the Jacobian, the pass carries the d tangents anyway.
    ops = (eqxderiv.Jacobian, eqxderiv.Divergence)
    got_jac, got_div = eqxderiv.derivatives(u, x, t, ops)
    jac = jax.vmap(jax.jacfwd(u))(x, t)
    want_div = jnp.trace(jac, axis1=1, axis2=2)
    np.testing.assert_allclose(got_div, want_div, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_jac, jac, rtol=1e-12, atol=1e-12)
    assert not taken, taken
    # A first layer of width 4 is not narrow for d = 3.
    small = _params("fourier")
    small["B"], small["W3"] = small["B"][:, :4], small["W3"][:3]
    v = lambda a, s: _fourier(small, a, s)  # noqa: E731
    x3 = x[:, :3]
    div = eqxderiv.Divergence(v, method=eqxderiv.Taylor(closed_form=False))(x3, t)
    want = jax.vmap(lambda a, s: jnp.trace(jax.jacfwd(v)(a, s)))(x3, t)
    np.testing.assert_allclose(div, want, rtol=1e-12, atol=1e-12)
    assert taken == [False], taken


def test_one_trace_when_not_narrow(monkeypatch, no_typecheck):
    # Where no layer narrows, the divergence falls back to the full pass from the
    # same trace of the field's program: one trace, not one per attempt.
    traces = []
    trace = entry._trace

    def counting(*args):
        traces.append(args[0])
        return trace(*args)

    monkeypatch.setattr(entry, "_trace", counting)
    taken = _spy(monkeypatch)
    small = _params("fourier")
    small["B"], small["W3"] = small["B"][:, :4], small["W3"][:3]
    v = lambda a, s: _fourier(small, a, s)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 3)))
    t = jnp.ones((2, 1))
    method = eqxderiv.Taylor(closed_form=False)
    div = eqxderiv.Divergence(v, method=method)(x, t)
    want = jax.vmap(lambda a, s: jnp.trace(jax.jacfwd(v)(a, s)))(x, t)
    np.testing.assert_allclose(div, want, rtol=1e-12, atol=1e-12)
    assert taken == [False], taken
    assert len(traces) == 1, traces


def test_compress_false_and_float32(monkeypatch, no_typecheck):
    taken = _spy(monkeypatch)
    params = _params("deep")
    u = lambda a, s: _deep(params, a, s)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, D)))
    t = jnp.ones((2, 1))
    want = jax.vmap(lambda a, s: jnp.trace(jax.jacfwd(u)(a, s)))(x, t)
    off = eqxderiv.Divergence(u, method=eqxderiv.Taylor(compress=False))(x, t)
    np.testing.assert_allclose(off, want, rtol=1e-12, atol=1e-12)
    assert not taken
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    u32 = lambda a, s: _deep(p32, a, s)  # noqa: E731
    got = eqxderiv.Divergence(u32)(x.astype(jnp.float32), t.astype(jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert taken == [True]


def test_equinox_mlp(monkeypatch, no_typecheck):
    # An `eqx.nn.MLP` of depth 3 with a first layer of width 4 < d.
    taken = _spy(monkeypatch)
    mlp = eqx.nn.MLP(D, D, 4, 3, activation=jnp.tanh, key=jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, D)))
    div = eqxderiv.Divergence(mlp)(x)
    want = jax.vmap(lambda a: jnp.trace(jax.jacfwd(mlp)(a)))(x)
    np.testing.assert_allclose(div, want, rtol=1e-12, atol=1e-12)
    assert taken == [True]
