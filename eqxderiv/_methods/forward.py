"""Nested forward mode: one JVP (or JVP-of-JVP) per input direction."""

from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._validation import as_int
from .higher import DirectionalJet, nested_directional
from .jet_method import AbstractJetMethod, JetPass, JetResult, forward_jet


class Forward(AbstractJetMethod):
    """Exact derivatives by plain nested forward mode: one JVP per input
    direction for first-order terms, one JVP-of-JVP per direction for the
    Laplacian, reverse mode over that for the gradient of the divergence.

    The Laplacian costs $d$ second-order passes, where `Taylor` pays for one
    collapsed pass; this method is kept as a dependable, primitive-agnostic
    alternative.

    ```python
    eqxderiv.Laplacian(u, method=eqxderiv.Forward(chunk_size=32))(x, t)
    ```

    **Arguments:**

    - `chunk_size`: propagate at most this many input directions at a time
        (bounds memory for large `d`). `None` propagates all at once.
    """

    chunk_size: int | None = eqx.field(default=None, static=True, converter=as_int)
    stochastic: ClassVar[bool] = False

    def directions(self, d: int, dtype: Any, key: Any) -> tuple[Array, Array, bool]:
        return jnp.eye(d, dtype=dtype), jnp.ones((d,), dtype), True

    def jet(self, p: JetPass) -> JetResult:
        return forward_jet(p)

    def higher_jet(self) -> DirectionalJet:
        # K nested JVPs per direction, for derivatives of any order.
        return nested_directional
