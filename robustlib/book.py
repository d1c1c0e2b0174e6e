"""The course readable without running it: a run's executed notebooks and its report as a static HTML site.

:func:`build_book` reads ``<run_dir>/notebooks/*.ipynb`` (the executed copies, outputs included),
``report.md``, ``timings.json`` and the files the report links to (``figures/``, ``tables/``), and writes
``<run_dir>/book/``: ``index.html`` (each notebook's title, first paragraph and wall time, and the report),
one page per notebook (nbconvert's ``lab`` template, output images embedded) and ``report.html``, each with
previous / contents / next links. Math is typeset in the browser by MathJax 2.7 copied into
``_static/mathjax/`` from the ``jupyter-server-mathjax`` package, so the site needs no network. It is built
in a temporary folder and moved over the old one only when complete.

Example
-------
>>> from robustlib.book import build_book
>>> build_book("runs/quick")                # doctest: +SKIP
PosixPath('.../runs/quick/book/index.html')
"""
from __future__ import annotations

import hashlib
import html
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .io import RobustlibError, _read_umask, ensure_dir, read_json

MARKER = ".robustlib-book"    # written at the site's root: only a folder holding it is ever replaced
MATHJAX_URL = "_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
# the parts of jupyter-server-mathjax's MathJax 2.7 that TeX input and HTML-CSS output with the STIX-Web
# fonts load (about 2.5 MB); left out: the SVG output, the accessibility extensions and the translations
MATHJAX_PARTS = ("MathJax.js", "LICENSE", "config/TeX-AMS-MML_HTMLorMML-full.js", "config/Safe.js",
                 "extensions", "jax/input/TeX", "jax/element/mml", "jax/output/HTML-CSS",
                 "fonts/HTML-CSS/STIX-Web/woff")
MATHJAX_SKIP = ("a11y",)

# nbconvert's lab page without what would load from the internet (require.js, widgets, mermaid), with the
# lab CSS linked from _static/ rather than copied into every page, MathJax told to use its own web fonts
# (the package ships STIX-Web only) and the navigation above and below the notebook
TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block notebook_css -%}
<link rel="stylesheet" href="_static/book.css">
{%- endblock notebook_css -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
                                 linebreaks: {automatic: true}}});
</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
{%- block body_header -%}
{{ super() }}
{{ resources.book_nav }}
{%- endblock body_header -%}
{%- block body_footer -%}
{{ resources.book_nav }}
{{ super() }}
{%- endblock body_footer -%}
"""

# what lab's own page adds to its CSS inline, and the navigation bar
EXTRA_CSS = """
* { -webkit-print-color-adjust: exact; }
a.anchor-link { display: none; }
.jp-InputArea, .jp-InputArea-editor { overflow: hidden; }
.cm-editor.cm-s-jupyter .highlight pre { padding: var(--jp-code-padding) 4px; margin: 0; font-family: inherit;
  font-size: inherit; line-height: inherit; color: inherit; }
