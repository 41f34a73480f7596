"""The method protocol: what a method is given (`FieldProgram`) and what it
returns (`eqxderiv.Quantity` -> array)."""

import abc
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from .._quantity import ESTIMATED, Need, Quantities


class FieldProgram(NamedTuple):
    """A field as a method receives it: traced once at one sample, flattened.

    **Fields:**

    - `fn`: `fn(x, t) -> (m,)`, the field's output flattened; it evaluates the
        traced program, so calling or transforming it never runs the field's
        Python code again.
    - `forward`: the same function in a form forward-mode autodiff accepts
        (`custom_vjp` functions get the transpose of their VJP as a forward rule);
        `fn` itself where the field has none.
    - `reverse`: whether reverse-mode autodiff applies (JAX has none through a
        `while` loop).
    - `size`: the number `m` of (flattened) outputs.
    - `collapsible`: whether a collapsed propagation gives nested autodiff's
        second derivatives: false where a `custom_vjp` function, or a
        `custom_jvp` function whose rule computes its primal output by other code
        than the function itself, is in the field (nested autodiff then
        differentiates that code).
    """

    fn: Callable[[Any, Any], Array]
    forward: Callable[[Any, Any], Array]
    reverse: bool
    size: int
    collapsible: bool = True


class AbstractMethod(eqx.Module):
    """How derivative quantities of a field are computed. See `eqxderiv.Taylor`,
    `eqxderiv.Forward`, `eqxderiv.Nested`, `eqxderiv.Hutchinson` and
    `eqxderiv.SparseSampling`.

    A new method implements `compute` and sets the class variable `stochastic`.
    """

    stochastic: ClassVar[bool]

    @abc.abstractmethod
    def compute(
        self,
        field: FieldProgram,
        x: Float[Array, " d"],
        t: Float[Array, ""] | Float[Array, "1"] | None,
        needs: frozenset[Need],
        key: PRNGKeyArray | None,
    ) -> Quantities:
        """Computes every quantity in `needs` at one sample.

        **Arguments:**

        - `field`: the field, traced at this sample (see `eqxderiv.FieldProgram`).
        - `x`: the sample's point, shape `(d,)`.
        - `t`: its time, or `None`.
        - `needs`: the quantities asked for.
        - `key`: a PRNG key for a stochastic method, else `None`.

        **Returns:** a dict from each quantity asked for (it may hold more) to its
        array, of the shape `eqxderiv.Quantity` lists.
        """


def needs_key(method: AbstractMethod, needs: frozenset[Need]) -> bool:
    """Whether computing `needs` with `method` draws random numbers."""
    return method.stochastic and bool(needs & ESTIMATED)
