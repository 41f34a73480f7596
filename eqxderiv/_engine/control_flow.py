"""`cond`, `scan` and `while` over jets of any kind: the logic the order-2 rules
(`rules/control.py`) and the order-K ones (`higher/control.py`) share.

A loop over jets, whose body is the interpreter run on the loop's body, is the
jet of the loop, and a branch on jets is the jet of the branch (the index does
not depend on the directions: it is piecewise constant). The only work is
structural: `lax.scan`, `lax.while_loop` and `lax.switch` need one pytree
structure on every iteration and in every branch, while the interpreters
encode a zero term as `None`. That structure (which terms each value carries,
its `Need`) is found beforehand by tracing the bodies abstractly, as a fixed
point over the loop carry as in JAX's own `jvp` of `scan`, and then
instantiated with explicit zeros where a term is needed but `None`.

What differs between the two kinds of jets (which terms there are, how a
missing one is made, which interpreter runs a body, where a stacked value's
scan axis sits in each term) is an `AbstractJets`.
"""

import abc
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core


__all__ = ["AbstractJets", "Need", "cond_rule", "scan_rule", "while_rule"]


# Runtime-checkable: the test suite checks every annotation of the package.
@runtime_checkable
class _HasPrimal(Protocol):
    @property
    def primal(self) -> Any: ...


J = TypeVar("J", bound=_HasPrimal)

# Which terms of a jet (beyond its primal) a value carries, in a fixed order.
Need = tuple[bool, ...]


# A plain abstract class rather than an `eqx.Module`: it lives only while one
# equation is traced, holds the pass's context, and is never a pytree.
class AbstractJets(abc.ABC, Generic[J]):
    """One kind of jet, as the control-flow rules need to handle it."""

    @property
    @abc.abstractmethod
    def terms(self) -> int:
        """How many terms a `Need` has."""

    @abc.abstractmethod
    def need(self, jet: Any, aval: Any) -> Need:
        """The terms `jet` carries; `jet` may be a jet of arrays or its
        `eval_shape` (only which terms are `None` is read)."""

    @abc.abstractmethod
    def instantiate(self, jet: J, aval: Any, need: Need) -> J:
        """`jet` with the structure `need`: zeros where a term is needed but
        `None`, every term in `aval`'s dtype. Needs are unions, so a term is
        never present but unwanted."""

    @abc.abstractmethod
    def evaluate(
        self, jaxpr: core.Jaxpr, consts: Sequence[Any], jets: list[J]
    ) -> list[J]:
        """The interpreter: the output jets of `jaxpr` at `jets`."""

    @abc.abstractmethod
    def scan_axis_first(self, jet: J) -> J:
        """A stacked jet with the scan axis first in every term (as `lax.scan`
        slices), from the interpreter's layout."""

    @abc.abstractmethod
    def scan_axis_back(self, jet: J) -> J:
        """The inverse of `scan_axis_first`."""


def _union(a: Sequence[Need], b: Sequence[Need]) -> list[Need]:
    return [tuple(x or y for x, y in zip(p, q)) for p, q in zip(a, b)]


def _needs_of(
    kind: AbstractJets[Any], jets: Sequence[Any], avals: Sequence[Any]
) -> list[Need]:
    return [kind.need(j, a) for j, a in zip(jets, avals)]


def _instantiate_all(
    kind: AbstractJets[J],
    jets: Sequence[J],
    avals: Sequence[Any],
    needs: Sequence[Need],
) -> list[J]:
    return [kind.instantiate(j, a, n) for j, a, n in zip(jets, avals, needs)]


def _carry_needs(
    kind: AbstractJets[J],
    step: Callable[..., tuple[list[J], Any]],
    init: Sequence[J],
    avals: Sequence[Any],
    *args: Any,
) -> list[Need]:
    """The least structure for a loop carry that is closed under the body.

    A carry needs a term if its initial value has it, or if one iteration from
    the current structure gives it; e.g. in `c <- c * x` started at a constant,
    `c` has no tangent before the first iteration and a second-order term only
    after the second. Each round adds at least one term, so this ends after at
    most `terms * len(init)` rounds. The body is only traced abstractly
    (`jax.eval_shape`); nothing runs.
    """
    needs = _needs_of(kind, init, avals)
    for _ in range(kind.terms * len(needs) + 1):

        def once(carry: list[J], *a: Any, needs: list[Need] = needs) -> list[J]:
            return step(_instantiate_all(kind, carry, avals, needs), *a)[0]

        out = jax.eval_shape(once, list(init), *args)
        new = _union(needs, _needs_of(kind, out, avals))
        if new == needs:
            return needs
        needs = new
    raise AssertionError("the carry structure did not reach a fixed point")