.jp-OutputArea-output pre { line-height: inherit; font-family: inherit; }
.jp-RenderedText pre { color: var(--jp-content-font-color1); font-size: var(--jp-code-font-size); }
.jp-Collapser { display: none; }
@page { margin: 0.5in; }
@media print { .jp-Cell-inputWrapper, .jp-Cell-outputWrapper { display: block; } nav.book-nav { display: none; } }
/* MathJax's hidden MathML for screen readers asks for TeX fonts that jupyter-server-mathjax does not ship */
.MJX_Assistive_MathML, .MJX_Assistive_MathML * { font-family: inherit !important; }
nav.book-nav { display: flex; justify-content: space-between; gap: 1em; max-width: 1100px; margin: 0.8em auto;
  padding: 0.4em 1em; font: 14px/1.4 var(--jp-ui-font-family); border-bottom: 1px solid #ddd; }
nav.book-nav + * { margin-top: 0; }
main > nav.book-nav:last-child { border-bottom: none; border-top: 1px solid #ddd; }
nav.book-nav a { color: #1a5fb4; text-decoration: none; }
nav.book-nav a:hover { text-decoration: underline; }
nav.book-nav span { flex: 1; }
nav.book-nav .next { text-align: right; }
nav.book-nav .up { text-align: center; }
"""


@dataclass
class Page:
    """One page of the site: its file name, its title (Markdown, may hold math) and what it is made from."""

    name: str               # "00_problem_formulation.html"
    title: str
    source: Path            # the notebook or report.md
    description: str = ""   # the notebook's first paragraph, on one line
    seconds: float | None = None


def default_run_dir(profile: str, smoke: bool | None = None) -> Path:
    """``runs/<profile>`` (``runs/<profile>-smoke`` in the smoke setting), where ``run`` writes it."""
    from .config import RUNS_ENV, repo_root, smoke_requested
    from .profiles import PROFILES

    if profile not in PROFILES:
        raise RobustlibError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)} "
                             f"(python -m robustlib profiles), or pass --run-dir")
    smoke = smoke_requested() if smoke is None else smoke
    base = Path(os.environ.get(RUNS_ENV) or repo_root() / "runs")
    return base / (profile + ("-smoke" if smoke else ""))


def _mathjax_source() -> Path:
    spec = importlib.util.find_spec("jupyter_server_mathjax")      # located, not imported (that starts a server)
    static = Path(next(iter(spec.submodule_search_locations))) / "static" if spec else None
    if static is None or not (static / "MathJax.js").is_file():
        raise RobustlibError("MathJax for offline math is missing: pip install jupyter-server-mathjax "
                             "(make book installs it with the dev extras)")
    return static


def _split_intro(source: str) -> tuple[str | None, str]:
    """The first Markdown heading of ``source`` and the paragraph after it, on one line."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        para: list[str] = []
        for rest in lines[i + 1:]:
            if not rest.strip():
                if para:
                    break
                continue
            if re.match(r"\s{0,3}(#|[-*+]\s|\d+[.)]\s|>|```|<|\|)", rest):
                if para:
                    break
                continue                 # the paragraph is prose: a list, quote, table or HTML block is not
            para.append(rest.strip())
        return m.group(1), " ".join(para)
    return None, ""


def code_digest(notebook: dict) -> str:
    """A fingerprint of a notebook's code: its code cells' sources, less the cell papermill injects with a run's
    parameters. An executed notebook and the source it ran from share it, so a site records which sources it
    shows (a committed example course can be checked against ``notebooks/``)."""
    code = ["".join(c.get("source", "")) for c in notebook.get("cells", []) if c.get("cell_type") == "code"
            and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    return hashlib.sha1(json.dumps(code).encode()).hexdigest()[:16]


def _notebook_page(path: Path, timings: dict) -> Page:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise RobustlibError(f"{path} is not a readable notebook ({type(e).__name__}); run that notebook "
                             f"again with make run") from None
    title, description = None, ""
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            title, description = _split_intro("".join(cell.get("source", "")))
            if title:
                break
    entry = timings.get(path.stem)
    seconds = entry.get("seconds") if isinstance(entry, dict) else None
    return Page(path.stem + ".html", title or path.stem, path, description,
                float(seconds) if isinstance(seconds, (int, float)) else None)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _nav(pages: list[Page], i: int) -> str:
    """Previous, contents and next links for ``pages[i]`` (``pages[0]`` is the index)."""
    def link(j: int, cls: str, rel: str) -> str:
        if not 0 <= j < len(pages) or (j == 0 and cls != "up"):
            return f'<span class="{cls}"></span>'
        text = "contents" if j == 0 else html.escape(pages[j].title, quote=False)
        text = {"prev": f"&larr; {text}", "next": f"{text} &rarr;"}.get(cls, text)
        return f'<span class="{cls}"><a href="{pages[j].name}" rel="{rel}">{text}</a></span>'

    if i == 0:
        return f'<nav class="book-nav"><span></span>{link(1, "next", "next")}</nav>'
    return (f'<nav class="book-nav">{link(i - 1, "prev", "prev")}{link(0, "up", "index")}'
            f'{link(i + 1, "next", "next")}</nav>')


def _shown(run_dir: Path) -> Path:
    """``run_dir`` relative to the checkout where it is inside it (what a committed site may show)."""
    from .config import shown_path

    return shown_path(run_dir)


def _index_markdown(run_dir: Path, pages: list[Page], report: Page) -> str:
    shown = _shown(run_dir)
    total = [p.seconds for p in pages if p.seconds is not None]
    lines = ["# The course, as it ran", "",
             f"The notebooks of the run directory `{shown}`, each with the code, printed output, tables and "
             f"figures it produced; read them in order. The last page is the run's report."
             + (f" Wall time of the notebooks: {_minutes(sum(total))} in all." if total else ""), ""]
    for p in pages:
        lines += [f"## [{p.title}]({p.name})", ""]
        about = p.description + (f" *Wall time: {_minutes(p.seconds)}.*" if p.seconds is not None else "")
        lines += [about.strip(), ""] if about.strip() else []
    lines += [f"## [{report.title}]({report.name})", "",
              "The run's `report.md`: the paper's claims checked against this run's tables, then the tables, "
              "the figures, the settings and the software.", ""]
    return "\n".join(lines)


def _local_links(page_html: str) -> set[str]:
    """The relative ``src`` and ``href`` targets of a page (no scheme, no data URI, no fragment only)."""
    out = set()
    for target in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page_html):
        target = html.unescape(target).split("#")[0].split("?")[0]
        if target and not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|/", target):
            out.add(target)
    return out


def check_inputs(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 advice: str | None = None) -> tuple[Path, Path]:
    """Everything :func:`build_book` needs, checked before it writes: a one-line error naming the fix
    (``advice``: the command that makes the run directory, e.g. ``make run PROFILE=quick``)."""
    from .io import check_not_in_use

    run_dir = Path(run_dir).expanduser().resolve()
    hint = f"run `{advice or f'python -m robustlib run --run-dir {run_dir}'}` first"
    if not run_dir.is_dir():
        raise RobustlibError(f"no run directory {run_dir}: {hint}")
    if not [p for p in (run_dir / "notebooks").glob("*.ipynb") if not p.name.startswith(".")]:
        raise RobustlibError(f"no executed notebooks in {run_dir / 'notebooks'}: {hint}")
    if not (run_dir / "report.md").is_file():
        raise RobustlibError(f"no report.md in {run_dir} (the run did not finish, or its report failed): {hint}")
    check_not_in_use(run_dir)           # a run still writing its notebooks: wait for it
    out = (Path(out).expanduser() if out else run_dir / "book").resolve()
    if run_dir.is_relative_to(out):
        raise RobustlibError(f"--out {out} would replace the run directory; pass a folder inside or beside it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise RobustlibError(f"{out} exists and is not a book built by this command (no {MARKER} in it); "
                             f"pass --out a new or empty folder, or remove it")
    _mathjax_source()
    return run_dir, out


def build_book(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
               advice: str | None = None) -> Path:
    """Write the site of ``run_dir`` to ``out`` (default ``<run_dir>/book``); returns its ``index.html``.

    ``out`` is replaced whole, and only by a complete site: the pages are written to a temporary sibling
    folder that then takes its place. Relative links of the report (``figures/*.png``, ``tables/*.csv``)
    are copied into the site; a link to a missing file is left as it is and named in a warning.
    """
    run_dir, out = check_inputs(run_dir, out, advice)
    ensure_dir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_read_umask())         # mkdtemp's 0700: the site gets a new folder's mode
        missing = _write_site(run_dir, tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for page, target in missing:
        print(f"warning: {page} links to {target}, which is not in {run_dir}: the link is broken in the book")
    return out / "index.html"


def _replace(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an old ``out`` is moved aside first and deleted last."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"book.html.j2": TEMPLATE})],
                            template_file="book.html.j2")
    exporter.mathjax_url = MATHJAX_URL
    return exporter


def _lab_css(exporter) -> str:
    for folder in exporter.template_paths:
        static = Path(folder) / "static"
        if (static / "index.css").is_file() and (static / "theme-light.css").is_file():
            return "\n".join((static / f).read_text(encoding="utf-8") for f in ("index.css", "theme-light.css"))
    raise RobustlibError("nbconvert's lab template (static/index.css) is not installed: pip install 'nbconvert>=7'")


def _write_site(run_dir: Path, site: Path) -> list[tuple[str, str]]:
    import nbformat

    timings = read_json(run_dir / "timings.json", default={})
    timings = timings if isinstance(timings, dict) else {}
    notebooks = sorted(p for p in (run_dir / "notebooks").glob("*.ipynb") if not p.name.startswith("."))
    chapters = [_notebook_page(p, timings) for p in notebooks]
    report_title, _ = _split_intro((run_dir / "report.md").read_text(encoding="utf-8"))
    report = Page("report.html", report_title or "Run report", run_dir / "report.md")
    index = Page("index.html", "The course, as it ran", run_dir)
    pages = [index, *chapters, report]

    exporter = _exporter()
    static = ensure_dir(site / "_static")
    (static / "book.css").write_text(_lab_css(exporter) + EXTRA_CSS, encoding="utf-8")
    mathjax = _mathjax_source()
    for part in MATHJAX_PARTS:
        src, dst = mathjax / part, static / "mathjax" / part
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*MATHJAX_SKIP))
        else:
            ensure_dir(dst.parent)
            shutil.copy2(src, dst)

    missing = []
    for i, page in enumerate(pages):
        if page is index:
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(_index_markdown(run_dir, chapters,
                                                                                                report))])
            base = run_dir
        elif page is report:
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
                page.source.read_text(encoding="utf-8"))])
            base = run_dir
        else:
            nb = nbformat.read(page.source, as_version=4)
            base = page.source.parent
        nb.metadata["title"] = re.sub(r"\$([^$]*)\$", r"\1", page.title)       # the tab shows TeX as text
        body, _ = exporter.from_notebook_node(nb, resources={"book_nav": _nav(pages, i)})
        for target in sorted(_local_links(body)):
            if target in {p.name for p in pages} or target.startswith("_static/"):
                continue
            src = (base / target).resolve()
            dst = (site / target).resolve()
            if src.is_file() and dst.is_relative_to(site.resolve()):
                ensure_dir(dst.parent)
                shutil.copy2(src, dst)
            else:
                missing.append((page.name, target))
        (site / page.name).write_text(body, encoding="utf-8")
    sources = {p.name: code_digest(json.loads(p.source.read_text(encoding="utf-8"))) for p in chapters}
    (site / MARKER).write_text(json.dumps({"run_dir": str(_shown(run_dir)), "pages": [p.name for p in pages],
                                           "code": sources}, indent=2) + "\n", encoding="utf-8")
    return missing


def site_size(site: str | os.PathLike) -> int:
    """Bytes in every file under ``site``."""
    return sum(p.stat().st_size for p in Path(site).rglob("*") if p.is_file())
