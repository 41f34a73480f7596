"""Composite elementwise activations (`jit` calls such as `jax.nn.silu`) taken as
one elementwise rule (`rules/composite.py`), against independent oracles in
float64: nested forward autodiff along each direction for the collapsed jet,
`jnp.trace(jax.hessian(...))` for the Laplacian and `jax.grad` of it for the
parameter gradients. Each case also checks which path the engine took, by
counting the collapsed sums over directions it paid (`JetContext.quad`)."""

import warnings

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import assert_with_parameter_gradients, check_jet  # noqa: E402
from jax import lax  # noqa: E402

import eqxderiv  # noqa: E402
from eqxderiv import FallbackWarning  # noqa: E402
from eqxderiv._engine import collapsed_jet, jet, registry  # noqa: E402
from eqxderiv._engine.rules import composite  # noqa: E402


@pytest.fixture(autouse=True)
def _warn_afresh(monkeypatch):
    # The fallback warns once per primitive and process: forget earlier warnings,
    # so that any use of it in these tests raises (filterwarnings = error).
    monkeypatch.setattr(registry, "_WARNED", set(), raising=False)


@jax.custom_jvp
def _softsign(x):
    return x / (1 + jnp.abs(x))


@_softsign.defjvp
def _softsign_jvp(primals, tangents):
    # Written out, not derived: the engine must follow this rule.
    (x,), (t,) = primals, tangents
    return _softsign(x), t / (1 + jnp.abs(x)) ** 2


@jax.custom_jvp
def _mixing(x):
    return jnp.sin(x)


@_mixing.defjvp
def _mixing_jvp(primals, tangents):
    # An elementwise primal whose rule is not diagonal: every output's derivative
    # reads every input's tangent.
    # The primal output is the function's own, so that its derivative too is the
    # rule's (nested autodiff differentiates the primal output's code otherwise).
    (x,), (t,) = primals, tangents
    return _mixing(x), jnp.cos(x) * t + 0.1 * jnp.sum(t)


def _gelu_erf(x):
    return jax.nn.gelu(x, approximate=False)


# name -> (activation, collapsed sums one application pays). One sum for a
# curved activation, none for a piecewise linear one. gelu is not a call but
# inlined operations: a run of elementwise equations of one value, which is one
# elementwise map too (`chains.py`; three sums equation by equation, two for the
# erf form); so are the other inlined ones below.
ACTIVATIONS = {
    "silu": (jax.nn.silu, 1),
    "gelu_tanh": (jax.nn.gelu, 1),
    "gelu_erf": (_gelu_erf, 1),
    "silu_inline": (lambda x: x * lax.logistic(x), 1),
    # A kink at 0 between two curved branches, and a tie at 0 (x² = sin x):
    # JAX's `max` splits the derivative there.
    "where_inline": (lambda x: jnp.where(x > 0, x * x, jnp.sin(x)), 1),
    "max_tie_inline": (lambda x: jnp.maximum(x * x, jnp.sin(x)), 1),
    "abs_tanh_inline": (lambda x: jnp.abs(x) * jnp.tanh(x) + x**3, 1),
    "softplus": (jax.nn.softplus, 1),
    "elu": (jax.nn.elu, 1),
    "sigmoid": (jax.nn.sigmoid, 1),
    "relu": (jax.nn.relu, 0),
    "leaky_relu": (jax.nn.leaky_relu, 0),
    "celu": (jax.nn.celu, 1),
    "selu": (jax.nn.selu, 1),
    "mish": (jax.nn.mish, 1),
    "relu6": (jax.nn.relu6, 0),
    "hard_tanh": (jax.nn.hard_tanh, 0),
    "clip": (jax.jit(lambda x: jnp.clip(2 * x, -1.0, 1.0)), 0),
    # Piecewise quadratic: its first derivative is not piecewise constant.
    "where_square": (jax.jit(lambda x: jnp.where(x > 0, x * x, -x)), 1),
    # `abs` spelled with `sign`, whose derivative JAX defines as zero.
    "sign_times": (jax.jit(lambda x: jnp.sign(x) * x), 0),
    "softsign_custom": (_softsign, 1),
    "softsign_custom_jit": (jax.jit(lambda x: 2 * _softsign(x) + 1), 1),
    # Calls that are not elementwise keep the interpreter's path.
    "softmax": (jax.nn.softmax, None),
    "standardize": (jax.jit(lambda x: (x - jnp.mean(x)) * jnp.tanh(x)), None),
}

