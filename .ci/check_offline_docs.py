"""Fails if the documentation site would fetch anything from another host.

    python .ci/check_offline_docs.py SITE_DIR   # a site built by `mkdocs build`
    python .ci/check_offline_docs.py            # builds one first (--strict)

Researchers on offline clusters build these docs and open them there, so every
script, stylesheet and font a page loads (and every image, frame, ...) must come
from the site itself. Links to other hosts (`<a href>`) are fine. The check has
two parts.

Static, always: it reads every built file.

- HTML: `<script src>`; `<link href>` of every `rel` that fetches (stylesheet,
  preload, modulepreload, prefetch, preconnect, dns-prefetch, icon, manifest,
  ...); `src`, `srcset`, `poster` and `data` of img, picture sources, video,
  audio, track, iframe, embed, object and image inputs; `href` of SVG `use`
  and `image`; `<base href>`; and the CSS of `style` attributes and `<style>`
  blocks and the text of inline scripts, as below.
- CSS: `@import` and every `url()`.
- JavaScript: every string literal holding a URL of another host, and CSS
  `url()` / `@import` inside strings. Each must match an entry of `JS_ALLOWED`
  below, which says why it loads nothing from the docs (a theme that starts
  loading something new fails here until someone looks).
- Every local file that a page or stylesheet loads exists in the site; every
  page with math loads the vendored KaTeX (`MATH_ASSETS`); every vendored
  package under `vendor/` has its license beside it.

In a browser, where a Chromium is found (`$CHROMIUM`, or chromium,
chromium-browser, google-chrome on the PATH): it serves the site on 127.0.0.1,
opens the home page and every page with math in headless Chromium with every
other host unresolvable, and fails if a page asked for anything from another
host (Chromium's network log) or for a file the site lacks, if a formula was not
typeset by KaTeX (`.katex`, or `.katex-error` for one it could not parse), or
if no KaTeX font was fetched from the site. `--browser require` fails where no
Chromium is found; `--browser off` skips this part.
"""

import argparse
import contextlib
import functools
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

# What a page with math must load, as paths in the site (see mkdocs.yml).
MATH_ASSETS = {
    "script": ["vendor/katex/katex.min.js", "javascripts/katex.js"],
    "stylesheet": ["vendor/katex/katex.min.css"],
}
KATEX_FONTS = "vendor/katex/fonts/"

# URLs of other hosts that may appear in the site's JavaScript: (pattern, why it
# loads nothing when the docs are read, condition checked on the pages or None).
JS_ALLOWED = [
    (
        r"http://www\.w3\.org/(1998/Math/MathML|2000/svg|1999/xhtml|1999/xlink"
        r"|XML/1998/namespace|2000/xmlns/)",
        "an XML namespace name: an identifier, never fetched",
        None,
    ),
    (
        r"https://unpkg\.com/mermaid@[^/]+/dist/mermaid\.min\.js",
        "mkdocs-material loads Mermaid from there only for a page with a "
        "Mermaid diagram",
        "mermaid",
    ),
    (
        r"https://unpkg\.com/resize-observer-polyfill",
        "mkdocs-material loads this polyfill only in a browser without "
        "ResizeObserver (none released since 2020)",
        None,
    ),
    (
        r"https://api\.github\.com/(users|repos)/\$\{\w+\}(/\$\{\w+\})?"
        r"|https://\$\{\w+\}/api/v4/projects/\$\{encodeURIComponent\(\w+\)\}",
        "mkdocs-material's repository facts (stars, forks): JSON data, not a "
        "script, stylesheet or font, fetched only where mkdocs.yml sets "
        "`repo_url`, and simply not shown offline",
        None,
    ),
]

# `rel` values of `<link>` that make the browser fetch `href`.
FETCHING_RELS = {
    "stylesheet",
    "preload",
    "modulepreload",
    "prefetch",
    "prerender",
    "preconnect",
    "dns-prefetch",
    "icon",
    "apple-touch-icon",
    "apple-touch-icon-precomposed",
    "mask-icon",
    "manifest",
}
HOST_ONLY_RELS = {"preconnect", "dns-prefetch"}
# Attributes that make the browser fetch a URL, by element.
SRC_ATTRS = {
    "img": ("src", "srcset"),
    "source": ("src", "srcset"),
    "video": ("src", "poster"),
    "audio": ("src",),
    "track": ("src",),
    "iframe": ("src",),
    "frame": ("src",),
    "embed": ("src",),
    "object": ("data",),
    "input": ("src",),
    "use": ("href", "xlink:href"),
    "image": ("href", "xlink:href"),
}
VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}

