r"""The Korteweg–de Vries equation: a third-order residual on an exact soliton,
then a physics-informed network for it.

The problem. For $x \in [-L, L]$ and $t \in [0, T]$, find $u(x, t)$ with

$$u_t + 6\, u\, u_x + u_{xxx} = 0,$$

the initial data $u(x, 0)$ and the boundary values $u(\pm L, t)$ taken from
the one-soliton solution

$$u(x, t) = \frac c2 \operatorname{sech}^2\!\Big(\frac{\sqrt c}2\,
(x - c\,t - x_0)\Big),$$

a solitary wave of height $c/2$ travelling right at speed $c$ without changing
shape; by default $c = 2$, $x_0 = -2$, $L = 6$, $T = 2$.

The residual is written as the equation reads, from `eqxderiv.Partial` (the
mixed partials by name: $u_x$ is `Partial(u, x=0)`, $u_{xxx}$ is
`Partial(u, x=(0, 0, 0))`) and `eqxderiv.TimeDerivative`:

```python
residual = (
    TimeDerivative(u) + 6 * Value(u) * Partial(u, x=0) + Partial(u, x=(0, 0, 0))
)
```

`x` is the one-dimensional space variable, of shape `(b, 1)`, and `t` has
shape `(b,)`. The linear terms of the same field fuse; the product with the
value is evaluated beside them.

The method. A tanh `eqxderiv.SpaceTimeMLP` (3 hidden layers of 32 units, fed
$(x/L, 2t/T - 1)$) is trained on fixed random points to minimise

$$\operatorname{mean}\, (\text{residual})^2
+ w \operatorname{mean}_{t=0} (u_\theta - u)^2
+ w \operatorname{mean}_{x=\pm L} (u_\theta - u)^2, \qquad w = 10,$$

by Adam with a cosine decay (2500 steps, about a minute on two CPU cores).

Success (the script exits with status 1 otherwise):

- the residual of the exact soliton, a plain jnp function, vanishes in float64:
  $\max |u_t + 6 u u_x + u_{xxx}| < 10^{-10}$ on 1000 random points (its
  terms are of order one there);
- on the trained network, the residual matches plain nested autodiff
  (`jax.grad` three times);
- the relative $L^2$ error $\|u_\theta - u\|_2 / \|u\|_2$ on a $201 \times 51$
  grid of $[-L, L] \times [0, T]$ is below `--tol` (default
  $5 \times 10^{-2}$; it reaches about $1.5 \times 10^{-2}$).

The plot shows the losses and the test error, and the learned and exact waves
at three times.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import Timer, check, make_parser, plot_path, progress

import eqxderiv as ed


NAME = "kdv"


class Soliton(eqx.Module):
    """The exact solution as a field of one sample: `x` `(1,)`, `t` `()`."""

    c: float
    x0: float

    def __call__(self, x, t):
        xi = jnp.sqrt(self.c) / 2 * (x[0] - self.c * t - self.x0)
        return self.c / 2 / jnp.cosh(xi) ** 2


class Scaled(eqx.Module):
    """The field `net(x / L, 2 t / T - 1)`: the network sees [-1, 1]^2."""

    net: ed.SpaceTimeMLP
    L: float = eqx.field(static=True)
    T: float = eqx.field(static=True)

    def __call__(self, x, t):
        return self.net(x / self.L, 2 * t / self.T - 1)


def kdv_residual(u):
    """$u_t + 6 u u_x + u_{xxx}$ as one operator of the field `u`."""
    return (
        ed.TimeDerivative(u)
        + 6 * ed.Value(u) * ed.Partial(u, x=0)
        + ed.Partial(u, x=(0, 0, 0))
    )


def residual_by_nested_autodiff(u, x, t):
    """The same residual with plain JAX, `jax.grad` nested three times."""

    def one(x, t):
        f = lambda s, t: u(jnp.reshape(s, (1,)), t)
        u_x = jax.grad(f)
        u_xxx = jax.grad(jax.grad(u_x))
        return jax.grad(f, 1)(x, t) + 6 * f(x, t) * u_x(x, t) + u_xxx(x, t)

    return jax.vmap(one)(x[:, 0], t)


def main():
    parser = make_parser(__doc__, NAME)
    parser.add_argument("--c", type=float, default=2.0, help="soliton speed")
    parser.add_argument("--x0", type=float, default=-2.0, help="initial centre")
    parser.add_argument("--L", type=float, default=6.0, help="x in [-L, L]")
    parser.add_argument("--T", type=float, default=2.0, help="final time")
    parser.add_argument("--steps", type=int, default=2500, help="Adam steps")
    parser.add_argument("--n-pde", type=int, default=2000, help="interior points")
    parser.add_argument("--n-bc", type=int, default=256, help="initial, boundary")
    parser.add_argument("--bc-weight", type=float, default=10.0, help="weight w")
    parser.add_argument("--width", type=int, default=32, help="hidden units")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak learning rate")
    parser.add_argument("--tol", type=float, default=5e-2, help="error to meet")
    args = parser.parse_args()
    timer = Timer()

    L, T = args.L, args.T
    exact = Soliton(args.c, args.x0)
    rng = np.random.default_rng(args.seed)

    # The residual of the exact soliton, in float64.
    with jax.enable_x64(True):
        x64 = jnp.asarray(rng.uniform(-L, L, size=(1000, 1)))
        t64 = jnp.asarray(rng.uniform(0, T, size=1000))
        max_exact = float(jnp.max(jnp.abs(kdv_residual(exact)(x64, t64))))
        scale = float(jnp.max(jnp.abs(ed.Partial(exact, x=(0, 0, 0))(x64, t64))))
    print(
        f"soliton c = {args.c:g}: max |u_t + 6 u u_x + u_xxx| = {max_exact:.1e} "
        f"in float64 (max |u_xxx| = {scale:.2f})"
    )
    check(max_exact < 1e-10, "the soliton solves the KdV equation")

    f32 = lambda a: jnp.asarray(a, jnp.float32)
    x_pde = f32(rng.uniform(-L, L, size=(args.n_pde, 1)))
    t_pde = f32(rng.uniform(0, T, size=args.n_pde))
    x_ic = f32(rng.uniform(-L, L, size=(args.n_bc, 1)))
    t_ic = jnp.zeros(args.n_bc)
    x_bc = f32(L * rng.choice([-1.0, 1.0], size=(args.n_bc, 1)))
    t_bc = f32(rng.uniform(0, T, size=args.n_bc))
    u_ic, u_bc = ed.Value(exact)(x_ic, t_ic), ed.Value(exact)(x_bc, t_bc)
    sx, st = np.linspace(-L, L, 201), np.linspace(0, T, 51)
    grid = np.stack(np.meshgrid(sx, st, indexing="ij"), -1).reshape(-1, 2)
    x_test, t_test = f32(grid[:, :1]), f32(grid[:, 1])
    u_test = ed.Value(exact)(x_test, t_test)

    net = ed.SpaceTimeMLP(
        1, "scalar", args.width, args.depth, key=jax.random.key(args.seed)
    )
    model = Scaled(net, L, T)

    def losses(model):
        value = ed.Value(model)
        return jnp.stack(
            [
                jnp.mean(kdv_residual(model)(x_pde, t_pde) ** 2),
                jnp.mean((value(x_ic, t_ic) - u_ic) ** 2),
                jnp.mean((value(x_bc, t_bc) - u_bc) ** 2),
            ]
        )

    weights = jnp.array([1.0, args.bc_weight, args.bc_weight])

    def loss_fn(model):
        terms = losses(model)
        return jnp.dot(weights, terms), terms

    @eqx.filter_jit
    def error_fn(model):
        pred = ed.Value(model)(x_test, t_test)
        return jnp.linalg.norm(pred - u_test) / jnp.linalg.norm(u_test)

    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=1e-2)
    adam = optax.adam(schedule)
    opt_state = adam.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def adam_step(model, opt_state):
        (_, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = adam.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, terms

    history, errors = [], []
    bar = progress(args.steps, "KdV PINN")
    for i in bar:
        model, opt_state, terms = adam_step(model, opt_state)
        history.append(terms)
        if i % 100 == 0 or i == args.steps - 1:
            errors.append((i, float(error_fn(model))))
            bar.set_postfix(pde=f"{float(terms[0]):.1e}", err=f"{errors[-1][1]:.2e}")

    error = errors[-1][1]
    history = np.asarray(jnp.stack(history))

    n = 200
    got = jax.jit(lambda x, t: kdv_residual(model)(x, t))(x_pde[:n], t_pde[:n])
    ref = jax.jit(lambda x, t: residual_by_nested_autodiff(model, x, t))(
        x_pde[:n], t_pde[:n]
    )
    terms_scale = float(
        jnp.max(jnp.abs(ed.Partial(model, x=(0, 0, 0))(x_pde[:n], t_pde[:n])))
    )
    mismatch = float(jnp.max(jnp.abs(got - ref))) / terms_scale
    print(
        f"residual vs nested jax.grad on the trained network: {mismatch:.1e} "
        "(relative to max |u_xxx|)"
    )
    print(f"relative L2 error on the 201 x 51 grid: {error:.3e}")
    print(
        f"final losses: pde {history[-1, 0]:.2e}, initial {history[-1, 1]:.2e}, "
        f"boundary {history[-1, 2]:.2e}"
    )

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    for j, label in enumerate(["KdV residual", "initial", "boundary"]):
        ax0.semilogy(history[:, j], f"C{j}", label=label, lw=0.8)
    ax0.semilogy(*zip(*errors), "k.-", label="relative $L^2$ error (grid)")
    ax0.axhline(args.tol, color="k", ls=":", lw=0.8)
    ax0.set_xlabel("Adam step")
    ax0.set_title(f"KdV one-soliton, c = {args.c:g}")
    ax0.legend(fontsize=8)
    xs = f32(np.linspace(-L, L, 401)[:, None])
    for tt, c in zip([0.0, 0.5 * T, T], ["C0", "C1", "C2"]):
        ts = jnp.full((401,), tt, jnp.float32)
        ax1.plot(xs[:, 0], ed.Value(exact)(xs, ts), c, lw=3, alpha=0.4)
        ax1.plot(xs[:, 0], ed.Value(model)(xs, ts), c + "--", label=f"t = {tt:g}")
    ax1.plot([], [], "k", lw=3, alpha=0.4, label="exact")
    ax1.plot([], [], "k--", label="PINN")
    ax1.set_xlabel("x")
    ax1.set_ylabel("u")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path = plot_path(args, NAME)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}; total time {timer}")

    check(mismatch < 1e-4, "the residual matches nested autodiff")
    check(bool(error < args.tol), f"relative L2 error {error:.3e} < {args.tol:g}")


if __name__ == "__main__":
    main()
