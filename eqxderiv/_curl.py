from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array

from ._abstract_derivative import AbstractDerivative, require_square
from ._quantity import Quantities, Quantity


class Curl(AbstractDerivative):
    """The curl of a vector field in three dimensions, or the scalar vorticity in
    two:

    $$\\nabla\\times f = (\\partial_2 f_3 - \\partial_3 f_2,\\;
    \\partial_3 f_1 - \\partial_1 f_3,\\; \\partial_1 f_2 - \\partial_2 f_1)
    \\quad (d = 3), \\qquad \\partial_1 f_2 - \\partial_2 f_1 \\quad (d = 2).$$

    ```python
    omega = eqxderiv.Curl(velocity)(x)  # x: (b, 2) -> (b,), the vorticity
    ```

    **Arguments:**

    - `field`: a vector field with output shape `(d,)`, `d` in `{2, 3}`.
    - `method`: see `eqxderiv.Jacobian`.

    **Returns:** calling it on `x` `(*batch, 3)` gives `(*batch, 3)`; on
    `(*batch, 2)` gives `(*batch,)`.
    """

    needs: ClassVar[frozenset[Quantity]] = frozenset({Quantity.JACOBIAN})

    @classmethod
    def assemble(cls, q: Quantities, out: tuple[int, ...], d: int) -> Array:
        if d not in (2, 3):
            raise ValueError(
                f"Curl is defined for d = 2 (scalar vorticity) or d = 3; got `x` "
                f"with d = {d}."
            )
        require_square("Curl", out, d)
        J = q[Quantity.JACOBIAN]
        if d == 2:
            return J[1, 0] - J[0, 1]
        return jnp.stack([J[2, 1] - J[1, 2], J[0, 2] - J[2, 0], J[1, 0] - J[0, 1]])
