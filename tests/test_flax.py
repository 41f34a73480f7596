"""The question's Flax model `NN` through `eqxderiv.from_flax`: the answer's exact
numbers and shapes, every operator against brute force, and training. Then Flax
NNX, whose modules are fields as they are, and the errors that point a linen or an
NNX module to the right way in."""

import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers import (
    NN,
    VECTOR_OPS,
    assert_close,
    assert_dicts_close,
    assert_trees_close,
    batch_inputs,
    brute,
    evaluate,
    reference,
)

import eqxderiv
from eqxderiv._flax import explain_unbound_flax


d = 3
batch_size = 10
net = NN(hid_dim=100, output_dim=d)


@jax.jit
def _seed_setup():
    # The question's setup, verbatim (with its `batxh_size` typo fixed); compiled
    # as one program, which gives the same numbers as running it eagerly.
    rng_nn, rng_inp1, rng_inp2 = jax.random.split(jax.random.PRNGKey(100), 3)
    inp_x = jax.random.normal(rng_inp1, (1, d))  # batch, d
    inp_t = jax.random.normal(rng_inp2, (1, 1))
    params_net = net.init(rng_nn, inp_x, inp_t)
    x = jax.random.normal(rng_inp2, (batch_size, d))  # batch, d
    t = jax.random.normal(rng_inp1, (batch_size, 1))
    return params_net, x, t


@pytest.fixture(scope="module")
def seed():
    return (net, *_seed_setup())


def test_seed_answer_numbers(seed):
    net, params_net, x, t = seed
    field = eqxderiv.from_flax(net, params_net)

    # The accepted answer, verbatim (compiled).
    @jax.jit
    def answer(params_net, x, t):
        df_dx = jax.vmap(jax.jacobian(net.apply, argnums=1), in_axes=(None, 0, 0))(
            params_net, x, t
        )
        df_dt = jax.vmap(jax.jacobian(net.apply, argnums=2), in_axes=(None, 0, 0))(
            params_net, x, t
        ).reshape(10, 3)
        return df_dx, df_dt, net.apply(params_net, x, t)

    df_dx, df_dt, value = answer(params_net, x, t)

    # Eagerly, as in the question.
    jac = eqxderiv.Jacobian(field)(x, t)
    dt = eqxderiv.TimeDerivative(field)(x, t)
    assert jac.shape == (10, 3, 3)
    assert dt.shape == (10, 3)
    assert_close(jac, df_dx)
    assert_close(dt, df_dt)

    @eqx.filter_jit
    def rest(field, x, t):
        return (
            eqxderiv.Divergence(field)(x, t),
            eqxderiv.GradDiv(field)(x, t),
            # The four of the question from one call.
            eqxderiv.derivatives(field, x, t),
        )

    div, graddiv, (f, df_dt2, df_dx2, graddiv2) = rest(field, x, t)
    assert div.shape == (10,)
    assert graddiv.shape == (10, 3)
    assert_close(div, np.trace(df_dx, axis1=-2, axis2=-1))
    assert_close(graddiv, reference(("GradDiv",), field, x, t)["GradDiv"])
    assert_close(f, value)
    assert_close(df_dt2, df_dt)
    assert_close(df_dx2, df_dx)
    assert_close(graddiv2, graddiv)


def test_seed_params_entry_and_variables_agree(seed):
    net, params_net, x, t = seed
    full = eqxderiv.from_flax(net, params_net)
    params_only = eqxderiv.from_flax(net, params_net["params"])
    assert_close(eqxderiv.Laplacian(params_only)(x, t), eqxderiv.Laplacian(full)(x, t))


# The seed's (10,) batch with t as (b, 1) is covered above, eagerly.
@pytest.mark.parametrize("batch, t_layout", [((), "column"), ((2, 3), "flat")])
def test_every_operator_matches_brute_force(batch, t_layout, getkey):
    net = NN(hid_dim=16, output_dim=3)
    x, t = batch_inputs(getkey(), batch, 3, t_layout)
    params = net.init(getkey(), x.reshape(-1, 3)[:1], t.reshape(-1, 1)[:1])
    field = eqxderiv.from_flax(net, params)

    ops = {name: getattr(eqxderiv, name)(field) for name in VECTOR_OPS}
    assert_dicts_close(evaluate(ops, x, t), reference(tuple(VECTOR_OPS), field, x, t))


def test_flax_under_jit(seed):
    net, params_net, x, t = seed
    field = eqxderiv.from_flax(net, params_net)
    eager = eqxderiv.GradDiv(field)(x, t)
    assert_close(eqx.filter_jit(lambda f: eqxderiv.GradDiv(f)(x, t))(field), eager)

    @jax.jit
    def from_params(params):
        return eqxderiv.GradDiv(eqxderiv.from_flax(net, params))(x, t)

    assert_close(from_params(params_net), eager)


