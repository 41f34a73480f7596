"""Shared jaxtyping aliases, public through `eqxderiv.types`-style re-exports."""

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


# A field is any callable `f(x)` or `f(x, t)` written for one sample:
# `x` of shape `(d,)`, `t` of shape `()` or `(1,)`, output of shape `()` or `(m,)`.
Field: TypeAlias = Callable[..., Any]

# Points in space: a batch of `d`-dimensional points (or a single one).
SpaceLike: TypeAlias = Float[ArrayLike, "*batch d"]
# Times: one per point, either without or with a trailing axis of size one, or a
# single time for every point.
TimeLike: TypeAlias = (
    Float[ArrayLike, "*batch"] | Float[ArrayLike, "*batch 1"] | Float[ArrayLike, ""]
)

Scalar: TypeAlias = Float[Array, "*batch"]
Vector: TypeAlias = Float[Array, "*batch d"]
Matrix: TypeAlias = Float[Array, "*batch d d"]
# Results whose trailing shape depends on the wrapped field (scalar or vector):
# the batch and output axes together.
FieldValue: TypeAlias = Float[Array, "..."]
FieldJacobian: TypeAlias = Float[Array, "*batch_out d"]

Key: TypeAlias = PRNGKeyArray

# The `chunk_size=` of a call: any integer (a NumPy one too; it is converted to a
# Python int), or `None` for no chunking.
ChunkSize: TypeAlias = int | np.integer | None

__all__ = [
    "Array",
    "Field",
    "FieldJacobian",
    "FieldValue",
    "Key",
    "Matrix",
    "Scalar",
    "SpaceLike",
    "TimeLike",
    "Vector",
]
