r"""A continuous normalizing flow on two moons, trained with Hutchinson divergences.

The model. A velocity field $v(z, t)$ (an `eqxderiv.SpaceTimeMLP`) carries base
samples $z(0) \sim \mathcal N(0, I)$ in $\mathbb R^2$ along $\dot z = v(z, t)$ to
$x = z(1)$. Along a trajectory the log-density obeys the instantaneous change of
variables

$$\frac{d}{dt} \log p_t(z(t)) = -\nabla\cdot v(z(t), t), \qquad
\log p_1(x) = \log \mathcal N(z(0); 0, I) - \int_0^1 \nabla\cdot v\, dt,$$

so a data point's log-likelihood is computed by integrating $(z, \delta)$ with
$\dot z = v$, $\dot\delta = -\nabla\cdot v$ backwards from $(x, 0)$ at $t = 1$ to
$t = 0$ and taking $\log \mathcal N(z(0)) - \delta(0)$. The integrator is a
fixed-step RK4 written with `jax.lax.scan`.

The divergence. Each RK4 stage needs $v$ and $\nabla\cdot v$ at one point; both
come from one shared pass, `eqxderiv.derivatives(v, z, t, (Value, Divergence),
method=...)`:

- exact: the default method, the trace of the Jacobian from $d$ tangents;
- Hutchinson: `method=eqxderiv.Hutchinson(num_probes)`, the unbiased estimate
  $v_k^\top J v_k$ with Rademacher probes $v_k$ (a PRNG key is passed at call
  time). Each data point keeps the same probes along its whole trajectory (the
  same key at every stage), as in FFJORD; the log-likelihood estimate is then
  unbiased as well, because it is linear in the divergences and the trajectory
  does not depend on them.

Training maximises the Hutchinson log-likelihood (one probe per point) with Adam.

Success (the script exits with status 1 otherwise):

1. the exact log-likelihood of held-out data rises by more than `--min-gain`
   nats per point from the untrained to the trained flow;
2. on the trained flow, `Divergence(v, method=Hutchinson(...))` agrees with the
   exact `Divergence(v)` within its noise, and so does the Hutchinson estimate of
   the mean held-out log-likelihood: the difference from the exact value is
   below four standard errors.

The plot shows the data, the learned density (exact log-likelihood on a grid)
and samples drawn by integrating the flow from the base distribution.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import Timer, check, make_parser, plot_path, progress

import eqxderiv as ed


NAME = "cnf"


def two_moons(rng, n, noise=0.08):
    """`n` points of the two-moons toy density, standardised per coordinate."""
    angle = rng.uniform(0, np.pi, size=n)
    upper = rng.integers(2, size=n).astype(bool)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    z = np.stack([x, y], -1) + noise * rng.standard_normal((n, 2))
    # The mean and scale of the noise-free moons, so that every sample is
    # transformed by the same affine map.
    return jnp.asarray((z - np.array([0.5, 0.25])) / np.array([0.87, 0.5]), jnp.float32)


def rk4(f, y, t0, t1, steps):
    """Fixed-step RK4 for `dy/dt = f(t, y)` from `t0` to `t1`; `y` is a pytree."""
    h = (t1 - t0) / steps

    def axpy(a, x, y):
        return jax.tree.map(lambda x_, y_: y_ + a * x_, x, y)

    def body(y, i):
        t = t0 + i * h
        k1 = f(t, y)
        k2 = f(t + h / 2, axpy(h / 2, k1, y))
        k3 = f(t + h / 2, axpy(h / 2, k2, y))
        k4 = f(t + h, axpy(h, k3, y))
        incr = jax.tree.map(
            lambda a, b, c, d: (a + 2 * b + 2 * c + d) / 6, k1, k2, k3, k4
        )
        return axpy(h, incr, y), None

    y, _ = jax.lax.scan(body, y, jnp.arange(steps))
    return y


def log_likelihood(v, x, steps, method="auto", key=None):
    r"""Per-point $\log p_1(x)$ under the flow, with the divergence computed by
    `method` (exact by default; a stochastic method needs `key`)."""

    def dynamics(t, state):
        z, _ = state
        tt = jnp.full(z.shape[:-1], t, z.dtype)
        # One shared pass for v and its divergence; the same key at every stage
        # keeps each point's probes fixed along its trajectory.
        vel, div = ed.derivatives(
            v, z, tt, (ed.Value, ed.Divergence), method=method, key=key
        )
        return vel, -div

    z0, delta = rk4(dynamics, (x, jnp.zeros(x.shape[:-1], x.dtype)), 1.0, 0.0, steps)
    log_base = -0.5 * jnp.sum(z0**2, -1) - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi)
    return log_base - delta


def sample(v, z0, steps):
    r"""Pushes base samples through the flow, $t = 0 \to 1$."""

    def dynamics(t, z):
        return ed.Value(v)(z, jnp.full(z.shape[:-1], t, z.dtype))

    return rk4(dynamics, z0, 0.0, 1.0, steps)


def main():
    parser = make_parser(__doc__, NAME)
    parser.add_argument("--steps", type=int, default=600, help="Adam steps")
    parser.add_argument("--batch", type=int, default=256, help="points per step")
    parser.add_argument("--width", type=int, default=64, help="hidden units")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    parser.add_argument("--ode-steps", type=int, default=6, help="RK4 steps")
    parser.add_argument(
        "--probes", type=int, default=1, help="Hutchinson probes in training"
    )
    parser.add_argument("--test", type=int, default=2000, help="held-out points")
    parser.add_argument(
        "--min-gain", type=float, default=0.5, help="required gain (nats/point)"
    )
    args = parser.parse_args()
    timer = Timer()
    rng = np.random.default_rng(args.seed)
    key = jax.random.key(args.seed)
    kmodel, ktrain, kcheck = jax.random.split(key, 3)

    v = ed.SpaceTimeMLP(2, 2, args.width, args.depth, key=kmodel)
    x_test = two_moons(rng, args.test)
    exact_ll = eqx.filter_jit(lambda v, x: log_likelihood(v, x, args.ode_steps))
    ll_start = float(jnp.mean(exact_ll(v, x_test)))

    hutchinson = ed.Hutchinson(args.probes)
    optim = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps, alpha=1e-2))
    opt_state = optim.init(eqx.filter(v, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(v, opt_state, x, key):
        def loss_fn(v):
            ll = log_likelihood(v, x, args.ode_steps, hutchinson, key)
            return -jnp.mean(ll)

        loss, grads = eqx.filter_value_and_grad(loss_fn)(v)
        updates, opt_state = optim.update(grads, opt_state, v)
        return eqx.apply_updates(v, updates), opt_state, loss

    bar = progress(args.steps, "CNF")
    losses = []
    for i, k in zip(bar, jax.random.split(ktrain, args.steps)):
        v, opt_state, loss = step(v, opt_state, two_moons(rng, args.batch), k)
        losses.append(loss)
        if i % 50 == 0:
            bar.set_postfix(nll=f"{float(loss):.3f}")
    print(f"training done ({timer} since start)")
    ll_exact = exact_ll(v, x_test)
    ll_end = float(jnp.mean(ll_exact))
    print(
        f"held-out log-likelihood (exact divergence), nats per point: "
        f"{ll_start:.3f} before training, {ll_end:.3f} after"
    )

    # An independent check of the exact divergence: the trace of `jax.jacfwd`.
    t_half = jnp.full((args.test,), 0.5, jnp.float32)
    div_exact = ed.Divergence(v)(x_test, t_half)
    div_ref = jax.vmap(lambda x, t: jnp.trace(jax.jacfwd(v)(x, t)))(x_test, t_half)
    div_mismatch = float(jnp.max(jnp.abs(div_exact - div_ref)))
    print(f"Divergence(v) vs trace(jax.jacfwd(v)): max difference {div_mismatch:.1e}")

    # Hutchinson against exact, on the trained flow. First the divergence itself
    # at the held-out points, each repeated so that it gets `repeats` independent
    # probe draws (every sample of a batch gets its own probes).
    repeats = 16
    x_rep = jnp.tile(x_test, (repeats, 1))
    t_rep = jnp.full((x_rep.shape[0],), 0.5, jnp.float32)
    div_hutch = ed.Divergence(v, method=ed.Hutchinson(1))(x_rep, t_rep, key=kcheck)
    div_err = div_hutch.reshape(repeats, -1) - div_exact
    div_se = float(jnp.std(div_err) / jnp.sqrt(div_err.size))
    div_bias = float(jnp.mean(div_err))
    print(
        f"divergence at t = 0.5: Hutchinson (1 probe) - exact = {div_bias:+.2e} "
        f"on average, standard error {div_se:.1e}, one-probe std "
        f"{float(jnp.std(div_err)):.2e}, exact divergences of size "
        f"{float(jnp.std(div_exact)):.2e}"
    )

    # Then the log-likelihood, with the training estimator.
    hutch_ll = eqx.filter_jit(
        lambda v, x, k: log_likelihood(v, x, args.ode_steps, hutchinson, k)
    )
    keys = jax.random.split(jax.random.fold_in(kcheck, 1), repeats)
    ll_hutch = jnp.stack([hutch_ll(v, x_test, k) for k in keys])
    ll_err = ll_hutch - ll_exact
    ll_se = float(jnp.std(ll_err) / jnp.sqrt(ll_err.size))
    ll_bias = float(jnp.mean(ll_err))
    print(
        f"mean held-out log-likelihood: exact {ll_end:.4f}, Hutchinson "
        f"{float(jnp.mean(ll_hutch)):.4f} ({repeats} draws x {args.test} points; "
        f"difference {ll_bias:+.1e}, standard error {ll_se:.1e}, one-draw "
        f"per-point std {float(jnp.std(ll_err)):.2e})"
    )

    # The plot: data, learned density, samples from the flow.
    lim = 2.5
    g = jnp.linspace(-lim, lim, 80, dtype=jnp.float32)
    grid = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
    density = jnp.exp(exact_ll(v, grid)).reshape(80, 80)
    z0 = jnp.asarray(rng.standard_normal((2000, 2)), jnp.float32)
    samples = eqx.filter_jit(sample)(v, z0, args.ode_steps)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    axes[0].scatter(*x_test.T, s=2)
    axes[0].set_title("held-out data")
    axes[1].imshow(density, extent=(-lim, lim, -lim, lim), origin="lower")
    axes[1].set_title("learned density (exact divergence)")
    axes[2].scatter(*samples.T, s=2, color="C1")
    axes[2].set_title("samples: base N(0, I) pushed through the flow")
    for ax in axes[:3]:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    axes[3].plot(-np.asarray(jnp.stack(losses)), lw=0.5)
    axes[3].axhline(ll_start, color="k", ls=":", lw=0.8, label="held-out, start")
    axes[3].axhline(ll_end, color="k", ls="--", lw=0.8, label="held-out, end")
    axes[3].set_xlabel("step")
    axes[3].set_title("log-likelihood (Hutchinson, training batches)")
    axes[3].legend()
    fig.tight_layout()
    path = plot_path(args, NAME)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}; total time {timer}")

    check(div_mismatch < 1e-4, "the exact divergence matches jax.jacfwd")
    gain = ll_end - ll_start
    check(
        gain > args.min_gain,
        f"held-out log-likelihood rose by {gain:.3f} > {args.min_gain:g} nats/point",
    )
    check(
        abs(div_bias) < 4 * div_se,
        f"Hutchinson divergence agrees with the exact one: |{div_bias:.1e}| < "
        f"4 x {div_se:.1e}",
    )
    check(
        abs(ll_bias) < 4 * ll_se,
        f"Hutchinson log-likelihood agrees with the exact one: |{ll_bias:.1e}| < "
        f"4 x {ll_se:.1e}",
    )


if __name__ == "__main__":
    main()
