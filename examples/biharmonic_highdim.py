r"""The biharmonic equation in a hundred dimensions, with stochastic estimates
of $\Delta^2$.

The problem. On the cube $x \in [0, 1]^d$, $d = 100$, find $u$ with

$$\Delta^2 u = f, \qquad u = g \ \text{ and } \ \Delta u = h
\ \text{ on the faces } x_i \in \{0, 1\},$$

where $f$, $g$, $h$ come from the manufactured solution, a sum of $m = 4$
plane waves along random unit directions $a_k$ with random phases $\varphi_k$,

$$u(x) = \frac{1}{\sqrt m} \sum_{k=1}^m \sin(\pi\, a_k \cdot x + \varphi_k).$$

(Check: each wave is an eigenfunction of the Laplacian,
$\Delta \sin(\pi a \cdot x + \varphi) = -\pi^2 |a|^2 \sin(\pi a \cdot x +
\varphi)$, so with $|a_k| = 1$, $\Delta u = -\pi^2 u$ and
$\Delta^2 u = \pi^4 u$.) An exact $\Delta^2$ sums $d^2 = 10^4$ fourth
derivatives per point; the stochastic estimators cost a number of directions
that does not grow with $d$:

- `eqxderiv.Hutchinson(num_probes=K)`: $\frac1{3K} \sum_k D^4_{v_k} u$ with
  Gaussian probes $v_k$ (Isserlis: $\mathbb E\, D^4_v u = 3 \Delta^2 u$),
  of variance $(8 \|T\|_F^2 + 24 \|H\|_F^2) / (3K)$ where $T = \nabla^4 u$ and
  $H = \nabla^2 \Delta u$;
- `eqxderiv.SparseSampling(num_samples=K)`: $d^2$ times the mean of
  $\partial_i^2 \partial_j^2 u$ over $K$ random coordinate pairs, of variance
  $\big(d^2 \sum_{i,j} (\partial_i^2 \partial_j^2 u)^2 - (\Delta^2 u)^2\big)/K$.

For the plane waves these are closed forms: with $s_k = \sin(\pi a_k \cdot x +
\varphi_k)$ and $G = (a_k \cdot a_l)_{kl}$,
$\|T\|_F^2 = \frac{\pi^8}m \sum_{kl} s_k s_l G_{kl}^4$,
$\|H\|_F^2 = \frac{\pi^8}m \sum_{kl} s_k s_l G_{kl}^2$ and
$\sum_{ij} (\partial_i^2\partial_j^2 u)^2 = \frac{\pi^8}m \sum_{kl} s_k s_l
\big(\sum_i a_{ki}^2 a_{li}^2\big)^2$.

The method. A tanh `eqxderiv.SpaceTimeMLP` (3 hidden layers of 32 units, fed
$2x - 1$) is trained with Adam and a cosine decay on fresh random points every
step. The PDE term uses the Hutchinson estimate with $K = 16$ probes per point.
The square of one estimate $\hat r$ of the residual $r = \Delta^2 u_\theta - f$
is biased, $\mathbb E\, \hat r^2 = r^2 + \operatorname{Var} \hat r$, and its
minimiser trades the residual against the estimator's variance. The product of
two estimates from independent probes is not: $\mathbb E\, \hat r_1 \hat r_2 =
r^2$. So the loss is

$$\operatorname{mean}\, \frac{\hat r_1 \hat r_2}{\pi^8}
+ w \operatorname{mean}_{\text{faces}} (u_\theta - g)^2
+ w \operatorname{mean}_{\text{faces}} \Big(\frac{\Delta u_\theta - h}
{\pi^2}\Big)^2, \qquad w = 10,$$

an unbiased estimate of the exact loss (and its gradient of the exact
gradient). The boundary Laplacian is exact (`eqxderiv.Laplacian`, one
collapsed Taylor pass over $d$ directions).

Success (the script exits with status 1 otherwise):

- in float64, the exact `eqxderiv.Biharmonic` gives $\pi^4 u$ and
  `eqxderiv.Laplacian` gives $-\pi^2 u$ (to $10^{-9}$ relative);
- both estimators are unbiased: at 8 random points, the mean of 512
  independent estimates ($K = 16$ each) is within 4 standard errors of
  $\pi^4 u$ (the closed-form standard error above), and their sample variance
  is within 25% of the closed form, on average over the points;
- the relative $L^2$ error $\|u_\theta - u\|_2 / \|u\|_2$ on 5000 random
  points of the cube is below `--tol` (default $0.15$; seeds 0, 1 and 2, which
  also draw the waves, reach about $0.06$, $0.04$ and $0.10$ in 1000 steps,
  the estimator's noise being what limits it).

The plot shows the losses and the test error, the estimators' distributions at
one point against the normal law of their closed-form variance, and the learned
against the exact solution on test points.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import Timer, check, make_parser, plot_path, progress

import eqxderiv as ed


NAME = "biharmonic_highdim"


class PlaneWaves(eqx.Module):
    r"""The manufactured solution $\frac1{\sqrt m}\sum_k \sin(\pi a_k \cdot x +
    \varphi_k)$ on one point `x` `(d,)`, in the dtype of `x`."""

    directions: np.ndarray  # (m, d), unit rows
    phases: np.ndarray  # (m,)

    def waves(self, x):
        a = jnp.asarray(self.directions, x.dtype)
        return jnp.sin(jnp.pi * (x @ a.T) + jnp.asarray(self.phases, x.dtype))

    def __call__(self, x):
        return jnp.sum(self.waves(x), axis=-1) / np.sqrt(len(self.phases))


def estimator_variances(exact, x, num):
    """The closed-form variances of the two estimators with `num` probes or
    samples, at the points `x` `(n, d)`."""
    a = jnp.asarray(exact.directions, x.dtype)
    m, d = a.shape
    s = exact.waves(x)  # (n, m)
    quad = lambda M: jnp.einsum("nk,kl,nl->n", s, M, s) * np.pi**8 / m
    gram = a @ a.T
    t2, h2 = quad(gram**4), quad(gram**2)
    pairs2 = quad(((a**2) @ (a**2).T) ** 2)
    bih = np.pi**4 * jax.vmap(exact)(x)
    return (8 * t2 + 24 * h2) / (3 * num), (d**2 * pairs2 - bih**2) / num


class Scaled(eqx.Module):
    """The field `net(2 x - 1)`: the network sees [-1, 1]^d."""

    net: ed.SpaceTimeMLP

    def __call__(self, x):
        return self.net(2 * x - 1)


def sample(rng, n, n_bc, d):
    """Interior points, and boundary points (one random coordinate pinned to 0
    or 1), drawn on the host."""
    x = rng.uniform(size=(n, d))
    xb = rng.uniform(size=(n_bc, d))
    xb[np.arange(n_bc), rng.integers(d, size=n_bc)] = rng.integers(2, size=n_bc)
    return jnp.asarray(x, jnp.float32), jnp.asarray(xb, jnp.float32)


def main():
    parser = make_parser(__doc__, NAME)
    parser.add_argument("--dim", type=int, default=100, help="dimension d")
    parser.add_argument("--waves", type=int, default=4, help="plane waves m")
    parser.add_argument("--probes", type=int, default=16, help="probes K")
    parser.add_argument("--repeats", type=int, default=512, help="for the check")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps")
    parser.add_argument("--batch", type=int, default=128, help="interior points")
    parser.add_argument("--bc-batch", type=int, default=128, help="boundary points")
    parser.add_argument("--bc-weight", type=float, default=10.0, help="weight w")
    parser.add_argument("--width", type=int, default=32, help="hidden units")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    parser.add_argument("--test", type=int, default=5000, help="test points")
    parser.add_argument("--tol", type=float, default=0.15, help="error to meet")
    args = parser.parse_args()
    timer = Timer()

    d, K = args.dim, args.probes
    rng = np.random.default_rng(args.seed)
    directions = rng.normal(size=(args.waves, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    exact = PlaneWaves(directions, rng.uniform(0, 2 * np.pi, size=args.waves))
    hutchinson = ed.Hutchinson(num_probes=K)
    sparse = ed.SparseSampling(num_samples=K)

    # The exact operators and the two estimators on the manufactured solution,
    # in float64.
    with jax.enable_x64(True):
        x64 = jnp.asarray(rng.uniform(size=(8, d)))
        u64 = jax.vmap(exact)(x64)
        bih = np.pi**4 * u64
        exact_error = max(
            float(jnp.max(jnp.abs(ed.Biharmonic(exact)(x64) - bih))),
            float(jnp.max(jnp.abs(ed.Laplacian(exact)(x64) + np.pi**2 * u64))),
        )
        print(
            f"d = {d}: max error of the exact Biharmonic and Laplacian on the "
            f"solution {exact_error:.1e} (pi^4 = {np.pi**4:.1f})"
        )
        check(exact_error < 1e-9 * np.pi**4, "exact Biharmonic = pi^4 u")

        keys = jax.random.split(jax.random.key(args.seed), args.repeats)
        variances = estimator_variances(exact, x64, K)
        samples = {}
        for (name, method), var in zip(
            [("Hutchinson", hutchinson), ("SparseSampling", sparse)], variances
        ):
            op = ed.Biharmonic(exact, method=method)
            est = jax.jit(jax.vmap(lambda key: op(x64, key=key)))(keys)  # (M, 8)
            z = (jnp.mean(est, 0) - bih) / jnp.sqrt(var / args.repeats)
            max_z = float(jnp.max(jnp.abs(z)))
            ratio = float(jnp.mean(jnp.var(est, 0) / var))
            samples[name] = (np.asarray(est[:, 0]), float(var[0]))
            print(
                f"{name}(K = {K}): max |z| over 8 points {max_z:.2f}"
                f" ({args.repeats} estimates each), sample / closed-form variance "
                f"{ratio:.3f}, relative standard deviation of one estimate "
                f"{float(jnp.median(jnp.sqrt(var) / jnp.abs(bih))):.2f} (median)"
            )
            check(
                max_z < 4 and abs(ratio - 1) < 0.25,
                f"{name} is unbiased, with the documented variance",
            )
        bih0 = float(bih[0])

    net = ed.SpaceTimeMLP(
        d, "scalar", args.width, args.depth, time=False, key=jax.random.key(args.seed)
    )
    u = Scaled(net)
    schedule = optax.cosine_decay_schedule(args.lr, args.steps, alpha=1e-2)
    optim = optax.adam(schedule)
    opt_state = optim.init(eqx.filter(u, eqx.is_inexact_array))
    weights = jnp.array([1.0, args.bc_weight, args.bc_weight])

    def losses(u, x, xb, key):
        k1, k2 = jax.random.split(key)
        bih_hat = ed.Biharmonic(u, method=hutchinson)
        f = np.pi**4 * ed.Value(exact)(x)
        r1, r2 = bih_hat(x, key=k1) - f, bih_hat(x, key=k2) - f
        g = ed.Value(exact)(xb)
        misfit = ed.Value(u)(xb) - g
        moment = (ed.Laplacian(u)(xb) + np.pi**2 * g) / np.pi**2
        return jnp.stack(
            [jnp.mean(r1 * r2) / np.pi**8, jnp.mean(misfit**2), jnp.mean(moment**2)]
        )

    @eqx.filter_jit
    def step(u, opt_state, x, xb, key):
        def loss_fn(u):
            terms = losses(u, x, xb, key)
            return jnp.dot(weights, terms), terms

        (_, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(u)
        updates, opt_state = optim.update(grads, opt_state, u)
        return eqx.apply_updates(u, updates), opt_state, terms

    x_test = jnp.asarray(rng.uniform(size=(args.test, d)), jnp.float32)
    u_test = ed.Value(exact)(x_test)

    @eqx.filter_jit
    def error_fn(u):
        pred = ed.Value(u)(x_test)
        return jnp.linalg.norm(pred - u_test) / jnp.linalg.norm(u_test)

    history, errors = [], []
    key = jax.random.key(args.seed + 1)
    bar = progress(args.steps, f"biharmonic PINN, d = {d}")
    for i in bar:
        key, step_key = jax.random.split(key)
        x, xb = sample(rng, args.batch, args.bc_batch, d)
        u, opt_state, terms = step(u, opt_state, x, xb, step_key)
        history.append(terms)
        if i % 100 == 0 or i == args.steps - 1:
            errors.append((i, float(error_fn(u))))
            bar.set_postfix(err=f"{errors[-1][1]:.2e}")
    history = np.asarray(jnp.stack(history))
    error = errors[-1][1]
    print(f"relative L2 error on {args.test} test points: {error:.3e}")
    print(
        f"final losses: pde (unbiased) {history[-1, 0]:.2e}, boundary value "
        f"{history[-1, 1]:.2e}, boundary Laplacian {history[-1, 2]:.2e}"
    )

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    labels = ["|PDE| (two estimates)", "boundary value", "boundary Laplacian"]
    for j, label in enumerate(labels):
        ax.semilogy(np.abs(history[:, j]), label=label, lw=0.6, alpha=0.8)
    ax.semilogy(*zip(*errors), "k.-", label="relative $L^2$ error (test)")
    ax.axhline(args.tol, color="k", ls=":", lw=0.8)
    ax.set_xlabel("Adam step")
    ax.set_title(f"$\\Delta^2 u = f$, d = {d}, Hutchinson K = {K}")
    ax.legend(fontsize=8)
    ax = axes[1]
    for (name, (est, var)), c in zip(samples.items(), ["C0", "C1"]):
        ax.hist(est, bins=40, density=True, alpha=0.4, color=c, label=name)
        grid = np.linspace(est.min(), est.max(), 200)
        normal = np.exp(-((grid - bih0) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)
        ax.plot(grid, normal, c, lw=1)
    ax.axvline(bih0, color="k", lw=1, label="exact $\\Delta^2 u$")
    ax.set_xlabel(f"estimate of $\\Delta^2 u$ at one point (K = {K})")
    ax.set_title("estimates against N(exact, closed-form variance)")
    ax.legend(fontsize=8)
    ax = axes[2]
    pred = np.asarray(ed.Value(u)(x_test[:1000]))
    ax.plot(u_test[:1000], pred, ".", ms=2)
    lim = float(np.max(np.abs(u_test[:1000])))
    ax.plot([-lim, lim], [-lim, lim], "k", lw=0.6)
    ax.set_xlabel("exact u")
    ax.set_ylabel("PINN $u_\\theta$")
    ax.set_title("1000 test points")
    fig.tight_layout()
    path = plot_path(args, NAME)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}; total time {timer}")

    check(bool(error < args.tol), f"relative L2 error {error:.3e} < {args.tol:g}")


if __name__ == "__main__":
    main()
