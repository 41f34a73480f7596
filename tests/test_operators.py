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
    assert_dicts_close,
    assert_trees_close,
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
def test_sin_exp_vector_field(method, getkey):
    f = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    ops = {name: getattr(eqxderiv, name)(f, method=method) for name in VECTOR_OPS}
    assert_dicts_close(evaluate(ops, x, t), expected(tuple(VECTOR_OPS), f, x, t))


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_sin_exp_scalar_field(method, getkey):
    u = closed_form("scalar", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    ops = {name: getattr(eqxderiv, name)(u, method=method) for name in SCALAR_OPS}
    assert_dicts_close(evaluate(ops, x, t), expected(tuple(SCALAR_OPS), u, x, t))


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


@eqx.filter_jit
def _run_textbook(cases):
    # At module level, so that "auto" and "taylor" share one compilation.
    return [cls_op(x) if t is None else cls_op(x, t) for cls_op, x, t in cases]


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_textbook_fields(method, getkey):
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    cases = _textbook_cases(x, t)
    outs = _run_textbook(
        [
            (
                cls(field, method=method),
                jnp.asarray(x_),
                t_ if t_ is None else jnp.asarray(t_),
            )
            for cls, field, x_, t_, _ in cases
        ]
    )
    for out, (cls, field, _, _, value) in zip(outs, cases):
        assert_close(out, value, label=f"{cls.__name__}({field.__name__})")


def test_unbatched(getkey):
    # One sample with t of shape (); (1,) is in test_batch_and_time_layouts.
    f = closed_form("vector", 3, getkey())
    u = closed_form("scalar", 3, getkey())
    x = batch_inputs(getkey(), (), 3, None)[0]
    t = jnp.asarray(0.3)
    ops = {n: getattr(eqxderiv, n)(f) for n in VECTOR_OPS}
    ops |= {"scalar " + n: getattr(eqxderiv, n)(u) for n in SCALAR_OPS}
    want = expected(tuple(VECTOR_OPS), f, x, t)
    want |= {"scalar " + k: v for k, v in expected(tuple(SCALAR_OPS), u, x, t).items()}
    assert_dicts_close(evaluate(ops, x, t), want)


# --------------------------------------------------------------------------------
# Random networks against brute-force nested autodiff.


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_space_time_mlp(method, getkey):
    net = eqxderiv.SpaceTimeMLP(3, 3, width=16, depth=2, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    ops = {name: getattr(eqxderiv, name)(net, method=method) for name in VECTOR_OPS}
    assert_dicts_close(evaluate(ops, x, t), reference(tuple(VECTOR_OPS), net, x, t))


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_jnp_mlp_scalar(method, getkey):
    u = JnpMLP(3, None, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    ops = {name: getattr(eqxderiv, name)(u, method=method) for name in SCALAR_OPS}
    assert_dicts_close(evaluate(ops, x, t), reference(tuple(SCALAR_OPS), u, x, t))


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_non_square_fields(method, getkey):
    # m < d takes the reverse-mode branch of the Jacobian, m > d the forward one.
    # Regression: a Laplacian of a field with m != d failed in the jet methods,
    # which formed the divergence (needing m = d) whenever a Laplacian was asked.
    narrow = JnpMLP(3, 2, 16, time=True, key=getkey())
    wide = JnpMLP(3, 5, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    names = ("Jacobian", "Laplacian", "TimeDerivative")
    ops = {}
    want = {}
    for label, net in (("narrow", narrow), ("wide", wide)):
        ops |= {f"{label} {n}": getattr(eqxderiv, n)(net, method=method) for n in names}
        want |= {f"{label} {n}": v for n, v in reference(names, net, x, t).items()}
    assert_dicts_close(evaluate(ops, x, t), want)


@pytest.mark.parametrize(
    "batch, t_layout",
    [((), "column"), ((), None), ((2, 3), "flat"), ((2, 3), None)],
)
def test_batch_and_time_layouts(batch, t_layout, getkey):
    # Fields with t, given as (*batch,) or (*batch, 1), and fields without t. The
    # (6,)-"column" layout is covered above, t of shape () for one sample in
    # test_unbatched, and random layouts by test_property_closed_form.
    time = t_layout is not None
    vector = JnpMLP(3, 3, 16, time=time, key=getkey())
    scalar = eqxderiv.SpaceTimeMLP(3, "scalar", 16, 2, time=time, key=getkey())
    x, t = batch_inputs(getkey(), batch, 3, t_layout)
    names = tuple(n for n in VECTOR_OPS if time or n != "TimeDerivative")
    ops = {n: getattr(eqxderiv, n)(vector) for n in names}
    ops |= {"Grad": eqxderiv.Grad(scalar), "Hessian": eqxderiv.Hessian(scalar)}

    @eqx.filter_jit
    def run(ops, vector, scalar, x, t):
        return evaluate(ops, x, t), reference(names, vector, x, t) | reference(
            ("Grad", "Hessian"), scalar, x, t
        )

    assert_dicts_close(*run(ops, vector, scalar, x, t))


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
    names = ("Laplacian", "GradDiv", "TimeDerivative")
    out = evaluate({n: getattr(eqxderiv, n)(net32) for n in names}, x32, t32)
    exact = jax.tree.map(lambda a: a.astype(jnp.float32), reference(names, net, x, t))
    assert_dicts_close(out, exact, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------
# Stochastic methods: only that they demand a key and give the right shapes (their
# statistics are tested elsewhere).


STOCHASTIC = [
    "hutchinson",
    "sparse",
    eqxderiv.Hutchinson(num_probes=3, probe="gaussian"),
    eqxderiv.SparseSampling(num_samples=2),
]


@pytest.mark.parametrize("method", STOCHASTIC)
def test_stochastic_needs_key_and_shapes(method, getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "flat")
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
        out = jax.eval_shape(lambda k: op(x, t, key=k), getkey())
        assert out.shape == shape
    # A Jacobian is exact under a stochastic method, so it needs no key (see
    # `test_exact_quantities_of_stochastic_methods_need_no_key`).
    op = eqxderiv.Jacobian(net, method=method)
    assert not op.stochastic
    assert jax.eval_shape(lambda: op(x, t)).shape == (2, 3, 3, 3)


def test_stochastic_values_are_finite(getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (2, 3), 3, "flat")
    ops = [
        eqxderiv.Laplacian(net, method=eqxderiv.Hutchinson(3, probe="gaussian")),
        eqxderiv.GradDiv(net, method=eqxderiv.Hutchinson()),
        eqxderiv.Divergence(net, method=eqxderiv.SparseSampling(2)),
    ]

    @eqx.filter_jit
    def run(ops, jac, key):
        # A Jacobian through a stochastic method is still exact.
        return [op(x, t, key=key) for op in ops], jac(x, t, key=key)

    jac = eqxderiv.Jacobian(net, method=eqxderiv.Hutchinson())
    outs, jac = run(ops, jac, getkey())
    for out in outs:
        assert np.all(np.isfinite(out))
    assert_close(jac, reference(("Jacobian",), net, x, t)["Jacobian"])


# Regression: these were marked stochastic and demanded a key, although a
# stochastic method computes them exactly (it estimates only divergences,
# Laplacians and gradients of divergences).
EXACT_UNDER_STOCHASTIC = ["Value", "Jacobian", "TimeDerivative", "Curl", "Advection"]


@pytest.mark.parametrize("method", STOCHASTIC)
def test_exact_quantities_of_stochastic_methods_need_no_key(method, getkey):
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    sca = JnpMLP(3, None, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (2,), 3, "flat")
    ops = {n: getattr(eqxderiv, n)(net, method=method) for n in EXACT_UNDER_STOCHASTIC}
    ops |= {n: getattr(eqxderiv, n)(sca, method=method) for n in ("Grad", "Hessian")}
    assert not any(op.stochastic for op in ops.values())
    # A fused residual of exact terms needs no key either ...
    ops["residual"] = ops["TimeDerivative"] + ops["Advection"] - net
    assert not ops["residual"].stochastic
    # ... but one with an estimated term does.
    for op in [
        ops["TimeDerivative"] + eqxderiv.Laplacian(net, method=method),
        eqxderiv.Value(net, method=method) * eqxderiv.Divergence(net, method=method),
        eqxderiv.Grad(eqxderiv.Divergence(net, method=method)),
    ]:
        assert op.stochastic
        with pytest.raises(ValueError, match="needs a PRNG key"):
            op(x, t)

    @eqx.filter_jit
    def run(ops):
        ours = {n: op(x, t) for n, op in ops.items()}
        ours["derivatives"] = eqxderiv.derivatives(
            net, x, t, (eqxderiv.Value, eqxderiv.Jacobian), method=method
        )
        return ours

    ours = run(ops)
    names = tuple(EXACT_UNDER_STOCHASTIC)
    ref = reference(names, net, x, t) | reference(("Grad", "Hessian"), sca, x, t)
    ref["residual"] = ref["TimeDerivative"] + ref["Advection"] - ref["Value"]
    ref["derivatives"] = (ref["Value"], ref["Jacobian"])
    assert_trees_close(ours, ref)


ALL_OPS = VECTOR_OPS + ["Grad", "Hessian"]


@pytest.mark.parametrize("batch", [(0,), (2, 0)])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_empty_batch(batch, chunk_size, getkey):
    # Regression: `chunk_size` with an empty batch raised a ZeroDivisionError.
    net = JnpMLP(3, 3, 8, time=True, key=getkey())
    sca = JnpMLP(3, None, 8, time=True, key=getkey())
    x, t = jnp.zeros(batch + (3,)), jnp.zeros(batch + (1,))
    ops = {
        n: getattr(eqxderiv, n)(sca if n in ("Grad", "Hessian") else net)
        for n in ALL_OPS
    }
    ops["hutchinson"] = eqxderiv.Laplacian(net, method=eqxderiv.Hutchinson(2))
    ops["fused"] = eqxderiv.TimeDerivative(net) - 0.1 * eqxderiv.Laplacian(net)
    key = getkey()

    @eqx.filter_jit
    def run(ops, x, t, key):
        ours = {n: op(x, t, key=key, chunk_size=chunk_size) for n, op in ops.items()}
        ours["derivatives"] = eqxderiv.derivatives(net, x, t, chunk_size=chunk_size)
        return ours

    ours = run(ops, x, t, key)
    # The per-sample shapes, from a batch of one.
    single = eqx.filter_eval_shape(run, ops, jnp.zeros((1, 3)), jnp.zeros((1, 1)), key)
    for n, out in ours.items():
        expected = jax.tree.map(lambda s: batch + s.shape[1:], single[n])
        assert jax.tree.map(jnp.shape, out) == expected, n
        assert jax.tree.map(jnp.size, out) == jax.tree.map(lambda _: 0, out), n


# --------------------------------------------------------------------------------
# Property test: shapes and values over batch layouts and dimensions.


@eqx.filter_jit
def _property_program(ops, x, t):
    """Every operator and its closed form, as one compiled program (at module
    level, so that examples with equal shapes share it)."""
    ours = [op(x) if t is None else op(x, t) for op in ops]
    wants = [expected((type(op).__name__,), op.field, x, t) for op in ops]
    return ours, [w[type(op).__name__] for w, op in zip(wants, ops)]


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
    per_sample = [
        (field, name, shape)
        for field, name, shape in per_sample
        if not (name == "TimeDerivative" and t is None)
        and not (name == "Curl" and d not in (2, 3))
    ]
    outs, wants = _property_program(
        [getattr(eqxderiv, name)(field) for field, name, _ in per_sample], x, t
    )
    for (_, name, shape), out, want in zip(per_sample, outs, wants):
        assert out.shape == batch + shape, (name, out.shape)
        assert_close(out, want, label=name)


def test_numpy_inputs(getkey):
    # NumPy arrays are accepted as they are (and evaluated eagerly here).
    f = closed_form("vector", 3, getkey())
    x, t = batch_inputs(getkey(), (6,), 3, "flat")
    out = eqxderiv.Divergence(f)(np.asarray(x), np.asarray(t))
    assert isinstance(out, jax.Array)
    assert_close(out, expected(("Divergence",), f, x, t)["Divergence"])


def test_operator_is_a_pytree_of_the_field(getkey):
    # The field is a normal (non-static) field: its parameters are leaves.
    net = JnpMLP(3, 3, 16, time=True, key=getkey())
    op = eqxderiv.Laplacian(net)
    assert len(jax.tree.leaves(eqx.filter(op, eqx.is_array))) == len(
        jax.tree.leaves(eqx.filter(net, eqx.is_array))
    )


@pytest.mark.parametrize("method", ["auto", "forward", "nested"])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_a_single_time_is_broadcast_to_every_point(method, batch, getkey):
    # One time for every point (an initial condition, an ODE solver's right-hand
    # side): the same numbers as that time given once per point, and per-sample
    # time shape ().
    f = JnpMLP(3, 3, 8, time=True, key=getkey())
    x = jax.random.normal(getkey(), batch + (3,))
    s = 0.37
    ops = {
        name: getattr(eqxderiv, name)(f, method=method)
        for name in ("Value", "TimeDerivative", "Laplacian", "GradDiv")
    }
    residual = ops["TimeDerivative"] - ops["Laplacian"]
    for name, op in {**ops, "residual": residual}.items():
        want = op(x, jnp.full(batch, s))
        for single in (s, jnp.asarray(s), np.float64(s)):
            got = op(x, single)
            assert got.shape == want.shape, (name, single)
            assert_close(got, want)
        got = jax.jit(lambda x, t: op(x, t))(x, jnp.asarray(s))
        assert_close(got, want)
        if batch:
            assert_close(op(x, s, chunk_size=3), want)


def test_nothing_but_a_single_time_is_broadcast(no_typecheck):
    f = lambda x, t: jnp.sin(x) * t
    x = jnp.ones((4, 3))
    for t in (jnp.ones((1,)), jnp.ones((1, 1)), jnp.ones((2,)), jnp.ones((4, 2))):
        with pytest.raises(ValueError, match=r"A single time of shape \(\) is broad"):
            eqxderiv.Value(f)(x, t)
    # With a batch of one point, shape (1,) is one time per point, as before.
    assert eqxderiv.Value(f)(x[:1], jnp.ones((1,))).shape == (1, 3)
