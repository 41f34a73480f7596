r"""A continuous normalizing flow on two moons, trained with Hutchinson divergences.

The model. A velocity field $v(z, t)$ (an `eqxderiv.SpaceTimeMLP`) carries base
samples $z(0) \sim \mathcal N(0, I)$ in $\mathbb R^2$ along $\dot z = v(z, t)$ to
$x = z(1)$. Along a trajectory the log-density obeys the instantaneous change of
variables

$$\frac{d}{dt} \log p_t(z(t)) = -\nabla\cdot v(z(t), t), \qquad
\log p_1(x) = \log \mathcal N(z(0); 0, I) - \int_0^1 \nabla\cdot v\, dt,$$

so a data point's log-likelihood is computed by integrating $(z, \delta)$ with
$\dot z = v$, $\dot\delta = -\nabla\cdot v$ backwards from $(x, 0)$ at $t = 1$ to
$t = 0$ and taking $\log \mathcal N(z(0)) - \delta(0)$.

The solver. The augmented ODE is solved by `diffrax.diffeqsolve` with an
`ODETerm`, the adaptive `Tsit5` and a `PIDController` (looser tolerances in
training, tighter ones for the evaluations; a batch is one solve, so its points
share the step sizes). Gradients for training go through the solve with
`diffrax.RecursiveCheckpointAdjoint` (diffrax's default: backpropagation through
the solver's steps with checkpointing); `--adjoint backsolve` selects
`diffrax.BacksolveAdjoint` (the continuous adjoint of Neural ODEs: a second,
backwards solve, with memory independent of the number of steps). The model and
the PRNG key travel in the solve's `args`, so that either adjoint sees them.

The divergence. Each evaluation of the vector field needs $v$ and
$\nabla\cdot v$ at one point; both come from one shared pass,
`eqxderiv.derivatives(v, z, t, (Value, Divergence), method=...)`:

- exact: the default method, the trace of the Jacobian from $d$ tangents (the same
  as `eqxderiv.Divergence(v)`);
- Hutchinson: `method=eqxderiv.Hutchinson(num_probes)`, the unbiased estimate
  $v_k^\top J v_k$ with Rademacher probes $v_k$ (a PRNG key is passed at call
  time). One key per solve, passed at every evaluation: each data point keeps the
  same probes along its whole trajectory, as in FFJORD, and the log-likelihood
  estimate is then unbiased as well, because it is linear in the divergences and
  the trajectory does not depend on them.

Training maximises the Hutchinson log-likelihood (one probe per point) with Adam.

Success (the script exits with status 1 otherwise):

1. the solver and the divergence against closed forms: on a linear flow
   $v(z, t) = A z$, where $z(0) = e^{-A} x$ and $\nabla\cdot v =
   \operatorname{tr} A$, the solved log-likelihood matches
   $\log \mathcal N(e^{-A} x; 0, I) - \operatorname{tr} A$ within `1e-3` nats
   per point, and the exact divergence of the trained field matches the trace
   of `jax.jacfwd` within `1e-4`;
2. the exact log-likelihood of held-out data rises by more than `--min-gain`
   nats per point from the untrained to the trained flow;
3. on the trained flow, `Divergence(v, method=Hutchinson(...))` agrees with the
   exact `Divergence(v)` within its noise, and so does the Hutchinson estimate of
   the mean held-out log-likelihood: the difference from the exact value is
   below four standard errors.

The plot shows the data, the learned density (exact log-likelihood on a grid)
and samples drawn by integrating the flow from the base distribution.
"""

import diffrax
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


def augmented_dynamics(method):
    r"""The vector field of the augmented ODE $(\dot z, \dot\delta) = (v,
    -\nabla\cdot v)$, in diffrax's `(t, y, args)` form with `args = (v, key)`."""

    def dynamics(t, state, args):
        v, key = args
        z, _ = state
        # One shared pass for v and its divergence. The key is the same at every
        # evaluation of the solve, so each point keeps its probes along its
        # trajectory (FFJORD); it is ignored by the exact method.
        vel, div = ed.derivatives(
            v,
            z,
            jnp.asarray(t, z.dtype),
            (ed.Value, ed.Divergence),
            method=method,
            key=key,
        )
        return vel, -div

    return dynamics


class Solver(eqx.Module):
    """The ODE solver settings shared by every solve of the script."""

    rtol: float
    atol: float
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()

    def solve(self, dynamics, y0, t0, t1, args):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(dynamics),
            diffrax.Tsit5(),
            t0,
            t1,
            None,  # The first step is chosen by the controller.
            y0,
            args=args,
            stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            adjoint=self.adjoint,
        )
        # The state at t1, and the number of accepted steps.
        return jax.tree.map(lambda y: y[-1], sol.ys), sol.stats["num_accepted_steps"]


def log_likelihood(v, x, solver, method="auto", key=None):
    r"""Per-point $\log p_1(x)$ under the flow, with the divergence computed by
    `method` (exact by default; a stochastic method needs `key`, one per solve),
    and the number of solver steps."""
    y0 = (x, jnp.zeros(x.shape[:-1], x.dtype))
    (z0, delta), steps = solver.solve(
        augmented_dynamics(method), y0, 1.0, 0.0, (v, key)
    )
    log_base = -0.5 * jnp.sum(z0**2, -1) - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi)
    return log_base - delta, steps


