from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class SpaceTimeMLP(eqx.Module):
    """A multilayer perceptron over `(x, t)`: it concatenates `x` with `t` and
    applies `depth` hidden layers of `width` units with `activation` (tanh by
    default), then a linear output layer. The Equinox counterpart of the network
    in the question this library answers (two tanh layers over
    `concatenate(x, t)`).

    ```python
    net = eqxderiv.SpaceTimeMLP(in_size=3, out_size=3, width=100, depth=2, key=key)
    net(x[0], t[0])                   # one sample: (3,), (1,) or () -> (3,)
    eqxderiv.Jacobian(net)(x, t)      # a batch: (b, 3), (b, 1) -> (b, 3, 3)
    ```

    **Arguments:**

    - `in_size`: the spatial dimension `d`.
    - `out_size`: the output dimension, or `"scalar"` for a scalar field.
    - `width`: hidden units per layer.
    - `depth`: number of hidden layers.
    - `time`: whether the network takes a time input (default `True`). With
        `time=False` it is a field of `x` alone.
    - `activation`: the hidden nonlinearity.
    - `key`: a PRNG key for the initialisation.
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: Callable[[Array], Array] = eqx.field(static=True)
    in_size: int = eqx.field(static=True)
    out_size: int | str = eqx.field(static=True)
    time: bool = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int | str,
        width: int = 100,
        depth: int = 2,
        *,
        time: bool = True,
        activation: Callable[[Array], Array] = jnp.tanh,
        key: PRNGKeyArray,
    ):
        for name, v in (("in_size", in_size), ("width", width), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"`{name}` must be a positive int; got {v!r}.")
        if out_size != "scalar" and (not isinstance(out_size, int) or out_size < 1):
            raise ValueError(
                f"`out_size` must be a positive int or 'scalar'; got {out_size!r}."
            )
        sizes = [in_size + (1 if time else 0)] + [width] * depth
        keys = jax.random.split(key, depth + 1)
        layers = [
            eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys)
        ]
        layers.append(eqx.nn.Linear(width, out_size, key=keys[-1]))
        self.layers = tuple(layers)
        self.activation = activation
        self.in_size = in_size
        self.out_size = out_size
        self.time = time

    def __call__(
        self,
        x: Float[Array, " d"],
        t: Float[Array, ""] | Float[Array, "1"] | None = None,
    ) -> Float[Array, "..."]:
        if x.shape != (self.in_size,):
            raise ValueError(
                f"`x` must have shape ({self.in_size},) for one sample; got "
                f"{x.shape}. Batch through an operator or `jax.vmap`."
            )
        if self.time:
            if t is None:
                raise TypeError(
                    "This SpaceTimeMLP was built with time=True and needs `t`."
                )
            h = jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)])
        else:
            if t is not None:
                raise TypeError(
                    "This SpaceTimeMLP was built with time=False and takes no `t`."
                )
            h = x
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return self.layers[-1](h)
