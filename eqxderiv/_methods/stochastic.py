"""Unbiased stochastic estimators of traces: Hutchinson probes and sparse
sampling of input dimensions."""

from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._validation import as_bool, as_int, check_count
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
    """A jet method whose directions are random: drawn per sample, or once per
    call and shared by every sample of the batch (`shared`)."""

    shared: eqx.AbstractVar[bool]

    def __check_init__(self) -> None:
        if not isinstance(self.shared, bool):
            raise ValueError(f"`shared` must be a bool; got {self.shared!r}.")

    def jet(self, p: JetPass) -> JetResult:
        # Per-sample probes: compressing them would cost a factorisation per
        # sample, so their tangents are propagated as they are. Shared probes are
        # the same for every sample, as Taylor's coordinate directions are: for a
        # Laplacian alone, a first layer narrower than the K probes compresses
        # them (exactly) once per call, since the layer's tangents, computed from
        # the probes and the weights alone, are unbatched under the batch `vmap`.
        compress = self.shared and p.second and not p.tangents
        return taylor_jet(p, compress and p.contract is None)


def shares_probes(method: Any) -> bool:
    """Whether `method` draws one set of probes per call, shared by every sample
    (it then gets the call's key, the same for every sample, not the sample's)."""
    return isinstance(method, AbstractStochasticMethod) and method.shared


class Hutchinson(AbstractStochasticMethod):
    """Hutchinson's trace estimator for `Divergence`, `Laplacian` and `GradDiv`
    (and `GradLaplacian`, `Biharmonic`; see
    [Higher-order operators](higher-order.md#stochastic-estimators-at-large-d)).

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
    own probes, unless `shared=True`; other quantities (value, time derivative,
    Jacobian) stay exact.

    With `shared=True`, one set of $K$ probes is drawn per call and used for
    every sample of the batch. Each sample's estimate $\\hat\\tau_i$ is still
    unbiased, with the same variance; but the estimates of different samples are
    now correlated. Their mean over a batch of $b$ samples with matrices $A_i$
    (a loss's mean over collocation points, say) is the estimate of
    $\\operatorname{tr}\\bar A$, $\\bar A = \\frac1b\\sum_i A_i$, from the same
    probes, so with $\\sigma^2(A)$ the variance of one probe's term above,

    $$\\operatorname{Var}\\Big[\\frac1b\\sum_i\\hat\\tau_i\\Big] =
    \\frac{\\sigma^2(\\bar A)}{K} \\quad\\text{(shared)}, \\qquad
    \\frac{1}{b^2}\\sum_i \\frac{\\sigma^2(A_i)}{K} \\quad\\text{(per sample)}.$$

    Where the samples' matrices are alike, sharing multiplies the variance of
    the mean by up to $b$; where they differ (cancel, say) it can be less. In
    exchange the probes are drawn once ($Kd$ random numbers instead of $bKd$)
    and the first layer's products with them (an $(n, d)$ weight times the
    $(d, K)$ probes) are computed once per call instead of once per sample, most
    of the cost at large $d$. For a Laplacian alone with more probes than a
    first layer's width $n$, the probes are also compressed to $n$ directions
    there, once per call, as `eqxderiv.Taylor` compresses the coordinate
    directions (exactly: the estimate is unchanged).

    The operator then needs a key: `Laplacian(f, method=Hutchinson(16))(x, t,
    key=key)`. Shared probes are drawn from that key itself, per-sample ones
    from each sample's subkey of it.

    ```python
    shared = eqxderiv.Laplacian(u, method=eqxderiv.Hutchinson(16, shared=True))
    shared(x, t, key=jax.random.key(0))  # one (16, d) draw for the whole batch
    ```

    **Arguments:**

    - `num_probes`: the number of probes $K$.
    - `probe`: `"rademacher"` (entries $\\pm 1$, lower variance) or `"gaussian"`.
    - `chunk_size`: propagate at most this many probes at a time.
    - `shared`: draw one set of probes per call, used for every sample of the
        batch (default `False`: each sample its own).
    """

    num_probes: int = eqx.field(default=16, static=True, converter=as_int)
    probe: Literal["rademacher", "gaussian"] = eqx.field(
        default="rademacher", static=True
    )
    chunk_size: int | None = eqx.field(default=None, static=True, converter=as_int)
    shared: bool = eqx.field(default=False, static=True, converter=as_bool)
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

    def biharmonic_directions(
        self, d: int, dtype: Any, key: Any
    ) -> tuple[Array, Array]:
        # Gaussian probes whatever `probe` says: E[D^4 f[v]^4] = 3 Δ²f holds for
        # v ~ N(0, I) (Isserlis), while Rademacher probes give
        # 3 Δ²f - 2 sum_i ∂_i^4 f.
        V = jax.random.normal(key, (self.num_probes, d), dtype=dtype)
        return V, jnp.full((self.num_probes,), 1 / (3 * self.num_probes), dtype)


