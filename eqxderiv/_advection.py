from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class Advection(AbstractDerivative):
    """The self-advection term $(f\\cdot\\nabla) f = J f$, by one JVP along $f$
    itself: the Jacobian is never formed (unless a fused expression computes it
    anyway, in which case it is reused).

    ```python
    from eqxderiv import Advection, Laplacian, TimeDerivative

    burgers = TimeDerivative(u) + Advection(u) - nu * Laplacian(u)
    ```

    **Arguments:**

    - `field`: a vector field with output shape `(d,)`.
    - `method`: see `eqxderiv.Jacobian`.

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, d)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.ADVECTION})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.ADVECTION]
