"""Every operator against hand-derived derivatives of closed-form fields and against
brute-force nested autodiff on random networks, for every exact method, batch
layout and time layout."""

import equinox as eqx
import hypothesis.strategies as st
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
    batch_inputs,
    closed_form,
    evaluate,
    expected,
    reference,
    rng,
)
from hypothesis import given, settings

import eqxderiv


# --------------------------------------------------------------------------------
# Closed-form fields.


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("name", VECTOR_OPS)
def test_sin_exp_vector_field(name, method, getkey):
    f = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    op = getattr(eqxderiv, name)(f, method=method)
    assert_close(evaluate(op, x, t), expected(name, f, x, t))


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("name", SCALAR_OPS)
def test_sin_exp_scalar_field(name, method, getkey):
    u = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    op = getattr(eqxderiv, name)(u, method=method)
    assert_close(evaluate(op, x, t), expected(name, u, x, t))


# Fields with textbook derivatives, at module level so that every method's test
# compiles the same field.
A = rng(jax.random.key(1)).standard_normal((3, 3))
B = rng(jax.random.key(2)).standard_normal(3)


def linear(x, t):
    return jnp.asarray(A) @ x + jnp.asarray(B) * t


def polynomial(x, t):
    return x[0] ** 3 * x[1] * t**2


def divergence_free(x):
    # (d2 psi, -d1 psi) for the stream function psi = sin(x1) cos(x2).
    return jnp.stack([-jnp.sin(x[0]) * jnp.sin(x[1]), -jnp.cos(x[0]) * jnp.cos(x[1])])


def potential(x):
    return x[0] ** 2 * x[1] + jnp.sin(x[2])


def gradient_field(x):
    # The gradient of `potential`: curl-free, with the Hessian as Jacobian.
    return jnp.stack([2 * x[0] * x[1], x[0] ** 2, jnp.cos(x[2])])


def curly(x):
    return jnp.stack([x[1] ** 2 * x[2], jnp.sin(x[2]) * x[0], x[0] * x[1]])


def swirl(x, t):
    return jnp.stack([-x[1] * jnp.exp(x[0]), x[0] ** 2]) * t


def _textbook_cases(x, t):
    """`(operator class, field, x, t, expected)` with the expected values in NumPy,
    from derivatives worked out by hand."""
    x, t = np.asarray(x), np.asarray(t)
    y1, y2, y3 = x[:, 0], x[:, 1], x[:, 2]
    zero = np.zeros_like(y1)
    n = len(t)
    values = x @ A.T + np.outer(t, B)
    hess_potential = np.stack(
        [
            np.stack([2 * y2, 2 * y1, zero], -1),
            np.stack([2 * y1, zero, zero], -1),
            np.stack([zero, zero, -np.sin(y3)], -1),
        ],
        axis=-2,
    )
    return [
        (eqxderiv.Value, linear, x, t, values),
        (eqxderiv.Jacobian, linear, x, t, np.broadcast_to(A, (n, 3, 3))),
        (eqxderiv.TimeDerivative, linear, x, t, np.broadcast_to(B, (n, 3))),
        (eqxderiv.Divergence, linear, x, t, np.full(n, np.trace(A))),
        (eqxderiv.GradDiv, linear, x, t, np.zeros((n, 3))),
        (eqxderiv.Laplacian, linear, x, t, np.zeros((n, 3))),
        (
            eqxderiv.Curl,
            linear,
            x,
            t,
            np.broadcast_to(
                [A[2, 1] - A[1, 2], A[0, 2] - A[2, 0], A[1, 0] - A[0, 1]], (n, 3)
            ),
        ),
        (eqxderiv.Advection, linear, x, t, values @ A.T),
        (
            eqxderiv.Grad,
            polynomial,
            x[:, :2],
            t,
            np.stack([3 * y1**2 * y2 * t**2, y1**3 * t**2], -1),
        ),
        (
            eqxderiv.Hessian,
            polynomial,
            x[:, :2],
            t,
            np.stack(
                [
                    np.stack([6 * y1 * y2 * t**2, 3 * y1**2 * t**2], -1),
                    np.stack([3 * y1**2 * t**2, zero], -1),
                ],
                axis=-2,
            ),
        ),
        (eqxderiv.Laplacian, polynomial, x[:, :2], t, 6 * y1 * y2 * t**2),
        (eqxderiv.TimeDerivative, polynomial, x[:, :2], t, 2 * y1**3 * y2 * t),
        (eqxderiv.Divergence, divergence_free, x[:, :2], None, zero),
        (eqxderiv.GradDiv, divergence_free, x[:, :2], None, np.zeros((n, 2))),
        (
            eqxderiv.Laplacian,
            divergence_free,
            x[:, :2],
            None,
            2 * np.stack([np.sin(y1) * np.sin(y2), np.cos(y1) * np.cos(y2)], -1),
        ),
        (
            eqxderiv.Curl,
            divergence_free,
            x[:, :2],
            None,
            2 * np.sin(y1) * np.cos(y2),
        ),
        (
            eqxderiv.Grad,
            potential,
            x,
            None,
            np.stack([2 * y1 * y2, y1**2, np.cos(y3)], -1),
        ),
        (eqxderiv.Hessian, potential, x, None, hess_potential),
        (eqxderiv.Laplacian, potential, x, None, 2 * y2 - np.sin(y3)),
        (eqxderiv.Jacobian, gradient_field, x, None, hess_potential),
        (eqxderiv.Curl, gradient_field, x, None, np.zeros((n, 3))),
        (eqxderiv.Divergence, gradient_field, x, None, 2 * y2 - np.sin(y3)),
        (
            eqxderiv.Curl,
            curly,
            x,
            None,
            np.stack(
                [y1 - y1 * np.cos(y3), y2**2 - y2, np.sin(y3) - 2 * y2 * y3], axis=-1
            ),
        ),
        (eqxderiv.Curl, swirl, x[:, :2], t[:, None], (2 * y1 + np.exp(y1)) * t),
    ]


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_textbook_fields(method, getkey):
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    for cls, field, x_, t_, value in _textbook_cases(x, t):
        op = cls(field, method=method)
        out = evaluate(op, jnp.asarray(x_), None if t_ is None else jnp.asarray(t_))
        assert_close(out, value, label=f"{cls.__name__}({field.__name__})")


