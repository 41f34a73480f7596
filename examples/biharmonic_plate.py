r"""A physics-informed network for a simply supported Kirchhoff plate: the
biharmonic equation in two dimensions.

The problem. On the unit square $\Omega = [0, 1]^2$, find the deflection
$u(x, y)$ of a thin plate under the load $q$,

$$\Delta^2 u = q, \qquad u = 0 \ \text{ and } \ \Delta u = 0
\ \text{ on } \partial\Omega,$$

with $\Delta^2 u = \partial_x^4 u + 2\,\partial_x^2\partial_y^2 u +
\partial_y^4 u$ and the boundary conditions of simple support (no deflection,
no bending moment). For the load $q = 4\pi^4 \sin(\pi x) \sin(\pi y)$ the
solution is

$$u(x, y) = \sin(\pi x) \sin(\pi y).$$

(Check: each of $\partial_x^4$, $\partial_x^2\partial_y^2$, $\partial_y^4$
multiplies $u$ by $\pi^4$, so $\Delta^2 u = 4\pi^4 u$; and
$\Delta u = -2\pi^2 u$ vanishes where $u$ does.)

The method. The condition $u = 0$ is built into the field,
$u_\theta(x, y) = 16\, x(1 - x)\, y(1 - y)\, \mathrm{net}(2x - 1, 2y - 1)$,
with a tanh `eqxderiv.SpaceTimeMLP` (3 hidden layers of 32 units) that sees
$[-1, 1]^2$. Adam with a cosine learning-rate decay minimises, on fixed random
points,

$$\operatorname{mean}_\Omega \Big(\frac{\Delta^2 u_\theta - q}{4\pi^4}\Big)^2
+ w \operatorname{mean}_{\partial\Omega}
\Big(\frac{\Delta u_\theta}{\pi^2}\Big)^2, \qquad w = 1,$$

the scales making both terms of order one. `eqxderiv.Biharmonic(u)` computes
$\Delta^2 u_\theta$ by collapsed Taylor mode (a collapsed Laplacian pass over
the program of a collapsed Laplacian pass): no fourth-derivative tensor, and no
nesting of `jax.hessian`. `eqxderiv.Laplacian(u)` gives the boundary term.

Success (the script exits with status 1 otherwise):

- the operators give $\Delta^2 u = 4\pi^4 u$ and $\Delta u = 0$ on the
  boundary for the exact solution, a plain jnp function, in float64
  (to $10^{-9}$ relative to $4\pi^4$);
- on the trained network, `Biharmonic(u)` matches `jax.hessian` of the trace
  of `jax.hessian` (plain nested autodiff);
- the relative $L^2$ error $\|u_\theta - u\|_2 / \|u\|_2$ on a $101 \times 101$
  grid is below `--tol` (default $10^{-2}$).

The plot shows the losses and the test error, the learned deflection and the
pointwise error.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import Timer, check, make_parser, plot_path, progress

import eqxderiv as ed


NAME = "biharmonic_plate"
LOAD = 4 * np.pi**4  # q = LOAD * u for the exact solution


def exact(x):
    """The exact deflection of one point `x` `(2,)`."""
    return jnp.sin(jnp.pi * x[0]) * jnp.sin(jnp.pi * x[1])


class Plate(eqx.Module):
    r"""The field $16\, x(1 - x)\, y(1 - y)\, \mathrm{net}(2x - 1, 2y - 1)$: zero
    on the boundary whatever the weights (the factor 16 makes the prefactor one
    at the centre)."""

    net: ed.SpaceTimeMLP

    def __call__(self, x):
        bubble = 16 * x[0] * (1 - x[0]) * x[1] * (1 - x[1])
        return bubble * self.net(2 * x - 1)


def boundary_points(rng, n):
    """`n` uniform points on the boundary of the unit square."""
    side = rng.integers(4, size=n)
    s = rng.uniform(size=n)
    fixed = (side % 2).astype(float)  # sides 0, 1: y fixed; 2, 3: x fixed
    return np.where(
        (side < 2)[:, None], np.stack([s, fixed], -1), np.stack([fixed, s], -1)
    )


def biharmonic_by_nested_autodiff(field, x):
    """$\\Delta^2$ with plain JAX: the trace of the Hessian of the trace of the
    Hessian, for a check on the trained network."""
    laplacian = lambda y: jnp.trace(jax.hessian(field)(y))
    return jax.vmap(lambda y: jnp.trace(jax.hessian(laplacian)(y)))(x)


def main():
    parser = make_parser(__doc__, NAME)
    parser.add_argument("--steps", type=int, default=600, help="Adam steps")
    parser.add_argument("--n-pde", type=int, default=500, help="interior points")
    parser.add_argument("--n-bc", type=int, default=200, help="boundary points")
    parser.add_argument("--bc-weight", type=float, default=1.0, help="weight w")
    parser.add_argument("--width", type=int, default=32, help="hidden units")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    parser.add_argument("--tol", type=float, default=1e-2, help="error to meet")
    args = parser.parse_args()
    timer = Timer()

    rng = np.random.default_rng(args.seed)
    s = np.linspace(0, 1, 101)
    grid = np.stack(np.meshgrid(s, s, indexing="ij"), -1).reshape(-1, 2)

    # The operators on the exact solution, in float64: Delta^2 u = 4 pi^4 u in
    # the square, Delta u = 0 on its boundary.
    with jax.enable_x64(True):
        x64 = jnp.asarray(grid)
        xb64 = jnp.asarray(boundary_points(rng, 400))
        bih = ed.Biharmonic(exact)(x64)
        bih_error = float(jnp.max(jnp.abs(bih - LOAD * jax.vmap(exact)(x64))))
        lap_boundary = float(jnp.max(jnp.abs(ed.Laplacian(exact)(xb64))))
    print(
        f"exact solution (float64): max |Delta^2 u - 4 pi^4 u| = {bih_error:.1e}, "
        f"max |Delta u| on the boundary = {lap_boundary:.1e} (4 pi^4 = {LOAD:.1f})"
    )
    check(
        max(bih_error, lap_boundary) < 1e-9 * LOAD,
        "the exact solution solves the plate problem",
    )

    f32 = lambda a: jnp.asarray(a, jnp.float32)
    x_pde = f32(rng.uniform(size=(args.n_pde, 2)))
    q_pde = LOAD * jax.vmap(exact)(x_pde)
    x_bc = f32(boundary_points(rng, args.n_bc))
    x_test = f32(grid)
    u_test = jax.vmap(exact)(x_test)

    net = ed.SpaceTimeMLP(
        2, "scalar", args.width, args.depth, time=False, key=jax.random.key(args.seed)
    )
    u = Plate(net)

    def losses(u):
        plate = (ed.Biharmonic(u)(x_pde) - q_pde) / LOAD
        moment = ed.Laplacian(u)(x_bc) / np.pi**2
        return jnp.stack([jnp.mean(plate**2), jnp.mean(moment**2)])

    weights = jnp.array([1.0, args.bc_weight])
    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=1e-2)
    optim = optax.adam(schedule)
    opt_state = optim.init(eqx.filter(u, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(u, opt_state):
        def loss_fn(u):
            terms = losses(u)
            return jnp.dot(weights, terms), terms

        (_, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(u)
        updates, opt_state = optim.update(grads, opt_state, u)
        return eqx.apply_updates(u, updates), opt_state, terms

    @eqx.filter_jit
    def error_fn(u):
        pred = ed.Value(u)(x_test)
        return jnp.linalg.norm(pred - u_test) / jnp.linalg.norm(u_test)

    history, errors = [], []
    bar = progress(args.steps, "plate PINN")
    for i in bar:
        u, opt_state, terms = step(u, opt_state)
        history.append(terms)
        if i % 50 == 0 or i == args.steps - 1:
            errors.append((i, float(error_fn(u))))
            bar.set_postfix(pde=f"{float(terms[0]):.1e}", err=f"{errors[-1][1]:.2e}")
    history = np.asarray(jnp.stack(history))
    error = errors[-1][1]

    n = 100
    got = jax.jit(lambda x: ed.Biharmonic(u)(x))(x_test[:: len(x_test) // n])
    ref = jax.jit(lambda x: biharmonic_by_nested_autodiff(u, x))(
        x_test[:: len(x_test) // n]
    )
    mismatch = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
    print(f"Biharmonic vs nested jax.hessian on the trained network: {mismatch:.1e}")
    print(f"relative L2 error on the 101 x 101 grid: {error:.3e}")
    print(f"final losses: plate {history[-1, 0]:.2e}, moment {history[-1, 1]:.2e}")

    fig, axes = plt.subplots(
        1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 1]}
    )
    ax = axes[0]
    for j, label in enumerate(["plate equation", "bending moment on the boundary"]):
        ax.semilogy(history[:, j], label=label, lw=0.8)
    ax.semilogy(*zip(*errors), "k.-", label="relative $L^2$ error (grid)")
    ax.axhline(args.tol, color="k", ls=":", lw=0.8)
    ax.set_xlabel("Adam step")
    ax.set_title("simply supported plate, $\\Delta^2 u = q$")
    ax.legend(fontsize=8)
    pred = np.asarray(ed.Value(u)(x_test)).reshape(101, 101)
    true = np.asarray(u_test).reshape(101, 101)
    X, Y = np.meshgrid(s, s, indexing="ij")
    im = axes[1].pcolormesh(X, Y, pred, shading="auto", cmap="viridis")
    axes[1].set_title("learned deflection $u_\\theta$")
    fig.colorbar(im, ax=axes[1])
    im = axes[2].pcolormesh(X, Y, np.abs(pred - true), shading="auto", cmap="magma")
    axes[2].set_title("$|u_\\theta - u|$")
    fig.colorbar(im, ax=axes[2])
    for ax in axes[1:]:
        ax.set_aspect("equal")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    fig.tight_layout()
    path = plot_path(args, NAME)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}; total time {timer}")

    check(mismatch < 1e-4, "Biharmonic matches nested autodiff")
    check(bool(error < args.tol), f"relative L2 error {error:.3e} < {args.tol:g}")


if __name__ == "__main__":
    main()
