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
from flax import nnx

import eqxderiv


# float32 tolerances for comparing two exact autodiff computations.
RTOL, ATOL = 1e-4, 1e-5


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


@nnx.jit
def answer_recipe(model, x, t):
    """The answer's `jax.vmap(jax.jacobian(...))` recipe, with the model in place
    of `net.apply` (called on one sample: `x` `(d,)`, `t` `(1,)`), and the gradient
    of the divergence by brute-force nested autodiff."""
    batch_size, d = x.shape
    ref_f = jax.vmap(model)(x, t)
    ref_dx = jax.vmap(jax.jacobian(model, argnums=0))(x, t)
    ref_dt = jax.vmap(jax.jacobian(model, argnums=1))(x, t).reshape(batch_size, d)

    # The Jacobian of the trace of the Jacobian.
    def divergence(x1, t1):
        return jnp.trace(jax.jacobian(model, argnums=0)(x1, t1))

    ref_div = jax.vmap(divergence)(x, t)
    ref_grad_div = jax.vmap(jax.jacobian(divergence))(x, t)
    return ref_f, ref_dx, ref_dt, ref_div, ref_grad_div


def check_derivatives(model, x, t):
    """Steps 1 and 2: eqxderiv against the answer's recipe and nested autodiff."""
    batch_size, d = x.shape
    (out_f, df_dx, df_dt, div, grad_div), one_pass = by_operators(model, x, t)
    f2, df_dt2, df_dx2, grad_div2 = one_pass
    print("eqxderiv operators:")
    print(f"  value          {out_f.shape}")
    print(f"  df/dx          {df_dx.shape}")
    print(f"  df/dt          {df_dt.shape}")
    print(f"  div f          {div.shape}")
    print(f"  grad div f     {grad_div.shape}")
    print("eqxderiv.derivatives(model, x, t):")
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

    ref_f, ref_dx, ref_dt, ref_div, ref_grad_div = answer_recipe(model, x, t)

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


def loss_fn(model, x, t):
    """Mean squared score Fokker-Planck residual plus the initial condition."""
    f, df_dt, df_dx, grad_div = eqxderiv.derivatives(model, x, t)
    grad_sq_norm = 2 * jnp.einsum("bij,bi->bj", df_dx, f)  # grad |f|^2 = 2 J^T f
    residual = df_dt - grad_div - grad_sq_norm
    initial = eqxderiv.Value(model)(x, jnp.zeros_like(t)) - exact_score(x, 0.0)
    return jnp.mean(jnp.sum(residual**2, -1)) + jnp.mean(jnp.sum(initial**2, -1))


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

    check_derivatives(model, x, t)

    print(f"Training for {steps} steps on the score Fokker-Planck loss:")
    start = time.perf_counter()
    losses = train(model, steps, jax.random.PRNGKey(0))
    print(f"  ({time.perf_counter() - start:.1f} s, including compilation)")

    window = min(20, max(1, steps // 5))
    first, last = losses[:window].mean(), losses[-window:].mean()
    print(f"Mean loss over the first {window} steps: {first:.4f}, last: {last:.4f}")

    xs, ts = sample(jax.random.PRNGKey(1), 1000, d)
    learned = model(xs, ts)
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
