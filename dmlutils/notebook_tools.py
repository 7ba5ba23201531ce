"""The book's notebook tooling: the chapters as files, and what the chapters themselves call.

Owns which notebooks are chapters (`chapter_notebooks`: `notebooks/NN_*.ipynb`, then the
appendix `A<N>_*.ipynb`), the generated `_toc.yml` (`render_toc`, `write_toc`), the Colab
badge and install cell (`colab_badge`, `install_cell_source`, `sync_colab`), stripping
outputs from the source notebooks (`strip_notebook`), the new-chapter scaffold
(`new_chapter`), and the two helpers every chapter imports: `work_in_repository` (relative
paths mean the repository's) and `show_provenance` (the page's provenance line). Running
the chapters and building the book is `dmlutils.book`, which re-exports these names.
Everything heavy (nbformat, yaml, IPython) is imported where it is used, so a chapter in
Colab needs none of the book's build tools.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import tempfile
from pathlib import Path

from .provenance import REPO_ROOT

CHAPTER_PATTERN = re.compile(r"^\d\d_[A-Za-z0-9_\-]+\.ipynb$")
APPENDIX_PATTERN = re.compile(r"^A\d_[A-Za-z0-9_\-]+\.ipynb$")
OUTPUT_DIR = Path("book") / "chapters"  # executed chapters, relative to the book root
KERNEL = "python3"
TOC_HEADER = (
    "# Generated from the notebooks present by `python -m dmlutils.book --write-toc`\n"
    "# (the book runner rewrites it before every build). Do not edit by hand.\n"
)


class BookError(RuntimeError):
    """The book cannot be run as asked; the message says why and what to do."""


# --- which chapters ---------------------------------------------------------------------


def chapter_notebooks(notebooks_dir: str | os.PathLike = "notebooks") -> list[Path]:
    """The chapters in run order: `NN_*.ipynb` sorted by name, then appendix `A<N>_*.ipynb`."""
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise BookError(f"no chapter folder {folder}: run from the repository root or pass --notebooks.")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    chapters = [folder / n for n in names if CHAPTER_PATTERN.match(n)]
    appendices = [folder / n for n in names if APPENDIX_PATTERN.match(n)]
    return chapters + appendices


# --- where a chapter's relative paths point (imported by the chapters) ---------------------------


def is_book_root(folder: str | os.PathLike) -> bool:
    """True if `folder` is a book's root: it holds `_config.yml` and `notebooks/`."""
    folder = Path(folder)
    return (folder / "_config.yml").is_file() and (folder / "notebooks").is_dir()


def work_in_repository() -> Path:
    """Make the repository root the working directory of a chapter's kernel; returns it.

    A chapter's relative paths -- its `results_dir` and `data_root` parameters, `./data`
    (the default data root), `constraints.txt`, `runs/` -- then mean the repository's
    folders wherever papermill (or Jupyter, whose kernels start in `notebooks/`) was
    started. Nothing moves when the working directory already is a book's root (the
    book runner starts every kernel in its root), nor when dmlutils is installed
    outside a checkout (then there is no repository to move to). A relative
    `$DML_DATA` was meant from where the kernel started: it is made absolute first.
    """
    here = Path.cwd()
    if is_book_root(here) or not is_book_root(REPO_ROOT):
        return here
    from .data import DATA_ROOT_ENV

    data_env = os.environ.get(DATA_ROOT_ENV)
    if data_env and not Path(data_env).expanduser().is_absolute():
        os.environ[DATA_ROOT_ENV] = str((here / data_env).resolve())
    os.chdir(REPO_ROOT)
    return REPO_ROOT


# --- provenance (imported by the chapters) --------------------------------------------------


def provenance_markdown(profile: str, seed: int | None = None, **extra) -> str:
    """One line saying how this chapter was run: profile, seed, commit, time (UTC)."""
    from . import __version__
    from .provenance import git_commit  # light: neither torch nor tqdm

    git = git_commit()
    commit = git.get("commit", "unknown")
    if commit != "unknown":
        commit = f"`{commit[:12]}`" + (" (with uncommitted changes)" if git.get("dirty") else "")
    else:
        commit = f"unknown (dmlutils {__version__} installed outside a git checkout)"
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"profile **{profile}**"]
    if seed is not None:
        parts.append(f"seed {seed}")
    parts += [f"{k.replace('_', ' ')} {v}" for k, v in extra.items() if v is not None]
    parts += [f"commit {commit}", f"executed {when}"]
    return "**Provenance.** This page was executed with " + ", ".join(parts) + "."


def show_provenance(profile: str, seed: int | None = None, **extra) -> None:
    """Display `provenance_markdown` as Markdown (in a notebook) or print it."""
    show_markdown(provenance_markdown(profile, seed, **extra))


