"""eqxderiv: batched, typed, composable derivative operators for neural fields."""

import importlib.metadata

from ._abstract_derivative import AbstractDerivative as AbstractDerivative
from ._advection import Advection as Advection
from ._biharmonic import Biharmonic as Biharmonic
from ._component import Component as Component
from ._curl import Curl as Curl
from ._custom_types import (
    Field as Field,
    SpaceLike as SpaceLike,
    TimeLike as TimeLike,
)
from ._derivatives import derivatives as derivatives
from ._divergence import Divergence as Divergence
from ._engine import (
    FallbackWarning as FallbackWarning,
    Jet as Jet,
    JetContext as JetContext,
    TaylorContext as TaylorContext,
    TaylorJet as TaylorJet,
    register_rule as register_rule,
    register_taylor_rule as register_taylor_rule,
)
from ._flax import FlaxField as FlaxField, from_flax as from_flax
from ._grad import Grad as Grad
from ._grad_div import GradDiv as GradDiv
from ._grad_laplacian import GradLaplacian as GradLaplacian
from ._hessian import Hessian as Hessian
from ._jacobian import Jacobian as Jacobian
from ._laplacian import Laplacian as Laplacian
from ._methods import (
    AbstractJetMethod as AbstractJetMethod,
    AbstractMethod as AbstractMethod,
    FieldProgram as FieldProgram,
    Forward as Forward,
    Hutchinson as Hutchinson,
    MethodName as MethodName,
    Nested as Nested,
    SparseSampling as SparseSampling,
    Taylor as Taylor,
)
from ._nn import SpaceTimeMLP as SpaceTimeMLP
from ._operator import AbstractOperator as AbstractOperator
from ._partial import Partial as Partial
from ._quantity import PartialDerivative as PartialDerivative, Quantity as Quantity
from ._time_derivative import TimeDerivative as TimeDerivative
from ._value import Value as Value


__version__ = importlib.metadata.version("eqxderiv")
