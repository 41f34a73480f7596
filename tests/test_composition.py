"""Operators of operators, and residual arithmetic (`+ - * /`, fusion)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    EXACT_METHODS,
    JnpMLP,
    assert_close,
    batch_inputs,
    brute,
    closed_form,
    expected_batched,
)

import eqxderiv


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_grad_of_divergence_is_graddiv(method, getkey):
    f = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    div = eqxderiv.Divergence(f, method=method)
    composed = eqxderiv.Grad(div, method=method)(x, t)
    assert_close(composed, eqxderiv.GradDiv(f, method=method)(x, t))
    assert_close(composed, brute("GradDiv", f, x, t))


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_divergence_of_grad_is_laplacian(method, getkey):
    u, ref = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    composed = eqxderiv.Divergence(eqxderiv.Grad(u, method=method), method=method)
    out = composed(x, t)
    assert_close(out, eqxderiv.Laplacian(u, method=method)(x, t))
    assert_close(out, expected_batched(ref["Laplacian"], x, t))


@pytest.mark.parametrize("method", EXACT_METHODS)
@pytest.mark.parametrize("t_layout", ["flat", "column"])
def test_second_time_derivative(method, t_layout, getkey):
    # f = sin(x) t^3 + exp(2t) x, so d2f/dt2 = 6 t sin(x) + 4 exp(2t) x.
    f = lambda x, t: jnp.sin(x) * t**3 + jnp.exp(2 * t) * x
    x, t = batch_inputs(getkey(), (6,), 3, t_layout)
    tt = t if t_layout == "flat" else t[:, 0]
    expected = 6 * tt[:, None] * jnp.sin(x) + 4 * jnp.exp(2 * tt)[:, None] * x
    dt = eqxderiv.TimeDerivative(f, method=method)
    assert_close(eqxderiv.TimeDerivative(dt, method=method)(x, t), expected)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_jacobian_of_jacobian(method, getkey):
    # A (4,) -> (2,) field: the Jacobian of its Jacobian is its (2, 4, 4) Hessian.
    f = JnpMLP(4, 2, 8, time=False, key=getkey())
    x, _ = batch_inputs(getkey(), (2, 3), 4, None)
    jac = eqxderiv.Jacobian(f, method=method)
    out = eqxderiv.Jacobian(jac, method=method)(x)
    assert out.shape == (2, 3, 2, 4, 4)
    expected = jax.vmap(jax.vmap(jax.jacfwd(jax.jacrev(f))))(x)
    assert_close(out, expected)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_time_derivative_of_laplacian(method, getkey):
    # u = exp(ct)(sum sin x + (a.x)^2): d/dt of its Laplacian is c times it.
    u, ref = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    op = eqxderiv.TimeDerivative(eqxderiv.Laplacian(u, method=method), method=method)
    assert_close(op(x, t), u.c * expected_batched(ref["Laplacian"], x, t))


# --------------------------------------------------------------------------------
# Residual arithmetic.


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_burgers_residual_is_sum_of_terms(method, getkey):
    f = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    nu = 0.37
    dt = eqxderiv.TimeDerivative(f, method=method)
    lap = eqxderiv.Laplacian(f, method=method)
    adv = eqxderiv.Advection(f, method=method)
    residual = dt - nu * lap + adv
    assert type(residual).__name__ == "_Fused"
    expected = dt(x, t) - nu * lap(x, t) + adv(x, t)
    assert_close(residual(x, t), expected)
    brute_force = (
        brute("TimeDerivative", f, x, t)
        - nu * brute("Laplacian", f, x, t)
        + brute("Advection", f, x, t)
    )
    assert_close(residual(x, t), brute_force)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_lame_residual_fuses_graddiv_and_laplacian(method, getkey):
    f = JnpMLP(3, 3, 16, time=False, key=getkey())
    x, _ = batch_inputs(getkey(), (6,), 3, None)
    mu, lam = 0.5, 1.5
    lap = eqxderiv.Laplacian(f, method=method)
    graddiv = eqxderiv.GradDiv(f, method=method)
    residual = mu * lap + (lam + mu) * graddiv + f
    assert type(residual).__name__ == "_Fused"
    expected = (
        mu * brute("Laplacian", f, x, None)
        + (lam + mu) * brute("GradDiv", f, x, None)
        + jax.vmap(f)(x)
    )
    assert_close(residual(x), expected)


def test_scaling_and_negation(getkey):
    f, ref = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    lap = eqxderiv.Laplacian(f)
    expected = expected_batched(ref["Laplacian"], x, t)
    cases = {
        "neg": (-lap, -expected),
        "div": (lap / 2, expected / 2),
        "rmul": (2 * lap, 2 * expected),
        "mul": (lap * 2.5, 2.5 * expected),
        "array": (jnp.asarray(3.0) * lap, 3 * expected),
        "numpy": (np.float64(0.5) * lap, 0.5 * expected),
        "numpy32": (lap * np.float32(0.5), 0.5 * expected),
        "twice": (-(lap * 2) / 4, -expected / 2),
    }
    for name, (op, value) in cases.items():
        assert isinstance(op, eqxderiv.AbstractOperator), name
        assert_close(op(x, t), value)


def test_scaling_a_non_fused_expression(getkey):
    f, f_ref = closed_form("vector", 3, getkey())
    g, g_ref = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    expr = eqxderiv.Laplacian(f) + eqxderiv.Divergence(g) * eqxderiv.Value(f)
    expected = expected_batched(f_ref["Laplacian"], x, t) + expected_batched(
        g_ref["Divergence"], x, t
    )[:, None] * expected_batched(f_ref["Value"], x, t)
    assert_close(expr(x, t), expected)
    assert_close((-expr)(x, t), -expected)
    assert_close((expr / 4)(x, t), expected / 4)
    assert_close((3 * expr * 2)(x, t), 6 * expected)


def test_plain_callables_in_expressions(getkey):
    f, ref = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    dt = expected_batched(ref["TimeDerivative"], x, t)
    value = expected_batched(ref["Value"], x, t)
    td = eqxderiv.TimeDerivative(f)
    for expr, expected in (
        (td + f, dt + value),
        (f + td, value + dt),
        (td - f, dt - value),
        (f - td, value - dt),
    ):
        # The field wraps into `Value(f)` and fuses with the derivative of `f`.
        assert type(expr).__name__ == "_Fused"
        assert_close(expr(x, t), expected)
    # A plain callable that is a different field still works, unfused.
    h = lambda x, t: x * t
    expected = dt + expected_batched(lambda x_, t_: x_ * t_, x, t)
    expr = td + h
    assert type(expr).__name__ != "_Fused"
    assert_close(expr(x, t), expected)


def test_pointwise_product_with_another_field(getkey):
    f, f_ref = closed_form("vector", 3, getkey())
    u, u_ref = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    lap_f = expected_batched(f_ref["Laplacian"], x, t)
    u_val = expected_batched(u_ref["Value"], x, t)
    f_val = expected_batched(f_ref["Value"], x, t)
    # Scalar field times a vector field, either way round.
    assert_close((eqxderiv.Laplacian(f) * u)(x, t), lap_f * u_val[:, None])
    assert_close((u * eqxderiv.Laplacian(f))(x, t), lap_f * u_val[:, None])
    # Vector times vector, elementwise.
    assert_close((eqxderiv.Laplacian(f) * f)(x, t), lap_f * f_val)
    # Scalar derivative times scalar derivative.
    lap_u = expected_batched(u_ref["Laplacian"], x, t)
    expr = eqxderiv.Laplacian(u) * eqxderiv.TimeDerivative(u)
    assert_close(expr(x, t), lap_u * u.c * u_val)


def test_same_field_fuses(getkey):
    f, ref = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    expr = (
        eqxderiv.TimeDerivative(f)
        + eqxderiv.Laplacian(f)
        - 2 * eqxderiv.GradDiv(f)
        + eqxderiv.Value(f) / 4
    )
    assert type(expr).__name__ == "_Fused"
    ex = lambda name: expected_batched(ref[name], x, t)
    expected = (
        ex("TimeDerivative") + ex("Laplacian") - 2 * ex("GradDiv") + ex("Value") / 4
    )
    assert_close(expr(x, t), expected)


def test_different_fields_do_not_fuse(getkey):
    f, f_ref = closed_form("vector", 3, getkey())
    g, g_ref = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    expr = eqxderiv.TimeDerivative(f) - eqxderiv.Laplacian(g)
    assert type(expr).__name__ != "_Fused"
    expected = expected_batched(f_ref["TimeDerivative"], x, t) - expected_batched(
        g_ref["Laplacian"], x, t
    )
    assert_close(expr(x, t), expected)
    # Equal but distinct field objects are different fields too.
    f_copy = jax.tree.map(lambda a: a, f)
    assert f_copy is not f
    expr = eqxderiv.TimeDerivative(f) + eqxderiv.Laplacian(f_copy)
    assert type(expr).__name__ != "_Fused"
    expected = expected_batched(f_ref["TimeDerivative"], x, t) + expected_batched(
        f_ref["Laplacian"], x, t
    )
    assert_close(expr(x, t), expected)


def test_different_methods_do_not_fuse(getkey):
    f, ref = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    expr = eqxderiv.TimeDerivative(f, method="forward") + eqxderiv.Laplacian(
        f, method="nested"
    )
    assert type(expr).__name__ != "_Fused"
    expected = expected_batched(ref["TimeDerivative"], x, t) + expected_batched(
        ref["Laplacian"], x, t
    )
    assert_close(expr(x, t), expected)


def test_expression_of_operators_of_operators(getkey):
    u, ref = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    # d/dt (u_t - Lap u) = c u_t - c Lap u, for u = exp(ct) * (...).
    residual = eqxderiv.TimeDerivative(u) - eqxderiv.Laplacian(u)
    op = eqxderiv.TimeDerivative(residual)
    expected = u.c * (
        expected_batched(ref["TimeDerivative"], x, t)
        - expected_batched(ref["Laplacian"], x, t)
    )
    assert_close(op(x, t), expected)
    # grad of (u^2): the product of two fields, differentiated again.
    sq = eqxderiv.Value(u) * u
    grad = expected_batched(ref["Grad"], x, t)
    value = expected_batched(ref["Value"], x, t)
    assert_close(eqxderiv.Grad(sq)(x, t), 2 * value[:, None] * grad)