class SparseSampling(AbstractStochasticMethod):
    """Sparse sampling of input dimensions (as in stochastic Taylor derivative
    estimators, STDE): $K$ coordinates $i_k$ drawn uniformly with replacement
    (for `Biharmonic`, $K$ pairs of coordinates; see
    [Higher-order operators](higher-order.md#stochastic-estimators-at-large-d)),

    $$\\Delta f \\approx \\frac{d}{K}\\sum_k \\partial^2_{i_k i_k} f, \\qquad
    \\nabla\\cdot f \\approx \\frac{d}{K}\\sum_k \\partial_{i_k} f_{i_k}.$$

    Unbiased; one term has variance $d\\sum_i a_i^2 - (\\sum_i a_i)^2$ where
    $a_i$ are the diagonal entries, so it is exact when they are all equal and
    the estimate's variance is that divided by $K$. Cost linear in $K$.

    With `shared=True`, one set of $K$ coordinates is drawn per call and used
    for every sample of the batch: each sample's estimate is unbiased with the
    same variance, but the mean over a batch of $b$ samples has the variance
    above for the mean diagonal $\\bar a = \\frac1b\\sum_j a^{(j)}$ (it
    estimates $\\sum_i \\bar a_i$ from the same coordinates), instead of
    $\\frac1{b^2}\\sum_j$ of the samples' own variances: up to $b$ times more
    where the samples are alike. In exchange the first layer's products with the
    sampled coordinates are formed once per call (see `eqxderiv.Hutchinson`).

    ```python
    method = eqxderiv.SparseSampling(num_samples=64)
    eqxderiv.Laplacian(u, method=method)(x, t, key=jax.random.key(0))
    ```

    **Arguments:**

    - `num_samples`: the number of sampled dimensions $K$.
    - `chunk_size`: propagate at most this many directions at a time.
    - `shared`: draw one set of coordinates per call, used for every sample of
        the batch (default `False`: each sample its own).
    """

    num_samples: int = eqx.field(default=16, static=True, converter=as_int)
    chunk_size: int | None = eqx.field(default=None, static=True, converter=as_int)
    shared: bool = eqx.field(default=False, static=True, converter=as_bool)
    stochastic: ClassVar[bool] = True

    def __check_init__(self) -> None:
        check_count(self.num_samples, "num_samples")

    def directions(self, d: int, dtype: Any, key: Any) -> tuple[Array, Array, bool]:
        idx = jax.random.randint(key, (self.num_samples,), 0, d)
        V = jax.nn.one_hot(idx, d, dtype=dtype)
        return V, jnp.full((self.num_samples,), d / self.num_samples, dtype), False

    def biharmonic_directions(
        self, d: int, dtype: Any, key: Any
    ) -> tuple[Array, Array]:
        # K ordered pairs (i, j) drawn uniformly: Δ²f = d² E[∂_i²∂_j² f], each
        # term by four directions (one for i = j).
        K = self.num_samples
        ki, kj = jax.random.split(key)
        i = jax.random.randint(ki, (K,), 0, d)
        j = jax.random.randint(kj, (K,), 0, d)
        ei, ej = jax.nn.one_hot(i, d, dtype=dtype), jax.nn.one_hot(j, d, dtype=dtype)
        same = (i == j)[:, None]
        # ∂_i²∂_j² f = (D_{e_i+e_j} + D_{e_i-e_j} - 2 D_{e_i} - 2 D_{e_j}) / 12 for
        # i != j, with D_v = D^4 f[v]^4; D_{e_i} alone for i = j.
        c = jnp.where(same, 0, 1 / 12).astype(dtype)
        a = jnp.where(same, 1, -1 / 6).astype(dtype)
        b = jnp.where(same, 0, -1 / 6).astype(dtype)
        V = jnp.concatenate([ei + ej, ei - ej, ei, ej])
        w = jnp.concatenate([c, c, a, b])[:, 0] * (d * d / K)
        return V, w.astype(dtype)
