"""make book: a site built from a small run directory the test writes, its files and links, its one-line errors
and its atomic replacement; then every page in a headless chromium (skipped where chromium or playwright is
missing): it loads without a failed request or a script error, its math is typeset and its images show."""
import base64
import contextlib
import functools
import html
import http.server
import io
import json
import re
import shutil
import threading
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from robustlib import book
from robustlib.__main__ import main
from robustlib.io import RobustlibError

INTRO = (r"# 00 · Tiny $\epsilon$-balls" "\n\n"
         r"The first paragraph, with inline math $\epsilon = 0.1$ and **bold**," "\n"
         "on two lines.\n\n- a list item is not the description\n\n"
         r"$$\min_\theta \max_{\|\delta\|_\infty \le \epsilon} L(x + \delta, y; \theta)$$" "\n\n"
         "| a | b |\n|---|---|\n| 1 | 2 |\n")


def png() -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1), dpi=40)
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_run(run: Path) -> Path:
    """A run directory as ``python -m robustlib run`` leaves it, in small: two executed notebooks (Markdown
    with math and a table, a PNG, an HTML table, printed text), a partial notebook to ignore, report.md
    linking a figure, a table and a missing file, report.html and timings.json."""
    (run / "notebooks").mkdir(parents=True)
    (run / "figures").mkdir()
    (run / "tables").mkdir()
    image = png()
    (run / "figures" / "f.png").write_bytes(image)
    (run / "tables" / "t.csv").write_text("a,b\n1,2\n")
    code = new_code_cell("plot()", execution_count=1, outputs=[
        new_output("stream", name="stdout", text="trained 2 epochs\n"),
        new_output("display_data", data={"image/png": base64.b64encode(image).decode(), "text/plain": "<Figure>"}),
        new_output("execute_result", execution_count=1, data={
            "text/html": "<table><tr><th>method</th><th>acc</th></tr><tr><td>Ours</td><td>0.9</td></tr></table>",
            "text/plain": "method acc"})])
    nbformat.write(new_notebook(cells=[new_markdown_cell(INTRO), code]), run / "notebooks" / "00_tiny.ipynb")
    second = [new_markdown_cell("# 01 · Second\n\nAnother paragraph, about $\\theta_{std}$.\n"),
              new_markdown_cell("## A section\n\n\\begin{align} a &= b \\\\ c &= d \\end{align}\n"),
              new_code_cell("print(1)", execution_count=1, outputs=[new_output("stream", name="stdout", text="1\n")])]
    nbformat.write(new_notebook(cells=second), run / "notebooks" / "01_second.ipynb")
    (run / "notebooks" / ".01_second.4242.partial.ipynb").write_text("{")      # a run's half-written copy
    (run / "report.md").write_text("# Run report: quick\n\n*the profile* with $\\theta_{std}$\n\n"
                                   "![f](figures/f.png)\n\n[table](tables/t.csv), [gone](tables/gone.csv)\n")
    (run / "report.html").write_text("<html><body>report</body></html>\n")
    (run / "timings.json").write_text('{"00_tiny": {"seconds": 75.0, "device": "cpu"}}\n')
    return run


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    run = write_run(tmp_path_factory.mktemp("book") / "run")
    index = book.build_book(run)
    return index.parent


def local_links(page: Path) -> set[str]:
    return book._local_links(page.read_text())


def test_the_site_has_every_page_and_its_files(site):
    names = {p.name for p in site.glob("*.html")}
    assert names == {"index.html", "00_tiny.html", "01_second.html", "report.html"}
    for f in ("_static/book.css", "_static/mathjax/MathJax.js", "_static/mathjax/config/TeX-AMS-MML_HTMLorMML-full.js",
              "figures/f.png", "tables/t.csv", book.MARKER):
        assert (site / f).is_file(), f
    assert not (site / "_static/mathjax/extensions/a11y").exists()
    index = (site / "index.html").read_text()
    assert r"00 · Tiny $\epsilon$-balls" in index and "01 · Second" in index and "Run report: quick" in index
    assert r"The first paragraph, with inline math $\epsilon = 0.1$ and <strong>bold</strong>, on two lines." in index
    assert "list item" not in index
    assert "Wall time: 1.2 min" in index and "Wall time of the notebooks: 1.2 min in all" in index
    assert {"00_tiny.html", "01_second.html", "report.html"} <= local_links(site / "index.html")