def test_flax_parameter_gradient_and_training_step(getkey):
    net = NN(hid_dim=16, output_dim=3)
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    params = net.init(getkey(), x[:1], t[:1])["params"]

    def loss(p):
        field = eqxderiv.from_flax(net, p)
        return jnp.mean(eqxderiv.Divergence(field)(x, t) ** 2)

    def brute_loss(p):
        def div(x_, t_):
            return jnp.trace(jax.jacfwd(lambda y: net.apply({"params": p}, y, t_))(x_))

        return jnp.mean(jax.vmap(div)(x, t) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    # The parameters are float32 (Flax's default), so are their gradients.
    assert_trees_close(grads, jax.jit(jax.grad(brute_loss))(params), 1e-6, 1e-7)

    # One optax step through a Flax TrainState, as in the question.
    state = train_state.TrainState.create(
        apply_fn=net.apply, params=params, tx=optax.adam(1e-3)
    )

    @jax.jit
    def train_step(state):
        grads = jax.grad(loss)(state.params)
        # optax's Adam computes `decay ** count` of a Python float and an int32
        # step count, which strict dtype promotion refuses; only that update runs
        # under the default promotion, eqxderiv's part above stays strict.
        with jax.numpy_dtype_promotion("standard"):
            return state.apply_gradients(grads=grads)

    new_state = train_step(state)
    assert new_state.step == 1
    losses = jax.jit(lambda a, b: (loss(a), loss(b)))(new_state.params, params)
    assert float(losses[0]) < float(losses[1])


def test_from_flax_rejects_bad_input(seed):
    net, params_net, _, _ = seed
    with pytest.raises(TypeError, match="`module` must be a Flax linen Module"):
        eqxderiv.from_flax(object(), params_net)
    with pytest.raises(TypeError, match="`params` must be the variables dict"):
        eqxderiv.from_flax(net, [params_net])


# --------------------------------------------------------------------------------
# Flax NNX: a module holds its parameters, so it is a field as it is.


class NnxNN(nnx.Module):
    """The question's `NN` written in NNX, with float64 parameters."""

    def __init__(self, d: int, hid_dim: int, *, rngs: nnx.Rngs):
        kw = dict(param_dtype=jnp.float64, rngs=rngs)
        self.dense1 = nnx.Linear(d + 1, hid_dim, **kw)
        self.dense2 = nnx.Linear(hid_dim, hid_dim, **kw)
        self.dense3 = nnx.Linear(hid_dim, d, **kw)

    def __call__(self, x, t):
        out = jnp.hstack((x, t))
        out = jnp.tanh(self.dense1(out))
        out = jnp.tanh(self.dense2(out))
        return self.dense3(out)


NNX_OPS = ("Value", "Jacobian", "TimeDerivative", "GradDiv", "Laplacian")


def test_nnx_module_operators_match_brute_force_under_nnx_jit(getkey):
    model = NnxNN(3, 16, rngs=nnx.Rngs(0))
    x, t = batch_inputs(getkey(), (5,), 3, "column")

    @nnx.jit
    def both(model, x, t):
        ours = {name: getattr(eqxderiv, name)(model)(x, t) for name in NNX_OPS}
        # Nested jax.jacfwd / jax.hessian of a plain function calling the model.
        plain = lambda y, s: model(y, s)
        return ours, {name: brute(name, plain, x, t) for name in NNX_OPS}

    ours, ref = both(model, x, t)
    assert ours["Jacobian"].shape == (5, 3, 3)
    assert ours["TimeDerivative"].shape == (5, 3)
    assert ours["GradDiv"].shape == (5, 3)
    assert ours["Laplacian"].shape == (5, 3)
    assert_dicts_close(ours, ref)


def _score_loss(f, df_dt, df_dx, grad_div, initial, x):
    # The L2 loss of examples/seed_nnx.py: the score Fokker-Planck residual and the
    # initial condition f(x, 0) = -x.
    residual = df_dt - grad_div - 2 * jnp.einsum("bij,bi->bj", df_dx, f)
    return jnp.mean(jnp.sum(residual**2, -1)) + jnp.mean(
        jnp.sum((initial + x) ** 2, -1)
    )


def nnx_loss(model, x, t):
    return _score_loss(
        eqxderiv.Value(model)(x, t),
        eqxderiv.TimeDerivative(model)(x, t),
        eqxderiv.Jacobian(model)(x, t),
        eqxderiv.GradDiv(model)(x, t),
        eqxderiv.Value(model)(x, jnp.zeros_like(t)),
        x,
    )


def nnx_brute_loss(model, x, t):
    plain = lambda y, s: model(y, s)
    return _score_loss(
        brute("Value", plain, x, t),
        brute("TimeDerivative", plain, x, t),
        brute("Jacobian", plain, x, t),
        brute("GradDiv", plain, x, t),
        brute("Value", plain, x, jnp.zeros_like(t)),
        x,
    )


def test_nnx_parameter_gradient_matches_nested_autodiff(getkey):
    model = NnxNN(3, 16, rngs=nnx.Rngs(1))
    x, t = batch_inputs(getkey(), (6,), 3, "column")

    @nnx.jit
    def both(model, x, t):
        return (
            nnx.value_and_grad(nnx_loss)(model, x, t),
            nnx.value_and_grad(nnx_brute_loss)(model, x, t),
        )

    (loss, grads), (brute_loss, brute_grads) = both(model, x, t)
    assert_close(loss, brute_loss)
    # The gradient is the usual NNX state of the model's parameters.
    assert isinstance(grads, nnx.State)
    params = nnx.state(model, nnx.Param)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert_trees_close(grads, brute_grads)


def test_nnx_optimizer_step_decreases_the_loss(getkey):
    model = NnxNN(3, 16, rngs=nnx.Rngs(2))
    x, t = batch_inputs(getkey(), (6,), 3, "column")
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, t):
        loss, grads = nnx.value_and_grad(nnx_loss)(model, x, t)
        # optax's Adam raises a Python float to an int32 step count, which strict
        # promotion refuses; the gradient through eqxderiv above stays strict.
        with jax.numpy_dtype_promotion("standard"):
            optimizer.update(model, grads)
        return loss

    before = train_step(model, optimizer, x, t)
    after = nnx.jit(nnx_loss)(model, x, t)
    assert int(optimizer.step[...]) == 1
    assert float(after) < float(before)


