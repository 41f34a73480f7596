r"""A physics-informed network for the heat equation in ten dimensions.

The problem. On the unit cube $x \in [0, 1]^d$, $d = 10$, and times
$t \in [0, T]$, find $u(x, t)$ with

$$\partial_t u = \Delta u, \qquad u(x, 0) = u_0(x), \qquad
u = g \text{ on the boundary faces } x_i \in \{0, 1\},$$

where the data come from the exact solution

$$u(x, t) = e^{-t}\, \frac1d \sum_{i=1}^d \sin x_i .$$

(Check: $\partial_t u = -u$, and $\partial^2_{x_i} \sin x_i = -\sin x_i$ gives
$\Delta u = -u$ too.)

The method. A tanh `eqxderiv.SpaceTimeMLP` (3 hidden layers of 32 units, fed
$(2x - 1, 2t/T - 1)$ so that its inputs lie in $[-1, 1]$) is trained with Adam
and a cosine learning-rate decay, on fresh random points every step, to minimise

$$\operatorname{mean}\, (\partial_t u_\theta - \Delta u_\theta)^2
+ w\operatorname{mean}_{t=0} (u_\theta - u_0)^2
+ w\operatorname{mean}_{\text{faces}} (u_\theta - g)^2, \qquad w = 10 .$$

The residual is one operator, `TimeDerivative(u) - Laplacian(u)`; the two terms
of the same field are fused, so $\partial_t u$ and the Laplacian come from one
collapsed Taylor-mode pass (no $10 \times 10$ Hessian is formed).

Success. The relative $L^2$ error
$\|u_\theta - u\|_2 / \|u\|_2$ over random test points of
$[0, 1]^{10} \times [0, T]$ is below `--tol` (default $10^{-2}$); the script
exits with status 1 otherwise. The plot shows the training losses and the
test error, and a slice $u(x_1, x_2 = \dots = x_{10} = \tfrac12, t)$ of the
learned and exact solutions.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import Timer, check, make_parser, plot_path, progress

import eqxderiv as ed


NAME = "heat_pinn"


def exact(x, t):
    """The exact solution for a batch: `x` `(*b, d)`, `t` `(*b,)`."""
    return jnp.exp(-t) * jnp.mean(jnp.sin(x), axis=-1)


class Scaled(eqx.Module):
    r"""The field $u(x, t) = \mathrm{net}(2x - 1, 2t/T - 1)$: the network sees
    inputs in $[-1, 1]$, which makes tanh networks train noticeably faster here.
    Operators differentiate through the rescaling like any other code."""

    net: ed.SpaceTimeMLP
    T: float = eqx.field(static=True)

    def __call__(self, x, t):
        return self.net(2 * x - 1, 2 * t / self.T - 1)


def sample(rng, n_pde, n_bc, d, T):
    """Interior, initial and boundary points for one training step, drawn on the
    host with NumPy (cheap, and keeps the random-number code out of the compiled
    training step)."""
    x = rng.uniform(size=(n_pde, d))
    t = rng.uniform(high=T, size=n_pde)
    x0 = rng.uniform(size=(n_bc, d))
    # Boundary: a uniform point with one random coordinate pinned to 0 or 1.
    xb = rng.uniform(size=(n_bc, d))
    xb[np.arange(n_bc), rng.integers(d, size=n_bc)] = rng.integers(2, size=n_bc)
    tb = rng.uniform(high=T, size=n_bc)
    return tuple(jnp.asarray(a, jnp.float32) for a in (x, t, x0, xb, tb))


def losses(u, batch):
    """The three mean-squared terms: PDE residual, initial and boundary misfit."""
    x, t, x0, xb, tb = batch
    heat = ed.TimeDerivative(u) - ed.Laplacian(u)
    value = ed.Value(u)
    pde = jnp.mean(heat(x, t) ** 2)
    init = jnp.mean((value(x0, jnp.zeros_like(tb)) - exact(x0, 0.0)) ** 2)
    bound = jnp.mean((value(xb, tb) - exact(xb, tb)) ** 2)
    return jnp.stack([pde, init, bound])


def relative_error(u, x, t):
    pred = ed.Value(u)(x, t)
    true = exact(x, t)
    return jnp.linalg.norm(pred - true) / jnp.linalg.norm(true)


def main():
    parser = make_parser(__doc__, NAME)
    parser.add_argument("--dim", type=int, default=10, help="spatial dimension d")
    parser.add_argument("--T", type=float, default=1.0, help="final time")
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps")
    parser.add_argument("--batch", type=int, default=256, help="interior points")
    parser.add_argument(
        "--bc-batch", type=int, default=1024, help="initial and boundary points"
    )
    parser.add_argument(
        "--bc-weight", type=float, default=10.0, help="weight of those two terms"
    )
    parser.add_argument("--width", type=int, default=32, help="hidden units")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--lr", type=float, default=2e-2, help="peak learning rate")
    parser.add_argument("--test", type=int, default=20_000, help="test points")
    parser.add_argument("--tol", type=float, default=1e-2, help="error to meet")
    args = parser.parse_args()
    timer = Timer()

    d = args.dim
    rng = np.random.default_rng(args.seed)

    # The residual operator applied to the exact solution (a plain function) is
    # zero up to float32 round-off: a check of the operator and of the solution.
    x_check, t_check, *_ = sample(rng, 1000, 1, d, args.T)
    exact_residual = (ed.TimeDerivative(exact) - ed.Laplacian(exact))(x_check, t_check)
    max_exact = float(jnp.max(jnp.abs(exact_residual)))
    print(f"max |u_t - Laplacian u| for the exact solution: {max_exact:.1e}")
    check(max_exact < 1e-5, "the exact solution solves the heat equation")

    net = ed.SpaceTimeMLP(
        d, "scalar", args.width, args.depth, key=jax.random.key(args.seed)
    )
    u = Scaled(net, args.T)
    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=1e-3)
    optim = optax.adam(schedule)
    opt_state = optim.init(eqx.filter(u, eqx.is_inexact_array))
    weights = jnp.array([1.0, args.bc_weight, args.bc_weight])

    @eqx.filter_jit
    def step(u, opt_state, batch):
        def loss_fn(u):
            terms = losses(u, batch)
            return jnp.dot(weights, terms), terms

        (_, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(u)
        updates, opt_state = optim.update(grads, opt_state, u)
        return eqx.apply_updates(u, updates), opt_state, terms

    x_test = jnp.asarray(rng.uniform(size=(args.test, d)), jnp.float32)
    t_test = jnp.asarray(rng.uniform(high=args.T, size=args.test), jnp.float32)
    error_fn = eqx.filter_jit(relative_error)

    history, errors = [], []
    bar = progress(args.steps, "heat PINN")
    for i in bar:
        batch = sample(rng, args.batch, args.bc_batch, d, args.T)
        u, opt_state, terms = step(u, opt_state, batch)
        history.append(terms)
        if i % 100 == 0 or i == args.steps - 1:
            errors.append((i, float(error_fn(u, x_test, t_test))))
            bar.set_postfix(pde=f"{float(terms[0]):.1e}", err=f"{errors[-1][1]:.2e}")
    history = np.asarray(jnp.stack(history))
    error = errors[-1][1]
    # An independent check of the fused operator on the trained network: plain
    # JAX nested autodiff (`jax.hessian`, `jax.grad`) on 100 test points.
    n = 100
    ref = jax.vmap(
        lambda x, t: jax.grad(u, argnums=1)(x, t) - jnp.trace(jax.hessian(u)(x, t))
    )(x_test[:n], t_test[:n])
    got = (ed.TimeDerivative(u) - ed.Laplacian(u))(x_test[:n], t_test[:n])
    mismatch = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
    print(f"fused residual vs jax.hessian on the trained network: {mismatch:.1e}")
    print(f"relative L2 error on {args.test} test points: {error:.3e}")
    print(
        f"final losses: pde {history[-1, 0]:.2e}, initial {history[-1, 1]:.2e}, "
        f"boundary {history[-1, 2]:.2e}"
    )

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    for j, label in enumerate(["PDE residual", "initial", "boundary"]):
        ax0.semilogy(history[:, j], label=label, lw=0.8)
    ax0.semilogy(*zip(*errors), "k.-", label="relative $L^2$ error (test)")
    ax0.axhline(args.tol, color="k", ls=":", lw=0.8)
    ax0.set_xlabel("step")
    ax0.set_title(f"heat equation, d = {d}")
    ax0.legend()
    s = jnp.linspace(0, 1, 101)
    for tt, c in zip([0.0, 0.5 * args.T, args.T], ["C0", "C1", "C2"]):
        xs = jnp.full((101, d), 0.5).at[:, 0].set(s)
        ts = jnp.full((101,), tt)
        ax1.plot(s, exact(xs, ts), c, lw=3, alpha=0.4, label=f"exact, t = {tt:g}")
        ax1.plot(s, ed.Value(u)(xs, ts), c + "--", label=f"PINN, t = {tt:g}")
    ax1.set_xlabel("$x_1$ (other coordinates = 1/2)")
    ax1.set_ylabel("u")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path = plot_path(args, NAME)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}; total time {timer}")

    check(mismatch < 1e-4, "the fused residual matches nested autodiff")
    check(
        bool(error < args.tol),
        f"relative L2 error {error:.3e} < {args.tol:g}",
    )


if __name__ == "__main__":
    main()
