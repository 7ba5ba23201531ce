"""Plain papermill, started outside the repository, reads the repository's folders.

Batch users call papermill themselves (`papermill notebooks/07_main_table.ipynb out.ipynb
-p profile cpu`), from wherever they are. These tests do the same -- papermill's own
API, not the book runner -- from a temporary folder.
"""
import json
import os
from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from dmlutils import book
from dmlutils.book import REPO_ROOT, work_in_repository

NOTEBOOKS = book.chapter_notebooks(REPO_ROOT / "notebooks")


def outputs_text(path: Path) -> str:
    """Every text a notebook's cells showed (stdout, stderr, text/plain, text/markdown, text/html)."""
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            for kind in ("text/plain", "text/markdown", "text/html"):
                texts.append(str(output.get("data", {}).get(kind, "")))
    return "\n".join(texts)


def run_papermill(notebook: Path, output: Path, **parameters):
    # the kernel starts in papermill's working directory (cwd=None), as from a shell there
    return papermill.execute_notebook(
        str(notebook), str(output), parameters=parameters, kernel_name="python3", progress_bar=False,
        extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
    )


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the repository, with no results/ or constraints.txt."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The kernel imports this checkout's dmlutils: the environment's install may be another
    # checkout's (a git worktree beside it), whose REPO_ROOT and code are not under test.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return folder


def test_a_chapter_run_by_papermill_from_another_folder_reads_the_repositorys_records(elsewhere):
    output = elsewhere / "A1.ipynb"
    run_papermill(REPO_ROOT / "notebooks" / "A1_environment_and_provenance.ipynb", output, profile="smoke", results_dir="results")
    shown = outputs_text(output)
    committed = sorted(p.relative_to(REPO_ROOT / "results").as_posix() for p in (REPO_ROOT / "results" / "cpu").glob("*/seed_*.json")
                       if not p.name.endswith(".pictures.json"))  # what a run draws: not a record A1 lists
    assert committed, "the repository's cpu records are what this test looks for"
    # results_dir="results" was read as <repository>/results, not <here>/results
    assert "No run records under" not in shown
    assert all(name in shown for name in committed), [n for n in committed if n not in shown]
    assert "**`results/benchmarks/losses.md`**" in shown and "*not run* (no `results/benchmarks/losses.md`)" not in shown
    # constraints.txt too: the pins column is filled (torch's pin is shown beside the installed version)
    pins = {line.split("==")[0]: line.split("==")[1] for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert pins["torch"] in shown and "✓" in shown
    assert sorted(p.name for p in elsewhere.iterdir()) == ["A1.ipynb"]  # nothing was written here


def test_a_chapter_that_finds_no_record_at_the_cpu_profile_fails_the_batch_and_says_where_it_looked(elsewhere):
    empty = elsewhere / "my_results"
    empty.mkdir()
    with pytest.raises(PapermillExecutionError) as error:
        run_papermill(REPO_ROOT / "notebooks" / "07_main_table.ipynb", elsewhere / "07.ipynb", profile="cpu", results_dir=str(empty))
    assert error.value.ename == "RecordsNotFound"
    assert f"{empty / 'cpu'}/ does not exist" in error.value.evalue
    assert "make results-cpu" in error.value.evalue
    assert f"-p results_dir {REPO_ROOT / 'results'}" in error.value.evalue


def test_work_in_repository_moves_a_kernel_started_elsewhere_to_the_repository(elsewhere, monkeypatch):
    monkeypatch.setenv("DML_DATA", "relative/data")
    assert work_in_repository() == REPO_ROOT
    assert Path.cwd() == REPO_ROOT
    assert Path("results").resolve() == REPO_ROOT / "results"  # results_dir = "results"
    assert Path("data").resolve() == REPO_ROOT / "data"  # data_root = "data", and ./data when None
    # a relative DML_DATA was the shell's: it still points where it pointed from there
    assert os.environ["DML_DATA"] == str(elsewhere / "relative" / "data")


def test_work_in_repository_stays_in_a_book_root(tmp_path, monkeypatch):
    (tmp_path / "_config.yml").write_text("title: another book\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path)  # the book runner starts kernels in the book's root
    assert work_in_repository() == tmp_path and Path.cwd() == tmp_path


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapters_with_path_parameters_move_to_the_repository_before_using_them(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    first = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    later = ["".join(c["source"]) for c in cells[first + 1:] if c["cell_type"] == "code"]
    uses = [i for i, source in enumerate(later) if "results_dir" in source or "data_root" in source]
    if not uses:
        return  # the chapter reads no record and no data set
    opening = later[0].split("work_in_repository()", 1)
    assert len(opening) == 2, f"{notebook.name}: call work_in_repository() in the cell after the parameters"
    assert "results_dir" not in opening[0] and "data_root" not in opening[0]


def test_a_chapter_that_meets_a_damaged_record_names_it_and_the_command_not_a_decoder_error(elsewhere):
    results = elsewhere / "my_results"
    damaged = results / "cpu" / "triplet" / "seed_0.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes((REPO_ROOT / "results" / "cpu" / "triplet" / "seed_0.json").read_bytes()[:300])  # a copy cut short
    with pytest.raises(PapermillExecutionError) as error:
        run_papermill(REPO_ROOT / "notebooks" / "07_main_table.ipynb", elsewhere / "07.ipynb", profile="cpu", results_dir=str(results))
    assert error.value.ename == "DamagedRecord", (error.value.ename, error.value.evalue)
    assert f"{damaged}: it is not valid JSON" in error.value.evalue and "truncated" in error.value.evalue
    assert f"python -m dmlutils ablation triplet --profile cpu --seed 0 --results {results}" in error.value.evalue