# Generic points, 0, both sides of the kinks at 0 (and relu6's at 6, hard_tanh's
# at ±1, the clip's at ±0.5), and large |x| where softplus must not overflow.
POINTS = np.array(
    [
        [0.3, -1.2, 0.7, 2.1, -0.4, 1.5],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1e-9, -1e-9, 6.0, 1.0, -1.0, 0.5],
        [40.0, -40.0, 700.0, -700.0, 3.0, -3.0],
    ]
)
_RNG = np.random.default_rng(0)
V = jnp.asarray(_RNG.standard_normal((3, 6)))  # K = 3 random directions
W = jnp.asarray(_RNG.uniform(0.5, 1.5, size=3))  # and positive weights


def _count_quads(monkeypatch, fn, x):
    """How many collapsed sums over directions the engine pays for `fn` at `x`,
    and how many times the composite path ran."""
    counts = {"quad": 0, "composite": 0}
    quad, elementwise_jet = jet.JetContext.quad, composite.elementwise_jet

    def counting_quad(self, a, b):
        counts["quad"] += 1
        return quad(self, a, b)

    def counting_jet(*args, **kwargs):
        counts["composite"] += 1
        return elementwise_jet(*args, **kwargs)

    monkeypatch.setattr(jet.JetContext, "quad", counting_quad)
    monkeypatch.setattr(composite, "elementwise_jet", counting_jet)
    jax.make_jaxpr(lambda x: collapsed_jet(fn, (x,), (V,), W))(x)
    monkeypatch.undo()
    return counts


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_collapsed_jet(name, monkeypatch):
    fn, quads = ACTIVATIONS[name]
    for x in POINTS:
        x = jnp.asarray(x)
        check_jet(fn, (x,), (V,), W, rtol=1e-9, atol=1e-12)
        check_jet(fn, (x,), (jnp.eye(6),), jnp.ones(6), rtol=1e-9, atol=1e-12)
    counts = _count_quads(monkeypatch, fn, jnp.asarray(POINTS[0]))
    if quads is not None:
        assert counts["quad"] == quads, counts
    is_call = jax.make_jaxpr(fn)(POINTS[0]).jaxpr.eqns[0].primitive.name == "jit"
    assert (counts["composite"] == 1) == (is_call and quads is not None), counts


def test_non_diagonal_rule_is_not_taken(monkeypatch):
    # The primal of `_mixing` is elementwise, its rule is not: inside a jit the
    # call must not take the composite path, and the jet must still be the one
    # nested autodiff gives with the rule (through the exact fallback).
    fn = jax.jit(lambda x: 2 * _mixing(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        for x in POINTS[:2]:
            check_jet(fn, (jnp.asarray(x),), (V,), W)
        counts = _count_quads(monkeypatch, fn, jnp.asarray(POINTS[0]))
    assert counts["composite"] == 0, counts


def _mlp(activation, d=3, width=5, zero_bias=False, seed=0):
    rng = np.random.default_rng(seed)
    scale = 0.0 if zero_bias else 1.0
    params = {
        "W1": jnp.asarray(rng.standard_normal((width, d))),
        "b1": jnp.asarray(scale * rng.standard_normal(width)),
        "W2": jnp.asarray(rng.standard_normal((width, width)) / 2),
        "b2": jnp.asarray(scale * rng.standard_normal(width)),
        "w3": jnp.asarray(rng.standard_normal(width)),
    }

    def u(p, x):
        h = activation(p["W1"] @ x + p["b1"])
        h = activation(p["W2"] @ h + p["b2"])
        return p["w3"] @ h

    return u, params


# Zero biases at x = 0: every pre-activation is exactly 0, the kink.
MLP_POINTS = np.array([[0.0, 0.0, 0.0], [0.5, -0.3, 0.8], [-1.1, 0.4, 0.2]])
MLP_CASES = [n for n, (_, q) in ACTIVATIONS.items() if q is not None]


@pytest.mark.parametrize("zero_bias", [False, True])
@pytest.mark.parametrize("name", MLP_CASES)
def test_laplacian_and_parameter_gradients(name, zero_bias, no_typecheck):
    u, params = _mlp(ACTIVATIONS[name][0], zero_bias=zero_bias)
    x = jnp.asarray(MLP_POINTS)

    def ours(p):
        return eqxderiv.Laplacian(lambda y: u(p, y))(x)

    def oracle(p):
        return jax.vmap(lambda y: jnp.trace(jax.hessian(lambda z: u(p, z))(y)))(x)

    assert_with_parameter_gradients(ours, oracle, params)