def test_from_flax_points_nnx_modules_to_direct_use():
    model = NnxNN(3, 4, rngs=nnx.Rngs(0))
    match = (
        r"`module` must be a Flax linen Module .*; got the Flax NNX Module NnxNN\."
        r".*pass it to the operators directly.*eqxderiv\.Jacobian\(model\)\(x, t\)"
    )
    with pytest.raises(TypeError, match=match):
        eqxderiv.from_flax(model, nnx.state(model))
    with pytest.raises(TypeError, match=match):
        eqxderiv.from_flax(model, nnx.state(model, nnx.Param))


# --------------------------------------------------------------------------------
# A linen module passed to an operator without from_flax.


class SetupNN(nn.Module):
    """A linen model defined with `setup`: unbound, it fails with an AttributeError
    on its first submodule rather than Flax's unbound-module error."""

    def setup(self):
        self.dense = nn.Dense(3)

    def __call__(self, x, t):
        return self.dense(jnp.hstack((x, t)))


def _error_of(fn, *args) -> Exception:
    try:
        fn(*args)
    except Exception as error:
        return error
    raise AssertionError("no error raised")


X1, T1 = jnp.ones(3), jnp.ones(1)


@pytest.mark.parametrize("module", [NN(hid_dim=4, output_dim=3), SetupNN()])
def test_explain_unbound_flax_points_to_from_flax(module):
    error = _error_of(module, X1, T1)
    if isinstance(module, NN):
        assert isinstance(error, flax.errors.CallCompactUnboundModuleError)
    else:
        assert isinstance(error, AttributeError)
    explained = explain_unbound_flax(module, error)
    assert isinstance(explained, TypeError)
    message = str(explained)
    assert message.startswith(
        f"`field` is a Flax linen Module ({type(module).__name__})"
    )
    assert "wrap it with `eqxderiv.from_flax(module, params)`" in message
    assert type(error).__name__ in message


def test_explain_unbound_flax_leaves_other_errors_alone():
    unbound = _error_of(NN(hid_dim=4, output_dim=3), X1, T1)
    net = NN(hid_dim=4, output_dim=3)
    bound = net.bind(net.init(jax.random.key(0), X1, T1))
    model = NnxNN(3, 4, rngs=nnx.Rngs(0))
    # Not a linen Module, or a bound one: whatever the error, not ours to explain.
    for field in [model, bound, lambda x, t: x, object(), eqxderiv.from_flax]:
        assert explain_unbound_flax(field, unbound) is None
    # A linen Module, but some other error.
    assert explain_unbound_flax(net, ValueError("shapes")) is None
    assert explain_unbound_flax(net, TypeError("`x` must be")) is None


def test_explain_unbound_flax_never_imports_flax():
    # In a fresh interpreter without Flax imported, importing eqxderiv, explaining
    # an error and rejecting a bad from_flax argument import no Flax module.
    code = (
        "import sys, eqxderiv\n"
        "from eqxderiv._flax import explain_unbound_flax\n"
        "assert explain_unbound_flax(object(), AttributeError('a')) is None\n"
        "try:\n"
        "    eqxderiv.from_flax(object(), {})\n"
        "except TypeError:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'flax'))\n"
    )
    root = str(Path(eqxderiv.__file__).resolve().parents[1])
    path = os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_linen_module_without_from_flax_errors():
    net = NN(hid_dim=4, output_dim=3)
    x, t = jnp.ones((2, 3)), jnp.ones((2, 1))
    with pytest.raises(TypeError, match="from_flax"):
        eqxderiv.Laplacian(net)(x, t)
