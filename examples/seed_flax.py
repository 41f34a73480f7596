"""The question eqxderiv was created to answer, ported: batched derivatives of a
Flax network `net(x, t)` with respect to its inputs, and an L2 loss built from
them, trained with optax.

The network and set-up are the question's own (`NN` with two tanh layers of 100
units, `d = 3`, a batch of 10, `PRNGKey(100)` split the same way,
`flax.training.train_state.TrainState` with `optax.adam(1e-3)`), with its two typos
fixed (`batxh_size`, the missing `import optax`).

The script

1. computes every quantity the question asks for through eqxderiv, once with the
   named operators (`Jacobian`, `TimeDerivative`, `Divergence`, `GradDiv`) on
   `field = eqxderiv.from_flax(net, params)` and once with the one-pass
   `eqxderiv.derivatives(field, x, t)`, and prints the shapes:
   value `(10, 3)`, df/dx `(10, 3, 3)`, df/dt `(10, 3)`, div f `(10,)`,
   grad div f `(10, 3)`;
2. checks that they equal the answer's `jax.vmap(jax.jacobian(net.apply, ...))`
   recipe (`argnums=1` for df/dx, `argnums=2` reshaped to `(10, 3)` for df/dt) and,
   for the gradient of the divergence, a brute-force nested-autodiff recipe
   (`vmap` of `jacobian` of the trace of `jacobian`);
3. trains the network on an L2 loss of these derivatives and checks that the loss
   falls.

The loss. These quantities are exactly those of the *score Fokker-Planck
equation*. If particles diffuse as $dX = \\sqrt{2}\\, dW$, their density $p_t$
solves the heat equation $\\partial_t p = \\Delta p$, and its score
$s = \\nabla \\log p_t$ solves

$$\\partial_t s = \\nabla(\\nabla\\cdot s) + \\nabla |s|^2
               = \\nabla(\\nabla\\cdot s) + 2 J_s^\\top s.$$

Starting from $p_0 = N(0, I)$ the exact score is $s(x, t) = -x / (1 + 2t)$.
The network `f = net(x, t)` is trained as a physics-informed score model: the
L2 loss is the mean squared residual of that equation on fresh random batches
($t \\sim U(0, 1)$, $x \\sim N(0, (1 + 2t) I)$, points where the density lives)
plus the mean squared error of the initial condition $f(x, 0) = -x$. Every
quantity the question asks for appears in it: the value, df/dt, df/dx (through
$J^\\top f$) and the gradient of the divergence. At the end the script also
prints the error against the exact score.

Run it with

```bash
python examples/seed_flax.py            # 300 training steps
python examples/seed_flax.py --steps 1000
```

It exits non-zero if a check fails.
"""

import argparse
import time
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _seed import check_derivatives, loss_fn as fokker_planck_loss, report, sample
from flax.training import train_state

import eqxderiv


class NN(nn.Module):
    hid_dim: int  # Number of hidden neurons
    output_dim: int  # Number of output neurons

    @nn.compact
    def __call__(self, x, t):
        out = jnp.hstack((x, t))
        out = nn.tanh(nn.Dense(features=self.hid_dim)(out))
        out = nn.tanh(nn.Dense(features=self.hid_dim)(out))
        out = nn.Dense(features=self.output_dim)(out)
        return out


@jax.jit
def by_operators(field, x, t):
    """Every quantity through eqxderiv: the named operators, and the same four
    quantities again from `eqxderiv.derivatives`' one shared propagation."""
    named = (
        eqxderiv.Value(field)(x, t),
        eqxderiv.Jacobian(field)(x, t),
        eqxderiv.TimeDerivative(field)(x, t),
        eqxderiv.Divergence(field)(x, t),
        eqxderiv.GradDiv(field)(x, t),
    )
    return named, eqxderiv.derivatives(field, x, t)


@partial(jax.jit, static_argnums=0)
def answer_recipe(net, params_net, x, t):
    """The answer's `jax.vmap(jax.jacobian(net.apply, ...))` recipe, and the
    gradient of the divergence by brute-force nested autodiff."""
    batch_size, d = x.shape
    ref_f = net.apply(params_net, x, t)
    ref_dx = jax.vmap(jax.jacobian(net.apply, argnums=1), in_axes=(None, 0, 0))(
        params_net, x, t
    )
    ref_dt = jax.vmap(jax.jacobian(net.apply, argnums=2), in_axes=(None, 0, 0))(
        params_net, x, t
    ).reshape(batch_size, d)

    # The Jacobian of the trace of the Jacobian.
    def divergence(x1, t1):
        return jnp.trace(jax.jacobian(net.apply, argnums=1)(params_net, x1, t1))

    ref_div = jax.vmap(divergence)(x, t)
    ref_grad_div = jax.vmap(jax.jacobian(divergence))(x, t)
    return ref_f, ref_dx, ref_dt, ref_div, ref_grad_div


def check(net, params_net, x, t):
    """Steps 1 and 2 (see `_seed.check_derivatives`)."""
    named, one_pass = by_operators(eqxderiv.from_flax(net, params_net), x, t)
    reference = answer_recipe(net, params_net, x, t)
    check_derivatives(named, one_pass, reference, x, "field")


def loss_fn(params, net, x, t):
    """The score Fokker-Planck loss of `_seed.loss_fn`, of the linen model."""
    return fokker_planck_loss(eqxderiv.from_flax(net, params), x, t)


def train(net, model_state, steps, key, train_batch=64, every=50):
    d = net.output_dim

    @jax.jit
    def train_step(state, key):
        x, t = sample(key, train_batch, d)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, net, x, t)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for step, k in enumerate(jax.random.split(key, steps)):
        model_state, loss = train_step(model_state, k)
        losses.append(float(loss))
        if step % every == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {losses[-1]:.4f}")
    return model_state, np.array(losses)


def main(steps: int) -> None:
    d = 3
    batch_size = 10
    net = NN(hid_dim=100, output_dim=d)

    rng_nn, rng_inp1, rng_inp2 = jax.random.split(jax.random.PRNGKey(100), 3)
    inp_x = jax.random.normal(rng_inp1, (1, d))  # batch, d
    inp_t = jax.random.normal(rng_inp2, (1, 1))
    params_net = net.init(rng_nn, inp_x, inp_t)

    x = jax.random.normal(rng_inp2, (batch_size, d))  # batch, d
    t = jax.random.normal(rng_inp1, (batch_size, 1))

    out_net = net.apply(params_net, x, t)
    assert isinstance(out_net, jax.Array)  # not a (output, state) pair
    print(f"net.apply(params, x, t): {out_net.shape}")

    check(net, params_net, x, t)

    optimizer = optax.adam(1e-3)
    model_state = train_state.TrainState.create(
        apply_fn=net.apply, params=params_net, tx=optimizer
    )

    print(f"Training for {steps} steps on the score Fokker-Planck loss:")
    start = time.perf_counter()
    model_state, losses = train(net, model_state, steps, jax.random.PRNGKey(0))
    print(f"  ({time.perf_counter() - start:.1f} s, including compilation)")

    def predict(x, t):
        return model_state.apply_fn(model_state.params, x, t)

    report(losses, steps, predict, d)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    main(args.steps)
