"""The quantities a named operator asks its method for: the protocol between the
operators and the methods."""

import enum
from typing import TypeAlias

from jaxtyping import Array


class Quantity(enum.StrEnum):
    """One derivative quantity of the flattened field `fn(x, t) -> (m,)` at one
    sample `x` of shape `(d,)`.

    | quantity      | shape       | meaning                                    |
    | ------------- | ----------- | ------------------------------------------ |
    | `VALUE`       | `(m,)`      | $f(x, t)$                                  |
    | `JACOBIAN`    | `(m, d)`    | $\\partial f / \\partial x$                |
    | `DT`          | `(m,)`      | $\\partial f / \\partial t$                |
    | `DIVERGENCE`  | `()`        | $\\nabla \\cdot f$ (needs $m = d$)         |
    | `LAPLACIAN`   | `(m,)`      | $\\Delta f_i$                              |
    | `GRADDIV`     | `(d,)`      | $\\nabla (\\nabla \\cdot f)$ (needs $m = d$) |
    | `ADVECTION`   | `(d,)`      | $(f \\cdot \\nabla) f = J f$ (needs $m = d$) |
    | `HESSIAN`     | `(m, d, d)` | $\\partial^2 f_i / \\partial x \\partial x$ |
    | `BIHARMONIC`  | `(m,)`      | $\\Delta^2 f_i$                            |
    | `GRADLAPLACIAN` | `(m, d)`  | $\\nabla \\Delta f_i$                     |

    Mixed partial derivatives in `x` and `t` are the quantities
    `eqxderiv.PartialDerivative`, of shape `(m,)`.

    A fused expression asks for the union of its terms' quantities at once, so a
    method computes them from one shared propagation wherever it can. (A string
    enumeration, so that a dict of quantities is a pytree, whose keys JAX sorts.)
    """

    VALUE = "value"
    JACOBIAN = "jacobian"
    DT = "dt"
    DIVERGENCE = "divergence"
    LAPLACIAN = "laplacian"
    GRADDIV = "graddiv"
    ADVECTION = "advection"
    HESSIAN = "hessian"
    BIHARMONIC = "biharmonic"
    GRADLAPLACIAN = "gradlaplacian"


class PartialDerivative(str):
    """The quantity $\\partial^{|\\alpha| + k} f / \\partial x^\\alpha
    \\partial t^k$ of the flattened field, shape `(m,)`: one mixed partial
    derivative in `x` and `t`.

    A string (as `eqxderiv.Quantity` is), so that it can key the same dict of
    quantities; two partials with the same orders are the same quantity.

    **Arguments:**

    - `x`: the indices of `x` differentiated, repeated for higher order (their
        order does not matter): `(0, 0, 1)` is $\\partial^3 / \\partial x_0^2
        \\partial x_1$.
    - `t`: the order in time.
    """

    x: tuple[int, ...]
    t: int

    def __new__(cls, x: tuple[int, ...], t: int) -> "PartialDerivative":
        x = tuple(sorted(x))
        inner = ",".join(map(str, x))
        self = super().__new__(cls, f"partial[x=({inner}),t={t}]")
        self.x = x
        self.t = t
        return self

    def __getnewargs__(self) -> tuple[tuple[int, ...], int]:  # pyright: ignore
        return (self.x, self.t)

    @property
    def order(self) -> int:
        """The total order, $|\\alpha| + k$."""
        return len(self.x) + self.t

    def multi_index(self, n: int) -> tuple[int, ...]:
        """The orders over `n` coordinates `(x_0, ..., x_{d-1}, t)` (`t` last,
        where there is one)."""
        counts = [0] * n
        for i in self.x:
            counts[i] += 1
        if self.t:
            counts[n - 1] += self.t
        return tuple(counts)


# What a method returns: every quantity asked for (and possibly more), with the
# shapes of the table above.
# Anything a method may be asked for.
Need: TypeAlias = Quantity | PartialDerivative
Quantities: TypeAlias = dict[Need, Array]

# The quantities a stochastic method estimates from its random directions. It
# computes every other one exactly, so an operator that needs none of these needs
# no key.
ESTIMATED = frozenset(
    {
        Quantity.DIVERGENCE,
        Quantity.LAPLACIAN,
        Quantity.GRADDIV,
        Quantity.BIHARMONIC,
        Quantity.GRADLAPLACIAN,
    }
)
