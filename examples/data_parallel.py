"""Data-parallel training: a physics-informed network for the heat equation,
trained on batches sharded over every available device.

The set-up. A `jax.sharding.Mesh` over all devices with one axis, `"batch"`;
the collocation points are placed with `NamedSharding(mesh, P("batch"))`, so
each device holds a slice of the batch, and the model with
`NamedSharding(mesh, P())`, a full copy on every device. Nothing else changes:
the operators and the training step are ordinary `eqx.filter_jit` code, XLA
runs each device's slice of the batch where it lives, and the mean in the loss
is the only cross-device reduction. Operator results stay sharded along the
batch; the script prints their sharding and checks it.

The problem is that of `heat_pinn.py`, in $d = 2$: on $[0, 1]^2 \\times [0, 1]$,
$\\partial_t u = \\Delta u$ with the initial and boundary data of the exact
solution $u(x, t) = e^{-t} \\frac12 (\\sin x_1 + \\sin x_2)$, learned by a tanh
`eqxderiv.SpaceTimeMLP` from the loss
$\\operatorname{mean}(\\partial_t u - \\Delta u)^2$ plus the mean squared errors
on the initial and boundary data.

Devices. Run plainly on a machine with one CPU, the script asks XLA for 8
simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`,
set before JAX is imported, unless `XLA_FLAGS` already sets a device count), so
that the sharding is exercised anywhere. The flag only concerns the CPU
platform: on a machine with several GPUs, JAX uses the GPUs and the flag is
harmless. `--devices N` uses the first `N` devices only (the batch must divide
evenly among them).

Success. The loss falls by at least a factor of 10, the operator results are
sharded along the batch over every device, the model stays replicated, and
the sharded loss and gradients equal those of the same step on one device.
The plot shows the loss and the learned and exact solutions at $t = 1$.

```bash
python examples/data_parallel.py              # 8 simulated CPU devices
python examples/data_parallel.py --steps 2000
```
"""

import os


# Must happen before JAX is imported: XLA reads it once, when it starts.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import Timer, check, make_parser, plot_path, progress  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import eqxderiv as ed  # noqa: E402


NAME = "data_parallel"


def exact(x, t):
    """The exact solution for a batch: `x` `(*b, 2)`, `t` `(*b,)`."""
    return jnp.exp(-t) * jnp.mean(jnp.sin(x), axis=-1)


def sample(key, n):
    """Interior, initial and boundary points, `n` of each."""
    kx, kt, k0, kb, kbt, kface, kside = jax.random.split(key, 7)
    x = jax.random.uniform(kx, (n, 2))
    t = jax.random.uniform(kt, (n,))
    x0 = jax.random.uniform(k0, (n, 2))
    # Boundary: a uniform point, then one random coordinate pinned to 0 or 1.
    xb = jax.random.uniform(kb, (n, 2))
    face = jax.nn.one_hot(jax.random.randint(kface, (n,), 0, 2), 2, dtype=bool)
    side = jax.random.bernoulli(kside, 0.5, (n, 1)).astype(xb.dtype)
    xb = jnp.where(face, side, xb)
    tb = jax.random.uniform(kbt, (n,))
    return x, t, x0, xb, tb


def residual(u):
    """The heat residual as one operator: both terms from one fused pass."""
    return ed.TimeDerivative(u) - ed.Laplacian(u)


def loss_fn(u, batch):
    x, t, x0, xb, tb = batch
    value = ed.Value(u)
    pde = jnp.mean(residual(u)(x, t) ** 2)
    init = jnp.mean((value(x0, jnp.zeros_like(t)) - exact(x0, 0.0)) ** 2)
    bound = jnp.mean((value(xb, tb) - exact(xb, tb)) ** 2)
    return pde + init + bound