def sample(v, z0, solver):
    r"""Pushes base samples through the flow, $t = 0 \to 1$."""

    def dynamics(t, z, v):
        return ed.Value(v)(z, jnp.asarray(t, z.dtype))

    return solver.solve(dynamics, z0, 0.0, 1.0, v)[0]


def linear_flow_check(x, solver):
    r"""The solved log-likelihood of the linear flow $v(z, t) = A z$ against its
    closed form; returns the largest difference in nats."""
    A = jnp.array([[0.3, -1.2], [0.8, -0.5]], x.dtype)
    v = lambda z, t: z @ A.T
    ll, _ = log_likelihood(v, x, solver)
    z0 = x @ jax.scipy.linalg.expm(-A).T
    log_base = -0.5 * jnp.sum(z0**2, -1) - jnp.log(2 * jnp.pi)
    return jnp.max(jnp.abs(ll - (log_base - jnp.trace(A))))


def main():
    parser = make_parser(__doc__, NAME)
    parser.add_argument("--steps", type=int, default=600, help="Adam steps")
    parser.add_argument("--batch", type=int, default=256, help="points per step")
    parser.add_argument("--width", type=int, default=64, help="hidden units")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    parser.add_argument(
        "--train-tol",
        type=float,
        default=1e-3,
        help="rtol = atol of the adaptive solver in training",
    )
    parser.add_argument(
        "--eval-tol",
        type=float,
        default=1e-5,
        help="rtol = atol of the adaptive solver in the evaluations",
    )
    parser.add_argument(
        "--adjoint",
        choices=["checkpoint", "backsolve"],
        default="checkpoint",
        help="gradients through the solve: diffrax.RecursiveCheckpointAdjoint "
        "(default) or diffrax.BacksolveAdjoint",
    )
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
    evaluate = Solver(args.eval_tol, args.eval_tol)
    if args.adjoint == "checkpoint":
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    else:
        # The backwards solve inherits the forward solve's solver and controller.
        adjoint = diffrax.BacksolveAdjoint()
    train_solver = Solver(args.train_tol, args.train_tol, adjoint)
    exact_ll = eqx.filter_jit(lambda v, x: log_likelihood(v, x, evaluate))

    # The solver and the exact divergence against the linear flow's closed form.
    linear_error = float(eqx.filter_jit(linear_flow_check)(x_test, evaluate))
    print(
        f"linear flow v = A z: log-likelihood vs closed form, max difference "
        f"{linear_error:.1e} nats"
    )

    ll_start = float(jnp.mean(exact_ll(v, x_test)[0]))

    hutchinson = ed.Hutchinson(args.probes)
    optim = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps, alpha=1e-2))
    opt_state = optim.init(eqx.filter(v, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(v, opt_state, x, key):
        def loss_fn(v):
            # One key for the whole solve: fixed probes along each trajectory.
            ll, steps = log_likelihood(v, x, train_solver, hutchinson, key)
            return -jnp.mean(ll), steps

        (loss, steps), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(v)
        updates, opt_state = optim.update(grads, opt_state, v)
        return eqx.apply_updates(v, updates), opt_state, loss, steps

    bar = progress(args.steps, "CNF")
    losses, solver_steps = [], []
    for i, k in zip(bar, jax.random.split(ktrain, args.steps)):
        v, opt_state, loss, n = step(v, opt_state, two_moons(rng, args.batch), k)
        losses.append(loss)
        solver_steps.append(n)
        if i % 50 == 0:
            bar.set_postfix(nll=f"{float(loss):.3f}", ode_steps=int(n))
    solver_steps = np.asarray(jnp.stack(solver_steps))
    print(
        f"training done ({timer} since start); Tsit5 steps per solve at tolerance "
        f"{args.train_tol:g}: {solver_steps[0]} at the start, "
        f"{solver_steps[-1]} at the end, at most {solver_steps.max()}"
    )
    ll_exact, eval_steps = exact_ll(v, x_test)
    ll_end = float(jnp.mean(ll_exact))
    print(
        f"held-out log-likelihood (exact divergence), nats per point: "
        f"{ll_start:.3f} before training, {ll_end:.3f} after ({int(eval_steps)} "
        f"Tsit5 steps at tolerance {args.eval_tol:g})"
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
    # One key per solve (all held-out points in one solve), `repeats` solves.
    hutch_ll = eqx.filter_jit(
        lambda v, x, k: log_likelihood(v, x, evaluate, hutchinson, k)[0]
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
    density = jnp.exp(exact_ll(v, grid)[0]).reshape(80, 80)
    z0 = jnp.asarray(rng.standard_normal((2000, 2)), jnp.float32)
    samples = eqx.filter_jit(sample)(v, z0, evaluate)
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

    check(
        linear_error < 1e-3,
        f"linear flow: log-likelihood matches the closed form, "
        f"{linear_error:.1e} < 1e-3 nats",
    )
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
