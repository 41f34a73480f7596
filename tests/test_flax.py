"""The question's Flax model `NN` through `eqxderiv.from_flax`: the answer's exact
numbers and shapes, every operator against brute force, and training."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from helpers import (
    NN,
    VECTOR_OPS,
    assert_close,
    assert_dicts_close,
    assert_trees_close,
    batch_inputs,
    evaluate,
    reference,
)

import eqxderiv


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
