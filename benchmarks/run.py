"""Speed benchmark: eqxderiv against the usual nested-autodiff recipes and folx.

Every contender is measured side by side in this one process. For each quantity
it reports the median run time over several runs (runs of the contenders
interleaved, so that machine noise hits them alike), the compile time (trace +
lower + compile), and the peak memory of the compiled program as XLA accounts it
(arguments + outputs + temporaries, from `compiled.memory_analysis()`), and
ratios against the anchors. There are four sections:

- Operators: each quantity (Jacobian, df/dt, divergence, Laplacian, grad-div, a
  residual of three terms, and stochastic estimates at large d) on the network
  of the question eqxderiv was built for, a tanh MLP over `concatenate(x, t)`
  with output dimension `d`, batched with `vmap`. At large d the stochastic
  Laplacians, with probes per sample and shared across the batch, run beside
  the exact one, and (`--million`, on by default, off with `--quick`) also at
  d = 100,000 and 1,000,000 with a batch of 16 (`--million-batch`); the
  shared-probe one must beat the exact one from d = 10,000 on.
- Training steps (`--training`, on by default): the value and parameter
  gradient of a loss of derivatives (`eqx.filter_value_and_grad` with respect to
  the network, jitted, the parameters an argument of the program): the heat
  PINN residual of `examples/heat_pinn.py` (against folx's forward Laplacian
  plus a `jax.jvp` along t, and nested autodiff), the L2 loss of
  `examples/seed_equinox.py` on `eqxderiv.derivatives` and the score
  Fokker-Planck residual of `examples/fokker_planck.py` (both against the best
  hand-written recipe, the faster of two).
- Architecture sweep (`--sweep`, on by default): Laplacian, divergence and
  grad-div of deeper, wider, residual (LayerNorm) and Fourier-feature networks
  and of other activations (gelu, silu, softplus, sin).
- Higher-order operators (`--higher`, on by default; `--higher-only` runs it
  alone): on a scalar tanh MLP, the biharmonic against nested autodiff (the
  trace of the Hessian of the Laplacian, and `jax.hessian` applied twice), with
  `Laplacian(Laplacian(u))` and the single order-4 pass beside it; u_xxx and
  u_xt against `jax.jacfwd` nested three and two times (also on a gelu MLP,
  whose activation is eight equations); and the stochastic
  biharmonic at large d (its time and memory in the plot's last panel).

In the last three, every contender's output is checked against its group's
reference before it is timed (`CHECK_RTOL`), so that a wrong one cannot be
timed; one that disagrees is reported and makes the script fail.

    pip install -e ".[bench]"
    python benchmarks/run.py                 # full run, writes docs/benchmarks/
    python benchmarks/run.py --quick         # a small smoke run (used by CI)
    python benchmarks/run.py --no-training --no-sweep --no-higher   # operators
    python benchmarks/run.py --higher-only --merge docs/benchmarks/cpu.json
    python benchmarks/profile_ops.py jacobian --d 128   # where a group's time goes

`--quick` runs a tiny version of every group (d = 3, small widths, two runs of
the new groups) and gives no verdict on the bars ("smoke run: bars not
checked"); it writes to `benchmarks/out/` unless `--out` says otherwise. The
table is written to `<out>/<tag>.md`, the plot (time against d, log-log, of the
operators on the seed net) to `<out>/<tag>.png` and the raw results to
`<out>/<tag>.json` (`--render JSON` redraws the first two from it); `--tag gpu`
on a GPU machine writes a second table beside the CPU one. `--merge JSON` puts
this run's groups into a previous run's results (replacing the groups it
measured again, keeping the others) before writing and rendering: the second
line above reruns the higher-order section alone into the committed page.
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import eqxderiv as ed
from eqxderiv._engine import collapsed_taylor
from eqxderiv._engine.polarization import biharmonic_directions


try:
    import folx
except ImportError:  # pragma: no cover - folx is an optional comparison
    folx = None


@dataclasses.dataclass
class SeparateCalls:
    """A contender made of several programs, each compiled and called on its own
    (as a user calling operators one by one), then combined by `combine`."""

    parts: list[Callable]
    combine: Callable


@dataclasses.dataclass
class Result:
    quantity: str
    name: str
    d: int
    model: str
    run_ms: float | None = None
    compile_s: float | None = None
    memory_mb: float | None = None
    note: str = ""
    alone: bool = False  # timed on its own, not interleaved (see HEAVY_S)
    # The table section: "" for the operator groups, "training" or "sweep".
    section: str = ""
    # The anchor of its group when that is not simply the last row (the fastest
    # of several hand-written recipes; see `run_group`'s `best_of`).
    anchor: bool = False
    # The largest relative difference from the reference's output, when the group
    # was verified before timing (see `max_rel_error`).
    check_err: float | None = None


def make_net(d, width, depth, key):
    return ed.SpaceTimeMLP(d, d, width, depth, key=key)


LAPLACIAN_ALONE = "eqxderiv Laplacian alone (for the ratio)"


def recipes(net, d):
    """Every contender, as a function of batched `(x, t)`; keys: quantity -> name."""

    def single(x, t):
        return net(x, t)

    vj = jax.vmap(jax.jacobian(single), in_axes=(0, 0))

    def seed_jacobian(x, t):
        return vj(x, t)

    def seed_dt(x, t):
        return jax.vmap(jax.jacobian(single, argnums=1))(x, t).reshape(x.shape)

    def seed_div(x, t):
        return jnp.trace(vj(x, t), axis1=-2, axis2=-1)

    def seed_graddiv(x, t):
        div = lambda x_, t_: jnp.trace(jax.jacobian(single)(x_, t_))
        return jax.vmap(jax.jacobian(div))(x, t)

    # The best hand-written recipes a user would reach for next (the bars of the
    # speed issue are against these).
    vf = jax.vmap(jax.jacfwd(single), in_axes=(0, 0))

    def fwd_div(x, t):
        return jnp.trace(vf(x, t), axis1=-2, axis2=-1)

    grad_graddiv = jax.vmap(
        jax.grad(lambda x_, t_: jnp.trace(jax.jacfwd(single)(x_, t_)))
    )

    def hessian_laplacian(x, t):
        h = jax.vmap(jax.hessian(single))(x, t)
        return jnp.trace(h, axis1=-2, axis2=-1)

    folx_laplacian = jax.vmap(folx_laplacian_of(single))

    nu = 0.1
    residual = ed.TimeDerivative(net) - nu * ed.Laplacian(net) + ed.GradDiv(net)
    dt_op, lap_op, gd_op = ed.TimeDerivative(net), ed.Laplacian(net), ed.GradDiv(net)

    def separate_residual(x, t):
        # Three operators written separately but traced into one program: XLA's
        # common-subexpression elimination may then share their primal and
        # tangents by itself.
        return dt_op(x, t) - nu * lap_op(x, t) + gd_op(x, t)

    # The three operators called separately: three compiled programs.
    separate_calls = SeparateCalls(
        [
            lambda x, t: dt_op(x, t),
            lambda x, t: lap_op(x, t),
            lambda x, t: gd_op(x, t),
        ],
        lambda a, b, c: a - nu * b + c,
    )

    def seed_residual(x, t):
        return seed_dt(x, t) - nu * hessian_laplacian(x, t) + seed_graddiv(x, t)

    out = {
        "jacobian": {
            "eqxderiv": lambda x, t: ed.Jacobian(net)(x, t),
            "seed vmap(jacobian)": seed_jacobian,
        },
        "time derivative": {
            "eqxderiv": lambda x, t: ed.TimeDerivative(net)(x, t),
            "seed vmap(jacobian(argnums=t))": seed_dt,
        },
        "divergence": {
            "eqxderiv": lambda x, t: ed.Divergence(net)(x, t),
            "trace(vmap(jacfwd))": fwd_div,
            "seed trace(vmap(jacobian))": seed_div,
        },
        "laplacian": {
            "eqxderiv": lambda x, t: ed.Laplacian(net)(x, t),
            "trace(jax.hessian)": hessian_laplacian,
        },
        "grad-div": {
            "eqxderiv": lambda x, t: ed.GradDiv(net)(x, t),
            "vmap(grad(trace(jacfwd)))": grad_graddiv,
            "seed vmap(jacobian(trace(jacobian)))": seed_graddiv,
        },
        "residual dt - 0.1 lap + graddiv": {
            "eqxderiv fused": lambda x, t: residual(x, t),
            # Not a residual: the Laplacian alone, timed interleaved with the
            # residuals for the bar "a residual costs at most 1.2x its Laplacian".
            LAPLACIAN_ALONE: lambda x, t: lap_op(x, t),
            "eqxderiv separate, one jit": separate_residual,
            "eqxderiv separate calls": separate_calls,
            "seed recipes": seed_residual,
        },
    }
    if folx is not None:
        out["laplacian"]["folx forward_laplacian"] = folx_laplacian
    return out


def folx_laplacian_of(field):
    """`folx.forward_laplacian` of `field(x, t)` in `x`, for one sample."""

    def one(x, t):
        assert folx is not None
        lap = folx.forward_laplacian(lambda y: field(y, t), sparsity_threshold=0)
        return lap(x).laplacian

    return one


# --- Training steps ---------------------------------------------------------
#
# A training-step contender is `(params, x, t) -> (loss, grads)`: the loss and
# its gradient with respect to the network, by `eqx.filter_value_and_grad`, with
# the parameters an argument of the compiled program as in training (closed
# over, XLA would fold them in as constants). Every contender of a group builds
# the same loss from the same network; they differ in how the derivatives of
# the network with respect to its inputs are computed.


def training_step(loss, static):
    """The contender for `loss(net, x, t)`; `static` is the non-array part of
    the network (`eqx.partition(net, eqx.is_inexact_array)[1]`)."""

    def step(params, x, t):
        return eqx.filter_value_and_grad(loss)(eqx.combine(params, static), x, t)

    return step


def value_and_dt(net, x, t):
    """`(f, df/dt)` of one sample, by one `jax.jvp` along `t`."""
    return jax.jvp(lambda s: net(x, s), (t,), (jnp.ones_like(t),))


def heat_losses():
    """The heat PINN's loss `mean((u_t - Laplacian u)^2)` (the residual of
    `examples/heat_pinn.py`), for a scalar field `u(x, t)`."""

    def eqx_loss(u, x, t):
        return jnp.mean((ed.TimeDerivative(u) - ed.Laplacian(u))(x, t) ** 2)

    def recipe(laplacian):
        def loss(u, x, t):
            def one(x, t):
                return value_and_dt(u, x, t)[1] - laplacian(u)(x, t)

            return jnp.mean(jax.vmap(one)(x, t) ** 2)

        return loss

    def hessian_trace(u):
        return lambda x, t: jnp.trace(jax.hessian(lambda y: u(y, t))(x))

    out = {
        "eqxderiv TimeDerivative - Laplacian": eqx_loss,
        "nested jvp + trace(jax.hessian)": recipe(hessian_trace),
    }
    if folx is not None:
        out["folx jvp + forward_laplacian"] = recipe(folx_laplacian_of)
    return out


def recipe_derivatives(net, x, t, jacobian):
    """The best hand-written recipe for the value, df/dt, df/dx and grad div f of
    a batch: one `jax.jvp` along `t` (value and df/dt), `jacobian` (`jax.jacfwd`
    or `jax.jacrev`) for df/dx, and `grad` of the trace of `jacfwd` for the
    gradient of the divergence, each `vmap`ped."""

    def one(x, t):
        f, df_dt = value_and_dt(net, x, t)
        df_dx = jacobian(lambda y: net(y, t))(x)
        grad_div = jax.grad(lambda y: jnp.trace(jax.jacfwd(lambda z: net(z, t))(y)))
        return f, df_dt, df_dx, grad_div(x)

    return jax.vmap(one)(x, t)


RECIPE_JACOBIANS = {"jacfwd": jax.jacfwd, "jacrev": jax.jacrev}


def recipe_name(jac):
    return f"recipe jvp, {jac}, grad(trace(jacfwd))"


def seed_l2_losses():
    """The L2 loss of `examples/seed_equinox.py` (`loss_fn`) on the four
    derivatives of `eqxderiv.derivatives(net, x, t)`: the mean squared residual
    df/dt - grad div f - 2 J^T f of the heat flow's score Fokker-Planck equation,
    plus the mean squared error of the initial condition f(x, 0) = -x."""

    def l2(f, df_dt, df_dx, grad_div, x, f0):
        grad_sq_norm = 2 * jnp.einsum("bij,bi->bj", df_dx, f)  # grad |f|^2
        residual = df_dt - grad_div - grad_sq_norm
        initial = f0 + x
        return jnp.mean(jnp.sum(residual**2, -1)) + jnp.mean(jnp.sum(initial**2, -1))

    def eqx_loss(net, x, t):
        f0 = ed.Value(net)(x, jnp.zeros_like(t))
        return l2(*ed.derivatives(net, x, t), x, f0)

    def recipe(jacobian):
        def loss(net, x, t):
            f0 = jax.vmap(net)(x, jnp.zeros_like(t))
            return l2(*recipe_derivatives(net, x, t, jacobian), x, f0)

        return loss

    return {"eqxderiv.derivatives": eqx_loss} | {
        recipe_name(name): recipe(jac) for name, jac in RECIPE_JACOBIANS.items()
    }


# The noise rate of `examples/fokker_planck.py`'s Ornstein-Uhlenbeck process.
FPE_BETA = 2.0


def fpe_losses(beta=FPE_BETA):
    """The mean squared score Fokker-Planck residual of
    `examples/fokker_planck.py`, `R = d_t s - beta/2 (grad div s + J^T (x + 2 s)
    + s)` (the regulariser its training step adds to denoising score matching;
    the DSM term, one plain forward pass, is left out), built the example's two
    ways (`residual`, from `eqxderiv.derivatives`, and `residual_operator`, by
    operator arithmetic) and by the hand-written recipes."""
    c = 0.5 * beta

    def residual(s, df_dt, df_dx, grad_div, x):
        grad_phi = jnp.einsum("...ij,...i->...j", df_dx, x + 2 * s) + s
        return df_dt - c * (grad_div + grad_phi)

    def mean_sq(r):
        return jnp.mean(jnp.sum(r**2, -1))

    def eqx_loss(net, x, t):
        return mean_sq(residual(*ed.derivatives(net, x, t), x))

    def operator_loss(net, x, t):
        def phi(x, t):
            v = net(x, t)
            return jnp.dot(x + v, v)  # x . s + |s|^2

        r = ed.TimeDerivative(net) - c * ed.GradDiv(net) - c * ed.Grad(phi)
        return mean_sq(r(x, t))

    def recipe(jacobian):
        def loss(net, x, t):
            return mean_sq(residual(*recipe_derivatives(net, x, t, jacobian), x))

        return loss

    return {
        "eqxderiv.derivatives": eqx_loss,
        "eqxderiv operators": operator_loss,
    } | {recipe_name(name): recipe(jac) for name, jac in RECIPE_JACOBIANS.items()}


HEAT, SEED_L2, SCORE_FPE = "heat PINN step", "L2 on derivatives step", "score FPE step"


def training_groups(task, net):
    """`(fns, best_of)` of a training task: its contenders, as training steps of
    `net`, and the names of the recipes the fastest of which is the anchor."""
    losses = {HEAT: heat_losses, SEED_L2: seed_l2_losses, SCORE_FPE: fpe_losses}
    static = eqx.partition(net, eqx.is_inexact_array)[1]
    fns = {name: training_step(f, static) for name, f in losses[task]().items()}
    best_of = () if task == HEAT else tuple(map(recipe_name, RECIPE_JACOBIANS))
    return fns, best_of


# --- Architecture sweep -----------------------------------------------------


def _space_time(x, t):
    return jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)])


class ResidualMLP(eqx.Module):
    """A pre-LayerNorm residual MLP over `concatenate(x, t)`: a linear embedding,
    `depth` blocks `h + Linear(tanh(LayerNorm(h)))`, a linear read-out."""

    embed: eqx.nn.Linear
    norms: tuple[eqx.nn.LayerNorm, ...]
    blocks: tuple[eqx.nn.Linear, ...]
    readout: eqx.nn.Linear

    def __init__(self, d, out, width, depth, *, key):
        keys = jax.random.split(key, depth + 2)
        self.embed = eqx.nn.Linear(d + 1, width, key=keys[0])
        self.norms = tuple(eqx.nn.LayerNorm(width) for _ in range(depth))
        self.blocks = tuple(eqx.nn.Linear(width, width, key=k) for k in keys[1:-1])
        self.readout = eqx.nn.Linear(width, out, key=keys[-1])

    def __call__(self, x, t):
        h = self.embed(_space_time(x, t))
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(jnp.tanh(norm(h)))
        return self.readout(h)


class FourierMLP(eqx.Module):
    """A tanh MLP on random Fourier features of `concatenate(x, t)`:
    `[sin(2 pi B z), cos(2 pi B z)]`, `B` with `features` rows of N(0, 1)."""

    B: jax.Array
    mlp: eqx.nn.MLP

    def __init__(self, d, out, features, width, depth, *, key):
        kb, km = jax.random.split(key)
        self.B = jax.random.normal(kb, (features, d + 1))
        self.mlp = eqx.nn.MLP(
            2 * features, out, width, depth, activation=jnp.tanh, key=km
        )

    def __call__(self, x, t):
        z = 2 * jnp.pi * self.B @ _space_time(x, t)
        return self.mlp(jnp.concatenate([jnp.sin(z), jnp.cos(z)]))


SWEEP_ACTIVATIONS = {
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "sin": jnp.sin,
}


def sweep_models(width, depth):
    """`(name, make(d, key))` of the sweep's networks, sized from the seed net's
    `width` and `depth`: deeper (4 x 2 width), wider (depth x 4 width), residual
    with LayerNorm (4 x width), Fourier features (width / 2 frequencies, then
    depth x width), and the seed shape with other activations."""
    w, m = width, max(1, width // 2)
    models = [
        (
            f"deeper tanh MLP (4 × {2 * w})",
            lambda d, key: ed.SpaceTimeMLP(d, d, 2 * w, 4, key=key),
        ),
        (
            f"wider tanh MLP ({depth} × {4 * w})",
            lambda d, key: ed.SpaceTimeMLP(d, d, 4 * w, depth, key=key),
        ),
        (
            f"residual MLP + LayerNorm (4 × {w})",
            lambda d, key: ResidualMLP(d, d, w, 4, key=key),
        ),
        (
            f"Fourier features ({m}) + tanh MLP ({depth} × {w})",
            lambda d, key: FourierMLP(d, d, m, w, depth, key=key),
        ),
    ]
    for name, act in SWEEP_ACTIVATIONS.items():
        models.append(
            (
                f"{name} MLP ({depth} × {w})",
                lambda d, key, act=act: ed.SpaceTimeMLP(
                    d, d, w, depth, activation=act, key=key
                ),
            )
        )
    return models


DIV_RECIPES = ("trace(vmap(jacobian))", "trace(vmap(jacfwd))")


def sweep_recipes(net):
    """quantity -> `(fns, best_of)`: the forward quantities of the sweep, each
    contender a function of batched `(x, t)`."""

    def trace_of(jacobian):
        vj = jax.vmap(jacobian(net))
        return lambda x, t: jnp.trace(vj(x, t), axis1=-2, axis2=-1)

    grad_div = jax.vmap(jax.grad(lambda x, t: jnp.trace(jax.jacfwd(net)(x, t))))
    out = {}
    if folx is not None:  # the Laplacian's anchor, and the reference it is checked by
        laplacian = {
            "eqxderiv": lambda x, t: ed.Laplacian(net)(x, t),
            "folx forward_laplacian": jax.vmap(folx_laplacian_of(net)),
        }
        out["laplacian"] = (laplacian, ())
    return out | {
        "divergence": (
            {
                "eqxderiv": lambda x, t: ed.Divergence(net)(x, t),
                DIV_RECIPES[0]: trace_of(jax.jacobian),
                DIV_RECIPES[1]: trace_of(jax.jacfwd),
            },
            DIV_RECIPES,
        ),
        "grad-div": (
            {
                "eqxderiv": lambda x, t: ed.GradDiv(net)(x, t),
                "vmap(grad(trace(jacfwd)))": grad_div,
            },
            (),
        ),
    }


# --- Higher-order operators (issue 11) --------------------------------------
#
# A scalar tanh MLP u(x, t) of the seed net's width and depth. The exact
# biharmonic against nested autodiff (both ways a user writes it; the faster is
# the anchor), eqxderiv's own nesting and the single order-4 pass beside it;
# u_xxx and u_xt against `jax.jacfwd` nested three and two times; and the
# stochastic biharmonic at large d.

BIH, UXXX, UXT = "biharmonic", "u_xxx", "u_xt"
BIH_SMALL = "biharmonic, batch {batch}"
LARGE_BIH = "large-d biharmonic"
EQX_BIH = "eqxderiv Biharmonic"
LAPLAP = "eqxderiv Laplacian(Laplacian)"
ORDER4 = "eqxderiv one order-4 pass (collapsed_taylor)"
NESTED_BIH = ("trace(hessian(trace(hessian)))", "einsum(hessian(hessian))")
EQX_UXXX, JVP3, JACFWD3 = (
    "eqxderiv Partial(x=(0, 0, 0))",
    "jvp(jvp(jvp)) along e_0",
    "jacfwd(jacfwd(jacfwd))[0, 0, 0]",
)
EQX_UXT, JVP_XT, JACFWD_XT = (
    "eqxderiv Partial(x=0, t=1)",
    "jvp along t of jvp along e_0",
    "jacfwd(jacfwd(argnums=x), argnums=t)[0, 0]",
)
# The single order-4 pass over the d^2 polarization directions is shown up to
# this d (at d = 128 it would propagate 16,384 directions for an information row).
ORDER4_MAX_D = 32
# The exact biharmonic is shown beside the stochastic ones up to this d.
EXACT_BIH_MAX_D = 128
# The stochastic biharmonic must fit in memory at this d.
STOCHASTIC_BIH_BAR_D = 1_000


def scalar_net(d, width, depth, key, activation=jnp.tanh):
    return ed.SpaceTimeMLP(d, "scalar", width, depth, activation=activation, key=key)


# The partials are also timed on a net whose activation is written inline
# (`jax.nn.gelu`, tanh form: eight equations, three of them curved), where the
# engine evaluates each activation as one elementwise map at every order.
def inline_gelu(z):
    return jax.nn.gelu(z, approximate=True)


def biharmonic_recipes(u, d):
    """The exact biharmonic of a scalar field `u(x, t)`, every contender a
    function of batched `(x, t)`."""

    def laplacian_of(g):
        return lambda y: jnp.trace(jax.hessian(g)(y))

    def trace_hessian_of_laplacian(x, t):
        return jnp.trace(jax.hessian(laplacian_of(lambda y: u(y, t)))(x))

    def hessian_of_hessian(x, t):
        return jnp.einsum("iijj->", jax.hessian(jax.hessian(lambda y: u(y, t)))(x))

    out = {
        EQX_BIH: lambda x, t: ed.Biharmonic(u)(x, t),
        LAPLAP: lambda x, t: ed.Laplacian(ed.Laplacian(u))(x, t),
    }
    if d <= ORDER4_MAX_D:
        V, w = biharmonic_directions(d)
        V, W = jnp.asarray(V, jnp.float32), jnp.asarray(w, jnp.float32)[:, None]

        def order4(x, t):
            return collapsed_taylor(lambda y: u(y, t), x, V, W, 4)[1][0]

        out[ORDER4] = jax.vmap(order4)
    return out | {
        NESTED_BIH[0]: jax.vmap(trace_hessian_of_laplacian),
        NESTED_BIH[1]: jax.vmap(hessian_of_hessian),
    }


def partial_recipes(u, d):
    """quantity -> contenders: u_xxx and u_xt of a scalar field `u(x, t)`, the
    anchor (nested `jax.jacfwd`) last."""
    e0 = jnp.zeros(d).at[0].set(1.0)

    def jvp_along(g, v):
        return lambda y: jax.jvp(g, (y,), (v,))[1]

    def jvp3(x, t):
        g = lambda y: u(y, t)
        return jvp_along(jvp_along(jvp_along(g, e0), e0), e0)(x)

    def jacfwd3(x, t):
        return jax.jacfwd(jax.jacfwd(jax.jacfwd(lambda y: u(y, t))))(x)[0, 0, 0]

    def jvp_xt(x, t):
        u_x = lambda s: jax.jvp(lambda y: u(y, s), (x,), (e0,))[1]
        return jax.jvp(u_x, (t,), (jnp.ones_like(t),))[1]

    def jacfwd_xt(x, t):
        return jax.jacfwd(jax.jacfwd(u, argnums=0), argnums=1)(x, t)[0, 0]

    return {
        UXXX: {
            EQX_UXXX: lambda x, t: ed.Partial(u, x=(0, 0, 0))(x, t),
            JVP3: jax.vmap(jvp3),
            JACFWD3: jax.vmap(jacfwd3),
        },
        UXT: {
            EQX_UXT: lambda x, t: ed.Partial(u, x=0, t=1)(x, t),
            JVP_XT: jax.vmap(jvp_xt),
            JACFWD_XT: jax.vmap(jacfwd_xt),
        },
    }


def stochastic_biharmonic_recipes(u, probes, d):
    key = jax.random.key(0)
    hutchinson = ed.Biharmonic(u, method=ed.Hutchinson(num_probes=probes))
    sparse = ed.Biharmonic(u, method=ed.SparseSampling(num_samples=probes))
    out = {
        f"Hutchinson({probes})": lambda x, t: hutchinson(x, t, key=key),
        f"SparseSampling({probes})": lambda x, t: sparse(x, t, key=key),
    }
    if d <= EXACT_BIH_MAX_D:
        out[f"{EQX_BIH} (exact)"] = lambda x, t: ed.Biharmonic(u)(x, t)
    return out


# The exact Laplacian is run at large d up to this size (on the seed net it never
# forms the d x d identity of its directions; see `eqxderiv.Taylor`).
EXACT_LARGE_D = 1_000_000

# The large-d Laplacian at a small batch (`--million`): d = 1,000,000 fits in
# memory there (the seed net's first and last layers are 512 MB each in float32,
# `x` another 64 MB), and d = 100,000 beside it gives the curve a second point and
# a comparison with the batch of the other sizes.
MILLION_DS = (100_000, 1_000_000)
MILLION_QUANTITY = "large-d laplacian, batch {batch}"
# The shared-probe Laplacian must beat the exact (compressed) one at every large d
# from this size on; below it the ratio is shown without a verdict.
SHARED_BAR_FROM_D = 10_000


def shared_name(probes):
    return f"Hutchinson({probes}, shared)"


def stochastic_recipes(net, probes, d):
    lap = ed.Laplacian(net, method=ed.Hutchinson(probes))
    shared = ed.Laplacian(net, method=ed.Hutchinson(probes, shared=True))
    sparse = ed.Laplacian(net, method=ed.SparseSampling(probes))
    sparse_shared = ed.Laplacian(net, method=ed.SparseSampling(probes, shared=True))
    div = ed.Divergence(net, method=ed.Hutchinson(probes))
    exact = ed.Laplacian(net)
    key = jax.random.key(0)
    laplacians = {}
    if d <= EXACT_LARGE_D:
        laplacians["exact (Taylor)"] = lambda x, t: exact(x, t)
    return {
        "large-d laplacian": laplacians
        | {
            f"Hutchinson({probes})": lambda x, t: lap(x, t, key=key),
            shared_name(probes): lambda x, t: shared(x, t, key=key),
            f"SparseSampling({probes})": lambda x, t: sparse(x, t, key=key),
            f"SparseSampling({probes}, shared)": lambda x, t: sparse_shared(
                x, t, key=key
            ),
        },
        "large-d divergence": {
            f"Hutchinson({probes})": lambda x, t: div(x, t, key=key),
        },
    }


def _memory_mb(compiled):
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    return (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes
    ) / 2**20


def compile_fn(fn: Callable | SeparateCalls, args: tuple):
    """Returns `(run, compile_s, memory_mb)`, `run(*args)` calling compiled code."""
    start = time.perf_counter()
    if not isinstance(fn, SeparateCalls):
        compiled = jax.jit(fn).lower(*args).compile()
        return compiled, time.perf_counter() - start, _memory_mb(compiled)
    parts = [jax.jit(f).lower(*args).compile() for f in fn.parts]
    shapes = [jax.eval_shape(f, *args) for f in fn.parts]
    combine = jax.jit(fn.combine).lower(*shapes).compile()
    compile_s = time.perf_counter() - start
    # The programs run one after the other: the peak is the largest of them.
    mems = [_memory_mb(c) for c in parts]
    memory = None if None in mems else max(m for m in mems if m is not None)

    def run(*args):
        return combine(*[c(*args) for c in parts])

    return run, compile_s, memory


# eqxderiv's own contenders are named with one of these prefixes.
OURS = ("eqxderiv", "Hutchinson", "SparseSampling")


# A contender whose warm-up run takes longer than this, or whose program needs more
# memory, is timed on its own after the others rather than interleaved with them: a
# seconds-long, gigabyte-hungry anchor evicts caches and skews millisecond
# contenders measured right after it.
HEAVY_S = 0.25
HEAVY_MB = 512.0


def _time(run, args):
    start = time.perf_counter()
    jax.block_until_ready(run(*args))
    return time.perf_counter() - start


# Two contenders computing the same thing exactly (up to the order of float32
# operations) agree to this, relative to the size of each output array. (On the
# training steps and the sweep at d = 32 and 128 the largest difference seen was
# about 3e-6.)
CHECK_RTOL = 1e-4


def max_rel_error(out, ref) -> float:
    """The largest difference between two outputs (pytrees of arrays: a value, or
    a loss and its parameter gradient), each array's relative to that array's
    largest entry (floored at 1e-6 of the largest entry of all, for arrays that
    are exactly zero, such as the gradient of a bias a loss does not see);
    infinite if the structures differ or `out` is not finite."""
    a, b = jax.tree.leaves(out), jax.tree.leaves(ref)
    if jax.tree.structure(out) != jax.tree.structure(ref):
        return math.inf
    a = [np.asarray(u, np.float64) for u in a]
    b = [np.asarray(v, np.float64) for v in b]
    if any(u.shape != v.shape or not np.all(np.isfinite(u)) for u, v in zip(a, b)):
        return math.inf
    top = max((float(np.max(np.abs(v))) for v in b if v.size), default=0.0)
    worst = 0.0
    for u, v in zip(a, b):
        if v.size:
            scale = max(float(np.max(np.abs(v))), 1e-6 * top, 1e-30)
            worst = max(worst, float(np.max(np.abs(u - v))) / scale)
    return worst


def _verify(results, outputs, require_reference=True):
    """Checks every contender's output against the group's reference: the last
    hand-written contender that ran (normally the anchor, the last row). A
    contender that disagrees is marked and left out of the timing. Without
    `require_reference`, a group none of whose hand-written contenders ran
    (all out of memory) is timed unchecked instead of not at all."""
    ran = list(outputs)
    if not ran:
        return
    theirs = [n for n in ran if not n.startswith(OURS)]
    ref = theirs[-1] if theirs else None
    if ref is None and not require_reference:
        return
    for name in ran:
        r = results[name]
        if ref is None:
            r.note = "not verified: no hand-written contender ran"
        elif name != ref:
            r.check_err = max_rel_error(outputs[name], outputs[ref])
            if not r.check_err <= CHECK_RTOL:
                r.note = f"wrong result (rel. error {r.check_err:.1e} to {ref})"
    if ref is not None:
        results[ref].check_err = 0.0
    for name in ran:
        if results[name].note:
            del outputs[name]


def run_group(
    quantity,
    fns,
    args,
    d,
    model,
    repeats,
    memory_limit_mb,
    progress,
    heavy_repeats,
    *,
    section="",
    verify=False,
    best_of=(),
    require_reference=True,
):
    """Compiles each contender, then times them (light ones interleaved).

    `args` is the tuple every contender is called on: `(x, t)`, or
    `(params, x, t)` for a training step. With `verify`, every contender's
    warm-up output is checked against the reference's (see `_verify`) before
    any timing, and one that disagrees is not timed (see `_verify` for
    `require_reference`). With `best_of` (names of contenders), the fastest of
    those is marked as the group's anchor.
    """
    results, compiled, heavy, outputs = {}, {}, {}, {}
    for name, fn in fns.items():
        r = Result(quantity, name, d, model, section=section)
        results[name] = r
        try:
            c, r.compile_s, r.memory_mb = compile_fn(fn, args)
        except Exception as e:  # noqa: BLE001 - a failing contender is reported
            r.note = f"failed to compile: {type(e).__name__}"
            continue
        if r.memory_mb is not None and r.memory_mb > memory_limit_mb:
            r.note = f"out of memory (needs {r.memory_mb / 1024:.1f} GiB)"
            continue
        try:
            start = time.perf_counter()
            out = jax.block_until_ready(c(*args))
            warm = time.perf_counter() - start
        except Exception as e:  # noqa: BLE001
            r.note = f"failed to run: {type(e).__name__}"
            continue
        if verify:
            outputs[name] = out
        big = r.memory_mb is not None and r.memory_mb > HEAVY_MB
        (heavy if warm > HEAVY_S or big else compiled)[name] = c
    if verify:
        _verify(results, outputs, require_reference)
        compiled = {n: c for n, c in compiled.items() if n in outputs}
        heavy = {n: c for n, c in heavy.items() if n in outputs}
    times = {name: [] for name in (*compiled, *heavy)}
    for _ in range(repeats):
        for name, c in compiled.items():
            times[name].append(_time(c, args))
        progress.update(1)
    for name, c in heavy.items():
        times[name] = [_time(c, args) for _ in range(heavy_repeats)]
        results[name].alone = True
    for name, ts in times.items():
        results[name].run_ms = 1e3 * statistics.median(ts)
    timed = [results[n] for n in best_of if results[n].run_ms is not None]
    if timed:
        min(timed, key=lambda r: r.run_ms).anchor = True
    return list(results.values())


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def group_anchor(rs: list[Result]) -> Result:
    """The anchor of a group's ratios: the contender marked as its anchor (the
    fastest of several recipes), else the last one."""
    return next((r for r in rs if r.anchor), rs[-1])


def table(results: list[Result]) -> str:
    lines = [
        "| model | d | quantity | method | median run (ms) | × anchor | "
        "compile (s) | × anchor compile | memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((r.model, r.d, r.quantity), []).append(r)
    for (model, d, quantity), rs in groups.items():
        anchor = group_anchor(rs)
        for r in rs:
            ratio = (
                r.run_ms / anchor.run_ms
                if r.run_ms is not None and anchor.run_ms
                else None
            )
            cratio = (
                r.compile_s / anchor.compile_s
                if r.compile_s is not None and anchor.compile_s
                else None
            )
            run = fmt(r.run_ms, ".3g") if not r.note else r.note
            if r.alone:
                run += " †"
            name = f"{r.name} ‡" if r.anchor else r.name
            lines.append(
                f"| {model} | {d} | {quantity} | {name} | {run} | "
                f"{fmt(ratio, '.2f')} | {fmt(r.compile_s, '.2f')} | "
                f"{fmt(cratio, '.2f')} | {fmt(r.memory_mb, '.3g')} |"
            )
    return "\n".join(lines)


def find(results, model, d, quantity, name):
    for r in results:
        if (r.model, r.d, r.quantity, r.name) == (model, d, quantity, name):
            return r
    return None


SMOKE_VERDICT = "smoke run: bars not checked"


def verdict(ratio, bar, checked):
    """`(status, bar text)` of a ratio against its bar (`None`: information)."""
    if bar is None:
        return "information", "—"
    if not checked:
        return SMOKE_VERDICT, f"≤ {bar}"
    return (
        "n/a" if ratio is None else ("PASS" if ratio <= bar else "FAIL")
    ), f"≤ {bar}"


def bars(results, model, d, checked=True):
    """The issues' bars at one d (32 and 128), checked on this run's own numbers.

    With `checked=False` (a `--quick` smoke run, whose sizes are too small for
    the ratios to mean anything) the ratios are shown but no verdict is given.
    """
    checks = []

    def run_of(q, name, attr):
        r = find(results, model, d, q, name)
        return None if r is None else getattr(r, attr)

    def ratio(q, a, b, attr="run_ms"):
        # `b`: a contender of `q`, a tuple of them (the fastest is the anchor),
        # or `(quantity, name)` for a contender of another quantity.
        va = run_of(q, a, attr)
        if isinstance(b, list):
            vb = run_of(b[0], b[1], attr)
        else:
            vs = [run_of(q, n, attr) for n in (b if isinstance(b, tuple) else (b,))]
            vb = min((v for v in vs if v is not None), default=None)
        return None if va is None or vb is None else va / vb

    def label(b):
        if isinstance(b, list):
            return f"{b[1]} {b[0]}"
        return " or ".join(b) if isinstance(b, tuple) else b

    res = "residual dt - 0.1 lap + graddiv"
    div_recipes = ("seed trace(vmap(jacobian))", "trace(vmap(jacfwd))")
    spec = [
        ("laplacian", "eqxderiv", "folx forward_laplacian", "run_ms", 1.0),
        ("laplacian", "eqxderiv", "trace(jax.hessian)", "run_ms", 0.05),
        ("grad-div", "eqxderiv", "seed vmap(jacobian(trace(jacobian)))", "run_ms", 0.5),
        ("grad-div", "eqxderiv", "vmap(grad(trace(jacfwd)))", "run_ms", 0.15),
        ("divergence", "eqxderiv", "seed trace(vmap(jacobian))", "run_ms", 0.95),
        ("divergence", "eqxderiv", div_recipes, "run_ms", 0.8),
        ("jacobian", "eqxderiv", "seed vmap(jacobian)", "run_ms", 1.0),
        (res, "eqxderiv fused", "eqxderiv separate calls", "run_ms", 0.85),
        # No bar: within one program XLA can share the common work by itself.
        (res, "eqxderiv fused", "eqxderiv separate, one jit", "run_ms", None),
        (res, "eqxderiv fused", "seed recipes", "run_ms", 0.15),
        (res, "eqxderiv fused", LAPLACIAN_ALONE, "run_ms", 1.2),
        ("jacobian", "eqxderiv", "seed vmap(jacobian)", "compile_s", 2.0),
        (
            "time derivative",
            "eqxderiv",
            "seed vmap(jacobian(argnums=t))",
            "compile_s",
            2.0,
        ),
        ("divergence", "eqxderiv", "seed trace(vmap(jacobian))", "compile_s", 2.0),
        ("laplacian", "eqxderiv", "trace(jax.hessian)", "compile_s", 2.0),
        (
            "grad-div",
            "eqxderiv",
            "seed vmap(jacobian(trace(jacobian)))",
            "compile_s",
            2.0,
        ),
        (res, "eqxderiv fused", "seed recipes", "compile_s", 2.0),
    ]
    for q, a, b, attr, bar in spec:
        r = ratio(q, a, b, attr)
        what = "time" if attr == "run_ms" else "compile time"
        status, bar_text = verdict(r, bar, checked)
        checks.append(
            f"| {q} | {a} / {label(b)} ({what}) | {fmt(r, '.3f')} | {bar_text} "
            f"| {status} |"
        )
    head = (
        f"| quantity | ratio (d = {d}, {model}) | measured | bar | |\n"
        "|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(checks)


# The bars of the training steps and of the sweep, checked on every model and d
# of their section: (quantity, contender, attribute, bar), the ratio being
# against the group's anchor; a bar of None is information only.
# A fifth entry, where given, is the set of d the bar applies at (information
# elsewhere): the speed issue sets the L2 and score-FPE bars at d = 32 and 128.
TRAINING_BARS = [
    (HEAT, "eqxderiv TimeDerivative - Laplacian", "run_ms", 0.9),
    (HEAT, "eqxderiv TimeDerivative - Laplacian", "compile_s", 1.5),
    (SEED_L2, "eqxderiv.derivatives", "run_ms", 0.4, {32, 128}),
    (SEED_L2, "eqxderiv.derivatives", "compile_s", 1.5),
    (SCORE_FPE, "eqxderiv.derivatives", "run_ms", 0.4, {32, 128}),
    (SCORE_FPE, "eqxderiv.derivatives", "compile_s", 1.5),
    (SCORE_FPE, "eqxderiv operators", "run_ms", None),
    (SCORE_FPE, "eqxderiv operators", "compile_s", None),
]
SWEEP_BARS = [
    ("laplacian", "eqxderiv", "run_ms", 0.9),
    ("divergence", "eqxderiv", "run_ms", 0.8),
    ("grad-div", "eqxderiv", "run_ms", None),
]


def section_bars(results, spec, checked=True):
    """The bars of one section's results, one row per group and bar."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((r.model, r.d, r.quantity), []).append(r)
    rows = []
    for (model, d, quantity), rs in groups.items():
        anchor = group_anchor(rs)
        for q, name, attr, bar, *where in spec:
            ours = next((r for r in rs if r.name == name), None)
            if q != quantity or ours is None:
                continue
            if where and d not in where[0]:
                bar = None
            va, vb = getattr(ours, attr), getattr(anchor, attr)
            ratio = None if va is None or not vb else va / vb
            what = "time" if attr == "run_ms" else "compile time"
            status, bar_text = verdict(ratio, bar, checked)
            rows.append(
                f"| {model} | {d} | {quantity} | {name} / {anchor.name} ({what}) | "
                f"{fmt(ratio, '.3f')} | {bar_text} | {status} |"
            )
    head = [
        "| model | d | quantity | ratio | measured | bar | |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows)


# The bars of the higher-order section: (quantity, contender, anchors,
# attribute, bar, where). The ratio is against the fastest of `anchors` that
# ran; `where(d)` says at which d the bar applies (elsewhere the row is left
# out). A bar with `OR_NO_FIT` is also met where none of the anchors fits in
# memory (nor could run), eqxderiv's contender running: the row then shows the
# memory limit over the smallest anchor's need, whose bar is 1.
OR_NO_FIT = "or the anchor does not fit in memory"
# Where nested autodiff of the fourth order stops fitting on this machine (the
# issue sets its bars at d = 8 and 32, and d = 128).
BIH_LARGE_D = 128
HIGHER_BARS = [
    (BIH, EQX_BIH, NESTED_BIH, "run_ms", 0.1, lambda d: d < BIH_LARGE_D),
    (BIH, EQX_BIH, NESTED_BIH, "run_ms", (0.01, OR_NO_FIT), lambda d: d >= BIH_LARGE_D),
    (BIH, LAPLAP, NESTED_BIH, "run_ms", None, lambda d: True),
    (BIH, ORDER4, NESTED_BIH, "run_ms", None, lambda d: True),
    (BIH, EQX_BIH, (LAPLAP,), "run_ms", None, lambda d: True),
    (BIH, EQX_BIH, (ORDER4,), "run_ms", None, lambda d: True),
    (BIH, EQX_BIH, NESTED_BIH, "compile_s", None, lambda d: True),
    (BIH_SMALL, EQX_BIH, NESTED_BIH, "run_ms", None, lambda d: True),
    (UXXX, EQX_UXXX, (JACFWD3,), "run_ms", (0.5, OR_NO_FIT), lambda d: True),
    (UXXX, EQX_UXXX, (JVP3,), "run_ms", None, lambda d: True),
    (UXT, EQX_UXT, (JACFWD_XT,), "run_ms", (0.5, OR_NO_FIT), lambda d: True),
    (UXT, EQX_UXT, (JVP_XT,), "run_ms", None, lambda d: True),
]


def higher_bars(results, checked, memory_limit_mb):
    """The bars of the higher-order section, one row per group and bar, then
    the stochastic biharmonic's memory at every large d (its bar at d =
    `STOCHASTIC_BIH_BAR_D`: it runs, within the memory limit)."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((r.model, r.d, r.quantity), []).append(r)
    rows = []
    small = BIH_SMALL.split("{")[0]
    for (model, d, quantity), rs in groups.items():
        for q, name, anchors, attr, bar, where in HIGHER_BARS:
            ours = next((r for r in rs if r.name == name), None)
            same = quantity.startswith(small) if q == BIH_SMALL else q == quantity
            cands = [r for r in rs if r.name in anchors]
            if not same or ours is None or not cands or not where(d):
                continue
            no_fit = isinstance(bar, tuple)
            bar = bar[0] if no_fit else bar
            what = "time" if attr == "run_ms" else "compile time"
            ran = [r for r in cands if getattr(r, attr) is not None and r.run_ms]
            mark = " ‡" if len(anchors) > 1 else ""
            if ran or not no_fit:
                anchor = min(ran, key=lambda r: getattr(r, attr), default=None)
                va = getattr(ours, attr)
                vb = None if anchor is None else getattr(anchor, attr)
                ratio = None if va is None or not vb else va / vb
                if ratio is None and bar is None:
                    continue  # information that was not measured
                label = f"{name} / {(anchor or cands[-1]).name}{mark} ({what})"
                status, bar_text = verdict(ratio, bar, checked)
                if no_fit:
                    bar_text += f", {OR_NO_FIT}"
            else:
                # No anchor ran: the bar is met if the one needing least memory
                # does not fit (eqxderiv's contender running).
                anchor = min(cands, key=lambda r: r.memory_mb or math.inf)
                need = anchor.memory_mb
                fits_not = need is not None and need > memory_limit_mb
                ratio = memory_limit_mb / need if fits_not and ours.run_ms else None
                label = (
                    f"{name} runs ({fmt(ours.run_ms, '.3g')} ms); memory limit / "
                    f"{anchor.name}'s need ({fmt(need and need / 1024, '.1f')} GiB)"
                )
                status, bar_text = verdict(ratio, 1.0, checked)
                bar_text = f"≤ {bar} (time) {OR_NO_FIT}: ≤ 1.0"
            rows.append(
                f"| {model} | {d} | {quantity} | {label} | {fmt(ratio, '.3f')} | "
                f"{bar_text} | {status} |"
            )
    for r in results:
        if r.quantity != LARGE_BIH or not r.name.startswith(
            ("Hutchinson", "SparseSampling")
        ):
            continue
        bar = 1.0 if r.d == STOCHASTIC_BIH_BAR_D else None
        ratio = None if r.run_ms is None or r.memory_mb is None else r.memory_mb
        ratio = None if ratio is None else ratio / memory_limit_mb
        status, bar_text = verdict(ratio, bar, checked)
        rows.append(
            f"| {r.model} | {r.d:,} | {r.quantity} | {r.name}: memory "
            f"({fmt(r.memory_mb, '.3g')} MiB, {fmt(r.run_ms, '.3g')} ms) / memory "
            f"limit | {fmt(ratio, '.2e')} | {bar_text} | {status} |"
        )
    head = [
        "| model | d | quantity | ratio | measured | bar | |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows)


# section -> (title, bars(results, checked, memory_limit_mb) -> the bars table).
SECTIONS = {
    "training": (
        "Training steps",
        lambda rs, checked, _: section_bars(rs, TRAINING_BARS, checked),
    ),
    "sweep": (
        "Architecture sweep",
        lambda rs, checked, _: section_bars(rs, SWEEP_BARS, checked),
    ),
    "higher": ("Higher-order operators", higher_bars),
}


def large_d_bars(results, checked=True):
    """The shared-probe Laplacian against the exact (compressed) one, at every
    large d it ran at: it must be faster from `SHARED_BAR_FROM_D` on."""
    rows = []
    for r in results:
        if not (r.quantity.startswith("large-d laplacian") and "shared" in r.name):
            continue
        if not r.name.startswith("Hutchinson"):
            continue
        exact = find(results, r.model, r.d, r.quantity, "exact (Taylor)")
        if exact is None:
            continue
        ratio = (
            r.run_ms / exact.run_ms if r.run_ms is not None and exact.run_ms else None
        )
        bar = 1.0 if r.d >= SHARED_BAR_FROM_D else None
        status, bar_text = verdict(ratio, bar, checked)
        rows.append(
            f"| {r.quantity} | {r.d:,} | {fmt(r.run_ms, '.3g')} | "
            f"{fmt(exact.run_ms, '.3g')} | {fmt(ratio, '.3f')} | "
            f"{fmt(r.memory_mb, '.3g')} | {fmt(exact.memory_mb, '.3g')} | "
            f"{bar_text} | {status} |"
        )
    head = [
        "| quantity | d | shared probes (ms) | exact, Taylor (ms) | ratio | "
        "shared memory (MiB) | exact memory (MiB) | bar | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) if rows else ""


def _curves(
    ax, results, model, quantities, title, attr="run_ms", style="-", loc="best"
):
    for q in quantities:
        names = []
        for r in results:
            if r.quantity == q and r.model == model and r.name not in names:
                names.append(r.name)
        for name in names:
            pts = sorted(
                (r.d, getattr(r, attr))
                for r in results
                if r.quantity == q
                and r.model == model
                and r.name == name
                and r.run_ms is not None
            )
            if pts:
                label = name if len(quantities) == 1 else f"{q}: {name}"
                if attr != "run_ms":
                    label += " (memory)"
                ax.loglog(*zip(*pts), style, marker="o", label=label)
    ax.set_xlabel("d")
    ax.set_ylabel("median run time (ms)" if attr == "run_ms" else "memory (MiB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc=loc)


def plot(results, path, model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The large-d Laplacian at the small batch of `--million`, as its own curves.
    small = MILLION_QUANTITY.split("{")[0]
    million = sorted({r.quantity for r in results if r.quantity.startswith(small)})
    panels = [
        (["laplacian"], "laplacian"),
        (["grad-div"], "grad-div"),
        (["divergence"], "divergence"),
        (["large-d laplacian", "large-d divergence", *million], "large d"),
    ]
    # The higher-order section's scalar net, when it ran: a third row, the
    # biharmonic against nested autodiff and the stochastic biharmonic's time
    # and memory at large d.
    scalar = next((r.model for r in results if r.section == "higher"), None)
    rows = 2 if scalar is None else 3
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4 * rows))
    for ax, (quantities, title) in zip(axes.flat, panels):
        _curves(ax, results, model, quantities, title)
    if scalar is not None:
        _curves(axes[2, 0], results, scalar, [BIH], f"biharmonic ({scalar})")
        _curves(
            axes[2, 1],
            results,
            scalar,
            [LARGE_BIH],
            "stochastic biharmonic: time (solid), memory (dashed)",
            loc="upper center",
        )
        _curves(
            axes[2, 1].twinx(),
            results,
            scalar,
            [LARGE_BIH],
            "",
            attr="memory_mb",
            style="--",
            loc="lower right",
        )
    title = f"{model}: time against d (log-log)"
    if scalar is not None:
        title += f"; last row: {scalar}"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(data, out, tag):
    """Writes `<out>/<tag>.md` and `<out>/<tag>.png` from the raw results."""
    results = [Result(**r) for r in data["results"]]
    smoke = (
        "(A `--quick` smoke run: the sizes are too small for these "
        "ratios to mean anything; the bars are judged on a full run.)\n\n"
        if data["quick"]
        else ""
    )
    operators = [r for r in results if not r.section]
    large = large_d_bars(operators, checked=not data["quick"])
    if large:
        large = (
            "### Large d: shared probes against the exact Laplacian\n\n"
            + smoke
            + "Hutchinson's estimator with probes shared across the batch (one "
            "draw per call, `Hutchinson(K, shared=True)`) against the exact "
            "Laplacian (compressed at the first layer), at every large d; from "
            f"d = {SHARED_BAR_FROM_D:,} on it must be faster.\n\n" + large
        )
    parts = [data["header"]]
    if operators:  # none in a run of other sections alone (`--higher-only`)
        parts += [
            "### Bars\n\n"
            + smoke
            + "\n\n".join(
                bars(operators, "seed net", d, checked=not data["quick"])
                for d in data.get("bar_ds", [data.get("bar_d")])
            ),
            large,
            "### All results\n\n" + table(operators),
        ]
    parts.append(f"![time against d](./{tag}.png)")
    intros = data.get("intros", {})
    # The memory limit of the run (`--memory-limit-gb`; older results lack it).
    limit_mb = 1024 * data.get("memory_limit_gb", 16.0)
    for section, (title, section_bars_of) in SECTIONS.items():
        rs = [r for r in results if r.section == section]
        if rs:
            parts += [
                f"### {title}",
                intros.get(section, ""),
                "#### Bars\n\n"
                + smoke
                + section_bars_of(rs, not data["quick"], limit_mb),
                "#### Results\n\n" + table(rs),
            ]
    text = "\n\n".join(p for p in parts if p)
    os.makedirs(out, exist_ok=True)
    md = os.path.join(out, f"{tag}.md")
    with open(md, "w") as f:
        f.write(text + "\n")
    plot(results, os.path.join(out, f"{tag}.png"), "seed net")
    print(text)
    print(f"\nwrote {md} and {tag}.png", file=sys.stderr)


def group_key(r: dict) -> tuple:
    return r["section"], r["model"], r["d"], r["quantity"]


def merge(old, new):
    """`old`'s raw results with every group that `new` measured again replaced
    by `new`'s, the others kept (with `old`'s header); the intros of the
    sections `new` ran are `new`'s."""
    if old["quick"] != new["quick"]:
        sys.exit("--merge: cannot merge a --quick run with a full one")
    keys = {group_key(r) for r in new["results"]}
    kept = [r for r in old["results"] if group_key(r) not in keys]
    sections = {r["section"] for r in new["results"]}
    intros = old.get("intros", {}) | {
        s: text for s, text in new["intros"].items() if s in sections
    }
    return old | {
        "intros": intros,
        "memory_limit_gb": new["memory_limit_gb"],
        "results": kept + new["results"],
    }


