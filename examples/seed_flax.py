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
from flax.training import train_state

import eqxderiv


# float32 tolerances for comparing two exact autodiff computations.
RTOL, ATOL = 1e-4, 1e-5


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


def check_derivatives(net, params_net, x, t):
    """Steps 1 and 2: eqxderiv against the answer's recipe and nested autodiff."""
    batch_size, d = x.shape
    field = eqxderiv.from_flax(net, params_net)
    (out_f, df_dx, df_dt, div, grad_div), one_pass = by_operators(field, x, t)
    f2, df_dt2, df_dx2, grad_div2 = one_pass
    print("eqxderiv operators:")
    print(f"  value          {out_f.shape}")
    print(f"  df/dx          {df_dx.shape}")
    print(f"  df/dt          {df_dt.shape}")
    print(f"  div f          {div.shape}")
    print(f"  grad div f     {grad_div.shape}")
    print("eqxderiv.derivatives(field, x, t):")
    print(f"  {f2.shape}, {df_dt2.shape}, {df_dx2.shape}, {grad_div2.shape}")
    expected = {
        "value": (out_f, (batch_size, d)),
        "df/dx": (df_dx, (batch_size, d, d)),
        "df/dt": (df_dt, (batch_size, d)),
        "div f": (div, (batch_size,)),
        "grad div f": (grad_div, (batch_size, d)),
    }
    for name, (array, shape) in expected.items():
        np.testing.assert_equal(array.shape, shape, err_msg=name)

    ref_f, ref_dx, ref_dt, ref_div, ref_grad_div = answer_recipe(net, params_net, x, t)

    checks = [
        ("value", out_f, ref_f),
        ("df/dx", df_dx, ref_dx),
        ("df/dt", df_dt, ref_dt),
        ("div f", div, ref_div),
        ("grad div f", grad_div, ref_grad_div),
        ("derivatives: value", f2, ref_f),
        ("derivatives: df/dt", df_dt2, ref_dt),
        ("derivatives: df/dx", df_dx2, ref_dx),
        ("derivatives: grad div f", grad_div2, ref_grad_div),
    ]
    for name, ours, ref in checks:
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL, err_msg=name)
    print(f"All {len(checks)} quantities match jax.vmap(jax.jacobian(...)) recipes.")


def exact_score(x, t):
    """The score of N(0, (1 + 2t) I), the heat flow of N(0, I)."""
    return -x / (1 + 2 * t)


def sample(key, n, d):
    """Fresh training points: t ~ U(0, 1), x ~ N(0, (1 + 2t) I)."""
    kt, kx = jax.random.split(key)
    t = jax.random.uniform(kt, (n, 1))
    x = jnp.sqrt(1 + 2 * t) * jax.random.normal(kx, (n, d))
    return x, t


def loss_fn(params, net, x, t):
    """Mean squared score Fokker-Planck residual plus the initial condition."""
    field = eqxderiv.from_flax(net, params)
    f, df_dt, df_dx, grad_div = eqxderiv.derivatives(field, x, t)
    grad_sq_norm = 2 * jnp.einsum("bij,bi->bj", df_dx, f)  # grad |f|^2 = 2 J^T f
    residual = df_dt - grad_div - grad_sq_norm
    initial = eqxderiv.Value(field)(x, jnp.zeros_like(t)) - exact_score(x, 0.0)
    return jnp.mean(jnp.sum(residual**2, -1)) + jnp.mean(jnp.sum(initial**2, -1))


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

    check_derivatives(net, params_net, x, t)

    optimizer = optax.adam(1e-3)
    model_state = train_state.TrainState.create(
        apply_fn=net.apply, params=params_net, tx=optimizer
    )

    print(f"Training for {steps} steps on the score Fokker-Planck loss:")
    start = time.perf_counter()
    model_state, losses = train(net, model_state, steps, jax.random.PRNGKey(0))
    print(f"  ({time.perf_counter() - start:.1f} s, including compilation)")

    window = min(20, max(1, steps // 5))
    first, last = losses[:window].mean(), losses[-window:].mean()
    print(f"Mean loss over the first {window} steps: {first:.4f}, last: {last:.4f}")

    xs, ts = sample(jax.random.PRNGKey(1), 1000, d)
    learned = model_state.apply_fn(model_state.params, xs, ts)
    error = jnp.sqrt(jnp.mean(jnp.sum((learned - exact_score(xs, ts)) ** 2, -1)))
    print(f"RMS error against the exact score -x / (1 + 2t): {float(error):.4f}")

    if steps < 100:
        print("(Fewer than 100 steps: the check that the loss falls is skipped.)")
    elif not last < 0.5 * first:
        raise SystemExit(
            f"FAILED: the loss did not fall enough ({first:.4f} -> {last:.4f})."
        )
    else:
        print("The loss fell below half its initial value.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    main(args.steps)
