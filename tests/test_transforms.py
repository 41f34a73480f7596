"""The JAX contract: jit, vmap, gradients with respect to parameters and
coefficients, no retracing, batch chunking and `eqxderiv.derivatives`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from helpers import (
    EXACT_METHODS,
    JnpMLP,
    assert_close,
    batch_inputs,
    brute,
    brute_single,
)

import eqxderiv


ALL_VECTOR = [
    eqxderiv.Value,
    eqxderiv.Jacobian,
    eqxderiv.TimeDerivative,
    eqxderiv.Divergence,
    eqxderiv.GradDiv,
    eqxderiv.Laplacian,
    eqxderiv.Curl,
    eqxderiv.Advection,
]


def test_jax_jit_and_filter_jit(getkey):
    net = eqxderiv.SpaceTimeMLP(3, 3, 16, 2, key=getkey())
    u = eqxderiv.SpaceTimeMLP(3, "scalar", 16, 2, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    ops = [cls(net) for cls in ALL_VECTOR] + [eqxderiv.Grad(u), eqxderiv.Hessian(u)]
    for op in ops:
        eager = op(x, t)
        # The operator closed over (its parameters become constants) ...
        assert_close(jax.jit(lambda x_, t_: op(x_, t_))(x, t), eager)
        # ... or passed in, parameters traced.
        assert_close(eqx.filter_jit(lambda o, x_, t_: o(x_, t_))(op, x, t), eager)


def test_vmap_over_an_extra_axis(getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (4, 6), 3, "flat")
    for cls in (eqxderiv.Laplacian, eqxderiv.GradDiv, eqxderiv.Jacobian):
        op = cls(net)
        mapped = jax.vmap(op)(x, t)
        assert_close(mapped, brute(cls.__name__, net, x, t))
        # Mapping the time axis only (x shared).
        mapped_t = jax.vmap(lambda t_: op(x[0], t_))(t)
        assert_close(mapped_t, jax.vmap(lambda t_: op(x[0], t_))(t))
        assert_close(
            mapped_t, brute(cls.__name__, net, jnp.broadcast_to(x[0], x.shape), t)
        )


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_grad_wrt_parameters_matches_brute_force(method, getkey):
    model = eqxderiv.SpaceTimeMLP(3, 3, 16, 2, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")

    @eqx.filter_grad
    def ours(f):
        return jnp.mean(eqxderiv.Divergence(f, method=method)(x, t) ** 2)

    @eqx.filter_grad
    def reference(f):
        div = jax.vmap(lambda x_, t_: jnp.trace(jax.jacfwd(lambda y: f(y, t_))(x_)))
        return jnp.mean(div(x, t) ** 2)

    g1, g2 = ours(model), reference(model)
    assert jax.tree.structure(g1) == jax.tree.structure(g2)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert_close(a, b)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_grad_of_laplacian_residual_wrt_parameters(method, getkey):
    model = JnpMLP(3, None, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")

    @eqx.filter_grad
    def ours(u):
        res = eqxderiv.TimeDerivative(u, method=method) - eqxderiv.Laplacian(
            u, method=method
        )
        return jnp.mean(res(x, t) ** 2)

    @eqx.filter_grad
    def reference(u):
        res = brute("TimeDerivative", u, x, t) - brute("Laplacian", u, x, t)
        return jnp.mean(res**2)

    for a, b in zip(jax.tree.leaves(ours(model)), jax.tree.leaves(reference(model))):
        assert_close(a, b)


def test_grad_wrt_traced_coefficient(getkey):
    u = JnpMLP(3, None, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    dt, lap = brute("TimeDerivative", u, x, t), brute("Laplacian", u, x, t)

    def loss(nu):
        res = eqxderiv.TimeDerivative(u) - nu * eqxderiv.Laplacian(u)
        return jnp.mean(res(x, t) ** 2)

    nu = 0.3
    # d/dnu mean((u_t - nu Lap u)^2) = mean(-2 (u_t - nu Lap u) Lap u).
    expected = jnp.mean(-2 * (dt - nu * lap) * lap)
    assert_close(jax.grad(loss)(nu), expected)
    assert_close(jax.jit(jax.grad(loss))(jnp.asarray(nu)), expected)


def test_no_retrace_on_new_values(getkey):
    model = eqxderiv.SpaceTimeMLP(3, 3, 8, 2, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def loss(f, x, t, nu):
        res = eqxderiv.TimeDerivative(f) - nu * eqxderiv.Laplacian(f)
        return jnp.mean(res(x, t) ** 2) + jnp.mean(eqxderiv.Divergence(f)(x, t) ** 2)

    first = loss(model, x, t, jnp.asarray(0.1))
    model2 = jax.tree.map(lambda a: a * 1.1 if eqx.is_array(a) else a, model)
    x2, t2 = batch_inputs(getkey(), (6,), 3, "column")
    second = loss(model2, x2, t2, jnp.asarray(0.2))
    assert first.shape == second.shape == ()
    assert not jnp.allclose(first, second)


@pytest.mark.parametrize("chunk_size", [1, 4, 6, 100])
def test_chunk_size_matches_unchunked(chunk_size, getkey):
    net = JnpMLP(3, 3, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "column")
    for op in (
        eqxderiv.Laplacian(net),
        eqxderiv.GradDiv(net),
        eqxderiv.TimeDerivative(net) + eqxderiv.Advection(net),
    ):
        assert_close(op(x, t, chunk_size=chunk_size), op(x, t))
    outs = eqxderiv.derivatives(net, x, t, chunk_size=chunk_size)
    for a, b in zip(outs, eqxderiv.derivatives(net, x, t)):
        assert_close(a, b)


def test_chunk_size_unbatched_and_under_jit(getkey):
    net = JnpMLP(3, 3, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (), 3, "flat")
    op = eqxderiv.Laplacian(net)
    assert_close(op(x, t, chunk_size=2), op(x, t))
    xb, tb = batch_inputs(getkey(), (5,), 3, "flat")
    jitted = jax.jit(lambda x_, t_: op(x_, t_, chunk_size=2))
    assert_close(jitted(xb, tb), brute("Laplacian", net, xb, tb))


@pytest.mark.parametrize(
    "method",
    [eqxderiv.Taylor(chunk_size=2), eqxderiv.Forward(chunk_size=2)],
)
def test_method_chunk_size_matches(method, getkey):
    # Chunking the input directions (d = 5 in chunks of 2, with padding).
    net = JnpMLP(5, 5, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (4,), 5, "flat")
    for name in ("Laplacian", "GradDiv", "Jacobian", "Divergence"):
        out = getattr(eqxderiv, name)(net, method=method)(x, t)
        assert_close(out, brute(name, net, x, t))
    residual = eqxderiv.TimeDerivative(net, method=method) + eqxderiv.Laplacian(
        net, method=method
    )
    expected = brute("TimeDerivative", net, x, t) + brute("Laplacian", net, x, t)
    assert_close(residual(x, t), expected)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_derivatives_matches_separate_operators(method, getkey):
    net = eqxderiv.SpaceTimeMLP(3, 3, 16, 2, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "column")
    f, df_dt, df_dx, grad_div = eqxderiv.derivatives(net, x, t, method=method)
    assert_close(f, eqxderiv.Value(net, method=method)(x, t))
    assert_close(df_dt, eqxderiv.TimeDerivative(net, method=method)(x, t))
    assert_close(df_dx, eqxderiv.Jacobian(net, method=method)(x, t))
    assert_close(grad_div, eqxderiv.GradDiv(net, method=method)(x, t))
    assert_close(grad_div, brute("GradDiv", net, x, t))

    kinds = tuple(ALL_VECTOR)
    outs = eqxderiv.derivatives(net, x, t, kinds, method=method)
    assert len(outs) == len(kinds)
    for cls, out in zip(kinds, outs):
        assert_close(out, brute(cls.__name__, net, x, t))


def test_derivatives_scalar_field_without_time(getkey):
    u = JnpMLP(3, None, 8, time=False, key=getkey())
    x, _ = batch_inputs(getkey(), (6,), 3, None)
    kinds = (eqxderiv.Laplacian, eqxderiv.Grad, eqxderiv.Hessian, eqxderiv.Value)
    outs = eqxderiv.derivatives(u, x, operators=kinds)
    for cls, out in zip(kinds, outs):
        assert_close(out, brute(cls.__name__, u, x, None))
    # Unbatched.
    outs = eqxderiv.derivatives(u, x[0], operators=kinds)
    for cls, out in zip(kinds, outs):
        assert_close(out, brute_single(cls.__name__, u, x[0], None))


def test_derivatives_under_jit_and_grad(getkey):
    net = eqxderiv.SpaceTimeMLP(3, 3, 8, 2, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")

    @eqx.filter_jit
    @eqx.filter_grad
    def ours(f):
        _, _, _, gd = eqxderiv.derivatives(f, x, t)
        return jnp.sum(gd**2)

    @eqx.filter_grad
    def reference(f):
        return jnp.sum(brute("GradDiv", f, x, t) ** 2)

    for a, b in zip(jax.tree.leaves(ours(net)), jax.tree.leaves(reference(net))):
        assert_close(a, b)


def test_stochastic_under_jit_and_vmap(getkey):
    net = JnpMLP(3, 3, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "flat")
    op = eqxderiv.Laplacian(net, method=eqxderiv.Hutchinson(num_probes=2))
    key = getkey()
    eager = op(x, t, key=key)
    assert_close(eqx.filter_jit(lambda o, k: o(x, t, key=k))(op, key), eager)
    keys = jax.random.split(key, 2)
    mapped = jax.vmap(lambda x_, t_, k: op(x_, t_, key=k))(x, t, keys)
    assert mapped.shape == (2, 3, 3)
