"""Components of a field's output, as fields that still share its propagation."""

import operator
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._custom_types import Field
from ._field_call import call_field
from ._operator import AbstractOperator
from ._validation import FieldError, check_field


def _indices(index: Any) -> int | tuple[int, ...]:
    """`index` as an int (one component) or a tuple of ints (several)."""
    if isinstance(index, (bool, np.bool_)):
        raise TypeError(
            "`index` must be an int, a slice or a sequence of ints, not a bool; got "
            f"{index!r}."
        )
    if isinstance(index, (int, np.integer)):
        return operator.index(index)
    if isinstance(index, slice):
        bounds = (index.start, index.stop, index.step)
        if any(
            b is not None and (not isinstance(b, int) or isinstance(b, bool))
            for b in bounds
        ):
            raise TypeError(
                f"`index` as a slice needs int start, stop and step; got {index!r}."
            )
        step = 1 if index.step is None else index.step
        if step == 0:
            raise ValueError(f"`index` as a slice needs a nonzero step; got {index!r}.")
        # Without the field's output size, only bounds that do not depend on it
        # select the outputs NumPy's indexing would: a start of 0 is implied going
        # forwards, and going backwards the slice may run down to output 0.
        start = 0 if index.start is None and step > 0 else index.start
        stop = -1 if index.stop is None and step < 0 else index.stop
        if start is None or start < 0 or stop is None or (index.stop or 0) < 0:
            raise ValueError(
                "`index` as a slice needs an explicit, non-negative stop (and "
                f"start), e.g. `slice(0, 2)` for the first two outputs; got "
                f"{index!r}. Or list the components: `(2, 3)`."
            )
        out = tuple(range(start, stop, step))
        if not out:
            raise ValueError(
                f"`index` {index!r} selects no outputs; a Component needs at least "
                "one, e.g. `slice(0, 2)` for the first two."
            )
        return out
    if isinstance(index, Sequence) and not isinstance(index, str):
        out = tuple(index)
        ints = (int, np.integer)
        bools = (bool, np.bool_)
        if out and all(isinstance(i, ints) and not isinstance(i, bools) for i in out):
            return tuple(operator.index(i) for i in out)
    raise TypeError(
        "`index` must be an int (one output), a slice with an explicit stop, or a "
        f"non-empty sequence of ints (several outputs); got {index!r}."
    )


class Component(eqx.Module):
    """Some outputs of a vector field, as a field of their own that still shares
    the whole field's propagation.

    `Component(f, i)(x, t) = f(x, t)[i]`. Named derivatives of components of the
    same field object (and method) fuse into one propagation of that field, as
    derivatives of the field itself do: a Navier–Stokes residual on a network
    returning `(u, v, p)` evaluates the network once.

    ```python
    vel, p = eqxderiv.Component(net, slice(0, 2)), eqxderiv.Component(net, 2)
    momentum = (
        eqxderiv.TimeDerivative(vel) + eqxderiv.Advection(vel)
        + eqxderiv.Grad(p) - nu * eqxderiv.Laplacian(vel)
    )
    continuity = eqxderiv.Divergence(vel)
    ```

    Every named derivative but `GradDiv` is read off the whole field's
    quantities: the value, time derivative, Jacobian, Laplacian and Hessian are
    restricted to the component, and its divergence and advection are formed
    from its rows of the Jacobian. `GradDiv` of a component is computed by a
    propagation of its own.

    **Arguments:**

    - `field`: a vector field `f(x)` or `f(x, t)` with output shape `(m,)`.
    - `index`: an int (the component is a scalar field), a slice with an explicit
        stop (going backwards, an explicit start), or a sequence of ints (a
        vector field of those outputs, in that order).
    """

    field: Field
    index: int | tuple[int, ...] = eqx.field(static=True, converter=_indices)

    def __check_init__(self) -> None:
        check_field(self.field)
        if isinstance(self.field, AbstractOperator) and self.field.stochastic:
            raise TypeError(
                "`field` of a Component must not be a stochastic operator (it "
                "would need a key); take components of its field instead."
            )

    @property
    def positions(self) -> tuple[int, ...]:
        """The selected outputs, as a tuple."""
        return (self.index,) if isinstance(self.index, int) else self.index

    def check_output(self, shape: tuple[int, ...]) -> None:
        """Raises unless the whole field's output shape `shape` has these
        components."""
        if len(shape) != 1:
            raise FieldError(
                "A Component's `field` must return a vector, output shape (m,); "
                f"got output shape {shape}."
            )
        bad = [i for i in self.positions if not -shape[0] <= i < shape[0]]
        if bad:
            raise FieldError(
                f"Component index {self.index!r} is out of range for a field with "
                f"{shape[0]} outputs."
            )

    def __call__(
        self, x: Float[Array, " d"], t: Float[Array, "..."] | None = None
    ) -> Float[Array, "..."]:
        y = call_field(self.field, x, t)
        self.check_output(tuple(jnp.shape(y)))
        if isinstance(self.index, int):
            return y[self.index]
        return y[jnp.asarray(self.index)]
