"""Custom derivative rules whose primal output is computed by other code than the
function itself, composed with curved maps: every method gives nested autodiff's
numbers in float64.

Nested autodiff differentiates, at second order, the code a rule computes its
primal output with. A straight-through estimator (`round(x)` with the identity
as rule), a custom VJP that rescales its cotangent, or a rule that adds a term
the primal lacks, then make the second derivative of `tanh(c(x))` differ from
the chain rule applied with the rule's tangent twice, which is what a collapsed
propagation computes. Such fields are found when traced (`collapsible`) and
their second derivatives computed by nested `jax.jvp`s, with a warning; rules
that compute their primal by calling the function itself (`defjvps`, the
`jax.nn` functions) keep the collapsed path.
"""

import itertools
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, normal, uncached

import eqxderiv
import eqxderiv._engine.registry as registry
from eqxderiv._engine.program import collapsible


D = 3


@jax.custom_jvp
def straight_through(x):
    return jnp.round(x)


@straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    return jnp.round(primals[0]), tangents[0]


@jax.custom_vjp
def half_gradient(x):
    return jnp.sin(x)


def _half_fwd(x):
    return jnp.sin(x), x


def _half_bwd(x, g):
    return (0.5 * jnp.cos(x) * g,)


half_gradient.defvjp(_half_fwd, _half_bwd)


@jax.custom_jvp
def extra_term(x):
    return jnp.tanh(x)


@extra_term.defjvp
def _extra_term_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return jnp.tanh(x), (1 - jnp.tanh(x) ** 2) * dx + 0.3 * jnp.roll(dx, 1)


@jax.custom_jvp
def calls_itself(x):
    return jnp.sin(x)


@calls_itself.defjvp
def _calls_itself_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    # A rule that is not the primal's derivative, but computes the primal output
    # by calling the function: nested autodiff then applies the rule again.
    return calls_itself(x), 0.5 * jnp.cos(x) * dx


INCONSISTENT = {
    "straight_through": straight_through,
    "half_gradient": half_gradient,
    "extra_term": extra_term,
}
CONSISTENT = {
    "calls_itself": calls_itself,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "sinc": jnp.sinc,
}


class Field(eqx.Module):
    a: jax.Array
    b: jax.Array
    custom: Callable = eqx.field(static=True)

    def __call__(self, x, t):
        z = self.custom(self.a @ x * 1.7 + t)
        return self.b @ jnp.tanh(z) + jnp.sin(x)


def _field(custom, key):
    k1, k2 = jax.random.split(key)
    return Field(normal(k1, (5, D)), normal(k2, (D, 5)), custom)


def _reference(field, x, t):
    """Forward over reverse mode, as `jax.hessian` (a `custom_vjp` function has no
    forward mode in JAX), per sample: Laplacian, grad div, Jacobian."""
    jac = jax.jacrev(field, argnums=0)
    lap = jax.vmap(lambda a, s: jnp.trace(jax.jacfwd(jac)(a, s), axis1=-2, axis2=-1))(
        x, t
    )
    graddiv = jax.vmap(jax.jacfwd(lambda a, s: jnp.trace(jac(a, s))))(x, t)
    return lap, graddiv, jax.vmap(jac)(x, t)


def _inputs(key):
    x = 0.8 * normal(key, (4, D))
    return x, normal(jax.random.fold_in(key, 1), (4, 1))


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(registry, "_WARNED", set())


