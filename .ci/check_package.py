"""Builds the sdist and wheel and installs the wheel the way a user would.

    python .ci/check_package.py OUTDIR

`python -m build` writes the sdist, then the wheel built from it (so a file the
sdist forgets fails here), into OUTDIR/dist. Both must carry LICENSE and
`eqxderiv/py.typed`, and the wheel nothing but the package and its metadata.
The wheel is then installed, with its dependencies from the package index, into
a fresh virtual environment OUTDIR/venv, where, outside the repository and with
no PYTHONPATH, `import eqxderiv` must find the installed copy, report the
packaged version, and compute the Laplacian of sum(x**2) (2 d everywhere).
"""

import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

SMOKE = """
import importlib.metadata
import importlib.resources

import jax
import jax.numpy as jnp

import eqxderiv


print("eqxderiv", eqxderiv.__version__, "from", eqxderiv.__file__)
assert "site-packages" in eqxderiv.__file__, eqxderiv.__file__
assert eqxderiv.__version__ == importlib.metadata.version("eqxderiv")
assert (importlib.resources.files("eqxderiv") / "py.typed").is_file()
d = 5
x = jax.random.normal(jax.random.key(0), (4, d))
lap = eqxderiv.Laplacian(lambda x: jnp.sum(x**2))(x)
print(f"Laplacian of sum(x**2) for d = {d}: {lap} (expected {2 * d})")
assert lap.shape == (4,) and bool(jnp.allclose(lap, 2.0 * d)), lap
"""


def run(cmd, **kwargs):
    shown = ["<smoke test>" if c is SMOKE else str(c) for c in cmd]
    print("+", " ".join(shown), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def check_wheel(wheel: Path) -> list[str]:
    errors = []
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
        metadata = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
    for needed in ("eqxderiv/py.typed", f"{info}/licenses/LICENSE"):
        if needed not in names:
            errors.append(f"{wheel.name} lacks {needed}")
    stray = [n for n in names if not n.startswith(("eqxderiv/", f"{info}/"))]
    if stray:
        errors.append(f"{wheel.name} carries files outside the package: {stray}")
    if metadata["License-Expression"] != "Apache-2.0":
        errors.append(f"License-Expression is {metadata['License-Expression']!r}")
    urls = {u.split(",")[0] for u in metadata.get_all("Project-URL") or []}
    if not {"Homepage", "Documentation", "Source", "Issues"} <= urls:
        errors.append(f"Project-URL has only {sorted(urls)}")
    return errors


def check_sdist(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as t:
        names = t.getnames()
    top = names[0].split("/")[0]
    return [
        f"{sdist.name} lacks {needed}"
        for needed in (f"{top}/LICENSE", f"{top}/eqxderiv/py.typed", f"{top}/PKG-INFO")
        if needed not in names
    ]


def main() -> int:
    out = Path(sys.argv[1]).resolve()
    dist, venv = out / "dist", out / "venv"
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT])
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    for f in (sdist, wheel):
        print(f"{f.name}: {f.stat().st_size / 1024:.0f} KiB")
    errors = check_wheel(wheel) + check_sdist(sdist)
    if errors:
        print("\n".join(f"error: {e}" for e in errors))
        return 1

    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    pip = [python, "-m", "pip", "install", "--quiet", "--progress-bar", "off"]
    run([*pip, wheel], env=env, cwd=out)
    run([python, "-c", SMOKE], env=env, cwd=out)
    print(f"{wheel.name} installs and works in a fresh environment.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
