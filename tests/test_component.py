"""`eqxderiv.Component`: outputs of a vector field as a field of their own, whose
named derivatives fuse into one propagation of the whole field.

Every operator is checked against brute-force nested autodiff (helpers.brute) of
`lambda x, t: net(x, t)[idx]`, in float64, for int, slice and sequence indices
(reordered, negative); then the Navier–Stokes residual on a network returning
`(u, v, p)`: its value, its cost (one propagation, two traces of the network) and
its parameter gradients; then the errors; then the JAX transformations.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    SCALAR_OPS,
    VECTOR_OPS,
    JnpMLP,
    assert_close,
    assert_dicts_close,
    assert_trees_close,
    batch_inputs,
    brute,
    evaluate,
    separate_evaluations,
)

import eqxderiv


METHODS = ["auto", "forward", "nested"]

# The indices tried on a network with `d` inputs and `d + 1` outputs: ints
# (negative too), slices (with a step too) and sequences (reordered, negative, a
# list). A component with `d` outputs is square, so every vector operator applies.
INDICES = {
    2: [2, -1, slice(0, 2), (2, 0), (1, -3), slice(1, 3), [0, 2]],
    3: [0, -2, slice(1, 4), (3, 0, 2), (-1, -2, -3), slice(0, 4, 2), [2]],
}
# The operators exact for every method (a stochastic one estimates only the
# divergence, the Laplacian and the gradient of the divergence, see
# `eqxderiv._quantity.ESTIMATED`).
EXACT_EVERYWHERE = {"Value", "Jacobian", "TimeDerivative", "Grad", "Hessian", "Curl"}
EXACT_EVERYWHERE |= {"Advection"}


def _positions(index, m: int) -> list[int]:
    """The outputs `index` selects among `m`."""
    return [int(i) for i in np.reshape(_select(np.arange(m), index), -1)]


def _names(index, d: int) -> list[str]:
    """The named operators that apply to the component `index` of a network with
    `d` inputs and `d + 1` outputs."""
    if isinstance(index, int):
        return SCALAR_OPS
    if len(_positions(index, d + 1)) == d:
        return VECTOR_OPS
    return ["Value", "Jacobian", "TimeDerivative", "Laplacian"]


def _select(y, index):
    """`y[index]` for one sample's output, a sequence read as a list of positions
    (as `Component` reads it), not as a multi-axis index."""
    if isinstance(index, (int, slice)):
        return y[index]
    return y[np.asarray(index)]


def _label(index, name: str) -> str:
    return f"{index!r} {name}"


@functools.cache
def _setting(d: int):
    """A network with `d` inputs (and a time) and `d + 1` outputs, inputs, and
    the brute-force reference of every operator on every component, computed once
    for all the methods."""
    net = JnpMLP(d, d + 1, 12, time=True, key=jax.random.key(10 + d))
    x, t = batch_inputs(jax.random.key(20 + d), (5,), d, "flat")

    @jax.jit
    def oracle(x, t):
        out = {}
        for index in INDICES[d]:
            f = lambda x_, t_, index=index: _select(net(x_, t_), index)
            for name in _names(index, d):
                out[_label(index, name)] = brute(name, f, x, t)
        return out

    return net, x, t, jax.tree.map(np.asarray, oracle(x, t))


def _operators(net, d: int, method, names=None) -> dict:
    ops = {}
    for index in INDICES[d]:
        c = eqxderiv.Component(net, index)
        for name in _names(index, d):
            if names is None or name in names:
                ops[_label(index, name)] = getattr(eqxderiv, name)(c, method=method)
    return ops


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("d", [2, 3])
def test_every_operator_on_every_kind_of_index(d, method):
    net, x, t, want = _setting(d)
    ops = _operators(net, d, method)
    assert_dicts_close(evaluate(ops, x, t), want, rtol=1e-10, atol=1e-10)
    # Each is one propagation of `net` (`GradDiv` one of the component's own).
    for label, op in ops.items():
        assert separate_evaluations(op, x, t) == 1, label


@pytest.mark.parametrize(
    "method",
    [eqxderiv.Hutchinson(num_probes=3), eqxderiv.SparseSampling(num_samples=2)],
    ids=["hutchinson", "sparse"],
)
@pytest.mark.parametrize("d", [2, 3])
def test_stochastic_methods_are_exact_where_they_must_be(d, method):
    # The value, Jacobian, time derivative, Hessian (and what is formed from
    # them) are computed exactly by a stochastic method, and need no key.
    net, x, t, want = _setting(d)
    ops = _operators(net, d, method, EXACT_EVERYWHERE)
    for label, op in ops.items():
        assert not op.stochastic, label
    out = evaluate(ops, x, t)
    assert_dicts_close(out, {k: want[k] for k in out}, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "method",
    [eqxderiv.Hutchinson(num_probes=3), eqxderiv.SparseSampling(num_samples=2)],
    ids=["hutchinson", "sparse"],
)
def test_a_stochastic_laplacian_of_a_component_is_the_whole_estimate_restricted(
    method,
):
    # The estimated Laplacian needs a key, and with the same key it is exactly
    # the components of the whole field's estimate: the same probes.
    net, x, t, _ = _setting(3)
    key = jax.random.key(5)
    ops = {"whole": eqxderiv.Laplacian(net, method=method)}
    for index in [1, (3, 0, 2), slice(1, 4)]:
        ops[repr(index)] = eqxderiv.Laplacian(
            eqxderiv.Component(net, index), method=method
        )
    for op in ops.values():
        assert op.stochastic

    @eqx.filter_jit
    def run(ops, x, t, key):
        return {k: op(x, t, key=key) for k, op in ops.items()}

    out = run(ops, x, t, key)
    whole = np.asarray(out.pop("whole"))
    for index in [1, (3, 0, 2), slice(1, 4)]:
        assert_close(out[repr(index)], _select(whole.T, index).T, 1e-12, 1e-12)


# --------------------------------------------------------------------------------
# Fusion.


def test_what_fuses(getkey):
    net = JnpMLP(2, 3, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (4,), 2, "flat")
    vel, p = eqxderiv.Component(net, slice(0, 2)), eqxderiv.Component(net, 2)
    u, v = eqxderiv.Component(net, 0), eqxderiv.Component(net, 1)
    one = {
        # Components of the same network object (even different Component
        # objects, scalar and vector ones) share one propagation.
        "vel, p": eqxderiv.Laplacian(vel) + eqxderiv.Grad(p),
        "u, v": eqxderiv.TimeDerivative(u) - eqxderiv.Laplacian(v) + u,
        "plain component": eqxderiv.Advection(vel) + vel,
        "GradDiv alone": eqxderiv.GradDiv(vel),
        "GradDiv twice": eqxderiv.GradDiv(vel) + 2 * eqxderiv.GradDiv(vel),
    }
    two = {
        # `GradDiv` of a component is its own propagation.
        "GradDiv + Laplacian": eqxderiv.GradDiv(vel) + eqxderiv.Laplacian(vel),
        # Different methods, or an equal copy of the network, do not fuse.
        "methods": eqxderiv.Laplacian(vel) + eqxderiv.Grad(p, method="nested"),
        "copy": eqxderiv.Laplacian(vel)
        + eqxderiv.Grad(eqxderiv.Component(jax.tree.map(lambda a: a, net), 2)),
    }
    for label, op in one.items():
        assert separate_evaluations(op, x, t) == 1, label
    for label, op in two.items():
        assert separate_evaluations(op, x, t) == 2, label

    def f(index):
        return lambda x_, t_: _select(net(x_, t_), index)

    @jax.jit
    def oracle(x, t):
        lap = brute("Laplacian", f(slice(0, 2)), x, t)
        graddiv = brute("GradDiv", f(slice(0, 2)), x, t)
        return {
            "vel, p": lap + brute("Grad", f(2), x, t),
            "u, v": brute("TimeDerivative", f(0), x, t)
            - brute("Laplacian", f(1), x, t)
            + brute("Value", f(0), x, t),
            "plain component": brute("Advection", f(slice(0, 2)), x, t)
            + brute("Value", f(slice(0, 2)), x, t),
            "GradDiv alone": graddiv,
            "GradDiv twice": 3 * graddiv,
            "GradDiv + Laplacian": graddiv + lap,
            "methods": lap + brute("Grad", f(2), x, t),
            "copy": lap + brute("Grad", f(2), x, t),
        }

    assert_dicts_close(evaluate(one | two, x, t), oracle(x, t))


def test_components_fuse_with_the_whole_field(getkey):
    # Terms on the network itself and on its components, in one propagation.
    net = JnpMLP(3, 3, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (4,), 3, "column")
    a, b = eqxderiv.Component(net, (2, 0, 1)), eqxderiv.Component(net, [1, 2, 0])
    op = eqxderiv.Curl(net) + eqxderiv.Laplacian(a) - net + eqxderiv.Advection(b)
    assert separate_evaluations(op, x, t) == 1
    fa = lambda x_, t_: net(x_, t_)[np.array([2, 0, 1])]
    fb = lambda x_, t_: net(x_, t_)[np.array([1, 2, 0])]

    @jax.jit
    def oracle(x, t):
        return (
            brute("Curl", net, x, t)
            + brute("Laplacian", fa, x, t)
            - brute("Value", net, x, t)
            + brute("Advection", fb, x, t)
        )

    assert_close(evaluate({"op": op}, x, t)["op"], oracle(x, t))


def test_a_component_of_an_operator(getkey):
    # An operator is a field: a component of the Laplacian of `net`, and the time
    # derivative of that component.
    net = JnpMLP(2, 3, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (4,), 2, "flat")
    lap = eqxderiv.Laplacian(net)
    c = eqxderiv.Component(lap, (2, 0))
    ops = {"value": eqxderiv.Value(c), "dt": eqxderiv.TimeDerivative(c)}
    f = lambda x_, t_: jnp.trace(jax.hessian(net)(x_, t_), axis1=-2, axis2=-1)[
        np.array([2, 0])
    ]
    want = jax.jit(
        lambda x, t: {
            "value": brute("Value", f, x, t),
            "dt": brute("TimeDerivative", f, x, t),
        }
    )
    assert_dicts_close(evaluate(ops, x, t), want(x, t))


# --------------------------------------------------------------------------------
# The Navier–Stokes residual.

NU = 0.05


def _navier_stokes(net, method: eqxderiv.MethodName = "auto"):
    vel = eqxderiv.Component(net, slice(0, 2))
    p = eqxderiv.Component(net, 2)
    momentum = (
        eqxderiv.TimeDerivative(vel, method=method)
        + eqxderiv.Advection(vel, method=method)
        + eqxderiv.Grad(p, method=method)
        - NU * eqxderiv.Laplacian(vel, method=method)
    )
    return momentum, eqxderiv.Divergence(vel, method=method)


def _navier_stokes_brute(net, x, t):
    """The momentum and continuity residuals by nested autodiff, written out."""

    def one(x, t):
        vel = lambda y, s: net(y, s)[:2]
        J = jax.jacfwd(vel)(x, t)
        dt = jax.jacfwd(vel, argnums=1)(x, t)
        grad_p = jax.grad(lambda y: net(y, t)[2])(x)
        lap = jnp.trace(jax.hessian(vel)(x, t), axis1=-2, axis2=-1)
        momentum = dt + J @ vel(x, t) + grad_p - NU * lap
        return momentum, jnp.trace(J)

    return jax.vmap(one)(x, t)


@pytest.mark.parametrize("method", METHODS)
def test_navier_stokes_residual(method, getkey):
    net = JnpMLP(2, 3, 16, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (7,), 2, "flat")
    momentum, continuity = _navier_stokes(net, method)
    # One propagation of the network for the whole momentum residual.
    assert separate_evaluations(momentum, x, t) == 1
    assert separate_evaluations(continuity, x, t) == 1
    out = evaluate({"momentum": momentum, "continuity": continuity}, x, t)
    want_m, want_c = jax.jit(_navier_stokes_brute)(net, x, t)
    assert_dicts_close(out, {"momentum": want_m, "continuity": want_c})


class Counted(eqx.Module):
    """A field that counts the runs of its Python body, i.e. its traces."""

    field: JnpMLP
    calls: list = eqx.field(static=True)

    def __call__(self, x, t):
        self.calls[0] += 1
        return self.field(x, t)


@pytest.mark.parametrize("method", METHODS)
def test_navier_stokes_traces_the_network_twice(method, getkey):
    # As a fused residual of the network itself does (test_traces.py): once for
    # the output structure, once for the method's program.
    calls = [0]
    net = Counted(JnpMLP(2, 3, 8, time=True, key=getkey()), calls)
    x, t = batch_inputs(getkey(), (5,), 2, "flat")
    momentum, continuity = _navier_stokes(net, method)
    jax.jit(lambda x, t: momentum(x, t))(x, t)
    assert 1 <= calls[0] <= 2
    calls[0] = 0
    jax.jit(lambda x, t: continuity(x, t))(x, t)
    assert 1 <= calls[0] <= 2


@pytest.mark.parametrize("method", METHODS)
def test_navier_stokes_parameter_gradients(method, getkey):
    net = JnpMLP(2, 3, 12, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (6,), 2, "column")

    def loss(net):
        momentum, continuity = _navier_stokes(net, method)
        return jnp.mean(momentum(x, t) ** 2) + jnp.mean(continuity(x, t) ** 2)

    def brute_loss(net):
        momentum, continuity = _navier_stokes_brute(net, x, t[:, 0])
        return jnp.mean(momentum**2) + jnp.mean(continuity**2)

    @eqx.filter_jit
    def run(net):
        return (
            eqx.filter_value_and_grad(loss)(net),
            eqx.filter_value_and_grad(brute_loss)(net),
        )

    (value, grads), (want_value, want_grads) = run(net)
    assert_close(value, want_value)
    assert float(value) > 0
    assert_trees_close(grads, want_grads)


# --------------------------------------------------------------------------------
# Errors.

NET = JnpMLP(2, 3, 4, time=False, key=jax.random.key(0))
X = jnp.ones((4, 2))


@pytest.mark.parametrize(
    "bad, exc, message",
    [
        (True, TypeError, r"`index` must be an int.*got True"),
        (np.bool_(True), TypeError, r"`index` must be an int.*got np.True_"),
        ("0", TypeError, r"`index` must be an int \(one output\), a slice.*got '0'"),
        (1.0, TypeError, r"`index` must be an int \(one output\).*got 1.0"),
        ((), TypeError, r"`index` must be .* a non-empty sequence of ints.*got \(\)"),
        ([], TypeError, r"non-empty sequence of ints.*got \[\]"),
        ((0, True), TypeError, r"sequence of ints.*got \(0, True\)"),
        ((0, 1.0), TypeError, r"sequence of ints.*got \(0, 1.0\)"),
        (slice(0, None), ValueError, r"`index` as a slice needs an explicit"),
        (slice(None), ValueError, r"`index` as a slice needs an explicit"),
        (slice(-2, None), ValueError, r"`index` as a slice needs an explicit"),
        (slice(0, -1), ValueError, r"non-negative stop .* got slice\(0, -1, None\)"),
        (slice(-1, 2), ValueError, r"non-negative stop \(and start\)"),
    ],
)
def test_bad_index(bad, exc, message):
    with pytest.raises(exc, match=message):
        eqxderiv.Component(NET, bad)


@pytest.mark.parametrize(
    "bad, exc, message",
    [
        (slice(1, 1), ValueError, r"`index` slice\(1, 1, None\) selects no outputs"),
        (slice(2, 0), ValueError, r"`index` slice\(2, 0, None\) selects no outputs"),
        (slice(0, 2, 0), ValueError, r"`index` as a slice needs a nonzero step"),
        (slice(0, 2.0), TypeError, r"`index` as a slice needs int start, stop"),
        (slice(None, 0, -1), ValueError, r"`index` as a slice needs an explicit"),
        (slice(3, -1, -1), ValueError, r"`index` as a slice needs an explicit"),
    ],
)
def test_bad_slices(bad, exc, message):
    # Refused when the Component is built, like the empty tuple: an empty slice
    # used to give an empty Component, whose call failed inside JAX indexing.
    with pytest.raises(exc, match=message):
        eqxderiv.Component(NET, bad)


def test_backwards_slices_select_as_numpy_does():
    # `slice(2, 0, -1)` used to select nothing (its bounds were clipped to a
    # length of 0).
    for index in (slice(2, 0, -1), slice(2, None, -1), slice(2, None, -2)):
        assert eqxderiv.Component(NET, index).positions == tuple(
            _positions(index, 3)
        ), index
    x = jnp.asarray([[0.3, -0.2]])
    assert_close(
        eqxderiv.Value(eqxderiv.Component(NET, slice(2, None, -1)))(x),
        NET(x[0])[::-1][None],
    )


@pytest.mark.parametrize("index", [3, -4, (0, 3), slice(1, 4), [-4, 0]])
def test_index_out_of_range(index):
    msg = r"Component index .* is out of range for a field with 3 outputs"
    c = eqxderiv.Component(NET, index)
    # Through a fused propagation of the network, and through the component's own
    # (GradDiv), and called directly.
    for op in (eqxderiv.Value(c), eqxderiv.Laplacian(c)):
        with pytest.raises(ValueError, match=msg):
            op(X)
    if not isinstance(index, int):
        with pytest.raises(ValueError, match=msg):
            eqxderiv.GradDiv(c)(X)
    with pytest.raises(ValueError, match=msg):
        c(X[0])


@pytest.mark.parametrize(
    "field, shape",
    [(lambda x: jnp.sum(x), r"\(\)"), (lambda x: jnp.outer(x, x), r"\(2, 2\)")],
    ids=["scalar", "matrix"],
)
def test_field_must_return_a_vector(field, shape):
    msg = (
        r"A Component's `field` must return a vector, output shape \(m,\); got "
        rf"output shape {shape}"
    )
    c = eqxderiv.Component(field, 0)
    for op in (eqxderiv.Value(c), eqxderiv.Jacobian(c), eqxderiv.GradDiv(c)):
        with pytest.raises(ValueError, match=msg):
            op(X)


def test_operators_check_the_components_shape():
    scalar, pair = eqxderiv.Component(NET, 0), eqxderiv.Component(NET, (0, 2))
    square = r"needs a vector field with as many outputs as inputs"
    for cls in (eqxderiv.Divergence, eqxderiv.Advection, eqxderiv.GradDiv):
        with pytest.raises(ValueError, match=rf"{cls.__name__} {square}.*shape \(\)"):
            cls(scalar)(X)
    with pytest.raises(ValueError, match=rf"Curl {square}.*shape \(\)"):
        eqxderiv.Curl(scalar)(X)
    for cls in (eqxderiv.Grad, eqxderiv.Hessian):
        with pytest.raises(
            ValueError, match=rf"{cls.__name__} needs a scalar field.*shape \(2,\)"
        ):
            cls(pair)(X)
    with pytest.raises(ValueError, match=r"Divergence: \(\), Laplacian: \(2,\)"):
        (eqxderiv.Divergence(pair) + eqxderiv.Laplacian(pair))(X)


def test_stochastic_operator_as_field():
    lap = eqxderiv.Laplacian(NET, method="hutchinson")
    msg = r"`field` of a Component must not be a stochastic operator"
    with pytest.raises(TypeError, match=msg):
        eqxderiv.Component(lap, 0)


def test_non_callable_field(no_typecheck):
    msg = r"`field` must be callable as `field\(x\)` or `field\(x, t\)`"
    with pytest.raises(TypeError, match=msg):
        eqxderiv.Component(3, 0)  # pyright: ignore


# --------------------------------------------------------------------------------
# JAX transformations.


def test_vmap_and_grad_with_respect_to_x(getkey):
    net = JnpMLP(2, 3, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (3, 4), 2, "flat")
    vel, p = eqxderiv.Component(net, slice(0, 2)), eqxderiv.Component(net, 2)
    momentum, _ = _navier_stokes(net)

    @jax.jit
    def run(x, t):
        mapped = jax.vmap(momentum)(x, t)
        # The gradient of the pressure, by jax.grad through the Value operator
        # and by the Grad operator; jax.jacfwd through the divergence.
        by_grad = jax.vmap(jax.grad(lambda x_, t_: eqxderiv.Value(p)(x_, t_)))(
            x.reshape(-1, 2), t.reshape(-1)
        )
        div = lambda y: eqxderiv.Divergence(vel)(y, t[0, 0])
        return mapped, by_grad, eqxderiv.Grad(p)(x, t), jax.jacfwd(div)(x[0, 0])

    mapped, by_grad, grad_p, ddiv = run(x, t)
    want_m, _ = _navier_stokes_brute(net, x.reshape(-1, 2), t.reshape(-1))
    assert_close(mapped, want_m.reshape(3, 4, 2))
    assert_close(by_grad, grad_p.reshape(-1, 2))
    vel_fn = lambda y, s: net(y, s)[:2]
    gd = jax.jacfwd(lambda y: jnp.trace(jax.jacfwd(vel_fn)(y, t[0, 0])))(x[0, 0])
    assert_close(ddiv, gd)


def test_no_retracing_on_a_second_call(getkey):
    net = JnpMLP(2, 3, 8, time=True, key=getkey())
    x, t = batch_inputs(getkey(), (5,), 2, "flat")

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def loss(net, x, t):
        # The components are built inside, from the network being traced.
        momentum, continuity = _navier_stokes(net)
        return jnp.mean(momentum(x, t) ** 2) + jnp.mean(continuity(x, t) ** 2)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def apply(ops, x, t):
        # The operators built outside and passed in: their components (static
        # indices) hash the same on every call.
        return {k: op(x, t) for k, op in ops.items()}

    first = loss(net, x, t)
    net2 = jax.tree.map(lambda a: 1.1 * a if eqx.is_array(a) else a, net)
    second = loss(net2, x + 1.0, t)
    assert float(first) != float(second)
    for n in (net, net2):
        momentum, continuity = _navier_stokes(n)
        out = apply({"momentum": momentum, "continuity": continuity}, x, t)
        assert out["momentum"].shape == (5, 2) and out["continuity"].shape == (5,)