@pytest.mark.parametrize("t_shape", [(), (1,)])
def test_unbatched(t_shape, getkey):
    f = closed_form("vector", 3, getkey())
    u = closed_form("scalar", 3, getkey())
    x = batch_inputs(getkey(), (), 3, None)[0]
    t = jnp.full(t_shape, 0.3)
    for field, names in ((f, VECTOR_OPS), (u, SCALAR_OPS)):
        for name in names:
            out = evaluate(getattr(eqxderiv, name)(field), x, t)
            assert_close(out, expected(name, field, x, t), label=name)


# --------------------------------------------------------------------------------
# Random networks against brute-force nested autodiff.


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("name", VECTOR_OPS)
def test_space_time_mlp(name, method, getkey):
    net = eqxderiv.SpaceTimeMLP(3, 3, width=16, depth=2, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    op = getattr(eqxderiv, name)(net, method=method)
    assert_close(evaluate(op, x, t), reference(name, net, x, t))


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("name", SCALAR_OPS)
def test_jnp_mlp_scalar(name, method, getkey):
    u = JnpMLP(3, None, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    op = getattr(eqxderiv, name)(u, method=method)
    assert_close(evaluate(op, x, t), reference(name, u, x, t))


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("m", [2, 5])
def test_non_square_fields(m, method, getkey):
    # m < d takes the reverse-mode branch of the Jacobian, m > d the forward one.
    # Regression: a Laplacian of a field with m != d failed in the jet methods,
    # which formed the divergence (needing m = d) whenever a Laplacian was asked.
    net = JnpMLP(3, m, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    for name in ("Jacobian", "Laplacian", "TimeDerivative"):
        op = getattr(eqxderiv, name)(net, method=method)
        assert_close(evaluate(op, x, t), reference(name, net, x, t), label=name)


@pytest.mark.parametrize(
    "batch, t_layout",
    [
        ((), "flat"),
        ((), "column"),
        ((), None),
        ((6,), "flat"),
        ((6,), None),
        ((2, 3), "flat"),
        ((2, 3), "column"),
        ((2, 3), None),
    ],
)
def test_batch_and_time_layouts(batch, t_layout, getkey):
    # Fields with t, given as (*batch,) or (*batch, 1), and fields without t. The
    # (6,)-"column" layout is covered above.
    time = t_layout is not None
    vector = JnpMLP(3, 3, 16, time=time, key=getkey())
    scalar = eqxderiv.SpaceTimeMLP(3, "scalar", 16, 2, time=time, key=getkey())
    x, t = batch_inputs(getkey(), batch, 3, t_layout)
    for field, names in ((vector, VECTOR_OPS), (scalar, ["Grad", "Hessian"])):
        for name in names:
            if name == "TimeDerivative" and not time:
                continue
            out = evaluate(getattr(eqxderiv, name)(field), x, t)
            assert_close(out, reference(name, field, x, t), label=name)


def test_result_shapes_and_dtypes(getkey):
    x, t = batch_inputs(getkey(), (2, 3), 3, "column")
    vec = JnpMLP(3, 3, 8, time=True, key=getkey())
    sca = JnpMLP(3, None, 8, time=True, key=getkey())
    cases = [
        (eqxderiv.Value, vec, (2, 3, 3)),
        (eqxderiv.Jacobian, vec, (2, 3, 3, 3)),
        (eqxderiv.TimeDerivative, vec, (2, 3, 3)),
        (eqxderiv.Divergence, vec, (2, 3)),
        (eqxderiv.GradDiv, vec, (2, 3, 3)),
        (eqxderiv.Laplacian, vec, (2, 3, 3)),
        (eqxderiv.Curl, vec, (2, 3, 3)),
        (eqxderiv.Advection, vec, (2, 3, 3)),
        (eqxderiv.Value, sca, (2, 3)),
        (eqxderiv.Jacobian, sca, (2, 3, 3)),
        (eqxderiv.Grad, sca, (2, 3, 3)),
        (eqxderiv.Hessian, sca, (2, 3, 3, 3)),
        (eqxderiv.Laplacian, sca, (2, 3)),
        (eqxderiv.TimeDerivative, sca, (2, 3)),
    ]
    for cls, field, shape in cases:
        op = cls(field)
        out = jax.eval_shape(lambda a, b: op(a, b), x, t)
        assert out.shape == shape, (cls.__name__, out.shape)
        assert out.dtype == jnp.float64, (cls.__name__, out.dtype)


def test_float32(getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    net32 = jax.tree.map(lambda a: a.astype(jnp.float32), net)
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    x32, t32 = x.astype(jnp.float32), t.astype(jnp.float32)
    for name in ("Laplacian", "GradDiv", "TimeDerivative"):
        out = evaluate(getattr(eqxderiv, name)(net32), x32, t32)
        assert out.dtype == jnp.float32
        exact = reference(name, net, x, t).astype(jnp.float32)
        assert_close(out, exact, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------
# Stochastic methods: only that they demand a key and give the right shapes (their
# statistics are tested elsewhere).


@pytest.mark.parametrize(
    "method",
    [
        "hutchinson",
        "sparse",
        eqxderiv.Hutchinson(num_probes=3, probe="gaussian"),
        eqxderiv.SparseSampling(num_samples=2),
    ],
)
def test_stochastic_needs_key_and_shapes(method, getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "flat")
    key = getkey()
    shapes = {
        eqxderiv.Divergence: (2, 3),
        eqxderiv.Laplacian: (2, 3, 3),
        eqxderiv.GradDiv: (2, 3, 3),
    }
    for cls, shape in shapes.items():
        op = cls(net, method=method)
        assert op.stochastic
        with pytest.raises(ValueError, match="needs a PRNG key"):
            op(x, t)
        out = eqx.filter_jit(lambda o, k: o(x, t, key=k))(op, key)
        assert out.shape == shape
        assert bool(jnp.all(jnp.isfinite(out)))
    # A Jacobian through a stochastic method is still exact.
    jac = eqx.filter_jit(lambda o, k: o(x, t, key=k))(
        eqxderiv.Jacobian(net, method=method), key
    )
    assert_close(jac, reference("Jacobian", net, x, t))


# --------------------------------------------------------------------------------
# Property test: shapes and values over batch layouts and dimensions.


@settings(max_examples=15, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    d=st.integers(1, 5),
    t_layout=st.sampled_from(["flat", "column", None]),
    seed=st.integers(0, 2**16),
)
def test_property_closed_form(batch, d, t_layout, seed):
    f = closed_form("vector", d, jax.random.key(seed))
    u = closed_form("scalar", d, jax.random.key(seed + 1))
    x, t = batch_inputs(jax.random.key(seed + 2), batch, d, t_layout)
    per_sample = [
        (f, "Value", (d,)),
        (f, "Jacobian", (d, d)),
        (f, "TimeDerivative", (d,)),
        (f, "Divergence", ()),
        (f, "GradDiv", (d,)),
        (f, "Laplacian", (d,)),
        (f, "Curl", (3,) if d == 3 else ()),
        (f, "Advection", (d,)),
        (u, "Grad", (d,)),
        (u, "Hessian", (d, d)),
        (u, "Laplacian", ()),
    ]
    for field, name, shape in per_sample:
        if name == "TimeDerivative" and t is None:
            continue
        if name == "Curl" and d not in (2, 3):
            continue
        out = evaluate(getattr(eqxderiv, name)(field), x, t)
        assert out.shape == batch + shape, (name, out.shape)
        assert_close(out, expected(name, field, x, t), label=name)


def test_operator_is_a_pytree_of_the_field(getkey):
    # The field is a normal (non-static) field: its parameters are leaves.
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    op = eqxderiv.Laplacian(net)
    assert len(jax.tree.leaves(eqx.filter(op, eqx.is_array))) == len(
        jax.tree.leaves(eqx.filter(net, eqx.is_array))
    )
