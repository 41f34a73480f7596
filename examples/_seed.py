"""What the Equinox and Flax NNX ports of the seed question share: the answer's
recipe they are checked against, the checks, and the score Fokker-Planck loss
they train on. (Each model library jits these its own way, so nothing here is
jitted.)"""

import jax
import jax.numpy as jnp
import numpy as np

import eqxderiv


# float32 tolerances for comparing two exact autodiff computations.
RTOL, ATOL = 1e-4, 1e-5


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


def check_derivatives(named, one_pass, reference, x, name):
    """Steps 1 and 2: eqxderiv's named operators `named` (value, df/dx, df/dt,
    div f, grad div f) and `eqxderiv.derivatives` `one_pass` (value, df/dt, df/dx,
    grad div f), against `answer_recipe`'s `reference`; `name` is the model's
    name in the printout."""
    batch_size, d = x.shape
    out_f, df_dx, df_dt, div, grad_div = named
    f2, df_dt2, df_dx2, grad_div2 = one_pass
    print("eqxderiv operators:")
    print(f"  value          {out_f.shape}")
    print(f"  df/dx          {df_dx.shape}")
    print(f"  df/dt          {df_dt.shape}")
    print(f"  div f          {div.shape}")
    print(f"  grad div f     {grad_div.shape}")
    print(f"eqxderiv.derivatives({name}, x, t):")
    print(f"  {f2.shape}, {df_dt2.shape}, {df_dx2.shape}, {grad_div2.shape}")
    expected = {
        "value": (out_f, (batch_size, d)),
        "df/dx": (df_dx, (batch_size, d, d)),
        "df/dt": (df_dt, (batch_size, d)),
        "div f": (div, (batch_size,)),
        "grad div f": (grad_div, (batch_size, d)),
    }
    for label, (array, shape) in expected.items():
        np.testing.assert_equal(array.shape, shape, err_msg=label)

    ref_f, ref_dx, ref_dt, ref_div, ref_grad_div = reference
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
    for label, ours, ref in checks:
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL, err_msg=label)
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


def report(losses, steps, predict, d):
    """Step 3's verdict: the loss must fall below half its initial value (over
    100 steps or more); prints the error of the batched `predict(x, t)` against
    the exact score."""
    window = min(20, max(1, steps // 5))
    first, last = losses[:window].mean(), losses[-window:].mean()
    print(f"Mean loss over the first {window} steps: {first:.4f}, last: {last:.4f}")

    xs, ts = sample(jax.random.key(1), 1000, d)
    error = jnp.sqrt(
        jnp.mean(jnp.sum((predict(xs, ts) - exact_score(xs, ts)) ** 2, -1))
    )
    print(f"RMS error against the exact score -x / (1 + 2t): {float(error):.4f}")

    if steps < 100:
        print("(Fewer than 100 steps: the check that the loss falls is skipped.)")
    elif not last < 0.5 * first:
        raise SystemExit(
            f"FAILED: the loss did not fall enough ({first:.4f} -> {last:.4f})."
        )
    else:
        print("The loss fell below half its initial value.")