def show_markdown(text: str, metadata: dict | None = None) -> None:
    """Display `text` as Markdown in a notebook (with the output's `metadata`), else print it."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text), metadata=metadata)
            return
    except ImportError:
        pass
    print(text)


# --- a data set a chapter cannot show (imported by the chapters) ------------------------------

# The key of the output metadata that marks a notice of `show_missing_data`: the book runner
# finds the chapters that skipped something by it, and says so in its closing line.
MISSING_DATA_KEY = "dmlutils_missing_data"


def fetch_data_command(data_root: str | os.PathLike | None = None, python: str = "python") -> str:
    """The one command that fetches CUB-200-2011 into the data root (`root`, else $DML_DATA,
    else ./data). It names the root unless it is the default: a new shell may lack $DML_DATA."""
    from .data import DATA_ROOT_ENV, resolve_data_root

    default = data_root is None and not os.environ.get(DATA_ROOT_ENV)
    command = f"{python} -m dmlutils download"
    return command if default else f"{command} --root {shlex.quote(str(resolve_data_root(data_root)))}"


def missing_data_markdown(what: str, data_root: str | os.PathLike | None = None, download_parameter: bool = True) -> str:
    """What a chapter says where it cannot show `what` for lack of CUB-200-2011; with
    `download_parameter`, that its `download = True` parameter fetches it (chapter 1's)."""
    from .data import data_root_origin

    root, origin = data_root_origin(data_root)
    return (
        f"**Not shown: {what}.** It needs CUB-200-2011, and there is no "
        f"`{root / 'CUB_200_2011' / 'images.txt'}` (the data root comes from {origin}). Fetch the "
        f"official archive (about 1.1 GB, MD5-checked) with `{fetch_data_command(data_root)}`, then run "
        + ("this chapter again (in Jupyter or Colab, `download = True` in its parameters cell does both)."
           if download_parameter else "this chapter again.")
    )


def show_missing_data(what: str, data_root: str | os.PathLike | None = None, download_parameter: bool = True) -> None:
    """Display `missing_data_markdown` (marked for the book runner's closing line), or print it."""
    show_markdown(missing_data_markdown(what, data_root, download_parameter), metadata={MISSING_DATA_KEY: what})


# --- table of contents -------------------------------------------------------------------------


def render_toc(root: str | os.PathLike = ".", notebooks_dir: str = "notebooks") -> str:
    """`_toc.yml` for the notebooks present: intro, chapters (numbered), appendix.

    The appendix holds the appendix notebooks, then the static pages `book/appendix_*.md`,
    then `book/bibliography.md` if it exists.
    """
    root = Path(root)
    notebooks = chapter_notebooks(root / notebooks_dir)
    chapters = [n for n in notebooks if CHAPTER_PATTERN.match(n.name)]
    appendix = [(OUTPUT_DIR / n.stem).as_posix() for n in notebooks if APPENDIX_PATTERN.match(n.name)]
    appendix += [p.relative_to(root).with_suffix("").as_posix() for p in sorted((root / "book").glob("appendix_*.md"))]
    if (root / "book" / "bibliography.md").is_file():
        appendix.append("book/bibliography")
    lines = [TOC_HEADER.rstrip("\n"), "format: jb-book", "root: book/intro", "parts:"]
    if chapters:
        lines += ["  - caption: Chapters", "    numbered: true", "    chapters:"]
        lines += [f"      - file: {(OUTPUT_DIR / c.stem).as_posix()}" for c in chapters]
    if appendix:
        lines += ["  - caption: Appendix", "    chapters:"]
        lines += [f"      - file: {page}" for page in appendix]
    return "\n".join(lines) + "\n"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_toc(root: str | os.PathLike = ".", notebooks_dir: str = "notebooks") -> bool:
    """Rewrite `_toc.yml` if it differs from `render_toc`; True if it changed."""
    path = Path(root) / "_toc.yml"
    text = render_toc(root, notebooks_dir)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    _atomic_write_text(path, text)
    return True


# --- source notebooks ----------------------------------------------------------------------------

# What a chapter opened directly (Jupyter, Colab) runs with: the cpu profile, whose records
# are committed, so a reader sees the book's numbers; CI passes smoke through papermill.
PARAMETERS_SOURCE = """# Parameters: `python -m dmlutils.book` overrides these (papermill).
# profile: cpu reads the committed run records (what the book shows); smoke trains tiny
# runs on synthetic data (CI passes it: make book PROFILE=smoke); paper: the paper's setting
profile = "cpu"
seed = 0
data_root = None  # None: $DML_DATA, else ./data
results_dir = "results"  # run records and benchmark reports"""


def repository(root: str | os.PathLike = ".") -> tuple[str, str]:
    """(url, branch) of the book's repository, from `_config.yml` (`repository:`)."""
    import yaml

    config = yaml.safe_load((Path(root) / "_config.yml").read_text(encoding="utf-8")) or {}
    repo = config.get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/")
    if not url.startswith("https://github.com/"):
        raise BookError(f"_config.yml's repository: url: must be a https://github.com/<owner>/<name> URL, got {url!r}.")
    return url, str(repo.get("branch", "main"))


def pages_url(root: str | os.PathLike = ".") -> str:
    """Where GitHub Pages publishes the book (.github/workflows/book.yml deploys it): from
    `_config.yml`'s repository url https://github.com/<owner>/<repo>, the project site
    https://<owner>.github.io/<repo>/ (a repository named <owner>.github.io is the user site)."""
    url, _ = repository(root)
    owner, name = url.removeprefix("https://github.com/").split("/")[:2]
    host = f"{owner.lower()}.github.io"
    return f"https://{host}/" if name.lower() == host else f"https://{host}/{name}/"


def colab_badge(url: str, branch: str, filename: str) -> str:
    """Markdown of the "Open in Colab" badge for notebooks/<filename> of the repository."""
    slug = url.removeprefix("https://github.com/")
    return (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{slug}/blob/{branch}/notebooks/{filename})"
    )


