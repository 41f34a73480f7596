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


# What a method returns: every quantity asked for (and possibly more), with the
# shapes of the table above.
Quantities: TypeAlias = dict[Quantity, Array]

# The quantities a stochastic method estimates from its random directions. It
# computes every other one exactly, so an operator that needs none of these needs
# no key.
ESTIMATED = frozenset({Quantity.DIVERGENCE, Quantity.LAPLACIAN, Quantity.GRADDIV})
