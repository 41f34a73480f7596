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
import jax.numpy as jnp
import numpy as np
import optax

import eqxderiv


# float32 tolerances for comparing two exact autodiff computations.
RTOL, ATOL = 1e-4, 1e-5


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


@eqx.filter_jit
def answer_recipe(net, x, t):
    """The answer's `jax.vmap(jax.jacobian(...))` recipe, with the Equinox model in
    place of `net.apply` (the model takes one sample: `x` `(d,)`, `t` `(1,)`),
    and the gradient of the divergence by brute-force nested autodiff."""
    batch_size, d = x.shape
    ref_f = jax.vmap(net)(x, t)
    ref_dx = jax.vmap(jax.jacobian(net, argnums=0))(x, t)
    ref_dt = jax.vmap(jax.jacobian(net, argnums=1))(x, t).reshape(batch_size, d)

    # The Jacobian of the trace of the Jacobian.
    def divergence(x1, t1):
        return jnp.trace(jax.jacobian(net, argnums=0)(x1, t1))

    ref_div = jax.vmap(divergence)(x, t)
    ref_grad_div = jax.vmap(jax.jacobian(divergence))(x, t)
    return ref_f, ref_dx, ref_dt, ref_div, ref_grad_div


def check_derivatives(net, x, t):
    """Steps 1 and 2: eqxderiv against the answer's recipe and nested autodiff."""
    batch_size, d = x.shape
    (out_f, df_dx, df_dt, div, grad_div), one_pass = by_operators(net, x, t)
    f2, df_dt2, df_dx2, grad_div2 = one_pass
    print("eqxderiv operators:")
    print(f"  value          {out_f.shape}")
    print(f"  df/dx          {df_dx.shape}")
    print(f"  df/dt          {df_dt.shape}")
    print(f"  div f          {div.shape}")
    print(f"  grad div f     {grad_div.shape}")
    print("eqxderiv.derivatives(net, x, t):")
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

    ref_f, ref_dx, ref_dt, ref_div, ref_grad_div = answer_recipe(net, x, t)

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


def loss_fn(net, x, t):
    """Mean squared score Fokker-Planck residual plus the initial condition."""
    f, df_dt, df_dx, grad_div = eqxderiv.derivatives(net, x, t)
    grad_sq_norm = 2 * jnp.einsum("bij,bi->bj", df_dx, f)  # grad |f|^2 = 2 J^T f
    residual = df_dt - grad_div - grad_sq_norm
    initial = eqxderiv.Value(net)(x, jnp.zeros_like(t)) - exact_score(x, 0.0)
    return jnp.mean(jnp.sum(residual**2, -1)) + jnp.mean(jnp.sum(initial**2, -1))


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

    check_derivatives(net, x, t)

    print(f"Training for {steps} steps on the score Fokker-Planck loss:")
    start = time.perf_counter()
    net, losses = train(net, steps, jax.random.key(0))
    print(f"  ({time.perf_counter() - start:.1f} s, including compilation)")

    window = min(20, max(1, steps // 5))
    first, last = losses[:window].mean(), losses[-window:].mean()
    print(f"Mean loss over the first {window} steps: {first:.4f}, last: {last:.4f}")

    xs, ts = sample(jax.random.key(1), 1000, d)
    learned = jax.vmap(net)(xs, ts)
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
