"""Regression tests: each reproduction of a silently wrong number (custom rules
bypassed, kinks, ties, complex intermediates, custom_vjp, while loops) now gives
JAX's own number. Oracles are written with `jax.jacfwd` / `jax.hessian` directly,
in float64; methods are compared with each other only on top of that."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import pytest
from jax import lax

import eqxderiv as ed
from eqxderiv import FallbackWarning


EXACT = ["auto", "forward", "nested", ed.Taylor(compress=False)]


def hessian_laplacian(f, x, forward_only=False):
    inner = jax.jacfwd if forward_only else jax.jacrev
    hess = jax.vmap(jax.jacfwd(inner(f)))(x)
    return jnp.trace(hess, axis1=-2, axis2=-1)


def close(a, b, tol=1e-10):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("method", EXACT)
def test_issue_reproductions(method):
    softplus_sum = lambda x: jnp.sum(jax.nn.softplus(x))  # noqa: E731
    zeros = jnp.zeros((1, 3))
    close(ed.Laplacian(softplus_sum, method=method)(zeros), [0.75])
    close(ed.GradDiv(jax.nn.softplus, method=method)(zeros), [[0.25] * 3])
    sinc = lambda x: jnp.sinc(x[0])  # noqa: E731
    close(ed.Laplacian(sinc, method=method)(jnp.zeros((1, 1))), [-(np.pi**2) / 3])
    lae = lambda x: jnp.logaddexp(x[0], x[1])  # noqa: E731
    close(ed.Laplacian(lae, method=method)(jnp.array([[0.3, 0.3]])), [0.5])
    xlogy = lambda x: jnp.stack([jss.xlogy(x[0], x[1]), x[1]])  # noqa: E731
    close(
        ed.Divergence(xlogy, method=method)(jnp.array([[0.0, 2.0]])),
        [np.log(2) + 1],
    )


KINK_FIELDS = {
    "relu": lambda x: jnp.sum(jax.nn.relu(x) * x[::-1]),
    "abs": lambda x: jnp.sum(jnp.abs(x) * x),
    "maximum tie": lambda x: jnp.maximum(x[0], x[1]) * x[2],
    "clamp min > max": lambda x: lax.clamp(x[0], x[1], x[2]) + x[1] ** 2,
    "clip at a bound": lambda x: jnp.sum(jnp.clip(x, 0.0, 1.0) ** 2),
    "log_sigmoid": lambda x: jnp.sum(jax.nn.log_sigmoid(x) * x),
}
KINK_POINTS = jnp.array(
    [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]
)


@pytest.mark.parametrize("name", sorted(KINK_FIELDS))
@pytest.mark.parametrize("method", EXACT)
def test_kinks_follow_jax_for_every_operator(name, method):
    f = KINK_FIELDS[name]
    x = KINK_POINTS
    grad = jax.vmap(jax.grad(f))(x)
    lap = hessian_laplacian(f, x)
    hess = jax.vmap(jax.hessian(f))(x)

    @jax.jit
    def ours(x):
        return (
            ed.Grad(f, method=method)(x),
            ed.Laplacian(f, method=method)(x),
            ed.Hessian(f, method=method)(x),
            ed.derivatives(f, x, None, (ed.Grad, ed.Laplacian), method=method),
        )

    g, lp, h, (g2, lp2) = ours(x)
    for got, want in ((g, grad), (lp, lap), (h, hess), (g2, grad), (lp2, lap)):
        close(got, want)


# The rule does not call `f` for its primal output: see the comment below.
@pytest.mark.filterwarnings("ignore::eqxderiv.FallbackWarning")
def test_user_custom_jvp_rule_is_followed():
    # A rule that is twice the true derivative (not the primal's derivative).
    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    f.defjvp(lambda p, t: (jnp.sin(p[0]), 2 * jnp.cos(p[0]) * t[0]))
    field = lambda x: f(x) * x[::-1]  # noqa: E731
    x = jnp.array([[0.3, -0.4, 1.1]])
    jac = jax.vmap(jax.jacfwd(field))(x)
    for method in EXACT:
        close(ed.Jacobian(field, method=method)(x), jac)
        close(ed.Divergence(field, method=method)(x), jnp.trace(jac, axis1=1, axis2=2))
    # For second derivatives, nested autodiff differentiates the rule's own
    # primal code (sin, so cos) for one of the two derivatives and applies the
    # rule for the other. For component i, d²/dx_i² [f(x_i) x_i] is then not
    # 2 f'(x_i) + x_i f''(x_i) with the rule's f' (which a collapsed pass would
    # give), but nested autodiff's number, which every method gives: the rule
    # does not call `f` for its primal output, so the field is differentiated
    # by jvps, with a warning (docs/methods.md).
    lap = hessian_laplacian(field, x)
    close(ed.Laplacian(field, method="forward")(x), lap)
    close(ed.Laplacian(field, method="nested")(x), lap)
    u = x[0, 1]
    assert not jnp.allclose(lap[0, 1], 4 * jnp.cos(u) - 2 * u * jnp.sin(u))
    close(ed.Laplacian(field)(x), lap)


def test_safe_norm_custom_jvp_is_not_bypassed():
    # A NaN-safe norm: its rule gives 0 at 0, where the primal's derivative is NaN.
    @jax.custom_jvp
    def safe_norm(x):
        return jnp.sqrt(jnp.sum(x**2))

    @safe_norm.defjvp
    def _(p, t):
        (x,), (dx,) = p, t
        n = safe_norm(x)
        return n, jnp.where(n == 0, 0.0, x @ dx / jnp.where(n == 0, 1.0, n))

    field = lambda x: x * safe_norm(x)  # noqa: E731
    x = jnp.array([[0.0, 0.0], [0.6, 0.8]])
    want = jax.vmap(jax.jacfwd(field))(x)
    with warnings.catch_warnings():
        # Not elementwise: the exact nested path, which warns once.
        warnings.simplefilter("ignore", FallbackWarning)
        for method in EXACT:
            got = ed.Jacobian(field, method=method)(x)
            assert np.all(np.isfinite(np.asarray(got)))
            close(got, want)


def test_complex_intermediates():
    # Made complex explicitly: strict dtype promotion refuses `1j * x` for real `x`.
    c = lambda x: x.astype(jnp.complex128)  # noqa: E731
    u = lambda x: jnp.abs(c(x[0]) + 1j * c(x[1]))  # noqa: E731
    x = jnp.array([[3.0, 4.0]])
    v = lambda x: jnp.stack([u(x), x[0]])  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        for method in EXACT:
            close(ed.Jacobian(v, method=method)(x), [[[0.6, 0.8], [1.0, 0.0]]])
            close(ed.Laplacian(u, method=method)(x), [0.2])  # 1 / r
        w = lambda x: jnp.abs(jnp.exp(1j * c(x[0])) * c(x[1]) + c(x[2]))  # noqa: E731
        x = jnp.array([[0.3, 0.5, 0.7]])
        close(ed.Laplacian(w)(x), hessian_laplacian(w, x))


@pytest.mark.parametrize("method", EXACT)
def test_custom_vjp_with_the_true_derivative(method):
    g = jax.custom_vjp(jnp.sin)
    g.defvjp(lambda x: (jnp.sin(x), x), lambda r, ct: (ct * jnp.cos(r),))
    field = lambda x, t: g(x * t) * x[::-1]  # noqa: E731
    x = jnp.array([[0.3, 0.5, 0.7], [-0.2, 0.1, 0.9]])
    t = jnp.array([0.7, 1.3])
    f0 = lambda x: field(x, 0.7)  # noqa: E731
    jac = jax.jacrev(f0)(x[0])
    close(ed.Jacobian(field, method=method)(x, t)[0], jac)
    close(ed.Laplacian(field, method=method)(x, t)[0], hessian_laplacian(f0, x[:1])[0])
    gd = jax.jacrev(lambda a: jnp.trace(jax.jacrev(f0)(a)))(x[0])
    close(ed.GradDiv(field, method=method)(x, t)[0], gd)
    dt = jax.jacrev(lambda s: field(x[0], s))(0.7)
    close(ed.TimeDerivative(field, method=method)(x, t)[0], dt)


# A custom_vjp field is differentiated by jvps of the whole field, with a warning.
@pytest.mark.filterwarnings("ignore::eqxderiv.FallbackWarning")
def test_custom_vjp_rule_is_followed():
    # A rule that is not the derivative of the function: first derivatives follow
    # it (as jax.jacrev does).
    g = jax.custom_vjp(jnp.sin)
    g.defvjp(lambda x: (jnp.sin(x), x), lambda r, ct: (2 * ct * jnp.cos(r),))
    field = lambda x: g(x) * x  # noqa: E731
    x = jnp.array([[0.3, 0.5, 0.7]])
    for method in EXACT:
        close(ed.Jacobian(field, method=method)(x)[0], jax.jacrev(field)(x[0]))
    # Second derivatives: nested autodiff applies the rule for one derivative and
    # differentiates the forward code (sin, so cos) for the other, which every
    # method follows; differentiating along the rule twice would give
    # -2 sin(x) x + 2 cos(x) + 2 cos(x) instead.
    lap = hessian_laplacian(field, x)
    twice = jnp.sum(-2 * jnp.sin(x) * x + 4 * jnp.cos(x), axis=-1)
    assert not jnp.allclose(jnp.sum(lap, axis=-1), twice)
    for method in EXACT:
        close(ed.Laplacian(field, method=method)(x), lap)


def _while_field(x):
    def body(c):
        i, y = c
        return i + 1, jnp.sin(y) * x[::-1] + x

    return lax.while_loop(lambda c: c[0] < 3, body, (0, x))[1]


@pytest.mark.parametrize("method", EXACT)
def test_while_loop_fields_by_forward_mode(method):
    # JAX has no reverse mode through while: GradDiv, Jacobian and Hessian
    # must not need it.
    x = jnp.array([[0.3, 0.5, 0.7], [0.1, -0.4, 0.2]])
    f = _while_field
    gd = jax.vmap(jax.jacfwd(lambda a: jnp.trace(jax.jacfwd(f)(a))))(x)
    close(ed.GradDiv(f, method=method)(x), gd)
    close(ed.Jacobian(f, method=method)(x), jax.vmap(jax.jacfwd(f))(x))
    close(ed.Laplacian(f, method=method)(x), hessian_laplacian(f, x, True))
    s = lambda a: jnp.sum(f(a))  # noqa: E731
    close(ed.Hessian(s, method=method)(x), jax.vmap(jax.jacfwd(jax.jacfwd(s)))(x))
    both = ed.derivatives(f, x, None, (ed.GradDiv, ed.Laplacian), method=method)
    close(both[0], gd)


def test_parameter_gradients_through_softplus_net_at_zero():
    # Zero biases at x = 0: where the primal's derivative and softplus's rule
    # (through logaddexp) would part if the rule were bypassed.
    net = eqx.nn.MLP(3, 3, 8, 2, jax.nn.softplus, key=jax.random.key(0))
    net = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, net)
    net = eqx.tree_at(
        lambda n: [layer.bias for layer in n.layers],
        net,
        [jnp.zeros_like(layer.bias) for layer in net.layers],
    )
    x = jnp.zeros((2, 3))
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(p, op):
        return jnp.sum(op(eqx.combine(p, static))(x) ** 2)

    def nested_loss(p):
        fn = eqx.combine(p, static)
        lap = hessian_laplacian(fn, x)
        div = jnp.trace(jax.vmap(jax.jacfwd(fn))(x), axis1=1, axis2=2)
        return jnp.sum(lap**2), jnp.sum(div**2)

    want_lap = jax.grad(lambda p: nested_loss(p)[0])(params)
    want_div = jax.grad(lambda p: nested_loss(p)[1])(params)
    got_lap = jax.grad(loss)(params, ed.Laplacian)
    got_div = jax.grad(loss)(params, ed.Divergence)
    for g, w in zip(
        jax.tree.leaves((got_lap, got_div)), jax.tree.leaves((want_lap, want_div))
    ):
        close(g, w, 1e-9)


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_flax_net_at_zero_with_default_zero_biases(activation):
    # Flax's Dense layers start with zero biases: at x = t = 0 every
    # pre-activation is exactly 0, where softplus's rule (through logaddexp) and
    # relu's kink convention matter.
    import flax.linen as nn

    act = getattr(jax.nn, activation)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, t):
            h = jnp.concatenate([x, t], axis=-1)
            h = act(nn.Dense(16, param_dtype=jnp.float64)(h))
            h = act(nn.Dense(16, param_dtype=jnp.float64)(h))
            return nn.Dense(3, param_dtype=jnp.float64)(h)

    net = Net()
    x, t = jnp.zeros((2, 3)), jnp.zeros((2, 1))
    variables = net.init(jax.random.key(0), x[0], t[0])
    field = ed.from_flax(net, variables)
    g = lambda a: net.apply(variables, a, t[0])  # noqa: E731
    jac = jax.vmap(jax.jacobian(g))(x)
    lap = hessian_laplacian(g, x)
    dt = jax.vmap(jax.jacobian(lambda s: net.apply(variables, x[0], s)))(t)[..., 0]
    for method in EXACT:
        close(ed.Jacobian(field, method=method)(x, t), jac)
        close(ed.Laplacian(field, method=method)(x, t), lap)
        close(ed.TimeDerivative(field, method=method)(x, t), dt)
