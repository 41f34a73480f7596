"""Runs of elementwise equations of one value, as one elementwise map.

An activation written inline, such as `jax.nn.gelu` (`0.5 a (1 + tanh(c (a +
0.044715 a³)))`: eight equations, not a call), interpreted equation by equation
pays one collapsed sum over the K directions (`ctx.quad`) for each nonlinear
piece and each product of two values that carry tangents: three for gelu. Yet
the whole run is one elementwise map `y = g(a)` of the one value `a` it reads
that carries a tangent, and

$$T_y = g'(a) T_a, \\qquad S_y = g'(a) S_a + g''(a) \\sum_k w_k T_a[k]^2$$

costs one such sum, with `g'` and `g''` `jax.jvp`s of the run along ones
(`elementwise.partial_derivative`): JAX's own numbers, as nested autodiff
composes them through the same equations.

`chain_at` finds such a run: consecutive equations of elementwise primitives
(`elementwise.ELEMENTWISE`) that still have the engine's own rule (a user's
registration is honoured equation by equation), each with one real output of
`a`'s shape and dtype, whose operands that carry a tangent are `a` or outputs
of the run, and whose other operands are scalars or of `a`'s shape. It is taken
only where it saves work: where at least two of its equations would each pay a
collapsed sum. Every output of the run read after it gets its jet from the
run's one sum.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.extend import core
from jaxtyping import Array

from .elementwise import CURVATURE, ELEMENTWISE, partial_derivative
from .jet import Jet, JetContext, add_terms, bind, mul_terms, single_jet
from .registry import is_builtin


__all__ = [
    "MIN_SUMS",
    "Chain",
    "Run",
    "RunCursor",
    "chain_at",
    "find_run",
    "read_after",
    "restricted",
    "take_run",
]


# A run shorter than this in equations that pay a collapsed sum is interpreted
# equation by equation, which then costs the same.
MIN_SUMS = 2


class Chain(NamedTuple):
    """A run of equations `eqns[start:end]` of one root value, and the jets of
    its outputs that are read after it; `None` where the run is not taken (it
    would not save work)."""

    end: int
    jets: dict[Any, Jet] | None


def _pays(eqn: core.JaxprEqn, live: list[int]) -> bool:
    """Whether `eqn`'s own rule pays a collapsed sum for its operands at `live`
    (the ones that carry a tangent)."""
    name = eqn.primitive.name
    if name == "mul":
        return len(live) >= 2
    if name == "integer_pow":
        return eqn.params["y"] not in (0, 1)
    curvature = CURVATURE.get(name)
    if curvature is None:
        return False
    if curvature == "all":
        return True
    return any((i, j) in frozenset(curvature) for i in live for j in live)


def _member(
    eqn: core.JaxprEqn,
    inside: set[Any],
    env: Mapping[Any, Any],
    carries: Callable[[Any], bool],
    builtin: Callable[[str], bool],
    shape: tuple[int, ...],
    dtype: Any,
) -> list[int] | None:
    """The positions of `eqn`'s operands that are the root or outputs of the run
    (`inside`), if `eqn` can join the run; else `None`."""
    name = eqn.primitive.name
    if name not in ELEMENTWISE or not builtin(name) or len(eqn.outvars) != 1:
        return None
    out: Any = eqn.outvars[0].aval
    if (
        tuple(getattr(out, "shape", ())) != shape
        or getattr(out, "dtype", None) != dtype
    ):
        return None
    live = []
    for i, v in enumerate(eqn.invars):
        aval: Any = v.aval
        if tuple(getattr(aval, "shape", ())) not in (shape, ()):
            return None
        if isinstance(v, core.Literal):
            continue
        if v in inside:
            live.append(i)
        elif v not in env or carries(env[v]):
            # Another value that carries a tangent: not a function of the root.
            return None
    return live or None


class Run(NamedTuple):
    """A run `eqns[start:end]` of elementwise equations of the one value `root`
    (whose primal is `primal`), and how many of them would each pay a
    collapsed sum."""

    root: Any
    primal: Array
    end: int
    sums: int


def find_run(
    eqns: Sequence[core.JaxprEqn],
    start: int,
    env: Mapping[Any, Any],
    carries: Callable[[Any], bool],
    builtin: Callable[[str], bool],
) -> Run | None:
    """The longest run of elementwise equations of one root value that begins at
    `eqns[start]`, whether or not it would save work; `None` where none begins
    there. For jets of either order: `env` maps the values computed so far to
    their jets (each with a `primal`), `carries(jet)` says whether a jet carries
    derivatives, and `builtin(name)` whether a primitive still has the engine's
    own rule."""
    first = eqns[start]
    live = [
        v
        for v in first.invars
        if not isinstance(v, core.Literal) and v in env and carries(env[v])
    ]
    if len(set(live)) != 1:
        return None
    root = live[0]
    primal = jnp.asarray(env[root].primal)
    if not jnp.issubdtype(primal.dtype, jnp.floating):
        return None
    shape, dtype = tuple(primal.shape), primal.dtype
    inside = {root}
    sums, end = 0, start
    while end < len(eqns):
        positions = _member(eqns[end], inside, env, carries, builtin, shape, dtype)
        if positions is None:
            break
        sums += _pays(eqns[end], positions)
        inside.update(eqns[end].outvars)
        end += 1
    return Run(root, primal, end, sums)


def read_after(
    eqns: Sequence[core.JaxprEqn], run: Run, start: int, last_use: Mapping[Any, int]
) -> list[Any]:
    """The outputs of the run's equations that are read after it."""
    return [
        v
        for eqn in eqns[start : run.end]
        for v in eqn.outvars
        if last_use.get(v, -1) >= run.end
    ]


