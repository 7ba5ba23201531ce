"""Run the book: execute every chapter with papermill, then build it with Jupyter Book.

    python -m dmlutils.book                       # profile cpu when CUB-200-2011 is found
    python -m dmlutils.book --profile smoke       # synthetic data: no download, a few minutes
    python -m dmlutils.book --only 03 --skip-build
    python -m dmlutils.book --write-toc           # regenerate _toc.yml from notebooks/
    python -m dmlutils.book --strip               # remove outputs from the source notebooks
    python -m dmlutils.book --new 06_training "Training"   # a new chapter with the opening cells
    python -m dmlutils.book --sync-colab          # badges + install cells -> _config.yml's repository

The chapters are the source notebooks `notebooks/NN_*.ipynb` (NN two digits), run in
the order of their names, then the appendix notebooks `notebooks/A<N>_*.ipynb`. Each is
executed by papermill (kernel `python3`, working directory the repository root) with
its `parameters` cell overridden by the run's `profile`, `seed`, `data_root` and
`results_dir` (only the names the notebook declares), into `book/chapters/` — the
generated, git-ignored folder that Jupyter Book renders. A failing cell stops the run
with a non-zero exit and a message naming the chapter and the cell. Then
`jupyter-book build . -W -n --keep-going --all` renders the book into
`<path-output>/_build/html`; with `-W` a page with a warning fails the build.

`_toc.yml` is generated from the notebooks present (`render_toc`): dropping a new
`notebooks/NN_name.ipynb` in and running the book adds it as a chapter.

Each chapter shows where its numbers came from with `show_provenance(...)` (profile,
seed, git commit, time of execution) and starts with `work_in_repository()`, so that
its relative paths are the repository's even when papermill runs it from elsewhere;
these are the only functions here that chapters import. They, like the rest of this
module, import papermill and torch lazily, so they also run in Colab without the
book's build tools.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BookError",
    "ChapterFailed",
    "CHAPTER_PATTERN",
    "APPENDIX_PATTERN",
    "add_book_arguments",
    "build_book",
    "chapter_notebooks",
    "colab_badge",
    "cub_found",
    "default_profile",
    "execute_chapter",
    "main",
    "new_chapter",
    "provenance_markdown",
    "render_toc",
    "run_book",
    "run_book_command",
    "show_provenance",
    "strip_notebook",
    "sync_colab",
    "work_in_repository",
    "write_toc",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAPTER_PATTERN = re.compile(r"^\d\d_[A-Za-z0-9_\-]+\.ipynb$")
APPENDIX_PATTERN = re.compile(r"^A\d_[A-Za-z0-9_\-]+\.ipynb$")
OUTPUT_DIR = Path("book") / "chapters"  # executed chapters, relative to the book root
KERNEL = "python3"
PROFILES = ("smoke", "cpu", "paper")
# The parameters the runner injects, when the chapter's `parameters` cell declares them.
INJECTED_PARAMETERS = ("profile", "seed", "data_root", "results_dir")
TOC_HEADER = (
    "# Generated from the notebooks present by `python -m dmlutils.book --write-toc`\n"
    "# (the book runner rewrites it before every build). Do not edit by hand.\n"
)


class BookError(RuntimeError):
    """The book cannot be run as asked; the message says why and what to do."""


class ChapterFailed(BookError):
    """A cell of a chapter raised; the message names the chapter, the cell and the error."""

    def __init__(self, message: str, notebook: Path, cell_number: int | None, ename: str, evalue: str):
        super().__init__(message)
        self.notebook, self.cell_number, self.ename, self.evalue = notebook, cell_number, ename, evalue


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


def select_chapters(chapters: list[Path], only: list[str] | None) -> list[Path]:
    """Chapters whose file name starts with one of `only` (e.g. "03" or "03_pair"), in run order."""
    if not only:
        return chapters
    selected = [c for c in chapters if any(c.name.startswith(prefix) for prefix in only)]
    unmatched = [p for p in only if not any(c.name.startswith(p) for c in chapters)]
    if unmatched:
        raise BookError(
            f"--only {' '.join(unmatched)} matches no chapter; chapters: {', '.join(c.stem for c in chapters)}."
        )
    return selected


# --- data and profile ---------------------------------------------------------------------


def cub_found(data_root: str | os.PathLike | None = None) -> bool:
    """True if the data root (argument, else $DML_DATA, else ./data) holds CUB-200-2011
    (`dmlutils.data.cub_found`, kept here for the callers of the book runner's name)."""
    from .data import cub_found as found

    return found(data_root)


def _cub_missing_message(data_root) -> str:
    from .data import data_root_origin

    root, origin = data_root_origin(data_root)
    return (
        f"CUB-200-2011 was not found: {root / 'CUB_200_2011' / 'images.txt'} does not exist "
        f"(the data root comes from {origin}).\n"
        "The cpu and paper profiles train and evaluate on it. Either\n"
        "  * point DML_DATA (or --data-root) at the folder that holds CUB_200_2011/, or\n"
        "  * download the official archive (about 1.1 GB, MD5-checked) into ./data:\n"
        "      python -c \"from dmlutils.data import CUB200; CUB200('data', download=True)\"\n"
        "  * or run the book on synthetic data, without CUB: --profile smoke"
    )


def default_profile(data_root: str | os.PathLike | None = None) -> str:
    """`cpu` when CUB-200-2011 is found; otherwise a BookError telling how to get it."""
    if cub_found(data_root):
        return "cpu"
    raise BookError(_cub_missing_message(data_root))


def check_profile_data(profile: str, data_root=None) -> None:
    """Fail early (before any chapter runs) when the profile needs CUB and it is absent."""
    from .profiles import make_config

    if make_config(profile)["data"] != "synthetic" and not cub_found(data_root):
        raise BookError(f"profile {profile!r} needs CUB-200-2011.\n" + _cub_missing_message(data_root))


# --- executing one chapter ----------------------------------------------------------------


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's `parameters` cell (what papermill may override)."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def _source_cell_number(executed_nb, cell_index: int) -> int:
    """1-based number of the failing cell in the *source* notebook (papermill inserts one
    `injected-parameters` cell, which the source does not have)."""
    injected_before = sum(
        "injected-parameters" in cell.get("metadata", {}).get("tags", [])
        for cell in executed_nb.cells[:cell_index]
    )
    return cell_index - injected_before + 1


def execute_chapter(
    source: str | os.PathLike,
    output: str | os.PathLike,
    parameters: dict | None = None,
    cwd: str | os.PathLike | None = None,
    scratch_dir: str | os.PathLike | None = None,
    kernel_name: str = KERNEL,
) -> Path:
    """Execute `source` with papermill into `output` (written only if every cell succeeds).

    Only the parameters the notebook declares are injected. On a failing cell raises
    `ChapterFailed` naming the chapter, the cell (1-based, in the source notebook), its
    first line and the error; the executed notebook with the traceback is kept in
    `scratch_dir` for reading.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source, output = Path(source), Path(output)
    if not source.is_file():
        raise BookError(f"chapter {source} does not exist.")
    declared = declared_parameters(source)
    if parameters and not declared:
        raise BookError(
            f"chapter {source} has no cell tagged `parameters`; tag the cell that sets "
            f"{', '.join(sorted(parameters))} with the tag 'parameters'."
        )
    injected = {k: v for k, v in (parameters or {}).items() if k in declared}
    scratch = Path(scratch_dir) if scratch_dir else output.parent
    scratch.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, executed = tempfile.mkstemp(prefix=f".{source.stem}.", suffix=".ipynb", dir=scratch)
    os.close(fd)
    try:
        papermill.execute_notebook(
            str(source),
            executed,
            parameters=injected,
            kernel_name=kernel_name,
            cwd=str(cwd) if cwd else None,
            progress_bar=False,
            log_output=False,
            # the kernel's own log (e.g. ipykernel's notice that a local kernel talks
            # over TCP) is noise here; what a cell prints or raises is in the notebook
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except PapermillExecutionError as error:
        import nbformat

        kept = scratch / f"{source.stem}.failed.ipynb"
        os.replace(executed, kept)
        executed_nb = nbformat.read(kept, as_version=4)
        # papermill put two marker cells into the kept copy; count on the notebook as executed
        executed_nb.cells = [c for c in executed_nb.cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
        number = _source_cell_number(executed_nb, error.cell_index)
        first_line = next((line for line in (error.source or "").splitlines() if line.strip()), "")
        message = (
            f"chapter {source} failed in cell {number} (In [{error.exec_count}]): "
            f"{error.ename}: {error.evalue}\n"
            f"  the cell begins: {first_line}\n"
            f"  the executed notebook with the traceback: {kept}"
        )
        raise ChapterFailed(message, source, number, error.ename, error.evalue) from None
    except Exception as error:  # the kernel died, would not start, timed out, ...
        if os.path.exists(executed):
            os.unlink(executed)
        raise BookError(f"chapter {source} could not be executed: {type(error).__name__}: {error}") from error
    except BaseException:
        if os.path.exists(executed):
            os.unlink(executed)
        raise
    os.replace(executed, output)  # the rendered chapter only ever holds a complete run
    return output


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
    import warnings

    from . import __version__

    with warnings.catch_warnings():
        # dmlutils.engine imports tqdm.auto, which warns in a kernel without ipywidgets;
        # that warning would otherwise sit under every chapter's provenance line.
        warnings.filterwarnings("ignore", message="IProgress not found")
        from .engine import git_commit

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
    text = provenance_markdown(profile, seed, **extra)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


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

PARAMETERS_SOURCE = """# Parameters: `python -m dmlutils.book` overrides these (papermill).
# profile: smoke (synthetic data), cpu or paper (CUB-200-2011), see the intro
profile = "smoke"
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


def colab_badge(url: str, branch: str, filename: str) -> str:
    """Markdown of the "Open in Colab" badge for notebooks/<filename> of the repository."""
    slug = url.removeprefix("https://github.com/")
    return (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{slug}/blob/{branch}/notebooks/{filename})"
    )


