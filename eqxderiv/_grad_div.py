from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class GradDiv(AbstractDerivative):
    """The gradient of the divergence: $\\nabla(\\nabla\\cdot f)$,
    $\\;[\\nabla(\\nabla\\cdot f)]_j = \\sum_i \\partial^2 f_i / \\partial x_i
    \\partial x_j$.

    Reverse mode over the forward pass that gives the divergence (never
    reverse-over-reverse). Equals `Grad(Divergence(f))`, at a fraction of its
    cost.

    ```python
    eqxderiv.GradDiv(net)(x, t)  # x: (b, d), t: (b, 1) -> (b, d)
    ```

    **Arguments:**

    - `field`: a vector field `f(x)` or `f(x, t)` with output shape `(d,)`.
    - `method`: as for `Divergence`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.GRADDIV})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.GRADDIV]