def restricted(
    eqns: Sequence[core.JaxprEqn], root: Any, out: Any, env: Mapping[Any, Any]
) -> Callable[[Any], Any]:
    """The equations `eqns` as a function of the root's value, returning `out`'s
    value (every other operand at its primal in `env`)."""

    def fn(a: Any) -> Any:
        values: dict[Any, Any] = {root: a}

        def read(v: Any) -> Any:
            if isinstance(v, core.Literal):
                return v.val
            return values[v] if v in values else env[v].primal

        for eqn in eqns:
            with eqn.ctx.manager:
                values.update(
                    zip(eqn.outvars, bind(eqn, [read(v) for v in eqn.invars]))
                )
        return values[out]

    return fn


def chain_at(
    ctx: JetContext,
    jaxpr: core.Jaxpr,
    start: int,
    env: dict[Any, Jet],
    last_use: dict[Any, int],
) -> Chain | None:
    """The run of elementwise equations of one root value that begins at
    `jaxpr.eqns[start]`, evaluated as one elementwise map, where there is one
    that saves work (see the module docstring). `None` where no run begins
    there.

    **Arguments:**

    - `ctx`: the pass's context.
    - `jaxpr`: the jaxpr being interpreted.
    - `start`: the index of the equation to begin at.
    - `env`: the jets of the values computed before it.
    - `last_use`: `compression.last_uses(jaxpr)`.

    **Returns:** a `Chain`: the index after the run's last equation, and the jets
    of the run's outputs that are read after it (by a later equation or as an
    output of `jaxpr`), or `None` for them where the run would not save work.
    No run that begins inside a refused one saves work either (its equations
    are a prefix of the rest of the refused run, each paying at most what it
    paid there), so the caller need not look for one before `end`
    (`RunCursor`).
    """

    def evaluate(root: Jet, primal: Array) -> Callable[[Callable], Jet]:
        t, second = root.tangent, root.second
        assert t is not None
        # The one collapsed sum of the run, shared by all its outputs.
        quad = ctx.quad(t, t)

        def jet_of(fn: Callable) -> Jet:
            g1 = partial_derivative(fn, 0)
            g2 = partial_derivative(g1, 0)(primal)
            g1 = g1(primal)
            s = add_terms(mul_terms(g1, second), g2 * quad)
            (out,) = single_jet(fn(primal), g1 * t, s)
            return out

        return jet_of

    return take_run(jaxpr, start, env, last_use, _carries, is_builtin, evaluate)


def take_run(
    jaxpr: core.Jaxpr,
    start: int,
    env: Mapping[Any, Any],
    last_use: Mapping[Any, int],
    carries: Callable[[Any], bool],
    builtin: Callable[[str], bool],
    evaluate: Callable[[Any, Array], Callable[[Callable], Any]],
) -> Chain | None:
    """`chain_at` for jets of either order: the run at `start` (`find_run`, with
    `carries` and `builtin` as there), refused below `MIN_SUMS`, else the jet
    of each of its outputs read after it. `evaluate(root_jet, root_primal)` is
    called once per taken run and gives the map from an output's function of
    the root value (`restricted`) to that output's jet."""
    eqns = jaxpr.eqns
    run = find_run(eqns, start, env, carries, builtin)
    if run is None:
        return None
    if run.sums < MIN_SUMS:
        return Chain(run.end, None)
    jet_of = evaluate(env[run.root], run.primal)
    jets = {
        v: jet_of(restricted(eqns[start : run.end], run.root, v, env))
        for v in read_after(eqns, run, start, last_use)
    }
    return Chain(run.end, jets)


class RunCursor:
    """Both interpreters' search for runs, equation by equation: the run at an
    equation where one is worth taking, and no search inside a run that was
    refused (see `chain_at`'s **Returns:**)."""

    def __init__(self, start: int = 0):
        # No run worth taking begins before this index.
        self.refused = start

    def take(self, i: int, find: Callable[[], Chain | None]) -> Chain | None:
        """`find()`'s run at equation `i` when it is taken, else `None`."""
        if i < self.refused:
            return None
        chain = find()
        if chain is not None and chain.jets is None:
            self.refused = chain.end
            return None
        return chain


def _carries(jet: Jet) -> bool:
    return jet.tangent is not None