def main():
    parser = make_parser(__doc__, NAME)
    parser.add_argument("--steps", type=int, default=800, help="Adam steps")
    parser.add_argument("--batch", type=int, default=512, help="points per term")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    parser.add_argument("--devices", type=int, default=None, help="devices to use")
    args = parser.parse_args()
    timer = Timer()

    devices = jax.devices()[: args.devices]
    n = len(devices)
    if n == 0:
        parser.error("--devices must be at least 1")
    print(f"{n} devices: {devices[0].platform}, {[d.id for d in devices]}")
    if args.batch % n:
        parser.error(f"--batch {args.batch} must be a multiple of {n} devices")

    mesh = Mesh(np.array(devices), ("batch",))
    sharded = NamedSharding(mesh, P("batch"))  # split the batch axis
    replicated = NamedSharding(mesh, P())  # a full copy on every device

    kmodel, kdata, kcheck = jax.random.split(jax.random.key(args.seed), 3)
    u = ed.SpaceTimeMLP(2, "scalar", width=32, depth=2, key=kmodel)
    optim = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps, alpha=1e-2))
    opt_state = optim.init(eqx.filter(u, eqx.is_inexact_array))
    # Parameters and optimiser state: replicated.
    u, opt_state = eqx.filter_shard((u, opt_state), replicated)

    @eqx.filter_jit
    def step(u, opt_state, key):
        # Fresh points every step, generated on the devices that use them.
        batch = eqx.filter_shard(sample(key, args.batch), sharded)
        loss, grads = eqx.filter_value_and_grad(loss_fn)(u, batch)
        updates, opt_state = optim.update(grads, opt_state, u)
        u = eqx.apply_updates(u, updates)
        # Keep the model replicated (XLA would anyway; this makes it explicit).
        u, opt_state = eqx.filter_shard((u, opt_state), replicated)
        return u, opt_state, loss

    # Operator results on a sharded batch are sharded the same way.
    x, t, *_ = jax.device_put(sample(kcheck, args.batch), sharded)

    @eqx.filter_jit
    def operators(u, x, t):
        return residual(u)(x, t), ed.Jacobian(u)(x, t)

    res, jac = operators(u, x, t)
    print(f"x: {x.shape}, {x.sharding.spec}")
    print(f"TimeDerivative(u) - Laplacian(u): {res.shape}, {res.sharding.spec}")
    print(f"Jacobian(u): {jac.shape}, {jac.sharding.spec}")
    results_sharded = all(
        a.sharding.is_equivalent_to(sharded, a.ndim) and len(a.sharding.device_set) == n
        for a in (res, jac)
    )

    # The data-parallel loss and gradients are those of a one-device computation.
    batch = sample(kcheck, args.batch)
    grad_fn = eqx.filter_jit(eqx.filter_value_and_grad(loss_fn))
    one = grad_fn(jax.device_put(u, devices[0]), jax.device_put(batch, devices[0]))
    many = grad_fn(u, jax.device_put(batch, sharded))
    one, many = jax.device_get((one, many))  # to NumPy, to compare
    same = bool(eqx.tree_equal(one, many, rtol=1e-4, atol=1e-6))
    print(f"loss on 1 device: {float(one[0]):.6f}, on {n}: {float(many[0]):.6f}")

    losses = []
    bar = progress(args.steps, f"data-parallel PINN, {n} devices")
    for i, k in zip(bar, jax.random.split(kdata, args.steps)):
        u, opt_state, loss = step(u, opt_state, k)
        losses.append(loss)
        if i % 50 == 0:
            bar.set_postfix(loss=f"{float(loss):.2e}")
    losses = np.asarray(jnp.stack(losses))
    window = min(20, max(1, args.steps // 5))
    first, last = losses[:window].mean(), losses[-window:].mean()
    params = jax.tree.leaves(eqx.filter(u, eqx.is_array))
    still_replicated = all(p.sharding.is_fully_replicated for p in params)
    print(f"mean loss over the first {window} steps {first:.3e}, last {last:.3e}")

    s = jnp.linspace(0, 1, 101)
    x1, x2 = jnp.meshgrid(s, s)
    grid = jnp.stack([x1, x2], axis=-1)
    ones = jnp.ones(x1.shape)
    pred = eqx.filter_jit(lambda u, x, t: ed.Value(u)(x, t))(u, grid, ones)
    true = exact(grid, ones)
    error = jnp.linalg.norm(pred - true) / jnp.linalg.norm(true)
    print(f"relative L2 error at t = 1: {float(error):.3e}")

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].semilogy(losses, lw=0.8)
    axes[0].set_xlabel("step")
    axes[0].set_title(f"loss, batch sharded over {n} devices")
    for ax, z, title in [
        (axes[1], pred, "PINN, t = 1"),
        (axes[2], true, "exact, t = 1"),
    ]:
        im = ax.pcolormesh(x1, x2, z, shading="auto", vmin=0.0, vmax=float(true.max()))
        fig.colorbar(im, ax=ax)
        ax.set_title(title)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    fig.tight_layout()
    path = plot_path(args, NAME)
    fig.savefig(path, dpi=100)
    print(f"plot written to {path}; total time {timer}")

    check(results_sharded, f"operator results sharded along the batch over {n} devices")
    check(still_replicated, "the trained model is replicated on every device")
    check(same, "the sharded loss and gradients equal those on one device")
    check(bool(last < 0.1 * first), f"the loss fell from {first:.3e} to {last:.3e}")


if __name__ == "__main__":
    main()