def _slice_struct(jet: Any) -> Any:
    """The abstract per-iteration slice of a stacked (scan axis first) jet."""
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), jet
    )


def cond_rule(kind: AbstractJets[J], eqn: core.JaxprEqn, jets: list[J]) -> list[J]:
    """`cond(index, *ops)` picks one of `branches`; the jets go through the chosen
    branch's interpretation, `lax.switch`ed on the index (whose jet carries no
    terms).

    An output carries a term if it does in any branch; the other branches give
    explicit zeros there, the exact derivative of a branch that does not depend
    on the inputs.
    """
    branches: Sequence[core.ClosedJaxpr] = eqn.params["branches"]
    index, ops = jets[0], jets[1:]
    avals = [v.aval for v in eqn.outvars]

    def run(branch: core.ClosedJaxpr) -> Callable[[list[J]], list[J]]:
        return lambda ops: kind.evaluate(branch.jaxpr, branch.consts, ops)

    needs: list[Need] = [(False,) * kind.terms] * len(avals)
    for branch in branches:
        out = jax.eval_shape(run(branch), ops)
        needs = _union(needs, _needs_of(kind, out, avals))

    def instantiated(branch: core.ClosedJaxpr) -> Callable[[list[J]], list[J]]:
        return lambda ops: _instantiate_all(kind, run(branch)(ops), avals, needs)

    return lax.switch(index.primal, [instantiated(b) for b in branches], ops)


def scan_rule(kind: AbstractJets[J], eqn: core.JaxprEqn, jets: list[J]) -> list[J]:
    """`scan` over jets: the carry is a list of jets of fixed structure (see
    `_carry_needs`), the consts are closed over as they are (with or without
    terms), and the stacked inputs and outputs are jets in the interpreter's
    layout, moved to have the scan axis first inside the loop
    (`AbstractJets.scan_axis_first`)."""
    p = eqn.params
    body: core.ClosedJaxpr = p["jaxpr"]
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = jets[:nc], jets[nc : nc + nk], jets[nc + nk :]
    avals = body.in_avals[nc : nc + nk]
    xs = [kind.scan_axis_first(x) for x in xs]

    def step(carry: list[J], x: list[J]) -> tuple[list[J], list[J]]:
        outs = kind.evaluate(body.jaxpr, body.consts, [*consts, *carry, *x])
        return outs[:nk], outs[nk:]

    needs = _carry_needs(kind, step, init, avals, [_slice_struct(x) for x in xs])

    def looped(carry: list[J], x: list[J]) -> tuple[list[J], list[J]]:
        out, ys = step(carry, x)
        return _instantiate_all(kind, out, avals, needs), ys

    carry, ys = lax.scan(
        looped,
        _instantiate_all(kind, init, avals, needs),
        xs,
        length=p["length"],
        reverse=p["reverse"],
        unroll=p["unroll"],
    )
    return [*carry, *(kind.scan_axis_back(y) for y in ys)]


def while_rule(kind: AbstractJets[J], eqn: core.JaxprEqn, jets: list[J]) -> list[J]:
    """`while` over jets: the predicate is evaluated on the primals alone (it is
    piecewise constant in the inputs), the body on the carry's jets, whose
    structure is the fixed point of `_carry_needs`.

    The trip count depends on the values, so this is forward only: like JAX's own
    `while_loop`, the result cannot be differentiated in reverse mode.
    """
    p = eqn.params
    cond: core.ClosedJaxpr = p["cond_jaxpr"]
    body: core.ClosedJaxpr = p["body_jaxpr"]
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cond_consts = [j.primal for j in jets[:cn]]
    body_consts, init = jets[cn : cn + bn], jets[cn + bn :]
    avals = body.in_avals[bn:]

    def pred(carry: list[J]) -> Any:
        args = [*cond_consts, *(c.primal for c in carry)]
        return core.jaxpr_as_fun(cond)(*args)[0]

    def step(carry: list[J]) -> tuple[list[J], None]:
        return kind.evaluate(body.jaxpr, body.consts, [*body_consts, *carry]), None

    needs = _carry_needs(kind, step, init, avals)
    return lax.while_loop(
        pred,
        lambda carry: _instantiate_all(kind, step(carry)[0], avals, needs),
        _instantiate_all(kind, init, avals, needs),
    )