# `scheme://...` or a protocol-relative `//host...`: another host.
OTHER_HOST = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)
CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)
CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)'"\s]*))\s*\)""", re.I)
CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.I)
JS_URL = re.compile(r"""(["'`])((?:[a-z][a-z0-9+.-]*:)?//[^/"'`\s][^"'`\s]*)\1""", re.I)


def is_other_host(url: str) -> bool:
    return bool(OTHER_HOST.match(url))


def is_inline(url: str) -> bool:
    return url.strip().lower().startswith(("data:", "blob:", "about:", "#"))


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


class Page(HTMLParser):
    """Everything a page makes the browser fetch, with line numbers."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.loads = []  # (what, url, line, check_exists)
        self.css = []  # (css text, line)
        self.scripts = []  # (script text, line)
        self.math = 0
        self.mermaid = 0
        self._in = None  # "style" or "script" while inside one
        self._buf = []
        self._line = 0

    def handle_starttag(self, tag, attrs):
        a = {k.lower(): (v or "") for k, v in attrs}
        line = self.getpos()[0]
        classes = a.get("class", "").split()
        self.math += "arithmatex" in classes
        self.mermaid += "mermaid" in classes
        if "style" in a:
            self.css.append((a["style"], line))
        if tag == "script":
            if a.get("src"):
                self.loads.append(("script", a["src"], line, True))
            else:
                self._in, self._buf, self._line = "script", [], line
        elif tag == "style":
            self._in, self._buf, self._line = "style", [], line
        elif tag == "link":
            rels = set(a.get("rel", "").lower().split())
            fetching = rels & FETCHING_RELS
            if fetching and a.get("href"):
                what = "stylesheet" if "stylesheet" in rels else sorted(fetching)[0]
                self.loads.append(
                    (what, a["href"], line, not (fetching <= HOST_ONLY_RELS))
                )
        elif tag == "base" and a.get("href"):
            self.loads.append(("base", a["href"], line, False))
        for attr in SRC_ATTRS.get(tag, ()):
            value = a.get(attr)
            if not value:
                continue
            urls = [value]
            if attr == "srcset":
                urls = [c.split()[0] for c in value.split(",") if c.strip()]
            for url in urls:
                self.loads.append((f"{tag} {attr}", url, line, True))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if self._in == tag:
            text = "".join(self._buf)
            (self.css if tag == "style" else self.scripts).append((text, self._line))
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._buf.append(data)


class Checker:
    def __init__(self, site: Path):
        self.site = site
        self.errors: list[str] = []
        self.math_pages: list[str] = []
        self.mermaid_pages: list[str] = []
        self.js_allowed: list[tuple[str, str, str]] = []  # (where, url, condition)
        self.counts = {"HTML": 0, "CSS": 0, "JS": 0, "loads": 0}

    def error(self, where: str, message: str):
        self.errors.append(f"{where}: {message}")

    def resolve(self, base: str, url: str) -> str:
        """The site path a local URL, relative to file `base`, points at."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(url.strip()).path)
        if path.startswith("/"):
            joined = path.lstrip("/")
        else:
            joined = posixpath.join(posixpath.dirname(base), path)
        return posixpath.normpath(joined)

    def exists(self, site_path: str) -> bool:
        p = self.site / site_path
        return p.is_file() or (p / "index.html").is_file()

    def check_load(self, where: str, base: str, what: str, url: str, check: bool):
        self.counts["loads"] += 1
        if is_other_host(url):
            self.error(where, f"{what} from another host: {url}")
        elif check and not is_inline(url) and url.strip():
            target = self.resolve(base, url)
            if not self.exists(target):
                self.error(where, f"{what} not in the site: {url}")

    def check_css(self, text: str, base: str, where: str, first_line: int = 1):
        text = CSS_COMMENT.sub(lambda m: "\n" * m.group().count("\n"), text)
        for rx, what in ((CSS_URL, "CSS url()"), (CSS_IMPORT, "CSS @import")):
            for m in rx.finditer(text):
                url = next(g for g in m.groups() if g is not None)
                line = first_line + line_of(text, m.start()) - 1
                self.check_load(f"{where}:{line}", base, what, url, True)

    def check_js(self, text: str, where: str, first_line: int = 1):
        for m in JS_URL.finditer(text):
            self.check_js_url(
                m.group(2), f"{where}:{first_line + line_of(text, m.start()) - 1}"
            )
        # CSS inside JavaScript strings (a theme's injected styles).
        for m in CSS_URL.finditer(text):
            url = next(g for g in m.groups() if g is not None)
            if is_other_host(url):
                line = first_line + line_of(text, m.start()) - 1
                self.error(
                    f"{where}:{line}", f"CSS in a script loads from another host: {url}"
                )
        for m in CSS_IMPORT.finditer(text):
            url = next(g for g in m.groups() if g is not None)
            if is_other_host(url):
                line = first_line + line_of(text, m.start()) - 1
                self.error(
                    f"{where}:{line}",
                    f"CSS in a script imports from another host: {url}",
                )

    def check_js_url(self, url: str, where: str):
        for pattern, _why, condition in JS_ALLOWED:
            if re.fullmatch(pattern, url):
                self.js_allowed.append((where, url, condition or ""))
                return
        self.error(
            where,
            f"script names a URL of another host: {url} (if it loads nothing "
            "when the docs are read, add it to JS_ALLOWED in "
            ".ci/check_offline_docs.py, saying why)",
        )

    def check_page(self, path: Path):
        rel = path.relative_to(self.site).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        page = Page()
        page.feed(text)
        page.close()
        self.counts["HTML"] += 1
        for what, url, line, check in page.loads:
            self.check_load(f"{rel}:{line}", rel, what, url, check)
        for css, line in page.css:
            self.check_css(css, rel, rel, line)
        for script, line in page.scripts:
            self.check_js(script, rel, line)
        if page.mermaid:
            self.mermaid_pages.append(rel)
        if page.math:
            self.math_pages.append(rel)
            for what, needed in MATH_ASSETS.items():
                loaded = {
                    self.resolve(rel, url)
                    for w, url, _, _ in page.loads
                    if w == what and not is_other_host(url)
                }
                for asset in needed:
                    if asset not in loaded:
                        self.error(
                            rel,
                            f"has {page.math} formula(s) but does not load the "
                            f"{what} {asset} that typesets them",
                        )

    def run(self):
        files = sorted(p for p in self.site.rglob("*") if p.is_file())
        for path in files:
            rel = path.relative_to(self.site).as_posix()
            if path.suffix == ".html":
                self.check_page(path)
            elif path.suffix == ".css":
                self.counts["CSS"] += 1
                self.check_css(
                    path.read_text(encoding="utf-8", errors="replace"), rel, rel
                )
            elif path.suffix in (".js", ".mjs"):
                self.counts["JS"] += 1
                self.check_js(path.read_text(encoding="utf-8", errors="replace"), rel)
        if self.counts["HTML"] == 0:
            self.error(str(self.site), "no HTML page: is this a built site?")
        for where, url, condition in self.js_allowed:
            if condition == "mermaid" and self.mermaid_pages:
                self.error(
                    where,
                    f"{url} would be fetched for the Mermaid diagrams of "
                    f"{', '.join(self.mermaid_pages)}: serve Mermaid from the site",
                )
        vendor = self.site / "vendor"
        for pkg in sorted(vendor.iterdir()) if vendor.is_dir() else []:
            if pkg.is_dir() and not any(pkg.glob("LICENSE*")):
                self.error(f"vendor/{pkg.name}", "vendored files without their LICENSE")


