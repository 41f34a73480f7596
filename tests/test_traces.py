"""How often an operator call runs the Python code of the user's field.

Tracing the field is the trace-time cost of every call under `jit`: the output
structure is found once per operator level (one trace for validation) and the
method works on the one traced program (one more), so a named derivative traces
its field twice, a derivative of a derivative four times, and a fused sum of
named derivatives of one field twice in all.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from helpers import JnpMLP, batch_inputs

import eqxderiv


class Counted(eqx.Module):
    """A field that counts the runs of its Python body, i.e. its traces."""

    field: JnpMLP
    calls: list = eqx.field(static=True)

    def __call__(self, x, t):
        self.calls[0] += 1
        return self.field(x, t)


def _traces(build, d: int, key, scalar: bool = False) -> int:
    k1, k2 = jax.random.split(key)
    x, t = batch_inputs(k1, (5,), d, "flat")
    calls = [0]
    u = Counted(JnpMLP(d, None if scalar else d, 8, time=True, key=k2), calls)
    jax.jit(lambda x, t: build(u)(x, t))(x, t)
    return calls[0]


METHODS = ["auto", "forward", "nested"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "name", ["Laplacian", "Divergence", "GradDiv", "Jacobian", "TimeDerivative"]
)
def test_a_named_derivative_traces_its_field_twice(name, method, getkey):
    op = getattr(eqxderiv, name)
    assert _traces(lambda u: op(u, method=method), 3, getkey()) <= 2


@pytest.mark.parametrize("method", METHODS)
def test_a_derivative_of_a_derivative_traces_four_times(method, getkey):
    def build(u):
        return eqxderiv.Grad(eqxderiv.Divergence(u, method=method), method=method)

    assert _traces(build, 3, getkey()) <= 4


def test_a_fused_residual_traces_its_field_twice(getkey):
    def build(u):
        return (
            eqxderiv.TimeDerivative(u)
            - 0.5 * eqxderiv.Laplacian(u)
            + eqxderiv.GradDiv(u)
            + eqxderiv.Advection(u)
            - u
        )

    assert _traces(build, 3, getkey()) <= 2


def test_derivatives_traces_its_field_twice(getkey):
    x, t = batch_inputs(getkey(), (5,), 3, "flat")
    calls = [0]
    u = Counted(JnpMLP(3, 3, 8, time=True, key=getkey()), calls)
    jax.jit(lambda x, t: eqxderiv.derivatives(u, x, t))(x, t)
    assert calls[0] <= 2


def test_no_retracing_on_a_second_call(getkey):
    x, t = batch_inputs(getkey(), (5,), 3, "flat")
    u = JnpMLP(3, 3, 8, time=True, key=getkey())
    op = eqxderiv.Laplacian(u) + eqxderiv.GradDiv(u)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def f(op, x, t):
        return op(x, t)

    first = f(op, x, t)
    second = f(op, x + 1.0, t)
    assert first.shape == second.shape == (5, 3)
    assert not jnp.allclose(first, second)


def test_an_eager_call_compiles_once_per_shape(getkey):
    # Outside any `jit`, an operator compiles its batched work once for the
    # operator's structure and the input shapes, and reuses it.
    x, t = batch_inputs(getkey(), (5,), 3, "flat")
    calls = [0]
    u = Counted(JnpMLP(3, 3, 8, time=True, key=getkey()), calls)
    op = eqxderiv.Laplacian(u) - eqxderiv.TimeDerivative(u)
    first = op(x, t)
    traced = calls[0]
    assert traced <= 2
    second = op(x + 1.0, t)
    assert calls[0] == traced  # no new trace for new values
    assert not jnp.allclose(first, second)
    op(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
    assert calls[0] == 2 * traced  # a new batch size compiles anew
