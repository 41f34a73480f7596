"""The JAX contract: eager and jit, vmap, gradients with respect to parameters and
coefficients, no retracing, batch chunking and `eqxderiv.derivatives`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    EXACT_METHODS,
    SCALAR_OPS,
    VECTOR_OPS,
    JnpMLP,
    assert_close,
    assert_dicts_close,
    assert_trees_close,
    batch_inputs,
    brute,
    closed_form,
    evaluate,
    expected,
    reference,
)

import eqxderiv


def test_eager_jax_jit_and_filter_jit_agree(getkey):
    # Eager evaluation (as most users call it), against the compiled `evaluate`
    # used throughout the suite, `jax.jit` of a closure over the operator
    # (parameters become constants) and `eqx.filter_jit` with the operator passed
    # in (parameters traced).
    f = closed_form("vector", 3, getkey())
    u = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    ops = {n: getattr(eqxderiv, n)(f) for n in VECTOR_OPS}
    ops |= {"scalar " + n: getattr(eqxderiv, n)(u) for n in SCALAR_OPS}
    # Eager dispatch compiles every primitive separately, so only some operators
    # are evaluated eagerly here (the seed's in test_flax.py are eager too).
    eager_ops = ("Divergence", "Laplacian", "scalar Hessian")
    compiled = evaluate(ops, x, t)
    eager = {k: ops[k](x, t) for k in eager_ops}
    assert_dicts_close(eager, {k: compiled[k] for k in eager_ops}, 1e-12, 1e-12)
    closed = jax.jit(lambda x_, t_: {k: op(x_, t_) for k, op in ops.items()})
    assert_dicts_close(closed(x, t), compiled, rtol=1e-12, atol=1e-12)
    passed = eqx.filter_jit(lambda o, x_, t_: {k: op(x_, t_) for k, op in o.items()})
    assert_dicts_close(passed(ops, x, t), compiled, rtol=1e-12, atol=1e-12)
    # The compiled values are right, too.
    assert_dicts_close(
        {k: v for k, v in compiled.items() if not k.startswith("scalar")},
        expected(tuple(VECTOR_OPS), f, x, t),
    )


def test_vmap_over_an_extra_axis(getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (4, 6), 3, "flat")
    names = ("Laplacian", "GradDiv", "Jacobian")

    @eqx.filter_jit
    def run(net, x, t):
        ops = {n: getattr(eqxderiv, n)(net) for n in names}
        mapped = {n: jax.vmap(op)(x, t) for n, op in ops.items()}
        # Only the time axis mapped, x shared.
        mapped_t = {n: jax.vmap(lambda t_: op(x[0], t_))(t) for n, op in ops.items()}
        return mapped, mapped_t

    mapped, mapped_t = run(net, x, t)
    assert_dicts_close(mapped, reference(names, net, x, t))
    x0 = jnp.broadcast_to(x[0], x.shape)
    assert_dicts_close(mapped_t, reference(names, net, x0, t))


@eqx.filter_jit
@eqx.filter_grad
def _divergence_loss_grad_reference(f, x, t):
    div = jax.vmap(lambda x_, t_: jnp.trace(jax.jacfwd(lambda y: f(y, t_))(x_)))
    return jnp.mean(div(x, t) ** 2)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_grad_wrt_parameters_matches_brute_force(method, getkey):
    model = eqxderiv.SpaceTimeMLP(3, 3, 16, 2, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")

    @eqx.filter_jit
    @eqx.filter_grad
    def ours(f):
        return jnp.mean(eqxderiv.Divergence(f, method=method)(x, t) ** 2)

    assert_trees_close(ours(model), _divergence_loss_grad_reference(model, x, t))


def test_grad_of_residual_wrt_parameters_and_coefficient(getkey):
    u = JnpMLP(3, None, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")

    def loss(u, nu):
        res = eqxderiv.TimeDerivative(u) - nu * eqxderiv.Laplacian(u)
        return jnp.mean(res(x, t) ** 2)

    def brute_loss(u, nu):
        res = brute("TimeDerivative", u, x, t) - nu * brute("Laplacian", u, x, t)
        return jnp.mean(res**2)

    @eqx.filter_jit
    def run(u, nu):
        # Gradients with respect to the parameters and to the traced `nu`.
        grads = eqx.filter_grad(loss)(u, nu), jax.grad(loss, argnums=1)(u, nu)
        refs = (
            eqx.filter_grad(brute_loss)(u, nu),
            jax.grad(brute_loss, argnums=1)(u, nu),
        )
        dt, lap = brute("TimeDerivative", u, x, t), brute("Laplacian", u, x, t)
        # d/dnu mean((u_t - nu Lap u)^2) = mean(-2 (u_t - nu Lap u) Lap u).
        closed = jnp.mean(-2 * (dt - nu * lap) * lap)
        return grads, refs, closed

    (g_u, g_nu), (r_u, r_nu), closed = run(u, jnp.asarray(0.3))
    assert_trees_close(g_u, r_u)
    assert_close(g_nu, r_nu)
    assert_close(g_nu, closed)
    # Also with a Python float coefficient, eagerly through jax.grad.
    assert_close(jax.jit(jax.grad(lambda nu: loss(u, nu)))(0.3), closed)


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
    assert float(first) != float(second)


def test_chunk_size_matches_unchunked(getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "column")
    ops = {
        "Laplacian": eqxderiv.Laplacian(net),
        "residual": eqxderiv.TimeDerivative(net) + eqxderiv.Advection(net),
    }
    chunks = (1, 4, 100)  # one sample at a time, uneven, larger than the batch

    @eqx.filter_jit
    def run(ops, net, x, t):
        plain = {k: op(x, t) for k, op in ops.items()}
        plain["derivatives"] = eqxderiv.derivatives(net, x, t)
        # Unbatched: chunking is a no-op.
        plain["one sample"] = ops["Laplacian"](x[0, 0], t[0, 0])
        chunked = {}
        for c in chunks:
            chunked[c] = {k: op(x, t, chunk_size=c) for k, op in ops.items()}
            chunked[c]["derivatives"] = eqxderiv.derivatives(net, x, t, chunk_size=c)
            chunked[c]["one sample"] = ops["Laplacian"](x[0, 0], t[0, 0], chunk_size=c)
        return plain, chunked

    plain, chunked = run(ops, net, x, t)
    for c in chunks:
        assert_trees_close(chunked[c], plain)
    lap = reference(("Laplacian",), net, x, t)["Laplacian"]
    assert_close(plain["Laplacian"], lap)


def test_method_chunk_size_matches(getkey):
    # Chunking the input directions (d = 5 in chunks of 2, so one is padded).
    net = JnpMLP(5, 5, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (4,), 5, "flat")
    names = ("Laplacian", "GradDiv", "Jacobian", "Divergence")
    ops = {}
    for method in (eqxderiv.Taylor(chunk_size=2), eqxderiv.Forward(chunk_size=2)):
        label = type(method).__name__
        ops |= {f"{label} {n}": getattr(eqxderiv, n)(net, method=method) for n in names}
        ops[f"{label} residual"] = eqxderiv.TimeDerivative(
            net, method=method
        ) + eqxderiv.Laplacian(net, method=method)
    out = evaluate(ops, x, t)
    ref = reference(names + ("TimeDerivative",), net, x, t)
    for label in ("Taylor", "Forward"):
        for n in names:
            assert_close(out[f"{label} {n}"], ref[n], label=f"{label} {n}")
        residual = ref["TimeDerivative"] + ref["Laplacian"]
        assert_close(out[f"{label} residual"], residual, label=f"{label} residual")


@eqx.filter_jit
def _derivatives_and_operators(net, x, t, method):
    # At module level; `method` (a string) is static.
    default = eqxderiv.derivatives(net, x, t, method=method)
    classes = (eqxderiv.Value, eqxderiv.TimeDerivative, eqxderiv.Jacobian)
    separate = tuple(
        cls(net, method=method)(x, t) for cls in classes + (eqxderiv.GradDiv,)
    )
    every = eqxderiv.derivatives(
        net, x, t, tuple(getattr(eqxderiv, n) for n in VECTOR_OPS), method=method
    )
    return default, separate, dict(zip(VECTOR_OPS, every))


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_derivatives_matches_separate_operators(method, getkey):
    net = eqxderiv.SpaceTimeMLP(3, 3, 16, 2, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "column")
    default, separate, every = _derivatives_and_operators(net, x, t, method)
    # value, df/dt, df/dx, grad(div f): shapes (2, 3, 3), (2, 3, 3), (2, 3, 3, 3),
    # (2, 3, 3).
    assert [a.shape for a in default] == [(2, 3, 3), (2, 3, 3), (2, 3, 3, 3), (2, 3, 3)]
    assert_trees_close(default, separate)
    assert_dicts_close(every, reference(tuple(VECTOR_OPS), net, x, t))


def test_derivatives_scalar_field_without_time(getkey):
    u = JnpMLP(3, None, 16, time=False, key=getkey())
    x, _ = batch_inputs(getkey(), (6,), 3, None)
    names = ("Laplacian", "Grad", "Hessian", "Value")
    classes = tuple(getattr(eqxderiv, n) for n in names)

    @eqx.filter_jit
    def run(u, x):
        return (
            dict(zip(names, eqxderiv.derivatives(u, x, operators=classes))),
            dict(zip(names, eqxderiv.derivatives(u, x[0], operators=classes))),
        )

    batched, single = run(u, x)
    ref = reference(names, u, x)
    assert_dicts_close(batched, ref)
    assert_dicts_close(single, {k: v[0] for k, v in ref.items()})


def test_derivatives_under_grad(getkey):
    net = eqxderiv.SpaceTimeMLP(3, 3, 8, 2, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")

    @eqx.filter_jit
    def run(net):
        def ours(f):
            return jnp.sum(eqxderiv.derivatives(f, x, t)[3] ** 2)

        def brute_force(f):
            return jnp.sum(brute("GradDiv", f, x, t) ** 2)

        return eqx.filter_grad(ours)(net), eqx.filter_grad(brute_force)(net)

    assert_trees_close(*run(net))


def test_stochastic_under_jit_and_vmap(getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "flat")
    op = eqxderiv.Laplacian(net, method=eqxderiv.Hutchinson(num_probes=2))
    key = getkey()

    @eqx.filter_jit
    def run(op, key):
        keys = jax.random.split(key, 2)
        mapped = jax.vmap(lambda x_, t_, k: op(x_, t_, key=k))(x, t, keys)
        return op(x, t, key=key), op(x, t, key=key), mapped

    first, again, mapped = run(op, key)
    assert first.shape == mapped.shape == (2, 3, 3)
    assert_close(first, again, rtol=0, atol=0)  # the key alone fixes the probes
    assert np.all(np.isfinite(mapped))
