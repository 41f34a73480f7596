"""eqxderiv: batched, typed, composable derivative operators for neural fields."""

import importlib.metadata

from ._curl import Advection as Advection, Curl as Curl
from ._custom_types import (
    Field as Field,
    SpaceLike as SpaceLike,
    TimeLike as TimeLike,
)
from ._derivative import AbstractDerivative as AbstractDerivative
from ._derivatives import derivatives as derivatives
from ._divergence import Divergence as Divergence, GradDiv as GradDiv
from ._engine import (
    FallbackWarning as FallbackWarning,
    Jet as Jet,
    JetContext as JetContext,
    register_rule as register_rule,
)
from ._flax import FlaxField as FlaxField, from_flax as from_flax
from ._jacobian import Grad as Grad, Hessian as Hessian, Jacobian as Jacobian
from ._laplacian import Laplacian as Laplacian
from ._method import (
    AbstractJetMethod as AbstractJetMethod,
    AbstractMethod as AbstractMethod,
    Forward as Forward,
    Nested as Nested,
)
from ._nn import SpaceTimeMLP as SpaceTimeMLP
from ._operator import AbstractOperator as AbstractOperator
from ._stochastic import Hutchinson as Hutchinson, SparseSampling as SparseSampling
from ._taylor_method import Taylor as Taylor
from ._time import TimeDerivative as TimeDerivative
from ._value import Value as Value


__version__ = importlib.metadata.version("eqxderiv")