# ---- in a browser ----


class Handler(SimpleHTTPRequestHandler):
    requests: list[tuple[str, int]]

    def log_request(self, code="-", size="-"):
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in (
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ):
        if found := shutil.which(name):
            return found
    return None


class Typeset(HTMLParser):
    """Counts `.arithmatex` elements, those typeset by KaTeX and KaTeX errors."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.total = self.typeset = self.errors = 0
        self._depth = 0  # > 0 inside an .arithmatex element
        self._katex = False

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if self._depth:
            self._katex |= "katex" in classes
            self.errors += "katex-error" in classes
            if tag not in VOID:
                self._depth += 1
        elif "arithmatex" in classes:
            self.total += 1
            self._depth, self._katex = 1, False

    def handle_endtag(self, tag):
        if self._depth and tag not in VOID:
            self._depth -= 1
            if self._depth == 0:
                self.typeset += self._katex


def read_netlog(path: Path) -> list[dict]:
    text = path.read_text(errors="replace").rstrip()
    for suffix in ("", "]}", "]}\n"):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(text.rstrip(",") + suffix).get("events", [])
    return []


def browser_check(checker: Checker, chromium: str) -> list[str]:
    errors = []
    Handler.requests = []
    handler = functools.partial(Handler, directory=str(checker.site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    pages = ["index.html"] + [p for p in checker.math_pages if p != "index.html"]
    formulas = 0
    try:
        for page in pages:
            url = f"{origin}/{page.removesuffix('index.html')}"
            with tempfile.TemporaryDirectory() as tmp:
                netlog = Path(tmp) / "netlog.json"
                cmd = [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--disable-features=AutofillServerCommunication",
                    f"--user-data-dir={tmp}/profile",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    f"--log-net-log={netlog}",
                    "--window-size=1280,900",
                    "--virtual-time-budget=10000",
                    "--dump-dom",
                    url,
                ]
                try:
                    out = subprocess.run(
                        cmd, capture_output=True, text=True, timeout=120
                    )
                except subprocess.TimeoutExpired:
                    errors.append(f"{page}: Chromium did not finish in 120 s")
                    continue
                if out.returncode != 0 or "</html>" not in out.stdout:
                    tail = out.stderr.strip().splitlines()[-3:]
                    errors.append(f"{page}: Chromium failed ({out.returncode}): {tail}")
                    continue
                # Requests the page made (initiated by the site's origin, not
                # Chromium's own update, account or autofill ones): to another host.
                asked = set()
                for ev in read_netlog(netlog):
                    p = ev.get("params") or {}
                    url = p.get("url", "")
                    if p.get("initiator") == origin and not url.startswith(origin):
                        asked.add(url)
                for other in sorted(asked):
                    errors.append(f"{page}: the browser asked another host for {other}")
            dom = Typeset()
            dom.feed(out.stdout)
            formulas += dom.total
            if dom.typeset < dom.total:
                errors.append(
                    f"{page}: {dom.total - dom.typeset} of {dom.total} formula(s) "
                    "not typeset by KaTeX"
                )
            if dom.errors:
                errors.append(f"{page}: KaTeX could not parse {dom.errors} formula(s)")
    finally:
        server.shutdown()
        server.server_close()
    missing = sorted(
        {(p, c) for p, c in Handler.requests if c >= 400 and p != "/favicon.ico"}
    )
    for path, code in missing:
        errors.append(f"the browser asked for {path}, not in the site ({code})")
    if checker.math_pages and not any(
        p.startswith("/" + KATEX_FONTS) and c == 200 for p, c in Handler.requests
    ):
        errors.append(f"no KaTeX font was fetched from the site's {KATEX_FONTS}")
    fonts = len({p for p, c in Handler.requests if p.startswith("/" + KATEX_FONTS)})
    print(
        f"browser: {len(pages)} page(s) in {Path(chromium).name}, {formulas} "
        f"formula(s), {fonts} KaTeX font(s) served by the site"
    )
    return errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("site", nargs="?", help="a built site (default: build one)")
    p.add_argument("--browser", choices=["auto", "require", "off"], default="auto")
    args = p.parse_args(argv)

    with contextlib.ExitStack() as stack:
        if args.site:
            site = Path(args.site)
        else:
            site = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mkdocs",
                    "build",
                    "--strict",
                    "-q",
                    "-d",
                    str(site),
                ],
                cwd=ROOT,
                check=True,
            )
        checker = Checker(site)
        checker.run()
        c = checker.counts
        print(
            f"static: {c['HTML']} HTML, {c['CSS']} CSS and {c['JS']} JS file(s), "
            f"{c['loads']} load(s) checked; {len(checker.math_pages)} page(s) with "
            f"math; {len(checker.js_allowed)} allowed URL(s) in scripts"
        )
        errors = list(checker.errors)
        chromium = find_chromium() if args.browser != "off" else None
        if chromium:
            errors += browser_check(checker, chromium)
        elif args.browser == "require":
            errors.append("no Chromium found (set CHROMIUM, or install chromium)")
        elif args.browser == "auto":
            print(
                "browser: SKIPPED, no Chromium found (set CHROMIUM or install "
                "chromium to check that the math renders offline)"
            )
    for e in errors:
        print(f"error: {e}")
    if errors:
        print(f"{len(errors)} problem(s): the site is not self-contained.")
        return 1
    print("The site loads nothing from another host.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
