"""The question eqxderiv was created to answer, in Flax NNX: batched derivatives
of a network `net(x, t)` with respect to its inputs, and an L2 loss built from
them, trained with optax through `nnx.Optimizer`.

This is `examples/seed_flax.py` with the question's linen `NN` written as an
`nnx.Module` of the same shape (two tanh layers of 100 units over the
concatenation of `x` and `t`, `d = 3`, a batch of 10, keys from `PRNGKey(100)`
split the same way). An NNX module holds its own parameters, so it is the field
itself: `eqxderiv.Jacobian(model)(x, t)` needs no `from_flax` and no `params`,
and a loss of the operators is differentiated with respect to the model's
parameters by `nnx.value_and_grad`.

The script

1. computes the value `(10, 3)`, df/dx `(10, 3, 3)`, df/dt `(10, 3)`, div f
   `(10,)` and grad div f `(10, 3)` for a batch of 10 under `nnx.jit`, with the
   named operators and with the one-pass `eqxderiv.derivatives(model, x, t)`,
   and prints the shapes;
2. checks them against the answer's recipe with the model in place of
   `net.apply`, `jax.vmap(jax.jacobian(model, argnums=...))` (`argnums=0` for
   df/dx, `argnums=1` reshaped to `(10, 3)` for df/dt) and, for the gradient of
   the divergence, against nested autodiff (`vmap` of `jacobian` of the trace of
   `jacobian`);
3. trains the network with `optax.adam(1e-3)` through `nnx.Optimizer` under
   `nnx.jit`, on the L2 loss of `seed_flax.py`, and checks that the loss falls.

The loss is the mean squared residual of the score Fokker-Planck equation of the
heat flow ($dX = \\sqrt{2}\\, dW$),

$$\\partial_t s = \\nabla(\\nabla\\cdot s) + \\nabla |s|^2
               = \\nabla(\\nabla\\cdot s) + 2 J_s^\\top s,$$

on fresh random batches ($t \\sim U(0, 1)$, $x \\sim N(0, (1 + 2t) I)$), plus the
mean squared error of the initial condition $s(x, 0) = -x$, the score of
$N(0, I)$. Its exact solution is $s(x, t) = -x / (1 + 2t)$, and the script prints
the learned network's error against it.

Run it with

```bash
python examples/seed_nnx.py            # 300 training steps
python examples/seed_nnx.py --steps 1000
```

It exits non-zero if a check fails.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _seed import answer_recipe, check_derivatives, loss_fn, report, sample
from flax import nnx

import eqxderiv


class NN(nnx.Module):
    """The question's `NN` in NNX. Linen infers a layer's input size at `init`;
    NNX asks for it, so the model is also told `in_dim` (that of `x`)."""

    def __init__(self, in_dim: int, hid_dim: int, output_dim: int, *, rngs):
        self.output_dim = output_dim
        self.dense1 = nnx.Linear(in_dim + 1, hid_dim, rngs=rngs)  # x and t
        self.dense2 = nnx.Linear(hid_dim, hid_dim, rngs=rngs)
        self.dense3 = nnx.Linear(hid_dim, output_dim, rngs=rngs)

    def __call__(self, x, t):
        out = jnp.hstack((x, t))
        out = nnx.tanh(self.dense1(out))
        out = nnx.tanh(self.dense2(out))
        out = self.dense3(out)
        return out


@nnx.jit
def by_operators(model, x, t):
    """Every quantity through eqxderiv, the model passed as it is: the named
    operators, and the same four quantities again from `eqxderiv.derivatives`'
    one shared propagation."""
    named = (
        eqxderiv.Value(model)(x, t),
        eqxderiv.Jacobian(model)(x, t),
        eqxderiv.TimeDerivative(model)(x, t),
        eqxderiv.Divergence(model)(x, t),
        eqxderiv.GradDiv(model)(x, t),
    )
    return named, eqxderiv.derivatives(model, x, t)


def check(model, x, t):
    """Steps 1 and 2 (see `_seed.check_derivatives`)."""
    named, one_pass = by_operators(model, x, t)
    reference = nnx.jit(answer_recipe)(model, x, t)
    check_derivatives(named, one_pass, reference, x, "model")


def train(model, steps, key, train_batch=64, every=50):
    d = model.output_dim
    # The optimizer keeps a reference to the model and updates it in place.
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, key):
        x, t = sample(key, train_batch, d)
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, t)
        optimizer.update(model, grads)
        return loss

    losses = []
    for step, k in enumerate(jax.random.split(key, steps)):
        losses.append(float(train_step(model, optimizer, k)))
        if step % every == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {losses[-1]:.4f}")
    return np.array(losses)


def main(steps: int) -> None:
    d = 3
    batch_size = 10

    rng_nn, rng_inp1, rng_inp2 = jax.random.split(jax.random.PRNGKey(100), 3)
    model = NN(in_dim=d, hid_dim=100, output_dim=d, rngs=nnx.Rngs(rng_nn))

    x = jax.random.normal(rng_inp2, (batch_size, d))  # batch, d
    t = jax.random.normal(rng_inp1, (batch_size, 1))

    out_net = model(x, t)
    print(f"model(x, t): {out_net.shape}")

    check(model, x, t)

    print(f"Training for {steps} steps on the score Fokker-Planck loss:")
    start = time.perf_counter()
    losses = train(model, steps, jax.random.PRNGKey(0))
    print(f"  ({time.perf_counter() - start:.1f} s, including compilation)")

    report(losses, steps, model, d)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    main(args.steps)
