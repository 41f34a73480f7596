"""The question eqxderiv was created to answer, in Equinox: batched derivatives
of a network `net(x, t)` with respect to its inputs, and an L2 loss built from
them, trained with optax.

This is `examples/seed_flax.py` without Flax. The network is
`eqxderiv.SpaceTimeMLP(in_size=3, out_size=3, width=100, depth=2, key=...)`, the
Equinox counterpart of the question's `NN` (two tanh layers of 100 units over the
concatenation of `x` and `t`). An Equinox model is a pytree, so it is the field
itself: `eqxderiv.Jacobian(net)(x, t)` needs no wrapper, and a loss of the
operators is differentiated with respect to the model's weights by
`eqx.filter_value_and_grad`.

The script

1. computes the value `(10, 3)`, df/dx `(10, 3, 3)`, df/dt `(10, 3)`, div f
   `(10,)` and grad div f `(10, 3)` for a batch of 10, with the named operators
   and with the one-pass `eqxderiv.derivatives(net, x, t)`, and prints the shapes;
2. checks them against `jax.vmap(jax.jacobian(net, argnums=...))` (`argnums=0`
   for df/dx, `argnums=1` reshaped to `(10, 3)` for df/dt) and, for the gradient
   of the divergence, against nested autodiff (`vmap` of `jacobian` of the trace
   of `jacobian`);
3. trains the network with `optax.adam(1e-3)` under `eqx.filter_jit` on the
   L2 loss of `seed_flax.py`, and checks that the loss falls.

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
python examples/seed_equinox.py            # 300 training steps
python examples/seed_equinox.py --steps 1000
```

It exits non-zero if a check fails.
"""

import argparse
import time

import equinox as eqx
import jax
import numpy as np
import optax
from _seed import answer_recipe, check_derivatives, loss_fn, report, sample

import eqxderiv


@eqx.filter_jit
def by_operators(net, x, t):
    f, df_dt, df_dx, grad_div = eqxderiv.derivatives(net, x, t)
    named = (
        eqxderiv.Value(net)(x, t),
        eqxderiv.Jacobian(net)(x, t),
        eqxderiv.TimeDerivative(net)(x, t),
        eqxderiv.Divergence(net)(x, t),
        eqxderiv.GradDiv(net)(x, t),
    )
    return named, (f, df_dt, df_dx, grad_div)


def check(net, x, t):
    """Steps 1 and 2 (see `_seed.check_derivatives`)."""
    named, one_pass = by_operators(net, x, t)
    reference = eqx.filter_jit(answer_recipe)(net, x, t)
    check_derivatives(named, one_pass, reference, x, "net")


def train(net, steps, key, train_batch=64, every=50):
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(eqx.filter(net, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(net, opt_state, key):
        x, t = sample(key, train_batch, net.in_size)
        loss, grads = eqx.filter_value_and_grad(loss_fn)(net, x, t)
        updates, opt_state = optimizer.update(grads, opt_state, net)
        return eqx.apply_updates(net, updates), opt_state, loss

    losses = []
    for step, k in enumerate(jax.random.split(key, steps)):
        net, opt_state, loss = train_step(net, opt_state, k)
        losses.append(float(loss))
        if step % every == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {losses[-1]:.4f}")
    return net, np.array(losses)


def main(steps: int) -> None:
    d = 3
    batch_size = 10
    model_key, key_x, key_t = jax.random.split(jax.random.key(100), 3)
    net = eqxderiv.SpaceTimeMLP(
        in_size=d, out_size=d, width=100, depth=2, key=model_key
    )

    x = jax.random.normal(key_x, (batch_size, d))  # batch, d
    t = jax.random.normal(key_t, (batch_size, 1))

    check(net, x, t)

    print(f"Training for {steps} steps on the score Fokker-Planck loss:")
    start = time.perf_counter()
    net, losses = train(net, steps, jax.random.key(0))
    print(f"  ({time.perf_counter() - start:.1f} s, including compilation)")

    report(losses, steps, jax.vmap(net), d)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    main(args.steps)
