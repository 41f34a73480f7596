r"""A physics-informed network for the steady Navier–Stokes equations: Kovasznay flow.

The problem. On $\Omega = [-\tfrac12, 1] \times [-\tfrac12, \tfrac32]$, find the
velocity $\mathbf u = (u, v)$ and the pressure $p$ of a steady incompressible
flow with

$$(\mathbf u \cdot \nabla)\mathbf u + \nabla p - \nu \Delta \mathbf u = 0,
\qquad \nabla \cdot \mathbf u = 0, \qquad \nu = 1/\mathrm{Re},$$

and $(\mathbf u, p)$ given on $\partial\Omega$ by Kovasznay's exact solution
(a laminar flow behind a two-dimensional grid),

$$u = 1 - e^{\lambda x}\cos 2\pi y, \quad
v = \frac{\lambda}{2\pi} e^{\lambda x}\sin 2\pi y, \quad
p = \tfrac12\,(1 - e^{2\lambda x}), \qquad
\lambda = \frac{\mathrm{Re}}2 - \sqrt{\frac{\mathrm{Re}^2}4 + 4\pi^2},$$

with $\mathrm{Re} = 20$ by default.

The method. One network $\mathbf x \mapsto (u, v, p)$ (an
`eqxderiv.SpaceTimeMLP` without a time input, fed the point rescaled to
$[-1, 1]^2$). `eqxderiv.Component` takes its outputs apart as fields of their
own, `vel = Component(net, slice(0, 2))` and `p = Component(net, 2)`, and the
residuals are written as the equations read:

```python
momentum = Advection(vel) + Grad(p) - nu * Laplacian(vel)
continuity = Divergence(vel)
```

The components are of the same network object, so the three terms of
`momentum` fuse into one propagation of the network: its value, Jacobian and
Laplacian at each point come from one collapsed Taylor-mode pass, and the
network's Python code is traced twice in all (once for the output shape, once
for the pass), as for one derivative of it. The script counts those traces and
asserts it. The loss is

$$\operatorname{mean} |\text{momentum}|^2 + \operatorname{mean}
(\text{continuity})^2 + w \operatorname{mean}_{\partial\Omega}
|(u, v, p)_\theta - (u, v, p)|^2, \qquad w = 10,$$

on fixed random collocation points, minimised by Adam with a cosine decay, then
by a few L-BFGS steps (`optax.lbfgs`, with its zoom line search), which take the
error down by about a factor of ten. It takes about a minute on two CPU cores.

Success (the script exits with status 1 otherwise):

- the residuals vanish to float32 round-off on the exact solution, written as a
  jnp field (relative to the size of the terms, $< 10^{-5}$);
- the momentum residual traces the network at most twice;
- the fused residual on the trained network matches plain nested autodiff
  (`jax.jacfwd`, `jax.hessian`);
- the relative $L^2$ error of the learned velocity on a $101 \times 101$ grid,
  $\|\mathbf u_\theta - \mathbf u\|_2 / \|\mathbf u\|_2$, is below `--tol`
  (default $2 \times 10^{-2}$).

The plot shows the losses and the test error, the learned speed with
streamlines, and the pointwise velocity error.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import Timer, check, make_parser, plot_path, progress

import eqxderiv as ed


NAME = "navier_stokes"
LOWER, UPPER = np.array([-0.5, -0.5]), np.array([1.0, 1.5])


def kovasznay_lambda(re: float) -> float:
    return re / 2 - float(np.sqrt(re**2 / 4 + 4 * np.pi**2))


class Kovasznay(eqx.Module):
    """The exact solution as a field of one point: `x` `(2,)` -> `(u, v, p)`."""

    lam: float

    def __call__(self, x):
        e = jnp.exp(self.lam * x[0])
        u = 1 - e * jnp.cos(2 * jnp.pi * x[1])
        v = self.lam / (2 * jnp.pi) * e * jnp.sin(2 * jnp.pi * x[1])
        p = (1 - e**2) / 2
        return jnp.stack([u, v, p])


class Scaled(eqx.Module):
    """The field `net(2 (x - lower) / (upper - lower) - 1)`: the network sees the
    domain as [-1, 1]^2. Operators differentiate through the rescaling."""

    net: ed.SpaceTimeMLP

    def __call__(self, x):
        lower, upper = jnp.asarray(LOWER, x.dtype), jnp.asarray(UPPER, x.dtype)
        return self.net(2 * (x - lower) / (upper - lower) - 1)


def residuals(field, nu):
    """The momentum and continuity residuals of a field `x -> (u, v, p)`, as
    operators."""
    vel, p = ed.Component(field, slice(0, 2)), ed.Component(field, 2)
    momentum = ed.Advection(vel) + ed.Grad(p) - nu * ed.Laplacian(vel)
    return momentum, ed.Divergence(vel)


def residuals_by_nested_autodiff(field, nu, x):
    """The same residuals with plain JAX (`jax.jacfwd`, `jax.hessian`), for a
    check on the trained network."""

    def one(x):
        vel = lambda y: field(y)[:2]
        J = jax.jacfwd(vel)(x)
        grad_p = jax.grad(lambda y: field(y)[2])(x)
        lap = jnp.trace(jax.hessian(vel)(x), axis1=-2, axis2=-1)
        return J @ vel(x) + grad_p - nu * lap, jnp.trace(J)

    return jax.vmap(one)(x)


def boundary_points(rng, n):
    """`n` uniform points on the boundary of the rectangle."""
    side = rng.integers(4, size=n)
    s = rng.uniform(size=n)
    x = np.where(side < 2, s, side - 2.0)  # sides 0, 1: y fixed; 2, 3: x fixed
    y = np.where(side < 2, side.astype(float), s)
    return LOWER + (UPPER - LOWER) * np.stack([x, y], axis=-1)


class Counted(eqx.Module):
    """A field that counts the runs of its Python body, i.e. its traces."""

    field: Scaled
    calls: list = eqx.field(static=True)

    def __call__(self, x):
        self.calls[0] += 1
        return self.field(x)


def main():
    parser = make_parser(__doc__, NAME)
    parser.add_argument("--re", type=float, default=20.0, help="Reynolds number")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps")
    parser.add_argument("--lbfgs", type=int, default=500, help="L-BFGS steps")
    parser.add_argument("--n-pde", type=int, default=2000, help="interior points")
    parser.add_argument("--n-bc", type=int, default=400, help="boundary points")
    parser.add_argument("--bc-weight", type=float, default=10.0, help="weight w")
    parser.add_argument("--width", type=int, default=40, help="hidden units")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--tol", type=float, default=2e-2, help="error to meet")
    args = parser.parse_args()
    timer = Timer()

    nu, lam = 1 / args.re, kovasznay_lambda(args.re)
    exact = Kovasznay(lam)
    rng = np.random.default_rng(args.seed)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    x_pde = f32(LOWER + (UPPER - LOWER) * rng.uniform(size=(args.n_pde, 2)))
    x_bc = f32(boundary_points(rng, args.n_bc))
    y_bc = jax.vmap(exact)(x_bc)
    s = np.linspace(0, 1, 101)
    grid = np.stack(
        np.meshgrid(
            *(lo + (hi - lo) * s for lo, hi in zip(LOWER, UPPER)), indexing="ij"
        ),
        -1,
    )
    x_test = f32(grid.reshape(-1, 2))
    vel_test = jax.vmap(exact)(x_test)[:, :2]

    # The residuals of the exact solution vanish, up to float32 round-off
    # relative to the size of their terms (which reach about 20 here).
    momentum, continuity = residuals(exact, nu)
    vel = ed.Component(exact, slice(0, 2))
    scale = float(
        jnp.max(jnp.abs(ed.Advection(vel)(x_test)))
        + jnp.max(jnp.abs(nu * ed.Laplacian(vel)(x_test)))
    )
    max_exact = max(
        float(jnp.max(jnp.abs(momentum(x_test)))),
        float(jnp.max(jnp.abs(continuity(x_test)))),
    )
    print(
        f"Kovasznay flow, Re = {args.re:g}, lambda = {lam:.4f}: max residual of the "
        f"exact solution {max_exact:.1e} (terms up to {scale:.1f})"
    )
    check(max_exact < 1e-5 * scale, "the exact solution solves Navier-Stokes")

    net = ed.SpaceTimeMLP(
        2, 3, args.width, args.depth, time=False, key=jax.random.key(args.seed)
    )
    model = Scaled(net)

    # One propagation: tracing the momentum residual runs the network's Python
    # code twice (output shape, then the fused Taylor pass), not once per term.
    calls = [0]
    counted_momentum, _ = residuals(Counted(model, calls), nu)
    jax.jit(lambda x: counted_momentum(x))(x_pde)
    print(f"the momentum residual traces the network {calls[0]} times")
    check(calls[0] <= 2, "Advection + Grad + Laplacian is one propagation")

    def losses(model):
        momentum, continuity = residuals(model, nu)
        bc = ed.Value(model)(x_bc) - y_bc
        return jnp.stack(
            [
                jnp.mean(jnp.sum(momentum(x_pde) ** 2, axis=-1)),
                jnp.mean(continuity(x_pde) ** 2),
                jnp.mean(jnp.sum(bc**2, axis=-1)),
            ]
        )

    weights = jnp.array([1.0, 1.0, args.bc_weight])

    def loss_fn(model):
        terms = losses(model)
        return jnp.dot(weights, terms), terms

    @eqx.filter_jit
    def error_fn(model):
        vel = ed.Value(ed.Component(model, slice(0, 2)))(x_test)
        return jnp.linalg.norm(vel - vel_test) / jnp.linalg.norm(vel_test)

    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=1e-2)
    adam = optax.adam(schedule)
    opt_state = adam.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def adam_step(model, opt_state):
        (_, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = adam.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, terms

    history, errors = [], []
    bar = progress(args.steps, "Kovasznay PINN (Adam)")
    for i in bar:
        model, opt_state, terms = adam_step(model, opt_state)
        history.append(terms)
        if i % 200 == 0 or i == args.steps - 1:
            errors.append((i, float(error_fn(model))))
            bar.set_postfix(
                loss=f"{float(terms @ weights):.1e}", err=f"{errors[-1][1]:.2e}"
            )
    adam_error = errors[-1][1]

    # L-BFGS on the same fixed points, over the array leaves of the model.
    params, static = eqx.partition(model, eqx.is_inexact_array)
    total = lambda params: loss_fn(eqx.combine(params, static))[0]
    lbfgs = optax.lbfgs()
    lbfgs_state = lbfgs.init(params)
    value_and_grad = optax.value_and_grad_from_state(total)

    @eqx.filter_jit
    def lbfgs_step(params, state):
        value, grad = value_and_grad(params, state=state)
        updates, state = lbfgs.update(
            grad, state, params, value=value, grad=grad, value_fn=total
        )
        params = optax.apply_updates(params, updates)
        return params, state

    losses_fn = eqx.filter_jit(losses)
    lbfgs_history = []
    bar = progress(args.lbfgs, "Kovasznay PINN (L-BFGS)")
    for i in bar:
        params, lbfgs_state = lbfgs_step(params, lbfgs_state)
        if (i + 1) % 50 == 0 or i == args.lbfgs - 1:
            model = eqx.combine(params, static)
            lbfgs_history.append((args.steps + i + 1, losses_fn(model)))
            errors.append((args.steps + i + 1, float(error_fn(model))))
            bar.set_postfix(err=f"{errors[-1][1]:.2e}")
    model = eqx.combine(params, static)
    error = errors[-1][1]
    history = np.asarray(jnp.stack(history))
    final = np.asarray(lbfgs_history[-1][1] if lbfgs_history else history[-1])

    # The fused residuals on the trained network, against nested autodiff.
    n = 200
    got = jax.jit(lambda x: tuple(op(x) for op in residuals(model, nu)))(x_test[:n])
    ref = jax.jit(lambda x: residuals_by_nested_autodiff(model, nu, x))(x_test[:n])
    mismatch = max(
        float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(got, ref)
    )
    print(f"fused residuals vs jax.hessian on the trained network: {mismatch:.1e}")
    print(
        f"relative L2 error of the velocity on a 101 x 101 grid: {adam_error:.3e} "
        f"after Adam, {error:.3e} after L-BFGS"
    )
    print(
        f"final losses: momentum {final[0]:.2e}, continuity {final[1]:.2e}, "
        f"boundary {final[2]:.2e}"
    )

    fig, axes = plt.subplots(
        1, 3, figsize=(14, 4.5), gridspec_kw={"width_ratios": [1.4, 1, 1]}
    )
    ax = axes[0]
    for j, label in enumerate(["momentum", "continuity", "boundary"]):
        ax.semilogy(history[:, j], f"C{j}", label=label, lw=0.8)
        if lbfgs_history:
            steps, terms = zip(*lbfgs_history)
            ax.semilogy(steps, np.asarray(terms)[:, j], f"C{j}.-", lw=0.8)
    ax.semilogy(*zip(*errors), "k.-", label="relative $L^2$ error of $\\mathbf{u}$")
    ax.axvline(args.steps, color="k", ls="--", lw=0.6)
    ax.axhline(args.tol, color="k", ls=":", lw=0.8)
    ax.set_xlabel("step (Adam, then L-BFGS)")
    ax.set_title(f"Kovasznay flow, Re = {args.re:g}")
    ax.legend(fontsize=8)
    pred = np.asarray(ed.Value(model)(x_test)).reshape(101, 101, 3)
    true = np.asarray(jax.vmap(exact)(x_test)).reshape(101, 101, 3)
    X, Y = grid[..., 0], grid[..., 1]
    speed = np.hypot(pred[..., 0], pred[..., 1])
    im = axes[1].pcolormesh(X, Y, speed, shading="auto", cmap="viridis")
    axes[1].streamplot(
        s * 1.5 - 0.5,
        s * 2 - 0.5,
        pred[..., 0].T,
        pred[..., 1].T,
        color="w",
        density=1.2,
        linewidth=0.6,
    )
    axes[1].set_title("learned speed $|\\mathbf{u}_\\theta|$ and streamlines")
    fig.colorbar(im, ax=axes[1])
    err = np.hypot(*(pred[..., :2] - true[..., :2]).transpose(2, 0, 1))
    im = axes[2].pcolormesh(X, Y, err, shading="auto", cmap="magma")
    axes[2].set_title("$|\\mathbf{u}_\\theta - \\mathbf{u}|$")
    fig.colorbar(im, ax=axes[2])
    for ax in axes[1:]:
        ax.set_aspect("equal")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    fig.tight_layout()
    path = plot_path(args, NAME)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}; total time {timer}")

    check(mismatch < 1e-4, "the fused residuals match nested autodiff")
    check(bool(error < args.tol), f"relative L2 error {error:.3e} < {args.tol:g}")


if __name__ == "__main__":
    main()
