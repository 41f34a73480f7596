"""Operators of operators, and residual arithmetic (`+ - * /`, fusion)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    EXACT_METHODS,
    JnpMLP,
    assert_close,
    assert_dicts_close,
    batch_inputs,
    closed_form,
    evaluate,
    expected,
    reference,
    separate_evaluations,
)

import eqxderiv


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_operators_of_operators(method, getkey):
    f = JnpMLP(3, 3, 16, time=True, key=getkey())
    u = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    op = lambda cls, field: cls(field, method=method)
    ops = {
        # grad(div f) is the gradient of the divergence.
        "Grad(Divergence)": op(eqxderiv.Grad, op(eqxderiv.Divergence, f)),
        "GradDiv": op(eqxderiv.GradDiv, f),
        # div(grad u) is the Laplacian.
        "Divergence(Grad)": op(eqxderiv.Divergence, op(eqxderiv.Grad, u)),
        "Laplacian": op(eqxderiv.Laplacian, u),
        # u = exp(ct)(...): d/dt of its Laplacian is c times it.
        "TimeDerivative(Laplacian)": op(
            eqxderiv.TimeDerivative, op(eqxderiv.Laplacian, u)
        ),
    }
    out = evaluate(ops, x, t)
    graddiv = reference(("GradDiv",), f, x, t)["GradDiv"]
    lap = expected(("Laplacian",), u, x, t)["Laplacian"]
    assert_dicts_close(
        out,
        {
            "Grad(Divergence)": graddiv,
            "GradDiv": graddiv,
            "Divergence(Grad)": lap,
            "Laplacian": lap,
            "TimeDerivative(Laplacian)": u.c * lap,
        },
    )


def second_time_derivative_field(x, t):
    return jnp.sin(x) * t**3 + jnp.exp(2 * t) * x


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_second_time_derivative(method, getkey):
    # f = sin(x) t^3 + exp(2t) x, so d2f/dt2 = 6 t sin(x) + 4 exp(2t) x; with t
    # given as (*batch,) and as (*batch, 1).
    f = second_time_derivative_field
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    dt = eqxderiv.TimeDerivative(f, method=method)
    dtt = eqxderiv.TimeDerivative(dt, method=method)

    @eqx.filter_jit
    def run(dtt, x, t):
        return dtt(x, t), dtt(x, t[:, None])

    flat, column = run(dtt, x, t)
    x_, t_ = np.asarray(x), np.asarray(t)[:, None]
    want = 6 * t_ * np.sin(x_) + 4 * np.exp(2 * t_) * x_
    assert_close(flat, want)
    assert_close(column, want)


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_jacobian_of_jacobian(method, getkey):
    # A (4,) -> (2,) field: the Jacobian of its Jacobian is its (2, 4, 4) Hessian.
    f = JnpMLP(4, 2, 8, time=False, key=getkey())
    x, _ = batch_inputs(getkey(), (2, 3), 4, None)
    jac = eqxderiv.Jacobian(f, method=method)

    @eqx.filter_jit
    def run(f, x):
        ours = eqxderiv.Jacobian(jac, method=method)(x)
        return ours, jax.vmap(jax.vmap(jax.jacfwd(jax.jacrev(f))))(x)

    ours, want = run(f, x)
    assert ours.shape == (2, 3, 2, 4, 4)
    assert_close(ours, want)


# --------------------------------------------------------------------------------
# Residual arithmetic.


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_residuals_are_sums_of_terms(method, getkey):
    f = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    nu, mu, lam = 0.37, 0.5, 1.5
    dt = eqxderiv.TimeDerivative(f, method=method)
    lap = eqxderiv.Laplacian(f, method=method)
    adv = eqxderiv.Advection(f, method=method)
    graddiv = eqxderiv.GradDiv(f, method=method)
    burgers = dt - nu * lap + adv
    # A plain field in a sum takes the method of the term it is added to, so this
    # fuses too (regression: it used to get the default method and not fuse).
    lame = mu * lap + (lam + mu) * graddiv + f
    assert separate_evaluations(burgers, x, t) == 1
    assert separate_evaluations(lame, x, t) == 1
    names = ("TimeDerivative", "Laplacian", "Advection", "GradDiv", "Value")
    ops = {"burgers": burgers, "lame": lame}
    ops |= {n: getattr(eqxderiv, n)(f, method=method) for n in names}
    out = evaluate(ops, x, t)
    ref = reference(names, f, x, t)
    assert_dicts_close(
        out,
        ref
        | {
            "burgers": ref["TimeDerivative"] - nu * ref["Laplacian"] + ref["Advection"],
            "lame": mu * ref["Laplacian"] + (lam + mu) * ref["GradDiv"] + ref["Value"],
        },
    )


def test_scaling_negation_and_plain_fields(getkey):
    f = closed_form("vector", 3, getkey())
    u = closed_form("scalar", 3, getkey())
    g = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    lap = eqxderiv.Laplacian(f)
    td = eqxderiv.TimeDerivative(f)
    h = lambda x, t: x * t  # a different field, as a plain callable
    non_fused = eqxderiv.Laplacian(f) + eqxderiv.Divergence(g) * eqxderiv.Value(f)
    ops = {
        "-lap": -lap,
        "lap / 2": lap / 2,
        "2 * lap": 2 * lap,
        "lap * 2.5": lap * 2.5,
        "array * lap": jnp.asarray(3.0) * lap,
        "np.float64 * lap": np.float64(0.5) * lap,
        "lap * np.float32": lap * np.float32(0.5),
        "-(lap * 2) / 4": -(lap * 2) / 4,
        "td + f": td + f,
        "f + td": f + td,
        "td - f": td - f,
        "f - td": f - td,
        "td + h": td + h,
        "non_fused": non_fused,
        "-non_fused": -non_fused,
        "non_fused / 4": non_fused / 4,
        "3 * non_fused * 2": 3 * non_fused * 2,
        # Pointwise products: scalar field times vector field either way round,
        # vector times vector (elementwise), scalar times scalar.
        "lap * u": lap * u,
        "u * lap": u * lap,
        "lap * f": lap * f,
        "Laplacian(u) * TimeDerivative(u)": (
            eqxderiv.Laplacian(u) * eqxderiv.TimeDerivative(u)
        ),
    }
    for label in ("-lap", "lap / 2", "td + f", "f + td", "td - f", "f - td"):
        # Scaled named derivatives and the field itself fuse with the derivative.
        assert separate_evaluations(ops[label], x, t) == 1, label
    assert separate_evaluations(ops["td + h"], x, t) == 2
    assert separate_evaluations(ops["non_fused"], x, t) == 3
    for op in ops.values():
        assert isinstance(op, eqxderiv.AbstractOperator)

    out = evaluate(ops, x, t)
    e = expected(("Laplacian", "TimeDerivative", "Value", "Divergence"), f, x, t)
    ue = expected(("Laplacian", "Value"), u, x, t)
    ge = expected(("Divergence",), g, x, t)
    L, T, V = np.asarray(e["Laplacian"]), np.asarray(e["TimeDerivative"]), e["Value"]
    V = np.asarray(V)
    uv = np.asarray(ue["Value"])[:, None]
    nf = L + np.asarray(ge["Divergence"])[:, None] * V
    H = np.asarray(x) * np.asarray(t)
    assert_dicts_close(
        out,
        {
            "-lap": -L,
            "lap / 2": L / 2,
            "2 * lap": 2 * L,
            "lap * 2.5": 2.5 * L,
            "array * lap": 3 * L,
            "np.float64 * lap": 0.5 * L,
            "lap * np.float32": 0.5 * L,
            "-(lap * 2) / 4": -L / 2,
            "td + f": T + V,
            "f + td": V + T,
            "td - f": T - V,
            "f - td": V - T,
            "td + h": T + H,
            "non_fused": nf,
            "-non_fused": -nf,
            "non_fused / 4": nf / 4,
            "3 * non_fused * 2": 6 * nf,
            "lap * u": L * uv,
            "u * lap": L * uv,
            "lap * f": L * V,
            "Laplacian(u) * TimeDerivative(u)": np.asarray(ue["Laplacian"])
            * u.c
            * uv[:, 0],
        },
    )


def test_fusion_does_not_depend_on_brackets(getkey):
    # Score-model residual: dt s - c (graddiv s + grad phi). However it is bracketed,
    # the terms on `s` end up in one fused term and `phi` in another.
    s = closed_form("vector", 3, getkey())
    phi = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    c = 0.7
    td, gd = eqxderiv.TimeDerivative(s), eqxderiv.GradDiv(s)
    grad = eqxderiv.Grad(phi)
    ops = {
        "bracketed": td - c * (gd + grad),
        "flat": td - c * gd - c * grad,
        "reordered": -(c * grad) + (td - c * gd),
        "nested": (td + (grad + gd) * -c) / 2 + (eqxderiv.Value(s) - s),
    }
    for label, op in ops.items():
        # One propagation for the terms on `s`, one for `phi`.
        assert separate_evaluations(op, x, t) == 2, label
    e = {
        k: np.asarray(v)
        for k, v in expected(("TimeDerivative", "GradDiv"), s, x, t).items()
    }
    g = np.asarray(expected(("Grad",), phi, x, t)["Grad"])
    want = e["TimeDerivative"] - c * (e["GradDiv"] + g)
    out = evaluate(ops, x, t)
    assert_dicts_close(
        out,
        {"bracketed": want, "flat": want, "reordered": want, "nested": want / 2},
    )


def test_fusion_needs_the_same_field_object_and_method(getkey):
    f = closed_form("vector", 3, getkey())
    g = closed_form("vector", 3, getkey())
    f_copy = jax.tree.map(lambda a: a, f)  # equal, but a different object
    assert f_copy is not f
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    fused = (
        eqxderiv.TimeDerivative(f)
        + eqxderiv.Laplacian(f)
        - 2 * eqxderiv.GradDiv(f)
        + eqxderiv.Value(f) / 4
    )
    ops = {
        "fused": fused,
        "different fields": eqxderiv.TimeDerivative(f) - eqxderiv.Laplacian(g),
        "copied field": eqxderiv.TimeDerivative(f) + eqxderiv.Laplacian(f_copy),
        "different methods": eqxderiv.TimeDerivative(f, method=eqxderiv.Forward())
        + eqxderiv.Laplacian(f, method=eqxderiv.Nested()),
    }
    assert separate_evaluations(ops["fused"], x, t) == 1
    for label in ("different fields", "copied field", "different methods"):
        assert separate_evaluations(ops[label], x, t) == 2, label

    out = evaluate(ops, x, t)
    names = ("TimeDerivative", "Laplacian", "GradDiv", "Value")
    e = {k: np.asarray(v) for k, v in expected(names, f, x, t).items()}
    g_lap = np.asarray(expected(("Laplacian",), g, x, t)["Laplacian"])
    assert_dicts_close(
        out,
        {
            "fused": e["TimeDerivative"]
            + e["Laplacian"]
            - 2 * e["GradDiv"]
            + e["Value"] / 4,
            "different fields": e["TimeDerivative"] - g_lap,
            "copied field": e["TimeDerivative"] + e["Laplacian"],
            "different methods": e["TimeDerivative"] + e["Laplacian"],
        },
    )


def test_expressions_of_operators_of_operators(getkey):
    u = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    # d/dt (u_t - Lap u) = c u_t - c Lap u, for u = exp(ct) * (...).
    residual = eqxderiv.TimeDerivative(u) - eqxderiv.Laplacian(u)
    # grad(u^2) = 2 u grad(u): a product of fields, differentiated again.
    square = eqxderiv.Value(u) * u
    ops = {
        "TimeDerivative(residual)": eqxderiv.TimeDerivative(residual),
        "Grad(u * u)": eqxderiv.Grad(square),
    }
    out = evaluate(ops, x, t)
    e = {
        k: np.asarray(v)
        for k, v in expected(
            ("TimeDerivative", "Laplacian", "Grad", "Value"), u, x, t
        ).items()
    }
    assert_dicts_close(
        out,
        {
            "TimeDerivative(residual)": u.c * (e["TimeDerivative"] - e["Laplacian"]),
            "Grad(u * u)": 2 * e["Value"][:, None] * e["Grad"],
        },
    )
