"""The rendered book, as a browser shows it: headless Chromium on the built HTML.

Which book: `DML_BOOK_ROOT` (a folder holding `_build/html` and the executed chapters in
`book/chapters/`), else this repository if its `_build/html` is newer than every source
notebook, else the smoke-profile book built here from a copy of the sources and run records
(the theory chapters take about a minute on 2 cores; training chapters train the
smoke runs whose records are missing). For every page of `_toc.yml` the test checks, in the DOM after
JavaScript ran (`chromium --dump-dom`):

* math was typeset by the offline MathJax (`mjx-container` for every math element Sphinx
  wrote) and no raw TeX (`$$`, `\\(`, `\\frac`, ...) is left in the visible text;
* every table and figure the executed notebook produced is on the page (`<table>`,
  `<img>` whose file exists);
* the provenance line is there, and no error or stderr output is;

and that the build log holds no Sphinx warning. Screenshots go to
`_build/screenshots/<page>.png` (not committed).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

nbformat = pytest.importorskip("nbformat", reason="the book's tools are not installed (pip install -e '.[book]')")
bs4 = pytest.importorskip("bs4")
yaml = pytest.importorskip("yaml")
Image = pytest.importorskip("PIL.Image")

from dmlutils import book  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "_build" / "screenshots"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=10000",
]
# Sources a book needs besides the notebooks (copied when the test builds its own).
BOOK_FILES = ["_config.yml", "_toc.yml", "constraints.txt"]


def toc_pages(root: Path) -> list[str]:
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [toc["root"]] + [entry["file"] for part in toc["parts"] for entry in part["chapters"]]


def is_current_build(root: Path) -> bool:
    html, log = root / "_build" / "html", root / "_build" / "jupyter-book-build.log"
    if not (html / "index.html").is_file() or not log.is_file():
        return False
    for notebook in book.chapter_notebooks(root / "notebooks"):
        page = html / "book" / "chapters" / f"{notebook.stem}.html"
        if not page.is_file() or page.stat().st_mtime < notebook.stat().st_mtime:
            return False
    return all((html / f"{page}.html").is_file() for page in toc_pages(root))


@pytest.fixture(scope="module")
def book_root(tmp_path_factory) -> Path:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    given = os.environ.get("DML_BOOK_ROOT")
    if given:
        root = Path(given)
        if not is_current_build(root):
            pytest.fail(f"DML_BOOK_ROOT={given} holds no complete, current build of the book")
        return root
    if is_current_build(REPO):
        return REPO
    try:
        book.jupyter_book_executable()
    except book.BookError as error:
        pytest.skip(str(error))
    root = tmp_path_factory.mktemp("smoke-book")
    for name in BOOK_FILES:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("chapters"))
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".*"))
    if (REPO / "results").is_dir():  # run records (small JSON files) the training chapters read
        shutil.copytree(REPO / "results", root / "results")
    book.run_book(profile="smoke", root=root, log=lambda *_: None)
    return root


def chromium(*arguments: str, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile_dir:
        return subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *arguments],
            capture_output=True, text=True, timeout=timeout,
        )


@pytest.fixture(scope="module")
def rendered(book_root):
    """{page: (static soup, soup after JavaScript)}, plus a screenshot of every page."""
    html = book_root / "_build" / "html"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def render(page: str):
        path = html / f"{page}.html"
        url = path.resolve().as_uri()
        shot = SCREENSHOTS / f"{Path(page).name}.png"
        # one browser run: the DOM after JavaScript on stdout, the screenshot to a file
        dumped = chromium("--dump-dom", f"--screenshot={shot}", "--window-size=1280,2000", url)
        static = bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
        return page, (static, bs4.BeautifulSoup(dumped.stdout, "html.parser"), shot)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(render, toc_pages(book_root)))


def visible_text(soup) -> str:
    """Text a reader sees outside code and typeset math."""
    soup = bs4.BeautifulSoup(str(soup), "html.parser")
    for tag in soup.select("script, style, pre, code, div.highlight, mjx-container, mjx-assistive-mml"):
        tag.decompose()
    return soup.get_text(" ")


def executed_outputs(book_root: Path, page: str) -> dict[str, int]:
    """How many tables and figures the executed notebook of `page` produced."""
    path = book_root / f"{page}.ipynb"
    if not path.is_file():
        return {"tables": 0, "figures": 0}
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return {
        "tables": sum("<table" in o.get("data", {}).get("text/html", "") for o in outputs),
        "figures": sum("image/png" in o.get("data", {}) for o in outputs),
    }


def test_build_log_has_no_warnings(book_root):
    log = (book_root / "_build" / "jupyter-book-build.log").read_text()
    assert "build succeeded" in log
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings[:10])


def test_every_page_is_rendered(book_root, rendered):
    pages = toc_pages(book_root)
    assert len(pages) >= 7  # intro, chapters 1-5, appendix
    for page, (_, dom, _) in rendered.items():
        assert dom.find("main") is not None and dom.find("h1") is not None, f"{page}: no page body in the DOM"


def test_math_is_typeset(rendered):
    pages_with_math = 0
    for page, (static, dom, _) in rendered.items():
        math = static.select(".math")
        if math:
            pages_with_math += 1
            typeset = dom.find_all("mjx-container")
            assert len(typeset) >= len(math), f"{page}: {len(math)} math elements but {len(typeset)} typeset"
        text = visible_text(dom.find("main") or dom)
        for raw in ("$$", "\\(", "\\[", "\\frac", "\\mathcal", "\\sum"):
            assert raw not in text, f"{page}: raw TeX {raw!r} left in the page text"
    assert pages_with_math >= 5


def test_tables_and_figures_of_the_notebooks_are_on_the_pages(book_root, rendered):
    html = book_root / "_build" / "html"
    totals = {"tables": 0, "figures": 0}
    for page, (_, dom, _) in rendered.items():
        expected = executed_outputs(book_root, page)
        outputs = dom.select("div.cell_output")
        tables = [t for o in outputs for t in o.find_all("table")]
        images = [i for o in outputs for i in o.find_all("img")]
        assert len(tables) >= expected["tables"], f"{page}: {expected['tables']} table outputs, {len(tables)} rendered"
        assert len(images) >= expected["figures"], f"{page}: {expected['figures']} figures, {len(images)} rendered"
        for image in images:
            source = (html / page).parent / image["src"]
            assert source.is_file() and source.stat().st_size > 1000, f"{page}: missing image {image['src']}"
            # the theme scales a wide figure down to the column's width; a fixed height
            # attribute (set for "retina" PNGs) would then squash it
            assert not image.get("height"), f"{page}: {image['src']} has a fixed height and will be distorted"
        totals = {k: totals[k] + expected[k] for k in totals}
    assert totals["tables"] >= 5 and totals["figures"] >= 5, totals


def test_chapters_show_provenance_and_no_errors(rendered):
    chapters = {p: v for p, v in rendered.items() if p.startswith("book/chapters/")}
    assert chapters
    for page, (_, dom, _) in chapters.items():
        text = visible_text(dom.find("main") or dom)
        assert "Provenance. This page was executed with profile" in " ".join(text.split()), f"{page}: no provenance line"
        assert not dom.select("div.output.error, div.output.traceback"), f"{page}: an error output is rendered"
        assert not dom.select("div.output.stderr"), f"{page}: stderr output (a warning?) is rendered"
        assert "Traceback" not in text


def test_screenshots_are_pages_not_blank(rendered):
    for page, (_, _, shot) in rendered.items():
        with Image.open(shot) as image:
            assert image.size == (1280, 2000), f"{page}: unexpected screenshot size {image.size}"
            grey = image.convert("L")
            low, high = grey.getextrema()
            assert high - low > 150, f"{page}: the screenshot looks blank"
            shades = np.unique(np.asarray(grey.resize((160, 250))))
            assert len(shades) > 20, f"{page}: the screenshot looks blank"