@pytest.mark.parametrize("name", list(INCONSISTENT))
@pytest.mark.parametrize("method", ["taylor", "forward", "nested"])
def test_inconsistent_rules_give_nested_numbers(name, method, getkey, fresh_warnings):
    field = _field(INCONSISTENT[name], getkey())
    x, t = _inputs(getkey())
    lap_ref, graddiv_ref, jac_ref = _reference(field, x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", eqxderiv.FallbackWarning)
        lap = eqxderiv.Laplacian(field, method=method)(x, t)
        graddiv = eqxderiv.GradDiv(field, method=method)(x, t)
        jac = eqxderiv.Jacobian(field, method=method)(x, t)
        fused = (
            eqxderiv.Laplacian(field, method=method)
            + eqxderiv.GradDiv(field, method=method)
        )(x, t)
    assert_close(lap, lap_ref, rtol=1e-10, atol=1e-10, label="laplacian")
    assert_close(graddiv, graddiv_ref, rtol=1e-10, atol=1e-10, label="graddiv")
    assert_close(jac, jac_ref, rtol=1e-10, atol=1e-10, label="jacobian")
    assert_close(fused, lap_ref + graddiv_ref, rtol=1e-10, atol=1e-10, label="sum")


@pytest.mark.parametrize("name", list(INCONSISTENT))
def test_inconsistent_rules_are_found_and_warned(name, getkey, fresh_warnings):
    custom = INCONSISTENT[name]
    assert not collapsible(jax.make_jaxpr(custom)(jnp.ones(5)).jaxpr)
    field = _field(custom, getkey())
    x, t = _inputs(getkey())
    with uncached(), pytest.warns(eqxderiv.FallbackWarning, match="primal output"):
        eqxderiv.Laplacian(field)(x, t)


@pytest.mark.parametrize("name", list(CONSISTENT))
def test_rules_calling_themselves_stay_collapsed(name, getkey, fresh_warnings):
    custom = CONSISTENT[name]
    assert collapsible(jax.make_jaxpr(custom)(jnp.ones(5)).jaxpr)
    field = _field(custom, getkey())
    x, t = _inputs(getkey())
    lap_ref, graddiv_ref, _ = _reference(field, x, t)
    with uncached():  # any FallbackWarning is an error (pyproject.toml)
        lap = eqxderiv.Laplacian(field)(x, t)
        graddiv = eqxderiv.GradDiv(field)(x, t)
    assert_close(lap, lap_ref, rtol=1e-10, atol=1e-10, label="laplacian")
    assert_close(graddiv, graddiv_ref, rtol=1e-10, atol=1e-10, label="graddiv")


def test_parameter_gradients_through_an_inconsistent_rule(getkey, fresh_warnings):
    field = _field(straight_through, getkey())
    x, t = _inputs(getkey())

    def loss(f):
        return jnp.sum(eqxderiv.Laplacian(f)(x, t) ** 2)

    def loss_ref(f):
        return jnp.sum(_reference(f, x, t)[0] ** 2)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", eqxderiv.FallbackWarning)
        got = eqx.filter_grad(loss)(field)
    want = eqx.filter_grad(loss_ref)(field)
    assert_close(got.a, want.a, rtol=1e-9, atol=1e-10)
    assert_close(got.b, want.b, rtol=1e-9, atol=1e-10)


@jax.custom_jvp
def _doubled_sin(x):
    return jnp.sin(x)


@_doubled_sin.defjvp
def _doubled_sin_jvp(primals, tangents):
    # A rule that is not the derivative of its primal: nested autodiff's mixed
    # partials then depend on the order of differentiation.
    (x,), (dx,) = primals, tangents
    return jnp.sin(x), 2 * jnp.cos(x) * dx


@pytest.mark.filterwarnings("ignore::eqxderiv.FallbackWarning")
@pytest.mark.parametrize("method", ["taylor", "forward"])
def test_mixed_partial_is_the_mean_over_orders_of_differentiation(method):
    u = lambda x: _doubled_sin(x[0] * x[1]) * x[1]  # noqa: E731
    x = jnp.array([0.3, 0.7])
    d3 = jax.jacfwd(jax.jacfwd(jax.jacfwd(u)))(x)
    orders = sorted(set(itertools.permutations((0, 1, 1))))
    entries = [float(d3[o]) for o in orders]
    assert max(entries) - min(entries) > 0.5  # the orders do disagree
    got = eqxderiv.Partial(u, x=(1, 0, 1), method=method)(x[None])[0]
    np.testing.assert_allclose(got, np.mean(entries), rtol=1e-12)
