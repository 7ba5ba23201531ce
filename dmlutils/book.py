"""Run the book: execute every chapter with papermill, then build it with Jupyter Book.

    python -m dmlutils.book                       # profile cpu: the committed records (CUB only for chapter 1's images)
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

The default profile is cpu, with or without CUB-200-2011: at cpu the chapters read the
committed run records, and only chapter 1 shows CUB itself. Without it, chapter 1 puts a
notice (`show_missing_data`: what is missing, the command that fetches it) where each
table or figure would be, and the run's last line says which chapters ran on what
(`plan_data`, `data_summary`). A profile whose chapters would train on a missing CUB
(paper on a GPU) is refused before any chapter runs.

papermill's injected-parameters cell is tagged `remove-cell` in the executed chapter, so
the rendered page does not show it (the page's provenance line names the profile and
seed instead); the cell stays in the executed notebook.

This module is the runner: papermill, then jupyter-book. The notebook tooling -- which
notebooks are chapters, the generated `_toc.yml` (`render_toc`: dropping a new
`notebooks/NN_name.ipynb` in and running the book adds it as a chapter), Colab badges,
stripping, the new-chapter scaffold, and the helpers chapters import
(`show_provenance`, `work_in_repository`) -- is `dmlutils.notebook_tools`; its names are
re-exported here, so `from dmlutils.book import show_provenance` keeps working. Both
import papermill, nbformat and torch lazily.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import book_plan
from .book_plan import (  # noqa: F401  (re-exported: the book module's names before the split)
    CUB_ARCHIVE_SIZE,
    DEFAULT_PROFILE,
    PROFILES,
    DataPlan,
    _python_command,
    chapter_label,
    chapters_text,
    check_profile_data,
    cub_found,
    data_summary,
    default_profile,
    plan_data,
)
from .notebook_tools import (  # noqa: F401  (re-exported: the book module's names before the split)
    APPENDIX_PATTERN,
    CHAPTER_PATTERN,
    KERNEL,
    MISSING_DATA_KEY,
    OUTPUT_DIR,
    PARAMETERS_SOURCE,
    REPO_ROOT,
    TOC_HEADER,
    BookError,
    _atomic_write_text,
    chapter_notebooks,
    colab_badge,
    fetch_data_command,
    install_cell_source,
    is_book_root,
    new_chapter,
    pages_url,
    provenance_markdown,
    render_toc,
    repository,
    show_missing_data,
    show_provenance,
    strip_notebook,
    sync_colab,
    work_in_repository,
    write_toc,
)

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
    "DataPlan",
    "default_profile",
    "execute_chapter",
    "hide_injected_parameters",
    "main",
    "new_chapter",
    "plan_data",
    "provenance_markdown",
    "render_toc",
    "run_book",
    "run_book_command",
    "show_missing_data",
    "show_provenance",
    "strip_notebook",
    "sync_colab",
    "work_in_repository",
    "write_toc",
]

# The parameters the runner injects, when the chapter's `parameters` cell declares them.
INJECTED_PARAMETERS = ("profile", "seed", "data_root", "results_dir")


class ChapterFailed(BookError):
    """A cell of a chapter raised; the message names the chapter, the cell and the error."""

    def __init__(self, message: str, notebook: Path, cell_number: int | None, ename: str, evalue: str):
        super().__init__(message)
        self.notebook, self.cell_number, self.ename, self.evalue = notebook, cell_number, ename, evalue


# --- which chapters (chapter_notebooks: dmlutils.notebook_tools) --------------------------


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
    try:
        hide_injected_parameters(executed)
    except BaseException:
        os.unlink(executed)
        raise
    os.replace(executed, output)  # the rendered chapter only ever holds a complete run
    return output


def hide_injected_parameters(notebook: str | os.PathLike) -> int:
    """Tag papermill's injected-parameters cell of an executed notebook `remove-cell`, so
    Jupyter Book leaves it off the page (the provenance line names profile and seed; the
    cell stays in the notebook). Returns how many cells were newly tagged."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    tagged = 0
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
            tagged += 1
    if tagged:
        nbformat.write(nb, notebook)
    return tagged


# --- the whole book ----------------------------------------------------------------------------------


@dataclass
class RunSummary:
    profile: str
    executed: list[tuple[str, float]]
    built: bool
    html: Path | None
    data: DataPlan | None = None
    skipped: list[str] = field(default_factory=list)  # chapters that showed a `show_missing_data` notice
    results_dir: str = "results"

    def closing_line(self) -> str | None:
        """Which chapters ran on what, when some could not show everything (`data_summary`)."""
        if self.data is None:
            return None
        return data_summary(self.data, [stem for stem, _ in self.executed], self.skipped, self.results_dir)


def missing_data_notices(notebook: str | os.PathLike) -> list[str]:
    """What an executed chapter could not show for lack of data (its `show_missing_data` notices)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    return [output["metadata"][MISSING_DATA_KEY] for cell in nb.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if MISSING_DATA_KEY in output.get("metadata", {})]


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
    looked_up = data_root if data_root is not None or os.environ.get("DML_DATA") else None
    with _working_directory(root):  # ./data, the default, is the book's own
        data = plan_data(profile, looked_up)
    profile = data.profile
    chapters = select_chapters(chapter_notebooks(root / notebooks_dir), only)
    if write_toc(root, notebooks_dir):
        log("_toc.yml updated from the notebooks present (commit it).")
    parameters = {"profile": profile, "seed": seed, "data_root": data_root, "results_dir": results_dir}
    output_dir = root / OUTPUT_DIR
    scratch = Path(path_output or root) / "_build" / "papermill"
    executed, skipped = [], []
    for chapter in chapters:
        start = time.perf_counter()
        log(f"executing {chapter.relative_to(root)} (profile {profile}) ...")
        output = execute_chapter(chapter, output_dir / chapter.name, parameters, cwd=root, scratch_dir=scratch)
        seconds = time.perf_counter() - start
        executed.append((chapter.stem, seconds))
        missing = missing_data_notices(output)
        if missing:
            skipped.append(chapter.stem)
        log(f"  done in {seconds:.1f} s" + (f"; not shown for lack of data: {', '.join(missing)}" if missing else ""))
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
    return RunSummary(profile, executed, html is not None, html, data, skipped, results_dir)


@contextlib.contextmanager
def _working_directory(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


# --- command line ------------------------------------------------------------------------------------


def add_book_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m dmlutils.book` (also usable as a `book` subcommand)."""
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="cpu (the default: the committed records; CUB-200-2011 for chapter 1's images), smoke (synthetic data, "
                             "trained here: CI) or paper (CUB-200-2011)")
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
    closing = summary.closing_line()
    if closing:  # last, where a reader of `make book` looks
        print(closing)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dmlutils.book", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_book_arguments(parser)
    return run_book_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