def install_cell_source(url: str) -> str:
    """The first code cell. In Colab it clones the book's repository (shallow), so the
    committed run records, notebooks and data paths are there, installs dmlutils from that
    clone and works inside it; anywhere else it does nothing. Plain Python (no `!` shell
    magic), so a test can run it with a stubbed `google.colab` module."""
    return (
        "# In Colab, fetch the book's repository (its run records and chapters come with it),\n"
        "# install dmlutils from it and work inside it; anywhere else this cell does nothing.\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        f'    repository = os.environ.get("DML_REPOSITORY", "{url}")\n'
        '    checkout = os.environ.get("DML_CHECKOUT", "/content/" + repository.rstrip("/").split("/")[-1])\n'
        '    if not os.path.isdir(os.path.join(checkout, ".git")):\n'
        '        subprocess.run(["git", "clone", "--depth", "1", repository, checkout], check=True)\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", checkout + "[vision]"], check=True)\n'
        "    sys.path.insert(0, checkout)  # importable now, without restarting the runtime\n"
        "    os.chdir(checkout)  # results/ and the data paths are the repository's"
    )


_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/[^)]*\)")


def new_chapter(root: str | os.PathLike, name: str, title: str) -> Path:
    """Create notebooks/<name>.ipynb with the book's opening cells: title and Colab badge,
    Colab install cell, `parameters` cell, provenance; then update _toc.yml."""
    import nbformat

    root = Path(root)
    filename = name if name.endswith(".ipynb") else f"{name}.ipynb"
    if not (CHAPTER_PATTERN.match(filename) or APPENDIX_PATTERN.match(filename)):
        raise BookError(f"chapter name {name!r} must look like 06_training (two digits) or A2_notes (appendix).")
    path = root / "notebooks" / filename
    if path.exists():
        raise BookError(f"{path} already exists.")
    url, branch = repository(root)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    install = nbformat.v4.new_code_cell(install_cell_source(url))
    install.metadata["tags"] = ["remove-cell"]
    parameters = nbformat.v4.new_code_cell(PARAMETERS_SOURCE)
    parameters.metadata["tags"] = ["parameters", "remove-cell"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\n{colab_badge(url, branch, filename)}\n\nWhat this chapter teaches, in one paragraph."),
        install,
        parameters,
        nbformat.v4.new_code_cell(
            "from dmlutils.book import show_provenance, work_in_repository\n\n"
            "work_in_repository()  # relative paths (results_dir, data_root) are the repository's\n"
            "show_provenance(profile, seed)"
        ),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, nbformat.writes(nb) + "\n")
    write_toc(root)
    return path


def sync_colab(root: str | os.PathLike = ".") -> list[Path]:
    """Point every chapter's badge and install cell at `_config.yml`'s repository; the changed files."""
    import nbformat

    root = Path(root)
    url, branch = repository(root)
    changed = []
    for path in chapter_notebooks(root / "notebooks"):
        before = path.read_text(encoding="utf-8")
        nb = nbformat.reads(before, as_version=4)
        first_code = next((c for c in nb.cells if c.cell_type == "code"), None)
        if not nb.cells or not _BADGE.search(nb.cells[0].source) or first_code is None or "google.colab" not in first_code.source:
            raise BookError(f"{path} lacks the Colab badge in its first cell or the install cell; see new_chapter().")
        badge = colab_badge(url, branch, path.name)
        nb.cells[0].source = _BADGE.sub(lambda _: badge, nb.cells[0].source, count=1)
        first_code.source = install_cell_source(url) if "google.colab" in first_code.source else first_code.source
        after = nbformat.writes(nb) + "\n"
        if after != before:
            _atomic_write_text(path, after)
            changed.append(path)
    return changed


def strip_notebook(path: str | os.PathLike) -> bool:
    """Remove outputs, execution counts and run metadata from a source notebook; True if it changed."""
    import nbformat

    path = Path(path)
    before = path.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb) + "\n"
    if after == before:
        return False
    _atomic_write_text(path, after)
    return True
