"""Unbiased stochastic estimators of traces: Hutchinson probes and sparse
sampling of input dimensions."""

from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._validation import as_int, check_count
from .jet_method import AbstractJetMethod, JetPass, JetResult
from .taylor import taylor_jet


def _rademacher(key, shape, dtype):
    """Uniform random signs, 32 per random word.

    Counter-based PRNGs cost about as much per word as per float, so drawing one
    bit per entry (instead of one uniform per entry, as a Bernoulli draw does) cuts
    the probe generation cost, which dominates at large `d`, by 32x.
    """
    k, d = shape
    words = jax.random.bits(key, (k, -(-d // 32)), dtype=jnp.uint32)
    bits = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)[None, None]) & 1
    bits = bits.reshape(k, -1)[:, :d]
    return (2 * bits.astype(dtype) - 1).astype(dtype)


class AbstractStochasticMethod(AbstractJetMethod):
    """A jet method whose directions are random, drawn per sample."""

    def jet(self, p: JetPass) -> JetResult:
        # Per-sample probes: compressing them would cost a factorisation per
        # sample, so the tangents are always propagated as they are.
        return taylor_jet(p)


class Hutchinson(AbstractStochasticMethod):
    """Hutchinson's trace estimator for `Divergence`, `Laplacian` and `GradDiv`.

    With $K$ independent probes $v_k$ of zero mean and identity covariance,

    $$\\nabla\\cdot f \\approx \\frac1K\\sum_k v_k^\\top J v_k, \\qquad
    \\Delta f \\approx \\frac1K\\sum_k v_k^\\top (\\nabla^2 f) v_k,$$

    and the gradient of the divergence is the gradient of the first estimate.
    All are unbiased. For a matrix $A$ (the Jacobian, or a Hessian), the variance
    of one probe's term $v^\\top A v$ is
    $\\|A\\|_F^2 + \\operatorname{tr}(A^2) - 2\\sum_i A_{ii}^2$ for Rademacher
    probes and $\\|A\\|_F^2 + \\operatorname{tr}(A^2)$ for Gaussian probes
    (for symmetric $A$: $2(\\|A\\|_F^2 - \\sum_i A_{ii}^2)$ and
    $2\\|A\\|_F^2$); the estimate's variance is that divided by $K$. The cost
    is one collapsed Taylor pass with $K$ directions, linear in $K$ and
    independent of $d$ beyond the first layer. Each sample of a batch gets its
    own probes; other quantities (value, time derivative, Jacobian) stay exact.

    The operator then needs a key: `Laplacian(f, method=Hutchinson(16))(x, t,
    key=key)`.

    **Arguments:**

    - `num_probes`: the number of probes $K$.
    - `probe`: `"rademacher"` (entries $\\pm 1$, lower variance) or `"gaussian"`.
    - `chunk_size`: propagate at most this many probes at a time.
    """

    num_probes: int = eqx.field(default=16, static=True, converter=as_int)
    probe: Literal["rademacher", "gaussian"] = eqx.field(
        default="rademacher", static=True
    )
    chunk_size: int | None = eqx.field(default=None, static=True, converter=as_int)
    stochastic: ClassVar[bool] = True

    def __check_init__(self) -> None:
        check_count(self.num_probes, "num_probes")
        if self.probe not in ("rademacher", "gaussian"):
            raise ValueError(
                f"`probe` must be 'rademacher' or 'gaussian'; got {self.probe!r}."
            )

    def directions(self, d: int, dtype: Any, key: Any) -> tuple[Array, Array, bool]:
        shape = (self.num_probes, d)
        if self.probe == "rademacher":
            V = _rademacher(key, shape, dtype)
        else:
            V = jax.random.normal(key, shape, dtype=dtype)
        return V, jnp.full((self.num_probes,), 1 / self.num_probes, dtype), False


class SparseSampling(AbstractStochasticMethod):
    """Sparse sampling of input dimensions (as in stochastic Taylor derivative
    estimators, STDE): $K$ coordinates $i_k$ drawn uniformly with replacement,

    $$\\Delta f \\approx \\frac{d}{K}\\sum_k \\partial^2_{i_k i_k} f, \\qquad
    \\nabla\\cdot f \\approx \\frac{d}{K}\\sum_k \\partial_{i_k} f_{i_k}.$$

    Unbiased; one term has variance $d\\sum_i a_i^2 - (\\sum_i a_i)^2$ where
    $a_i$ are the diagonal entries, so it is exact when they are all equal and
    the estimate's variance is that divided by $K$. Cost linear in $K$.

    ```python
    method = eqxderiv.SparseSampling(num_samples=64)
    eqxderiv.Laplacian(u, method=method)(x, t, key=jax.random.key(0))
    ```

    **Arguments:**

    - `num_samples`: the number of sampled dimensions $K$.
    - `chunk_size`: propagate at most this many directions at a time.
    """

    num_samples: int = eqx.field(default=16, static=True, converter=as_int)
    chunk_size: int | None = eqx.field(default=None, static=True, converter=as_int)
    stochastic: ClassVar[bool] = True

    def __check_init__(self) -> None:
        check_count(self.num_samples, "num_samples")

    def directions(self, d: int, dtype: Any, key: Any) -> tuple[Array, Array, bool]:
        idx = jax.random.randint(key, (self.num_samples,), 0, d)
        V = jax.nn.one_hot(idx, d, dtype=dtype)
        return V, jnp.full((self.num_samples,), d / self.num_samples, dtype), False
