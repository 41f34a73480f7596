from typing import ClassVar

from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative
from ._quantity import Quantities, Quantity


class Value(AbstractDerivative):
    """The field itself, as an operator: $f(x, t)$, batched.

    Plain fields are wrapped in `Value` automatically when they appear in operator
    arithmetic (`TimeDerivative(f) + f`), so that a residual can mention the field
    and share its propagation with the derivative terms.

    ```python
    u = eqxderiv.Value(lambda x, t: jnp.sin(x[0]) * t)
    u(x, t)  # (*batch,)
    ```

    **Arguments:**

    - `field`: a callable `f(x)` or `f(x, t)` on one sample.
    - `method`: how fused derivative terms are computed (see `eqxderiv.Taylor`).

    **Returns:** calling it on `x` `(*batch, d)` gives `(*batch, *out)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.VALUE})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        return q[Quantity.VALUE].reshape(out)
