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
* papermill's injected-parameters cell is not on any page (the runner tags it
  `remove-cell`; the executed notebooks still hold it);
* wide tables stay inside the text column: a table wider than the column scrolls inside
  its own box, and no page scrolls sideways (`_static/wide-tables.css`);
* every code cell tagged `hide-input` renders collapsed: its source inside a closed
  `<details>` that takes only its summary's height, its output still shown;

and that the build log holds no Sphinx warning. The layout is measured in the browser by
a small script added to a temporary copy of each page (`LAYOUT_PROBE`). Screenshots go
to `_build/screenshots/<page>.png` (not committed).
"""
from __future__ import annotations

import json
import os
import re
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
BOOK_FOLDERS = ["_static"]  # the book's own CSS
# Measures the rendered layout after the page's own scripts ran, into a hidden
# <pre id="layout-probe"> that --dump-dom returns: the text column, every table and the
# box it scrolls in, every hide-input cell.
LAYOUT_PROBE = """
<script>
window.addEventListener("load", function () { setTimeout(function () {
  function rect(el) { var r = el.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width, height: r.height}; }
  var column = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  function scroller(el) {
    for (var box = el.parentElement; box && box !== column; box = box.parentElement) {
      var x = getComputedStyle(box).overflowX;
      if (x === "auto" || x === "scroll") return box;
    }
    return null;
  }
  var tables = Array.prototype.filter.call(column.querySelectorAll("table"), function (t) { return t.getBoundingClientRect().width > 0; })
    .map(function (t) {
      var box = scroller(t), r = rect(t);
      r.box = box ? {left: rect(box).left, right: rect(box).right, clientWidth: box.clientWidth, scrollWidth: box.scrollWidth} : null;
      return r;
    });
  var hidden = Array.prototype.map.call(document.querySelectorAll("div.cell.tag_hide-input"), function (cell) {
    var input = cell.querySelector(".cell_input"), details = input && input.closest("details");
    var summary = details && details.querySelector("summary"), output = cell.querySelector(".cell_output");
    return {open: details ? details.open : null, detailsHeight: details ? rect(details).height : null,
            summaryHeight: summary ? rect(summary).height : null,
            inputVisible: input ? input.checkVisibility() : null, outputHeight: output ? rect(output).height : null};
  });
  var probe = document.createElement("pre");
  probe.id = "layout-probe";
  probe.style.display = "none";
  probe.textContent = JSON.stringify({viewport: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
    column: rect(column), tables: tables, hidden: hidden});
  document.body.appendChild(probe);
}, 2000); });
</script>
"""


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
    for name in BOOK_FOLDERS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, root / name)
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
def pages(book_root):
    """{page: (static soup, soup after JavaScript, screenshot, layout)}: one browser run
    per page, on a temporary copy that carries LAYOUT_PROBE (removed afterwards)."""
    html = book_root / "_build" / "html"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def render(page: str):
        path = html / f"{page}.html"
        source = path.read_text(encoding="utf-8")
        probed = path.with_name(f".layout-probe-{path.name}")  # beside it: same relative links
        probed.write_text(source.replace("</body>", LAYOUT_PROBE + "</body>", 1), encoding="utf-8")
        shot = SCREENSHOTS / f"{Path(page).name}.png"
        try:
            # one browser run: the DOM after JavaScript on stdout, the screenshot to a file
            dumped = chromium("--dump-dom", f"--screenshot={shot}", "--window-size=1280,2000", probed.resolve().as_uri())
        finally:
            probed.unlink(missing_ok=True)
        dom = bs4.BeautifulSoup(dumped.stdout, "html.parser")
        probe = dom.find(id="layout-probe")
        layout = json.loads(probe.get_text()) if probe is not None else None
        for tag in dom.select("#layout-probe") + [t for t in dom.find_all("script") if "layout-probe" in t.get_text()]:
            tag.decompose()  # the other checks see the page as built
        return page, (bs4.BeautifulSoup(source, "html.parser"), dom, shot, layout)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(render, toc_pages(book_root)))


@pytest.fixture(scope="module")
def rendered(pages):
    """{page: (static soup, soup after JavaScript, screenshot)}."""
    return {page: (static, dom, shot) for page, (static, dom, shot, _) in pages.items()}


@pytest.fixture(scope="module")
def layouts(pages):
    """{page: what LAYOUT_PROBE measured}; a page where the probe did not run fails here."""
    missing = [page for page, (*_, layout) in pages.items() if layout is None]
    assert not missing, f"the layout probe did not run on {missing}"
    return {page: layout for page, (*_, layout) in pages.items()}


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


def test_no_table_is_cut_short_by_pandas(rendered):
    # pandas elides rows past display.max_rows (a row of "...") and text past
    # display.max_colwidth (a cell ending in "..."): a reader would miss what was cut.
    for page, (static, _, _) in rendered.items():
        for table in static.select("div.cell_output table"):
            cells = [c.get_text(strip=True) for c in table.find_all(["td", "th"])]
            cut = [c for c in cells if c == "..." or (c.endswith("...") and len(c) > 3)]
            assert not cut, f"{page}: a table cut short by pandas ({cut[:3]}); widen it with pd.option_context"


def test_tables_name_methods_as_readers_do(rendered):
    # "Lifted Structure (scale 20)", not the registry's lifted_structure / scale_20
    # (dmlutils.names); the provenance lists below the tables keep the keys, which name files.
    from dmlutils import manifest
    from dmlutils.losses import LOSSES
    from dmlutils.studies import STUDIES

    keys = set(LOSSES) | {r.name for r in manifest.RUNS if r.name != "baseline"}
    keys |= {candidate for study in STUDIES.values() for candidate in study if candidate != "default"}
    checked = 0
    for page, (static, _, _) in rendered.items():
        if not page.startswith("book/chapters/0"):  # the appendix shows committed reports as written
            continue
        for table in static.select("div.cell_output table"):
            for cell in table.find_all(["td", "th"]):
                text = cell.get_text(" ", strip=True)
                if "/" in text:  # a record's path: keys name its folders
                    continue
                shown = set(re.findall(r"[A-Za-z0-9_.\-]+", text)) & keys
                assert not shown, f"{page}: a table shows the registry key(s) {sorted(shown)} in {text!r}; name it with dmlutils.names"
                checked += 1
    assert checked > 100, checked


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


def executed_notebook(book_root: Path, page: str):
    path = book_root / f"{page}.ipynb"
    return nbformat.read(path, as_version=4) if path.is_file() else None


def tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def test_the_injected_parameters_cell_is_not_on_any_page(book_root, rendered):
    injected = 0
    for page, (_, dom, _) in rendered.items():
        nb = executed_notebook(book_root, page)
        if nb is not None:
            injected += sum("injected-parameters" in tags(c) for c in nb.cells)
        assert not dom.select("div.cell.tag_injected-parameters, div.cell.tag_parameters"), f"{page}: a parameters cell is rendered"
        sources = [pre.get_text().lstrip() for pre in dom.select("div.cell_input pre")]
        assert not [s for s in sources if s.startswith("# Parameters")], f"{page}: papermill's parameters are shown"
    assert injected >= 1, "papermill injected no parameters cell into any executed chapter: nothing was checked"


def test_wide_tables_scroll_inside_their_own_box(layouts):
    wide = 0
    for page, layout in layouts.items():
        assert layout["scrollWidth"] <= layout["viewport"], (
            f"{page}: the page scrolls sideways ({layout['scrollWidth']} px in a {layout['viewport']} px window)"
        )
        left, right = layout["column"]["left"] - 1, layout["column"]["right"] + 1
        for number, table in enumerate(layout["tables"], 1):
            if table["left"] >= left and table["right"] <= right:
                continue  # fits the column
            wide += 1
            where = f"{page}: table {number} ({table['width']:.0f} px; the column is {left + 1:.0f}-{right - 1:.0f})"
            box = table["box"]
            assert box is not None, f"{where} runs over the text column, in no scrolling box"
            assert box["left"] >= left and box["right"] <= right, f"{where}: its scrolling box runs over the column: {box}"
            assert box["scrollWidth"] > box["clientWidth"], f"{where}: its box does not scroll: {box}"
    assert wide >= 1, "no table is wider than its column (the appendix's benchmark tables are): the scrolling was not checked"


def test_cells_tagged_hide_input_render_collapsed(book_root, rendered, layouts):
    collapsed = 0
    for page, (_, dom, _) in rendered.items():
        nb = executed_notebook(book_root, page)
        tagged = 0 if nb is None else sum(
            c.cell_type == "code" and "hide-input" in tags(c) and "remove-cell" not in tags(c) for c in nb.cells
        )
        cells = dom.select("div.cell.tag_hide-input")
        states = layouts[page]["hidden"]
        assert len(cells) == len(states) == tagged, f"{page}: {tagged} cells tagged hide-input, {len(cells)} rendered as such"
        for number, (cell, state) in enumerate(zip(cells, states), 1):
            where = f"{page}: hide-input cell {number}"
            details = cell.find("details")
            assert details is not None and details.select_one(".cell_input") is not None, f"{where}: its source is not in a <details>"
            assert not details.has_attr("open") and state["open"] is False, f"{where} renders open"
            assert state["inputVisible"] is False, f"{where}: its source is visible"
            assert state["detailsHeight"] <= state["summaryHeight"] + 2, f"{where} takes {state['detailsHeight']:.0f} px, more than its summary line"
            if cell.select_one("div.cell_output") is not None:
                assert state["outputHeight"] > 0, f"{where}: its output is hidden too"
            collapsed += 1
    assert collapsed >= 1, "no cell tagged hide-input in the book: nothing was checked"