def test_every_local_link_resolves_and_nothing_loads_from_the_internet(site):
    for page in site.glob("*.html"):
        text = page.read_text()
        assert not re.search(r'(src|href)="https?://[^"]*\.(js|css|mjs)', text), page.name
        assert 'src="data:image/png;base64,' in text or page.name != "00_tiny.html"
        for target in local_links(page) - {"tables/gone.csv"}:
            assert (site / target).is_file(), (page.name, target)
    report = (site / "report.html").read_text()
    assert re.search(r'<img [^>]*src="figures/f.png"', report) and 'href="tables/gone.csv"' in report


def test_pages_link_to_their_neighbours(site):
    assert {"index.html", "01_second.html"} <= local_links(site / "00_tiny.html")
    assert {"index.html", "00_tiny.html", "report.html"} <= local_links(site / "01_second.html")
    assert "01_second.html" in local_links(site / "report.html")


def test_a_missing_link_target_is_a_warning(tmp_path, capsys):
    book.build_book(write_run(tmp_path / "run"), tmp_path / "site")
    out = capsys.readouterr().out
    assert "report.html links to tables/gone.csv" in out and "f.png" not in out


def test_bad_inputs_are_one_line_before_any_work(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RobustlibError, match="no run directory .*run `make run PROFILE=quick` first"):
        book.build_book(run, advice="make run PROFILE=quick")
    (run / "notebooks").mkdir(parents=True)
    with pytest.raises(RobustlibError, match="no executed notebooks in .*python -m robustlib run --run-dir"):
        book.build_book(run)
    write_run(tmp_path / "full")
    (tmp_path / "full" / "report.md").unlink()
    with pytest.raises(RobustlibError, match="no report.md in"):
        book.build_book(tmp_path / "full")
    (tmp_path / "full" / "report.md").write_text("# r\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(RobustlibError, match="is not a book built by this command"):
        book.build_book(tmp_path / "full", tmp_path / "mine")
    with pytest.raises(RobustlibError, match="would replace the run directory"):
        book.build_book(tmp_path / "full", tmp_path)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "x" and not (tmp_path / "full" / "book").exists()


def test_cli_says_what_to_run_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBUSTLIB_RUNS", str(tmp_path / "runs"))       # empty, whatever ran before on this worker
    assert main(["book", "--profile", "quick"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no run directory" in lines[0]                    # the tests run in the smoke setting
    assert "python -m robustlib run --profile quick --smoke` first" in lines[0]
    run = write_run(tmp_path / "run")
    assert main(["book", "--run-dir", str(run), "--out", str(tmp_path / "site")]) == 0
    assert f"book: {tmp_path / 'site' / 'index.html'} (4 pages," in capsys.readouterr().out


def test_a_failed_build_leaves_the_old_site(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run")
    index = book.build_book(run)
    before = index.read_text()
    (run / "notebooks" / "01_second.ipynb").write_text("{not json")
    with pytest.raises(RobustlibError, match="01_second.ipynb is not a readable notebook"):
        book.build_book(run)
    from nbconvert import HTMLExporter

    calls = []

    def fail_later(self, nb, resources=None, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk trouble")
        return real(self, nb, resources, **kw)

    real = HTMLExporter.from_notebook_node
    (run / "notebooks" / "01_second.ipynb").unlink()
    monkeypatch.setattr(HTMLExporter, "from_notebook_node", fail_later)
    with pytest.raises(RuntimeError, match="disk trouble"):
        book.build_book(run)
    assert index.read_text() == before and len(calls) == 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []     # no temporary left
    monkeypatch.undo()
    book.build_book(run)                                        # a good build replaces the old site whole
    assert not (run / "book" / "01_second.html").exists() and (run / "book" / "00_tiny.html").exists()


# ------------------------------------------------------------------------------------ in a real browser
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does where it is root)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    return path


@contextlib.contextmanager
def serving(directory: Path):
    """``directory`` over HTTP on a free local port, quietly; yields its URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(site):
    with serving(site) as url:
        yield url


def watched_page(browser):
    """A new page, with the lists its failed requests (a network error or a status >= 400) and its script
    errors are appended to."""
    page = browser.new_page()
    failed, errors = [], []
    page.on("requestfailed", lambda r: r.url.startswith(("http", "file")) and failed.append(r.url))
    page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.url} {r.status}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, failed, errors


MATH_DONE = "() => new Promise(done => MathJax.Hub.Queue(() => done(true)))"
STATE = """() => ({
    math: document.querySelectorAll('.MathJax').length,
    display: document.querySelectorAll('.MathJax_Display').length,
    errors: document.querySelectorAll('.MathJax_Error, .MathJax .merror').length,
    font: MathJax.OutputJax['HTML-CSS'] ? MathJax.OutputJax['HTML-CSS'].fontInUse : null,
    images: [...document.images].map(i => i.complete ? i.naturalWidth : 0),
    text: document.body.innerText,
    prose: [...document.querySelectorAll('.jp-RenderedMarkdown')].map(e => e.innerText).join('\\n')})"""


def test_every_page_in_chromium(site, server):
    executable = chromium()                     # skips first where chromium or playwright is missing
    from playwright.sync_api import sync_playwright
    expect = {"index.html": (5, 0, 0), "00_tiny.html": (3, 1, 1), "01_second.html": (4, 1, 0),
              "report.html": (1, 0, 1)}      # (math at least, display math at least, images)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable)
        try:
            page, failed, errors = watched_page(browser)
            for name, (math, display, images) in expect.items():
                for url in (server + name, (site / name).as_uri()) if name == "index.html" else (server + name,):
                    page.goto(url)
                    page.wait_for_function("() => window.MathJax && MathJax.Hub && MathJax.Hub.Queue", timeout=20000)
                    page.evaluate(MATH_DONE)
                    state = page.evaluate(STATE)
                    assert state["math"] >= math and state["display"] >= display, (url, state["math"])
                    assert state["errors"] == 0 and state["font"] == "STIX-Web", url
                    assert "$" not in state["prose"] and "\\begin" not in state["prose"], url
                    assert "$$" not in state["text"], url
                    assert len(state["images"]) == images and all(w > 0 for w in state["images"]), url
            assert failed == [] and errors == [], (failed, errors)
            page.goto(server + "00_tiny.html")                      # the navigation works
            page.click("nav.book-nav .next a")
            assert page.url.endswith("01_second.html")
        finally:
            browser.close()


# ------------------------------------------------------------------ the course committed under docs/course
ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "docs" / "course" / "quick"


def test_the_committed_course_has_each_notebooks_page_and_every_link_resolves():
    """The example course the README links: a page per notebook of notebooks/ (each with that notebook's title),
    the index and the report; every local link and image resolves inside it; no cell shows an error."""
    sources = sorted((ROOT / "notebooks").glob("0*.ipynb"))
    assert {p.stem for p in COURSE.glob("*.html")} == {*(p.stem for p in sources), "index", "report"}
    for src in sources:
        first = next(c.source for c in nbformat.read(src, as_version=4).cells if c.cell_type == "markdown")
        title = first.splitlines()[0].lstrip("# ").strip()
        assert html.escape(title, quote=False) in (COURSE / f"{src.stem}.html").read_text(), src.stem
    # made from today's notebooks: each page's code is its source's (regenerate the course after changing one)
    code = json.loads((COURSE / book.MARKER).read_text())["code"]
    for src in sources:
        assert code.get(f"{src.stem}.html") == book.code_digest(json.loads(src.read_text())), (
            f"docs/course/quick/{src.stem}.html shows other code than notebooks/{src.name}: run make run, then "
            "make book OUT=docs/course/quick")
    for page in COURSE.glob("*.html"):
        text = page.read_text()
        for target in local_links(page):
            assert (COURSE / target).is_file(), (page.name, target)
        assert "Traceback (most recent call last)" not in text and 'class="ansi-red-fg"' not in text, page.name


def test_the_committed_course_in_chromium():
    executable = chromium()                     # skips first where chromium or playwright is missing
    from playwright.sync_api import sync_playwright
    pages = sorted(p.name for p in COURSE.glob("*.html"))
    with serving(COURSE) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable)
        try:
            page, failed, errors = watched_page(browser)
            for name in pages:
                page.goto(server + name)
                page.wait_for_function("() => window.MathJax && MathJax.Hub && MathJax.Hub.Queue", timeout=20000)
                page.evaluate(MATH_DONE)
                state = page.evaluate(STATE)
                assert state["errors"] == 0 and "$$" not in state["text"], name
                assert "$" not in state["prose"], name
                assert all(w > 0 for w in state["images"]), (name, state["images"])
                if name.startswith("0"):
                    assert state["math"] > 0 and state["images"], name     # every notebook has math and figures
            assert failed == [] and errors == [], (failed, errors)
        finally:
            browser.close()
