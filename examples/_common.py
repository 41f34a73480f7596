"""Helpers shared by the example scripts: command line, output paths, progress bar
and the final pass/fail check.

Every example is run as a script, `python examples/<name>.py [flags]`, and

- writes its plot to `--plot PATH`, by default `<out>/<name>.png`, where `--out`
  defaults to `examples/out/` next to the scripts (created if missing, with a
  `.gitignore` inside so that the outputs are never committed);
- shows a tqdm progress bar while it trains;
- ends with an explicit check of its stated result and exits with status 1 if it
  is not met.
"""

import argparse
import time
from pathlib import Path

import matplotlib


matplotlib.use("Agg")  # Examples run headless in CI: never open a window.

from tqdm.auto import tqdm  # noqa: E402


DEFAULT_OUT = Path(__file__).resolve().parent / "out"


def make_parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every example shares: `--out`, `--plot`
    and `--seed`. `doc` is the script's module docstring (shown by `--help`)."""
    parser = argparse.ArgumentParser(
        prog=f"{name}.py",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="directory for the outputs (default: examples/out/, created if missing)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"where to write the figure (default: <out>/{name}.png)",
    )
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    return parser


def plot_path(args: argparse.Namespace, name: str) -> Path:
    """The figure's path: `--plot` if given, else `<out>/<name>.png`. Creates the
    parent directory if needed."""
    path = args.plot if args.plot is not None else args.out / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.parent.resolve() == DEFAULT_OUT:
        ignore = DEFAULT_OUT / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# Outputs of the example scripts.\n*\n")
    return path


def progress(steps: int, desc: str) -> "tqdm[int]":
    """`range(steps)` with a tqdm progress bar (on stderr). Set a postfix with
    `bar.set_postfix(...)` on the returned object."""
    return tqdm(range(steps), desc=desc, mininterval=0.5, dynamic_ncols=True)


class Timer:
    """Wall-clock time since construction, for the final summary."""

    def __init__(self):
        self.start = time.perf_counter()

    def __str__(self):
        return f"{time.perf_counter() - self.start:.1f} s"


def check(ok: bool, message: str) -> None:
    """Prints `PASS: message` or `FAIL: message`; exits with status 1 on failure."""
    print(f"{'PASS' if ok else 'FAIL'}: {message}")
    if not ok:
        raise SystemExit(1)
