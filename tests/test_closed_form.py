"""The divergence and its gradient in closed form (`_engine/factored.py`):
which fields take it, and that every field, taking it or not, gives nested
autodiff's numbers in float64, values and parameter gradients."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from helpers import NN, assert_close, assert_trees_close, normal, uncached

import eqxderiv
import eqxderiv._engine.factored as factored


D = 4


class _Spy:
    """Counts the fields for which the closed form is built."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = factored.factored_divergence

        def spy(layers):
            out = original(layers)
            self.count += out is not None
            return out

        monkeypatch.setattr(factored, "factored_divergence", spy)


@pytest.fixture
def spy(monkeypatch):
    # Without the cache of eager calls, which would answer a field seen by an
    # earlier test without tracing it again.
    with uncached():
        yield _Spy(monkeypatch)


@jax.custom_jvp
def _soft_step(z):
    return jnp.where(z > 0, z, 0.1 * z)


@_soft_step.defjvp
def _soft_step_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    return _soft_step(z), jnp.where(z > 0, 1.0, 0.1) * dz


@jax.custom_jvp
def _mixing(z):
    # Elementwise primal, but a derivative rule that mixes entries: the Jacobian
    # JAX's autodiff uses is not diagonal, so the closed form must not apply.
    return jnp.tanh(z)


@_mixing.defjvp
def _mixing_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    return jnp.tanh(z), (1 - jnp.tanh(z) ** 2) * dz + 0.3 * jnp.roll(dz, 1)


class Net(eqx.Module):
    """A field made of dense layers over `concatenate(x, t)`, with options for
    the structures the closed form accepts or refuses."""

    weights: list
    biases: list
    activation: Callable = eqx.field(static=True)
    residual: bool = eqx.field(static=True)
    time_scale: bool = eqx.field(static=True)
    last: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        depth,
        key,
        activation=jnp.tanh,
        width=8,
        residual=False,
        time_scale=False,
        last=None,
    ):
        sizes = [D + 1] + [width] * depth + [D]
        keys = jax.random.split(key, 2 * len(sizes))
        self.weights = [
            normal(k, (o, i)) / jnp.sqrt(i)
            for k, i, o in zip(keys, sizes[:-1], sizes[1:])
        ]
        self.biases = [
            0.3 * normal(k, (o,)) for k, o in zip(keys[len(sizes) :], sizes[1:])
        ]
        self.activation = activation
        self.residual = residual
        self.time_scale = time_scale
        self.last = last

    def __call__(self, x, t):
        h = jnp.concatenate([x, t])
        for n, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = w @ h + b
            if n == len(self.weights) - 1:
                h = z
            else:
                a = self.activation(z)
                h = a + h if self.residual and n > 0 else a
            if self.time_scale and n == 0:
                h = h * t  # a coefficient that depends on the sample
        return h if self.last is None else self.last(h)


def _nested(field, x, t):
    """Divergence and its gradient by nested `jax.jacfwd`, per sample."""

    def div(x_, t_):
        return jnp.trace(jax.jacfwd(field, argnums=0)(x_, t_))

    return jax.vmap(div)(x, t), jax.vmap(jax.jacfwd(div, argnums=0))(x, t)


def _points(key, batch=5, special=None):
    x = normal(key, (batch, D))
    t = normal(jax.random.fold_in(key, 1), (batch, 1))
    if special == "zero":
        x, t = jnp.zeros_like(x), jnp.zeros_like(t)
    return x, t


def _check(field, x, t, taken, spy, grads=True):
    div = eqxderiv.Divergence(field)
    graddiv = eqxderiv.GradDiv(field)
    d_ref, g_ref = _nested(field, x, t)
    before = spy.count
    assert_close(div(x, t), d_ref, rtol=1e-10, atol=1e-10, label="div")
    assert_close(graddiv(x, t), g_ref, rtol=1e-10, atol=1e-10, label="gd")
    assert (spy.count > before) == taken
    if not grads:
        return

    def loss(f, op):
        return jnp.sum(jnp.sin(op(f)(x, t)))

    def loss_ref(f, which):
        return jnp.sum(jnp.sin(_nested(f, x, t)[which]))

    for which, op in enumerate([eqxderiv.Divergence, eqxderiv.GradDiv]):
        got = eqx.filter_grad(lambda f: loss(f, op))(field)
        want = eqx.filter_grad(lambda f: loss_ref(f, which))(field)
        assert_trees_close(got, want, rtol=1e-9, atol=1e-10)


ACTIVATIONS = {
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "gelu_erf": lambda z: jax.nn.gelu(z, approximate=False),
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "custom_jvp": _soft_step,
    "square": lambda z: z * z + jnp.cos(z),
}


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_taken_for_one_and_two_layers(depth, activation, getkey, spy):
    field = Net(depth, getkey(), ACTIVATIONS[activation])
    x, t = _points(getkey())
    _check(field, x, t, True, spy, grads=activation in ("tanh", "relu", "silu"))


@pytest.mark.parametrize("activation", ["relu", "custom_jvp", "elu"])
def test_kinks(activation, getkey, spy):
    # Zero biases at x = t = 0: every pre-activation sits on the kink.
    field = Net(2, getkey(), ACTIVATIONS[activation])
    field = eqx.tree_at(
        lambda f: f.biases, field, [jnp.zeros_like(b) for b in field.biases]
    )
    x, t = _points(getkey(), special="zero")
    _check(field, x, t, True, spy)