def install_cell_source(url: str) -> str:
    """The first code cell: installs dmlutils from the repository in Colab, nothing elsewhere."""
    return (
        "# In Colab, install dmlutils (with its image extras) from the book's\n"
        "# repository; anywhere else this cell does nothing.\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        f'    !pip install --quiet "dmlutils[vision] @ git+{url}"'
    )


_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/[^)]*\)")
_INSTALL_URL = re.compile(r"git\+https://github\.com/[^\s\"']+")


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
        first_code.source = _INSTALL_URL.sub(lambda _: f"git+{url}", first_code.source)
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


# --- the whole book ----------------------------------------------------------------------------------


@dataclass
class RunSummary:
    profile: str
    executed: list[tuple[str, float]]
    built: bool
    html: Path | None


def jupyter_book_executable() -> str:
    beside = Path(sys.executable).with_name("jupyter-book")
    found = str(beside) if beside.is_file() else shutil.which("jupyter-book")
    if not found:
        raise BookError(
            "jupyter-book is not installed; install the book's tools with "
            "`pip install -c constraints.txt -e \".[book]\"`."
        )
    return found


def build_book(root: str | os.PathLike = ".", path_output: str | os.PathLike = ".", log=print) -> Path:
    """`jupyter-book build <root> -W -n --keep-going --all`; returns the HTML folder.

    The build's output goes to `<path_output>/_build/jupyter-book-build.log` too.
    """
    root, path_output = Path(root), Path(path_output)
    command = [
        jupyter_book_executable(), "build", str(root), "-W", "-n", "--keep-going", "--all",
        "--path-output", str(path_output),
    ]
    log("$ " + " ".join(command))
    completed = subprocess.run(command, cwd=root, capture_output=True, text=True)
    log_path = path_output / "_build" / "jupyter-book-build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(log_path, completed.stdout + completed.stderr)
    if completed.returncode != 0:
        warnings = [line for line in (completed.stdout + completed.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
        shown = "\n".join(warnings[:20]) or (completed.stderr or completed.stdout)[-3000:]
        raise BookError(
            f"jupyter-book build failed (exit {completed.returncode}); warnings are errors (-W):\n"
            f"{shown}\nfull log: {log_path}"
        )
    return path_output / "_build" / "html"


def run_book(
    profile: str | None = None,
    seed: int = 0,
    data_root: str | None = None,
    results_dir: str = "results",
    root: str | os.PathLike = ".",
    notebooks_dir: str = "notebooks",
    only: list[str] | None = None,
    skip_build: bool = False,
    path_output: str | os.PathLike | None = None,
    log=print,
) -> RunSummary:
    """Execute the chapters in order, then build the book (see the module docstring)."""
    root = Path(root).resolve()
    if data_root is not None:  # the kernels run in `root`: hand them an absolute path
        data_root = str(Path(data_root).expanduser().resolve())
    # where the kernels will look: the argument, else $DML_DATA, else <root>/data
    looked_up = data_root if data_root is not None or os.environ.get("DML_DATA") else root / "data"
    profile = profile or default_profile(looked_up)
    if profile not in PROFILES:
        raise BookError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}.")
    check_profile_data(profile, looked_up)
    chapters = select_chapters(chapter_notebooks(root / notebooks_dir), only)
    if write_toc(root, notebooks_dir):
        log("_toc.yml updated from the notebooks present (commit it).")
    parameters = {"profile": profile, "seed": seed, "data_root": data_root, "results_dir": results_dir}
    output_dir = root / OUTPUT_DIR
    scratch = Path(path_output or root) / "_build" / "papermill"
    executed = []
    for chapter in chapters:
        start = time.perf_counter()
        log(f"executing {chapter.relative_to(root)} (profile {profile}) ...")
        execute_chapter(chapter, output_dir / chapter.name, parameters, cwd=root, scratch_dir=scratch)
        seconds = time.perf_counter() - start
        executed.append((chapter.stem, seconds))
        log(f"  done in {seconds:.1f} s")
    html = None
    if not skip_build:
        missing = [c.stem for c in chapter_notebooks(root / notebooks_dir) if not (output_dir / c.name).is_file()]
        if missing:
            raise BookError(
                f"cannot build: chapter(s) {', '.join(missing)} were never executed into {OUTPUT_DIR}/; "
                "run the book without --only once, or add --skip-build."
            )
        start = time.perf_counter()
        html = build_book(root, path_output or root, log=log)
        log(f"built {html} in {time.perf_counter() - start:.1f} s")
    return RunSummary(profile, executed, html is not None, html)


# --- command line ------------------------------------------------------------------------------------


def add_book_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m dmlutils.book` (also usable as a `book` subcommand)."""
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="smoke (synthetic data), cpu or paper (CUB-200-2011); default: cpu if CUB is found")
    parser.add_argument("--seed", type=int, default=0, help="seed passed to every chapter (default 0)")
    parser.add_argument("--data-root", default=None, help="data root (default: $DML_DATA, else ./data)")
    parser.add_argument("--results-dir", default="results", help="run records the chapters read (default results/)")
    parser.add_argument("--only", nargs="+", metavar="CHAPTER", help="run only chapters whose file name starts with this, e.g. 03")
    parser.add_argument("--skip-build", action="store_true", help="execute the chapters, do not run jupyter-book")
    parser.add_argument("--path-output", default=None, help="where _build/ goes (default: the repository root)")
    parser.add_argument("--root", default=".", help="the book's root folder (holding _config.yml; default .)")
    parser.add_argument("--write-toc", action="store_true", help="only regenerate _toc.yml from notebooks/")
    parser.add_argument("--strip", action="store_true", help="only strip outputs from the source notebooks")
    parser.add_argument("--new", nargs=2, metavar=("NAME", "TITLE"),
                        help="only create notebooks/NAME.ipynb (e.g. 06_training \"Training\") with the opening cells")
    parser.add_argument("--sync-colab", action="store_true",
                        help="only point every badge and install cell at _config.yml's repository url")


def run_book_command(args: argparse.Namespace) -> int:
    """Run what `add_book_arguments` parsed; returns the exit status."""
    try:
        root = Path(args.root)
        if args.write_toc:
            changed = write_toc(root)
            print("_toc.yml " + ("updated" if changed else "already up to date"))
            return 0
        if args.strip:
            for notebook in chapter_notebooks(root / "notebooks"):
                if strip_notebook(notebook):
                    print(f"stripped {notebook}")
            return 0
        if args.new:
            print(f"created {new_chapter(root, *args.new)}; _toc.yml updated")
            return 0
        if args.sync_colab:
            for notebook in sync_colab(root):
                print(f"updated {notebook}")
            return 0
        summary = run_book(
            profile=args.profile, seed=args.seed, data_root=args.data_root, results_dir=args.results_dir,
            root=root, only=args.only, skip_build=args.skip_build, path_output=args.path_output,
        )
    except BookError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = sum(seconds for _, seconds in summary.executed)
    print(f"profile {summary.profile}: {len(summary.executed)} chapter(s) executed in {total:.1f} s"
          + (f"; book at {summary.html / 'index.html'}" if summary.html else ""))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dmlutils.book", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_book_arguments(parser)
    return run_book_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
