"""Writes docs/vendor/katex/: the KaTeX files the documentation site typesets its
math with, so that the site needs no network to show a formula.

    python .ci/vendor_katex.py        # needs npm and the npm registry

Run it only to change the KaTeX version (edit VERSION and INTEGRITY below, then
commit what it writes); building the docs never runs it. It fetches the pinned
release with `npm pack`, checks the tarball against the registry's published
integrity hash, and copies exactly:

- `dist/katex.min.js`, unchanged;
- `dist/katex.min.css`, with the `.woff` and `.ttf` fallbacks of every
  `@font-face` removed, so that it references only the `.woff2` fonts copied
  beside it (every browser of the last years reads woff2; this keeps the copy
  at about 600 KB instead of 1.5 MB);
- `dist/fonts/*.woff2`;
- `LICENSE` (MIT), which must stay next to the files.

Why KaTeX, copied into the repository: KaTeX is one self-contained script plus
its fonts, whereas MathJax 3 loads its fonts and many TeX extensions at run time
from wherever it was loaded, so serving it offline means copying most of its
tree; no PyPI package ships KaTeX's browser files, and a pinned, checked copy
in the repository builds the same site everywhere, offline clusters included.
"""

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


VERSION = "0.19.1"
# `npm view katex@0.19.1 dist.integrity`
INTEGRITY = (
    "sha512-jG8uKntjSEcm2EpQOh0XturpPuuC9r3Sq5HLHdsFdWZT27E672SF19QEi+of0/"
    "YeOy15lDgRhKvr5614uRrEfA=="
)
ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "docs" / "vendor" / "katex"

# One fallback source in an @font-face `src:` list, e.g.
# `,url(fonts/KaTeX_AMS-Regular.woff) format("woff")`.
FALLBACK = re.compile(r',\s*url\([^)]*\.(?:woff|ttf)\)\s*format\("(?:woff|truetype)"\)')


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", f"katex@{VERSION}", "--pack-destination", tmp],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        tarball = Path(tmp) / out.strip().splitlines()[-1]
        digest = hashlib.sha512(tarball.read_bytes()).digest()
        got = "sha512-" + base64.b64encode(digest).decode()
        if got != INTEGRITY:
            print(f"integrity mismatch: expected {INTEGRITY}, got {got}")
            return 1
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        pkg = Path(tmp) / "package"

        if DEST.exists():
            shutil.rmtree(DEST)
        (DEST / "fonts").mkdir(parents=True)
        shutil.copy(pkg / "LICENSE", DEST / "LICENSE")
        shutil.copy(pkg / "dist" / "katex.min.js", DEST / "katex.min.js")
        for font in sorted((pkg / "dist" / "fonts").glob("*.woff2")):
            shutil.copy(font, DEST / "fonts" / font.name)

        css = (pkg / "dist" / "katex.min.css").read_text()
        css, removed = FALLBACK.subn("", css)
        urls = re.findall(r"url\(([^)]*)\)", css)
        missing = [u for u in urls if not (DEST / u).is_file()]
        if removed == 0 or missing or not all(u.endswith(".woff2") for u in urls):
            print(f"unexpected katex.min.css: removed {removed}, missing {missing}")
            return 1
        header = (
            f"/* KaTeX {VERSION} dist/katex.min.css, with the .woff and .ttf "
            "font fallbacks removed by .ci/vendor_katex.py. */\n"
        )
        (DEST / "katex.min.css").write_text(header + css)
        (DEST / "VERSION").write_text(
            f"KaTeX {VERSION} from the npm registry (katex@{VERSION}, "
            f"integrity {INTEGRITY}),\ncopied by .ci/vendor_katex.py; "
            "see there for what was copied and why.\n"
        )
    size = sum(f.stat().st_size for f in DEST.rglob("*") if f.is_file())
    print(f"wrote {DEST.relative_to(ROOT)} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