def higher_intro(args, repeats, argv):
    """The text above the higher-order section's tables."""
    command = " ".join(
        ["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)]
    )
    large = ", ".join(f"{d:,}" for d in args.higher_stochastic_ds)
    return (
        f"A scalar tanh MLP u(x, t) over concat(x, t) ({args.depth} hidden "
        f"layers of {args.width}), batch {args.batch}, float32. Median of "
        f"{repeats} interleaved runs ({args.higher_heavy_repeats} for a heavy "
        f"contender, †; {args.stochastic_repeats} at the large d). Before any "
        "timing, every contender of the exact groups was checked against the "
        "group's reference (its last hand-written contender that ran) to a "
        f"relative {CHECK_RTOL:.0e}; where none fits in memory (the biharmonic "
        f"at d ≥ {BIH_LARGE_D}, batch {args.batch}), eqxderiv's contenders are "
        f"timed unchecked, and the batch-{args.higher_small_batch} group checks "
        "them at the same d. No nested anchor is chunked: an anchor over the "
        f"memory limit ({args.memory_limit_gb:g} GiB) is compiled, not run, and "
        "its memory column is XLA's account of its compiled program.\n\n"
        "- **biharmonic**: Δ²u by `eqxderiv.Biharmonic(u)` (the collapsed "
        "Laplacian of the collapsed Laplacian), eqxderiv's own nesting "
        "`Laplacian(Laplacian(u))`, and, up to d = "
        f"{ORDER4_MAX_D}, one collapsed Taylor pass of order 4 over the d² "
        "polarization directions (`eqxderiv._engine.collapsed_taylor` with "
        "`polarization.biharmonic_directions(d)`, vmapped), against nested "
        "autodiff written two ways: `trace(hessian(lap))` with `lap = "
        "trace(hessian(u))`, and `einsum('iijj', hessian(hessian(u)))`; the "
        "faster that runs is the anchor (‡). Bars: Biharmonic ≤ 0.1× the anchor "
        f"below d = {BIH_LARGE_D}; from d = {BIH_LARGE_D} on it runs where "
        "nested autodiff takes over 100× (≤ 0.01) or does not fit in memory. "
        f"At d ≥ {BIH_LARGE_D}, the same biharmonic at batch "
        f"{args.higher_small_batch}, where the first nested recipe fits, gives "
        "the ratio without a bar.\n"
        "- **u_xxx** and **u_xt**: `Partial(u, x=(0, 0, 0))` and `Partial(u, "
        "x=0, t=1)` against `jax.jacfwd` nested three times in x (the full d³ "
        "tensor, indexed [0, 0, 0]) and twice, in x then t (indexed [0, 0]), "
        "the anchors; nested `jax.jvp` along e₀ (and t) beside them, without a "
        "bar. Bar: ≤ 0.5× the anchor, or the anchor does not fit in memory.\n"
        f"- **{LARGE_BIH}**: `Biharmonic(u, method=Hutchinson(num_probes=K))` "
        f"and `SparseSampling(num_samples=K)`, K = {args.probes}, at d = {large} "
        "(time and memory against d: the last panel of the plot), with the exact "
        f"`Biharmonic` beside them up to d = {EXACT_BIH_MAX_D}. Bar: at d = "
        f"{STOCHASTIC_BIH_BAR_D:,} both run within the memory limit.\n\n"
        f"Measured with `{command}`; `python benchmarks/run.py --higher-only` "
        "runs this section alone (`--merge docs/benchmarks/cpu.json` merges it "
        "into the committed results), and `--no-higher` leaves it out of a full "
        "run."
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ds", type=int, nargs="+", default=[3, 32, 128, 512])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument(
        "--repeats",
        type=int,
        default=21,
        help="interleaved runs per contender (this shared machine is noisy)",
    )
    p.add_argument(
        "--heavy-repeats",
        type=int,
        default=5,
        help="runs of a heavy contender, timed on its own",
    )
    p.add_argument(
        "--stochastic-ds", type=int, nargs="*", default=[1_000, 10_000, 100_000]
    )
    p.add_argument("--probes", type=int, default=16)
    p.add_argument(
        "--million",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the large-d Laplacian at d = 100,000 and 1,000,000 with batch "
        "--million-batch (off with --quick)",
    )
    p.add_argument("--million-batch", type=int, default=16)
    p.add_argument(
        "--stochastic-repeats",
        type=int,
        default=3,
        help="runs per contender at the large stochastic d (each takes seconds)",
    )
    p.add_argument(
        "--out",
        help="where to write the table, plot and JSON (default docs/benchmarks, "
        "or benchmarks/out with --quick)",
    )
    p.add_argument("--tag", default="cpu")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=16.0,
        help="skip contenders whose compiled program needs more memory than this",
    )
    p.add_argument(
        "--training",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the training-step groups (value and parameter gradient of a loss)",
    )
    p.add_argument(
        "--training-ds",
        type=int,
        nargs="+",
        default=[3, 32, 128],
        help="d of the heat-PINN and L2-on-derivatives training steps",
    )
    p.add_argument(
        "--fpe-ds",
        type=int,
        nargs="+",
        default=[3, 32, 128],
        help="d of the score Fokker-Planck training step",
    )
    p.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the architecture sweep (Laplacian, divergence, grad-div)",
    )
    p.add_argument("--sweep-ds", type=int, nargs="+", default=[32, 128])
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small, fast smoke run (for CI); it runs a tiny version of every "
        "group, the training steps and the sweep included (unless turned off)",
    )
    p.add_argument(
        "--higher",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the higher-order operators (biharmonic, u_xxx, u_xt, stochastic "
        "biharmonic at large d)",
    )
    p.add_argument(
        "--higher-only",
        action="store_true",
        help="run the higher-order operators alone (no other group)",
    )
    p.add_argument("--higher-ds", type=int, nargs="+", default=[8, 32, 128])
    p.add_argument(
        "--higher-stochastic-ds",
        type=int,
        nargs="*",
        default=[100, 300, 1_000, 3_000, 10_000],
        help="d of the stochastic biharmonic",
    )
    p.add_argument(
        "--higher-heavy-repeats",
        type=int,
        default=3,
        help="runs of a heavy higher-order contender, timed on its own (nested "
        "fourth derivatives take tens of seconds a run)",
    )
    p.add_argument(
        "--higher-small-batch",
        type=int,
        default=16,
        help=f"at d >= {BIH_LARGE_D}, the biharmonic also at this batch, where "
        "nested autodiff fits in memory (0: not)",
    )
    p.add_argument(
        "--render",
        metavar="JSON",
        help="only redraw the table and plot from a previous run's <tag>.json",
    )
    p.add_argument(
        "--merge",
        metavar="JSON",
        help="merge this run's results into a previous run's <tag>.json (its "
        "groups measured again are replaced, the others kept) and render the "
        "whole, e.g. `--higher-only --merge docs/benchmarks/cpu.json`",
    )
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            render(json.load(f), args.out or "docs/benchmarks", args.tag)
        return 0
    # Runs per contender in the training-step and sweep groups.
    new_repeats = args.repeats
    if args.quick:
        args.ds, args.batch, args.width, args.repeats = [3, 8], 16, 16, 3
        args.heavy_repeats = 2
        args.stochastic_ds = [2_000]
        args.stochastic_repeats = 2
        args.million = False
        args.training_ds = args.fpe_ds = args.sweep_ds = [3]
        args.higher_ds, args.higher_stochastic_ds = [3], [100]
        args.higher_heavy_repeats = 2
        new_repeats = 2
    if args.higher_only:
        args.higher, args.training, args.sweep, args.million = True, False, False, False
        args.ds, args.stochastic_ds = [], []
    if args.out is None:
        # A smoke run must never overwrite the published tables.
        args.out = (
            os.path.join("benchmarks", "out") if args.quick else "docs/benchmarks"
        )
    os.makedirs(args.out, exist_ok=True)

    models = [("seed net", args.width, args.depth)]
    deep = ("deeper/wider net (4 × 256)", 256, 4)
    key = jax.random.key(0)
    plan = [(m, d) for m in models for d in args.ds]
    if not args.quick and not args.higher_only:
        plan.append((deep, 32))
    groups = sum(len(recipes(make_net(3, 4, 1, key), 3)) for _ in plan)
    training = [
        (HEAT, args.training_ds),
        (SEED_L2, args.training_ds),
        (SCORE_FPE, args.fpe_ds),
    ]
    sweep = sweep_models(args.width, args.depth)
    new_groups = 0
    if args.training:
        new_groups += sum(len(ds) for _, ds in training)
    if args.sweep:
        per_model = len(sweep_recipes(make_net(3, 4, 1, key)))
        new_groups += len(args.sweep_ds) * len(sweep) * per_model
    higher_ds = args.higher_ds if args.higher else []
    higher_stochastic_ds = args.higher_stochastic_ds if args.higher else []
    small_batch = min(args.higher_small_batch, args.batch)
    if args.higher:
        new_groups += 5 * len(higher_ds)
        new_groups += sum(d >= BIH_LARGE_D for d in higher_ds) * (small_batch > 0)
    million_ds = MILLION_DS if args.million else ()
    total = (
        groups * args.repeats
        + 2 * len(args.stochastic_ds) * args.stochastic_repeats
        + len(million_ds) * args.stochastic_repeats
        + new_groups * new_repeats
        + len(higher_stochastic_ds) * args.stochastic_repeats
    )
    progress = tqdm(total=total, desc="benchmark", unit="run")
    limit_mb = args.memory_limit_gb * 1024
    results: list[Result] = []
    for (model, width, depth), d in plan:
        kx, kt, kn = jax.random.split(jax.random.fold_in(key, d), 3)
        net = make_net(d, width, depth, kn)
        x = jax.random.normal(kx, (args.batch, d))
        t = jax.random.uniform(kt, (args.batch, 1))
        for quantity, fns in recipes(net, d).items():
            progress.set_postfix_str(f"{model} d={d} {quantity}")
            results += run_group(
                quantity,
                fns,
                (x, t),
                d,
                model,
                args.repeats,
                limit_mb,
                progress,
                args.heavy_repeats,
            )
    for d in args.stochastic_ds:
        kx, kt, kn = jax.random.split(jax.random.fold_in(key, d), 3)
        net = make_net(d, args.width, args.depth, kn)
        x = jax.random.normal(kx, (args.batch, d))
        t = jax.random.uniform(kt, (args.batch, 1))
        for quantity, fns in stochastic_recipes(net, args.probes, d).items():
            progress.set_postfix_str(f"stochastic d={d} {quantity}")
            results += run_group(
                quantity,
                fns,
                (x, t),
                d,
                "seed net",
                args.stochastic_repeats,
                limit_mb,
                progress,
                args.stochastic_repeats,
            )
    for d in million_ds:
        kx, kt, kn = jax.random.split(jax.random.fold_in(key, d), 3)
        net = make_net(d, args.width, args.depth, kn)
        x = jax.random.normal(kx, (args.million_batch, d))
        t = jax.random.uniform(kt, (args.million_batch, 1))
        fns = stochastic_recipes(net, args.probes, d)["large-d laplacian"]
        progress.set_postfix_str(f"large-d laplacian d={d} batch {args.million_batch}")
        results += run_group(
            MILLION_QUANTITY.format(batch=args.million_batch),
            fns,
            (x, t),
            d,
            "seed net",
            args.stochastic_repeats,
            limit_mb,
            progress,
            args.stochastic_repeats,
        )
        # The next size's network is built only once this one's is freed.
        del net, x, t, fns
    scalar_model = f"scalar tanh MLP ({args.depth} × {args.width})"
    gelu_model = f"scalar gelu MLP ({args.depth} × {args.width}, inline gelu)"
    for i, (task, ds) in enumerate(training if args.training else []):
        for d in ds:
            kx, kt, kn = jax.random.split(
                jax.random.fold_in(jax.random.fold_in(key, d), 100 + i), 3
            )
            if task == HEAT:
                net = ed.SpaceTimeMLP(d, "scalar", args.width, args.depth, key=kn)
                model = scalar_model
            else:
                net, model = make_net(d, args.width, args.depth, kn), "seed net"
            params = eqx.filter(net, eqx.is_inexact_array)
            x = jax.random.normal(kx, (args.batch, d))
            t = jax.random.uniform(kt, (args.batch, 1))
            fns, best_of = training_groups(task, net)
            progress.set_postfix_str(f"training d={d} {task}")
            results += run_group(
                task,
                fns,
                (params, x, t),
                d,
                model,
                new_repeats,
                limit_mb,
                progress,
                args.heavy_repeats,
                section="training",
                verify=True,
                best_of=best_of,
            )
    for d in args.sweep_ds if args.sweep else []:
        for j, (model, make) in enumerate(sweep):
            kx, kt, kn = jax.random.split(
                jax.random.fold_in(jax.random.fold_in(key, d), 200 + j), 3
            )
            net = make(d, kn)
            x = jax.random.normal(kx, (args.batch, d))
            t = jax.random.uniform(kt, (args.batch, 1))
            for quantity, (fns, best_of) in sweep_recipes(net).items():
                progress.set_postfix_str(f"sweep d={d} {model} {quantity}")
                results += run_group(
                    quantity,
                    fns,
                    (x, t),
                    d,
                    model,
                    new_repeats,
                    limit_mb,
                    progress,
                    args.heavy_repeats,
                    section="sweep",
                    verify=True,
                    best_of=best_of,
                )
    for d in higher_ds:
        kx, kt, kn = jax.random.split(
            jax.random.fold_in(jax.random.fold_in(key, d), 300), 3
        )
        u = scalar_net(d, args.width, args.depth, kn)
        x = jax.random.normal(kx, (args.batch, d))
        t = jax.random.uniform(kt, (args.batch, 1))
        bih = biharmonic_recipes(u, d)
        higher = {BIH: (bih, NESTED_BIH)}
        higher |= {q: (fns, ()) for q, fns in partial_recipes(u, d).items()}
        groups_at_d = [
            (q, fns, best_of, (x, t), scalar_model)
            for q, (fns, best_of) in higher.items()
        ]
        if d >= BIH_LARGE_D and small_batch:
            # Where nested autodiff fits in memory: the same d at a small batch.
            fns = {n: bih[n] for n in (EQX_BIH, *NESTED_BIH)}
            small = BIH_SMALL.format(batch=small_batch)
            groups_at_d.append(
                (
                    small,
                    fns,
                    NESTED_BIH,
                    (x[:small_batch], t[:small_batch]),
                    scalar_model,
                )
            )
        gelu_u = scalar_net(d, args.width, args.depth, kn, activation=inline_gelu)
        for q, fns in partial_recipes(gelu_u, d).items():
            groups_at_d.append((q, fns, (), (x, t), gelu_model))
        for quantity, fns, best_of, xt, model in groups_at_d:
            progress.set_postfix_str(f"higher d={d} {quantity}")
            results += run_group(
                quantity,
                fns,
                xt,
                d,
                model,
                new_repeats,
                limit_mb,
                progress,
                args.higher_heavy_repeats,
                section="higher",
                verify=True,
                best_of=best_of,
                # At large d no nested contender fits: eqxderiv's are timed
                # unchecked there (the small-batch group checks them).
                require_reference=False,
            )
        del u, gelu_u, x, t, bih, higher, groups_at_d
    for d in higher_stochastic_ds:
        kx, kt, kn = jax.random.split(
            jax.random.fold_in(jax.random.fold_in(key, d), 400), 3
        )
        u = scalar_net(d, args.width, args.depth, kn)
        x = jax.random.normal(kx, (args.batch, d))
        t = jax.random.uniform(kt, (args.batch, 1))
        progress.set_postfix_str(f"higher d={d} {LARGE_BIH}")
        results += run_group(
            LARGE_BIH,
            stochastic_biharmonic_recipes(u, args.probes, d),
            (x, t),
            d,
            scalar_model,
            args.stochastic_repeats,
            limit_mb,
            progress,
            args.stochastic_repeats,
            section="higher",
        )
        del u, x, t
    progress.close()

    device = jax.devices()[0]
    header = (
        f"Measured with `python benchmarks/run.py{' --quick' if args.quick else ''}` "
        f"on {device.platform.upper()} ({device.device_kind}; "
        f"{os.cpu_count()} cores, {platform.machine()}), jax {jax.__version__}, "
        f"float32, batch {args.batch}"
        + (
            f" ({args.million_batch} for the large-d Laplacian at d = "
            f"{', '.join(f'{d:,}' for d in million_ds)})"
            if million_ds
            else ""
        )
        + ", seed net = tanh MLP over concat(x, t), "
        f"{args.depth} hidden layers of {args.width}, output d. Median of "
        f"{args.repeats} interleaved runs ({args.heavy_repeats} for a heavy "
        f"contender, {args.stochastic_repeats} at the stochastic sizes); memory "
        "is the compiled program's arguments + outputs + temporaries (for "
        "separate calls, the largest of their programs). In each group the last row "
        "is the anchor of the ratios, unless a row is marked ‡: the anchor is then "
        "the fastest of several hand-written recipes. The seed recipes are what the "
        "original question wrote by hand, one `jax.vmap` of `jax.jacobian` per "
        "quantity (of `x` for df/dx, of `t` for df/dt, of the trace of the Jacobian "
        "for the gradient of the divergence), and `trace(jax.hessian)` for the "
        "Laplacian; a residual's seed recipe is the sum of its terms' recipes. "
        "Beside them, the recipes a user would reach for next: "
        "`trace(vmap(jacfwd))` for the divergence and `vmap(grad(trace(jacfwd)))` "
        "for its gradient. The bars are judged at d = 32 and d = 128. "
        f"† marks a heavy contender (warm-up over {HEAVY_S} s or program over "
        f"{HEAVY_MB:.0f} MiB), timed on its own after the interleaved ones."
    )
    runs = (
        f"Median of {new_repeats} interleaved runs per contender "
        f"({args.heavy_repeats} for a heavy one, †), batch {args.batch}, float32. "
        "Before any timing, every contender's output was checked against the "
        "group's reference (its last hand-written contender) to a relative "
        f"{CHECK_RTOL:.0e} of each output array, so that a wrong contender cannot "
        "be timed. The bars apply to every model, at every d except where a row "
        "says information (the L2 and score-FPE bars are set at d = 32 and 128)."
    )
    intros = {
        "training": (
            "One training step: `eqx.filter_value_and_grad` of a loss with respect "
            "to the network, jitted, the parameters an argument of the compiled "
            "program (run time, compile time and memory are those of the whole "
            f"step: the loss and its parameter gradient). {runs}\n\n"
            f"- **{HEAT}**: a scalar tanh MLP u(x, t) ({args.depth} hidden layers "
            f"of {args.width}) and the loss mean((∂u/∂t − Δu)²), the residual of "
            "`examples/heat_pinn.py`: eqxderiv's `TimeDerivative(u) - "
            "Laplacian(u)` against folx's `forward_laplacian` plus one `jax.jvp` "
            "along t (the anchor), and nested autodiff (the trace of "
            "`jax.hessian` plus the same `jax.jvp`).\n"
            f"- **{SEED_L2}**: the L2 loss of `examples/seed_equinox.py` on the "
            "four outputs of `eqxderiv.derivatives(net, x, t)` (value, df/dt, "
            "df/dx and grad div f of the seed net): mean |df/dt − ∇(∇·f) − "
            "2 Jᵀf|² + mean |f(x, 0) + x|². Against the best hand-written recipe: "
            "one `jax.jvp` along t for the value and df/dt, `jax.jacfwd` or "
            "`jax.jacrev` for df/dx, `jax.grad` of the trace of `jax.jacfwd` for "
            "grad div f, each `vmap`ped; the faster of the two (‡) is the anchor.\n"
            f"- **{SCORE_FPE}**: the mean squared score Fokker-Planck residual of "
            "`examples/fokker_planck.py`, R = ∂s/∂t − β/2 (∇(∇·s) + Jᵀ(x + 2s) "
            f"+ s) with β = {FPE_BETA:g}, the seed net as the score s; eqxderiv "
            "both ways the example builds it (from `eqxderiv.derivatives`, which "
            "the bars judge, and by operator arithmetic, `TimeDerivative(s) - "
            "c * GradDiv(s) - c * Grad(phi)`), against the same recipes. The "
            "example's denoising-score-matching term (one forward pass, alike for "
            "every contender) is left out."
        ),
        "sweep": (
            "Forward quantities of other networks than the seed net, each over "
            "(x, t) with output d: deeper and wider tanh MLPs, a pre-LayerNorm "
            "residual MLP (blocks h + Linear(tanh(LayerNorm(h)))), a tanh MLP on "
            "random Fourier features [sin 2πBz, cos 2πBz] of z = (x, t), and the "
            f"seed net's shape ({args.depth} hidden layers of {args.width}) with "
            "the activations gelu, silu, softplus and sin. Anchors: folx's "
            "`forward_laplacian` for the Laplacian; the faster (‡) of "
            "`trace(vmap(jax.jacobian))` and `trace(vmap(jax.jacfwd))` for the "
            "divergence; `vmap(grad(trace(jacfwd)))` for grad div f (no bar). "
            f"{runs}"
        ),
        "higher": higher_intro(args, new_repeats, argv),
    }
    data = {
        "header": header,
        "intros": intros,
        "bar_ds": [d for d in (32, 128) if d in args.ds] or args.ds[-1:],
        "quick": args.quick,
        "memory_limit_gb": args.memory_limit_gb,
        "results": [dataclasses.asdict(r) for r in results],
    }
    if args.merge:
        with open(args.merge) as f:
            data = merge(json.load(f), data)
    raw = os.path.join(args.out, f"{args.tag}.json")
    with open(raw, "w") as f:
        json.dump(data, f, indent=1)
    render(data, args.out, args.tag)
    print(f"wrote {raw}", file=sys.stderr)
    # Anchors may run out of memory; eqxderiv's own contenders must not fail.
    eqx_failed = [r for r in results if r.run_ms is None and r.name.startswith(OURS)]
    if eqx_failed:
        print(f"eqxderiv contenders failed: {eqx_failed}", file=sys.stderr)
        return 1
    timed = [r for r in results if r.run_ms is not None and r.name.startswith(OURS)]
    if not timed:
        print("no eqxderiv contender was timed", file=sys.stderr)
        return 1
    if args.quick:
        print(
            f"{SMOKE_VERDICT}: all {len(timed)} eqxderiv runs completed; the bars "
            "are judged on a full run (without --quick)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
