"""Where the time of one benchmark group goes: XLA's own CPU profile of each
contender's compiled program, summed by operation (fusion, dot, copy), beside
its median run time.

A ratio in `run.py`'s table says that a contender is slower; this says which of
its compiled operations costs what. The programs and inputs are `run.py`'s own
(seed net, or a network of the architecture sweep), so its groups can be
dissected as they are timed:

    python benchmarks/profile_ops.py jacobian --d 128
    python benchmarks/profile_ops.py divergence --d 128 --model residual
    python benchmarks/profile_ops.py laplacian --d 32 --model "gelu MLP"

Times are thread-milliseconds per call, summed over the threads XLA runs an
operation on (so they add up to more than the run time on several cores), from
`jax.profiler` traces read back with `jax.profiler.ProfileData`; names are the
operations of `compiled.as_text()` (`--hlo DIR` writes those texts, one file per
contender, to look an operation up). Like every timing on a shared machine
they are noisy; compare contenders profiled in one run.
"""

import argparse
import collections
import glob
import os
import statistics
import sys
import tempfile
import time

import jax


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402


def contenders(quantity: str, d: int, model: str | None, width: int, depth: int):
    """`(model name, {name: fn(x, t)})` of `run.py`'s group."""
    key = jax.random.PRNGKey(0)
    if model is None:
        name = "seed net"
        groups = bench.recipes(bench.make_net(d, width, depth, key), d)
    else:
        models = dict(bench.sweep_models(width, depth))
        names = [m for m in models if m.startswith(model)]
        if len(names) != 1:
            raise SystemExit(
                f"--model {model!r} names {names or 'none'} of {list(models)}"
            )
        name = names[0]
        groups = {
            q: fns for q, (fns, _) in bench.sweep_recipes(models[name](d, key)).items()
        }
    if quantity not in groups:
        raise SystemExit(f"{name} has no group {quantity!r}; it has {list(groups)}")
    return name, groups[quantity]


def operation_times(compiled, args, calls: int) -> dict[str, float]:
    """Thread-milliseconds per call of each operation of `compiled`."""
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        for _ in range(calls):
            jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        profile = jax.profiler.ProfileData.from_file(path)
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in profile.planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                # The executor's own spans contain the operations' spans.
                if "Execute" in event.name or "Await" in event.name:
                    continue
                totals[event.name] += event.duration_ns / 1e6 / calls
    return dict(totals)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "quantity", help="a group of run.py: jacobian, divergence, laplacian, ..."
    )
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument(
        "--model",
        help="a network of the sweep, by the start of its name (default: the seed net)",
    )
    p.add_argument("--repeats", type=int, default=21, help="timed runs, interleaved")
    p.add_argument("--calls", type=int, default=10, help="profiled calls")
    p.add_argument("--top", type=int, default=12, help="operations shown")
    p.add_argument("--hlo", metavar="DIR", help="write each compiled program here")
    args = p.parse_args(argv)

    model, fns = contenders(args.quantity, args.d, args.model, args.width, args.depth)
    kx, kt = jax.random.split(jax.random.PRNGKey(1))
    inputs = (
        jax.random.normal(kx, (args.batch, args.d)),
        jax.random.normal(kt, (args.batch, 1)),
    )
    # A contender made of several programs (`run.SeparateCalls`) has no one
    # program to profile.
    compiled = {
        n: jax.jit(f).lower(*inputs).compile()
        for n, f in fns.items()
        if not isinstance(f, bench.SeparateCalls)
    }
    times: dict[str, list[float]] = {n: [] for n in compiled}
    for c in compiled.values():
        jax.block_until_ready(c(*inputs))
    for _ in range(args.repeats):
        for n, c in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(c(*inputs))
            times[n].append(1e3 * (time.perf_counter() - start))
    print(f"{args.quantity}, {model}, d = {args.d}, batch {args.batch}")
    for i, (n, c) in enumerate(compiled.items()):
        if args.hlo:
            os.makedirs(args.hlo, exist_ok=True)
            with open(os.path.join(args.hlo, f"{i}.hlo.txt"), "w") as f:
                f.write(f"# {n}\n{c.as_text()}")
        ops = operation_times(c, inputs, args.calls)
        print(
            f"\n{n}: median {statistics.median(times[n]):.2f} ms, operations "
            f"{sum(ops.values()):.2f} thread-ms per call"
        )
        for name, ms in sorted(ops.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {ms:9.3f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
