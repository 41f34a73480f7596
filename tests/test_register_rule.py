"""A rule registered by a user for their own primitive (`eqxderiv.register_rule`):
without it the engine falls back to nested autodiff with a `FallbackWarning`;
with it the user's rule is used, and agrees with nested `jax.jvp`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

import eqxderiv
from eqxderiv._engine import collapsed_jet, collapsed_taylor, registry


jax.config.update("jax_enable_x64", True)


# `cube(x) = x**3`, elementwise, as a primitive of its own.
cube_p = Primitive("test_register_rule_cube")
cube_p.def_impl(lambda x: x * x * x)
cube_p.def_abstract_eval(lambda x: x)  # the operand's shape and dtype
ad.defjvp(cube_p, lambda t, x: 3 * x * x * t)
batching.defvectorized(cube_p)
mlir.register_lowering(cube_p, mlir.lower_fun(lambda x: x * x * x, False))

# `scale(x) = 2 x`: linear, registered without a rule of its own.
scale_p = Primitive("test_register_rule_scale")
scale_p.def_impl(lambda x: 2 * x)
scale_p.def_abstract_eval(lambda x: x)
ad.deflinear(scale_p, lambda ct: [scale_p.bind(ct)])
batching.defvectorized(scale_p)
mlir.register_lowering(scale_p, mlir.lower_fun(lambda x: 2 * x, False))


def _field(x):
    return jnp.sum(jnp.sin(scale_p.bind(cube_p.bind(x))))


def _cube_rule(ctx, eqn, jets):
    (u,) = jets
    x = jnp.asarray(u.primal)
    # T_y = 3 x^2 T_u, S_y = 3 x^2 S_u + 6 x sum_k w_k T_u[k]^2.
    t = 3 * x * x * u.tangent
    s = 6 * x * ctx.quad(u.tangent, u.tangent)
    if u.second is not None:
        s = s + 3 * x * x * u.second
    return [eqxderiv.Jet(cube_p.bind(x), t, s)]


def _nested(fn, x, v, w):
    """`(fn, T, sum_k w_k d²/ds² fn(x + s v_k))` by nested jvp, per direction."""

    def along(vk):
        (_, tk), (_, hk) = jax.jvp(lambda a: jax.jvp(fn, (a,), (vk,)), (x,), (vk,))
        return tk, hk

    ts, hs = jax.vmap(along)(v)
    return fn(x), ts, jnp.sum(w * hs)


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "RULES", dict(registry.RULES))
    monkeypatch.setattr(registry, "_WARNED", set())


_RNG = np.random.default_rng(0)
X = jnp.asarray(_RNG.uniform(-1, 1, size=4))
V = jnp.asarray(_RNG.standard_normal((3, 4)))
W = jnp.asarray(_RNG.uniform(0.5, 1.5, size=3))


def test_without_a_rule_the_fallback_warns(clean_registry):
    with pytest.warns(eqxderiv.FallbackWarning) as record:
        got = collapsed_jet(_field, (X,), (V,), W)
    messages = " ".join(str(r.message) for r in record)
    assert cube_p.name in messages and scale_p.name in messages
    for g, want in zip(got, _nested(_field, X, V, W)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


def test_the_registered_rule_is_used(clean_registry):
    calls = []

    def rule(ctx, eqn, jets):
        calls.append(eqn.primitive.name)
        return _cube_rule(ctx, eqn, jets)

    eqxderiv.register_rule(cube_p, rule)
    eqxderiv.register_rule(scale_p.name, linear_in=(0,))
    # No warning: warnings are errors in this test suite.
    got = jax.jit(lambda x: collapsed_jet(_field, (x,), (V,), W))(X)
    assert calls == [cube_p.name]
    for g, want in zip(got, _nested(_field, X, V, W)):
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)
    # And through an operator: the Laplacian, against jax.hessian.
    lap = eqxderiv.Laplacian(lambda x: _field(x))(X[None])
    want = jnp.trace(jax.hessian(_field)(X))
    np.testing.assert_allclose(lap[0], want, rtol=1e-12)


def test_register_rule_checks_its_arguments(clean_registry, no_typecheck):
    with pytest.raises(ValueError, match="pass a `rule`, or `linear_in`"):
        eqxderiv.register_rule(cube_p)
    with pytest.raises(TypeError, match="must be callable"):
        eqxderiv.register_rule(cube_p, 3)  # pyright: ignore


@pytest.fixture
def clean_taylor_registry(monkeypatch):
    from eqxderiv._engine.higher import registry as higher

    monkeypatch.setattr(registry, "RULES", dict(registry.RULES))
    monkeypatch.setattr(higher, "RULES", dict(higher.RULES))
    monkeypatch.setattr(registry, "_WARNED", set())


def _nested_order(fn, x, v, w, order):
    """`sum_k w_k d^order/ds^order fn(x + s v_k)` by nested jvp, per direction."""

    def along(vk):
        g = lambda s: fn(x + s * vk)  # noqa: E731
        for _ in range(order):
            g = (lambda g: lambda s: jax.jvp(g, (s,), (jnp.ones_like(s),))[1])(g)
        return g(jnp.zeros(()))

    return jnp.sum(w * jax.vmap(along)(v))


@pytest.mark.parametrize("order", [3, 4])
def test_higher_orders_fall_back_without_a_taylor_rule(clean_taylor_registry, order):
    # The linear primitive needs nothing more than its order-2 registration.
    eqxderiv.register_rule(scale_p.name, linear_in=(0,))
    eqxderiv.register_rule(cube_p, _cube_rule)
    with pytest.warns(eqxderiv.FallbackWarning) as record:
        _, top = collapsed_taylor(_field, X, V, W[:, None], order)
    messages = " ".join(str(r.message) for r in record)
    assert cube_p.name in messages and scale_p.name not in messages
    want = _nested_order(_field, X, V, W, order)
    np.testing.assert_allclose(top[0], want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("order", [3, 4])
def test_an_elementwise_taylor_rule(clean_taylor_registry, order):
    eqxderiv.register_rule(scale_p.name, linear_in=(0,))
    eqxderiv.register_taylor_rule(cube_p, elementwise=True)
    # No warning: warnings are errors in this test suite.
    _, top = jax.jit(lambda x: collapsed_taylor(_field, x, V, W[:, None], order))(X)
    want = _nested_order(_field, X, V, W, order)
    np.testing.assert_allclose(top[0], want, rtol=1e-11, atol=1e-11)
    # And through an operator, against nested jax.jacfwd.
    d4 = jax.jacfwd(jax.jacfwd(jax.jacfwd(jax.jacfwd(_field))))(X)
    got = eqxderiv.Partial(_field, x=(0, 0, 0, 0))(X[None])
    np.testing.assert_allclose(got[0], d4[0, 0, 0, 0], rtol=1e-10)
    got = eqxderiv.Partial(_field, x=(2, 2, 2))(X[None])
    want = jax.jacfwd(jax.jacfwd(jax.jacfwd(_field)))(X)[2, 2, 2]
    np.testing.assert_allclose(got[0], want, rtol=1e-10)


def test_a_taylor_rule_is_used(clean_taylor_registry):
    calls = []

    def rule(ctx, eqn, jets):
        # cube(u) = u * u * u by the engine's own products.
        calls.append(ctx.order)
        u = jets[0]
        closed = jax.make_jaxpr(lambda a: a * a * a)(jnp.asarray(u.primal))
        from eqxderiv._engine.higher.interpreter import eval_taylor_jaxpr

        return eval_taylor_jaxpr(ctx, closed.jaxpr, closed.consts, jets)

    eqxderiv.register_rule(scale_p.name, linear_in=(0,))
    eqxderiv.register_taylor_rule(cube_p.name, rule)
    _, top = collapsed_taylor(_field, X, V, W[:, None], 3)
    assert calls == [3]
    want = _nested_order(_field, X, V, W, 3)
    np.testing.assert_allclose(top[0], want, rtol=1e-11, atol=1e-11)


def test_register_taylor_rule_checks_its_arguments(clean_taylor_registry, no_typecheck):
    with pytest.raises(ValueError, match="pass a `rule`, or `elementwise=True`"):
        eqxderiv.register_taylor_rule(cube_p)
    with pytest.raises(ValueError, match="not both"):
        eqxderiv.register_taylor_rule(cube_p, _cube_rule, elementwise=True)  # pyright: ignore
    with pytest.raises(TypeError, match="must be callable"):
        eqxderiv.register_taylor_rule(cube_p, 3)  # pyright: ignore