def test_ties_and_zero_weights(getkey, spy):
    # A first layer with zero and repeated rows (rank-deficient), at x = 0.
    field = Net(2, getkey(), jnp.tanh)
    w0 = field.weights[0].at[1].set(0.0).at[2].set(field.weights[0][3])
    field = eqx.tree_at(lambda f: f.weights[0], field, w0)
    x, t = _points(getkey(), special="zero")
    _check(field, x, t, True, spy)


def test_affine_and_elementwise_only_fields(getkey, spy):
    a = normal(getkey(), (D, D))
    b = normal(getkey(), (D,))
    x, t = _points(getkey())
    _check(lambda x_, t_: a @ x_ + b * t_, x, t, True, spy, grads=False)
    _check(lambda x_, t_: jnp.tanh(x_) * 2.0 + t_, x, t, True, spy, grads=False)
    _check(lambda x_, t_: jnp.sin(a @ jnp.tanh(x_)), x, t, True, spy, grads=False)


def test_elementwise_last_layer(getkey, spy):
    field = Net(1, getkey(), jnp.tanh, last=jnp.sin)
    x, t = _points(getkey())
    _check(field, x, t, True, spy)


def test_equinox_mlp(getkey, spy):
    mlp = eqx.nn.MLP(D + 1, D, 8, 2, activation=jax.nn.silu, key=getkey())
    mlp = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, mlp)
    field = lambda x_, t_: mlp(jnp.concatenate([x_, t_]))  # noqa: E731
    x, t = _points(getkey())
    _check(field, x, t, True, spy, grads=False)


def test_the_questions_flax_model(getkey, spy):
    # `jnp.hstack` wraps its operands in identity `jit` calls, looked into.
    net = NN(hid_dim=8, output_dim=D)
    params = net.init(getkey(), jnp.ones((1, D)), jnp.ones((1, 1)))
    field = eqxderiv.from_flax(net, params)
    x, t = _points(getkey())
    _check(field, x, t, True, spy, grads=False)


# The non-diagonal custom rule has no collapsed rule on the general path.
@pytest.mark.filterwarnings("ignore::eqxderiv.FallbackWarning")
@pytest.mark.parametrize(
    "case", ["three layers", "residual", "time coefficient", "mixing rule", "softmax"]
)
def test_refused_structures_give_nested_numbers(case, getkey, spy):
    key = getkey()
    field = {
        "three layers": lambda: Net(3, key),
        "residual": lambda: Net(2, key, residual=True),
        "time coefficient": lambda: Net(2, key, time_scale=True),
        "mixing rule": lambda: Net(2, key, _mixing),
        "softmax": lambda: Net(1, key, last=jax.nn.softmax),
    }[case]()
    x, t = _points(getkey())
    _check(field, x, t, False, spy, grads=case != "softmax")


# `abs` of a complex value goes through nested autodiff on the general path.
@pytest.mark.filterwarnings("ignore::eqxderiv.FallbackWarning")
def test_complex_intermediates_are_refused(getkey, spy):
    a = jax.lax.complex(normal(getkey(), (D, D)), normal(getkey(), (D, D)))

    def field(x_, t_):
        z = a @ x_.astype(a.dtype)
        return jnp.real(jnp.abs(z).astype(z.dtype) * jnp.exp(z)) + t_

    x, t = _points(getkey())
    _check(field, x, t, False, spy, grads=False)


def test_fused_residual_and_derivatives(getkey, spy):
    field = Net(2, getkey(), jnp.tanh)
    x, t = _points(getkey())
    residual = (
        eqxderiv.TimeDerivative(field)
        - 0.1 * eqxderiv.Laplacian(field)
        + eqxderiv.GradDiv(field)
    )
    got = eqx.filter_jit(residual)(x, t)
    d_ref, g_ref = _nested(field, x, t)
    dt = jax.vmap(jax.jacfwd(field, argnums=1))(x, t)[..., 0]
    hess = jax.vmap(jax.hessian(field))(x, t)
    lap = jnp.trace(hess, axis1=-2, axis2=-1)
    assert_close(got, dt - 0.1 * lap + g_ref, rtol=1e-10, atol=1e-10)
    _, _, df_dx, gd = eqxderiv.derivatives(field, x, t)
    assert_close(gd, g_ref, rtol=1e-10, atol=1e-10)
    assert_close(df_dx, jax.vmap(jax.jacfwd(field))(x, t), rtol=1e-10, atol=1e-10)
    assert spy.count >= 2


def test_option_off_and_validated(getkey, spy):
    field = Net(2, getkey())
    x, t = _points(getkey())
    method = eqxderiv.Taylor(closed_form=False)
    got = eqxderiv.GradDiv(field, method=method)(x, t)
    assert_close(got, _nested(field, x, t)[1], rtol=1e-10, atol=1e-10)
    assert spy.count == 0


def test_closed_form_must_be_a_bool(no_typecheck):
    with pytest.raises(ValueError, match=r"`closed_form` must be a bool; got 1"):
        eqxderiv.Taylor(closed_form=1)  # pyright: ignore


def test_float32_stays_float32(getkey):
    field = jax.tree.map(
        lambda a: a.astype(jnp.float32) if eqx.is_array(a) else a, Net(2, getkey())
    )
    x, t = (a.astype(jnp.float32) for a in _points(getkey()))
    assert eqxderiv.GradDiv(field)(x, t).dtype == jnp.float32
    assert eqxderiv.Divergence(field)(x, t).dtype == jnp.float32
