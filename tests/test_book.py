"""The book's sources and its runner (dmlutils.book).

Checks every source notebook (valid, stripped, parameterised, Colab badge and install
cell pointing at the repository of _config.yml), that _toc.yml lists every chapter, the
runner's failure path on a deliberately failing notebook (a real papermill run in a
tmp_path, not the whole book) and the default-profile rule.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the book's tools are not installed (pip install -e '.[book]')")
yaml = pytest.importorskip("yaml")

from dmlutils import book  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = book.chapter_notebooks(ROOT / "notebooks")
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"].get("branch", "main")


def notebook_ids(path: Path) -> str:
    return path.stem


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_chapters():
    names = [p.name for p in NOTEBOOKS]
    # the theory chapters this runner was written with; more may be dropped in
    for prefix in ("01_", "02_", "03_", "04_", "05_"):
        assert any(n.startswith(prefix) for n in names), f"no chapter {prefix}* in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_ids)
class TestSourceNotebook:
    def test_valid_nbformat_and_stripped(self, path):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        # nbformat.read fills in a missing cell id (and warns while executing): check the file
        raw = json.loads(path.read_text())
        assert all("id" in cell for cell in raw["cells"]), f"{path.name}: a cell has no id; give each cell a unique one"
        for cell in code_cells(nb):
            assert cell.outputs == [], f"{path.name}: a code cell has outputs; run python -m dmlutils.book --strip"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
            assert "papermill" not in cell.metadata and "execution" not in cell.metadata
        assert "papermill" not in nb.metadata, f"{path.name} is an executed copy, not a source"

    def test_parameters_cell(self, path):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
        assert tagged[0].cell_type == "code"
        assigned = {
            target.id
            for node in ast.parse(tagged[0].source).body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        missing = {"profile", "seed"} - assigned
        assert not missing, f"{path.name}: the parameters cell does not set {missing}"
        # what the runner may inject must be plain assignments papermill can see
        import papermill

        assert {"profile", "seed"} <= set(papermill.inspect_notebook(str(path)))

    def test_colab_badge_points_at_this_notebook(self, path):
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), "chapter must open with its title"
        slug = REPO_URL.removeprefix("https://github.com/")
        link = f"https://colab.research.google.com/github/{slug}/blob/{BRANCH}/notebooks/{path.name}"
        assert re.search(r"\[!\[Open In Colab\]\([^)]*\)\]\(" + re.escape(link) + r"\)", first.source), (
            f"{path.name}: the first cell needs the badge [![Open In Colab](...)]({link})"
        )

    def test_install_cell_does_nothing_outside_colab(self, path, monkeypatch):
        first_code = code_cells(nbformat.read(path, as_version=4))[0]
        assert "google.colab" in first_code.source and f'"DML_REPOSITORY", "{REPO_URL}"' in first_code.source
        calls = []
        monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
        before = Path.cwd()
        exec(compile(first_code.source, path.name, "exec"), {})
        assert calls == [] and Path.cwd() == before, "the install cell must do nothing outside Colab"


def test_colab_install_cell_clones_the_repository_and_installs_from_it(tmp_path, monkeypatch):
    """The install cell, run as in Colab (a stubbed google.colab) against a local clone of
    this repository: a shallow clone with the committed records and chapters, dmlutils
    installed from it, and the kernel working inside it."""
    source = code_cells(nbformat.read(NOTEBOOKS[0], as_version=4))[0].source
    checkout = tmp_path / "content" / "ms-loss-reproduced"
    monkeypatch.setenv("DML_REPOSITORY", f"file://{ROOT}")
    monkeypatch.setenv("DML_CHECKOUT", str(checkout))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    real_run, pip_calls = subprocess.run, []

    def run(command, *args, **kwargs):
        if command[:3] == [sys.executable, "-m", "pip"]:
            pip_calls.append(command)  # not installed into the test's own environment
            return subprocess.CompletedProcess(command, 0)
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    exec(compile(source, "install cell", "exec"), {})
    shallow = real_run(["git", "-C", str(checkout), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True)
    assert shallow.stdout.strip() == "true"
    assert (checkout / "results" / "cpu" / "multi_similarity" / "seed_0.json").is_file()  # the committed records came along
    assert (checkout / "notebooks" / NOTEBOOKS[0].name).is_file()
    assert pip_calls == [[sys.executable, "-m", "pip", "install", "--quiet", "-e", f"{checkout}[vision]"]]
    assert Path.cwd() == checkout and sys.path[0] == str(checkout)
    exec(compile(source, "install cell", "exec"), {})  # a second run reuses the clone
    assert len(pip_calls) == 2


def test_toc_lists_every_chapter_and_is_current():
    toc_text = (ROOT / "_toc.yml").read_text()
    toc = yaml.safe_load(toc_text)
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    for path in NOTEBOOKS:
        assert f"book/chapters/{path.stem}" in files, f"_toc.yml misses {path.name}"
    assert toc_text == book.render_toc(ROOT), "_toc.yml is stale: run python -m dmlutils.book --write-toc"
    for page in files:
        if not page.startswith("book/chapters/"):
            assert (ROOT / f"{page}.md").is_file(), f"_toc.yml lists {page}, which does not exist"


def test_render_toc_orders_chapters_then_appendix(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    for name in ("10_later.ipynb", "A1_appendix.ipynb", "02_second.ipynb", "notes.ipynb", "1_bad.ipynb"):
        (tmp_path / "notebooks" / name).write_text("{}")
    (tmp_path / "book" / "appendix_extra.md").write_text("# x\n")
    toc = yaml.safe_load(book.render_toc(tmp_path))
    chapters, appendix = toc["parts"]
    assert [c["file"] for c in chapters["chapters"]] == ["book/chapters/02_second", "book/chapters/10_later"]
    assert [c["file"] for c in appendix["chapters"]] == ["book/chapters/A1_appendix", "book/appendix_extra"]


# --- the runner ------------------------------------------------------------------------------


def tiny_notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell('profile = "cpu"\nseed = 0')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), parameters]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_failing_chapter_exits_nonzero_naming_chapter_and_cell(tmp_path, capsys):
    # Cell 3 passes only if the runner injected profile="smoke" over the notebook's "cpu";
    # cell 4 fails. The message must name cell 4 of the *source* (papermill's injected
    # parameters cell shifts the executed notebook's numbering by one).
    tiny_notebook(tmp_path / "notebooks" / "01_failing.ipynb", [
        'assert profile == "smoke", profile',
        "ratio = 1 / 0",
        "print('never reached')",
    ])
    status = book.main(["--root", str(tmp_path), "--profile", "smoke", "--skip-build"])
    error = capsys.readouterr().err
    assert status != 0
    assert "01_failing.ipynb" in error
    assert "cell 4" in error and "ZeroDivisionError" in error and "ratio = 1 / 0" in error
    assert not (tmp_path / "book" / "chapters" / "01_failing.ipynb").exists(), "a failed chapter must not be published"
    kept = tmp_path / "_build" / "papermill" / "01_failing.failed.ipynb"
    assert kept.is_file() and "ZeroDivisionError" in kept.read_text()


def test_chapter_executes_with_injected_parameters(tmp_path):
    # data_root is offered but not declared by this notebook, so it must not be injected
    source = tiny_notebook(tmp_path / "02_ok.ipynb", ["print(profile, seed, 'data_root' in globals())"])
    output = book.execute_chapter(
        source, tmp_path / "out" / "02_ok.ipynb",
        {"profile": "smoke", "seed": 3, "data_root": "/somewhere", "results_dir": "results"},
    )
    nb = nbformat.read(output, as_version=4)
    printed = "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs)
    assert printed.strip() == "smoke 3 False"
    assert not list(tmp_path.glob("out/.*")), "no temporary file may be left behind"
    # papermill's injected cell stays in the notebook but is tagged off the rendered page
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0].metadata["tags"]
    assert 'profile = "smoke"' in injected[0].source
    assert book.hide_injected_parameters(output) == 0  # already hidden: nothing to do


def test_undeclared_parameters_are_not_injected(tmp_path):
    source = tiny_notebook(tmp_path / "03_params.ipynb", [])
    assert book.declared_parameters(source) == {"profile", "seed"}


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "01_untagged.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(book.BookError, match="no cell tagged `parameters`"):
        book.execute_chapter(path, tmp_path / "out.ipynb", {"profile": "smoke"})


def test_only_with_unknown_chapter_lists_the_chapters():
    with pytest.raises(book.BookError, match="matches no chapter.*02_general"):
        book.select_chapters(NOTEBOOKS, ["99"])
    assert [p.name[:2] for p in book.select_chapters(NOTEBOOKS, ["03", "01"])] == ["01", "03"]


def test_strip_notebook_removes_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)]
    cell.execution_count = 1
    cell.metadata["papermill"] = {"duration": 0.1}
    nb.cells = [cell]
    nb.metadata["papermill"] = {"parameters": {}}
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    assert book.strip_notebook(path) is True
    stripped = nbformat.read(path, as_version=4)
    assert stripped.cells[0].outputs == [] and stripped.cells[0].execution_count is None
    assert "papermill" not in stripped.metadata and "papermill" not in stripped.cells[0].metadata
    assert book.strip_notebook(path) is False  # idempotent


# --- default profile ---------------------------------------------------------------------------


def fake_cub(root: Path) -> Path:
    (root / "CUB_200_2011").mkdir(parents=True)
    (root / "CUB_200_2011" / "images.txt").write_text("1 001.Bird/a.jpg\n")
    return root


def test_default_profile_is_cpu_when_cub_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_DATA", str(fake_cub(tmp_path / "data")))
    assert book.default_profile() == "cpu"
    assert book.plan_data().cub is True
    monkeypatch.delenv("DML_DATA")
    assert book.default_profile(tmp_path / "data") == "cpu"


def test_without_cub_the_book_reads_the_committed_cpu_records_and_says_how_to_fetch_it(tmp_path, monkeypatch):
    """A fresh clone with an empty data root: the book's profile is still cpu (whose records
    are committed), and its closing line names what was skipped, where CUB was looked for and
    the one command that fetches it there."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DML_DATA", str(empty))
    plan = book.plan_data()
    assert (plan.profile, plan.cub, plan.data_root) == ("cpu", False, empty)
    assert "DML_DATA" in plan.origin
    assert plan.fetch_command.endswith(f"-m dmlutils download --root {empty}")
    assert list((ROOT / "results" / "cpu").glob("multi_similarity/seed_*.json")), "the records the cpu book reads are committed"
    stems = [p.stem for p in NOTEBOOKS]
    line = book.data_summary(plan, stems, [stems[0]])
    assert line.startswith("chapters 2–9 and appendix A1 ran in full at the cpu profile")
    assert "committed records in results/cpu/" in line
    assert f"chapter 1's figures and tables of CUB-200-2011 were skipped: no CUB-200-2011 under {empty}" in line
    assert line.endswith(f"`{plan.fetch_command}`, then run the book again.")
    # with CUB present (nothing skipped) the run ends as it always did: no such line
    assert book.data_summary(plan, stems, []) is None


def test_fetch_command_names_the_root_unless_it_is_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv("DML_DATA", raising=False)
    assert book.fetch_data_command() == "python -m dmlutils download"
    monkeypatch.setenv("DML_DATA", str(tmp_path / "my data"))  # a new shell may not have it: name it
    assert book.fetch_data_command() == f"python -m dmlutils download --root '{tmp_path / 'my data'}'"


def test_chapters_text_joins_runs_of_chapters():
    assert book.chapters_text(["01_a"]) == "chapter 1"
    assert book.chapters_text(["02_a", "03_b", "04_c", "06_d", "A1_e"]) == "chapters 2–4, 6 and appendix A1"
    assert book.chapters_text(["01_a", "02_b"]) == "chapters 1, 2"


def test_a_profile_that_would_train_on_cub_is_refused_early_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_DATA", str(tmp_path / "empty"))
    # paper on a GPU trains its missing runs on CUB: without it, stop before any chapter runs
    monkeypatch.setattr(book.book_plan, "_book_trains", lambda profile: profile == "paper")
    with pytest.raises(book.BookError, match="profile 'paper' needs CUB-200-2011") as info:
        book.run_book(profile="paper", root=ROOT, skip_build=True)
    assert "python -m dmlutils download --root" in str(info.value)
    assert book.plan_data("cpu").profile == "cpu"  # cpu reads its committed records: no CUB needed
    book.check_profile_data("smoke")  # synthetic data: no CUB needed


@pytest.mark.slow
def test_chapter_1_without_cub_says_what_it_cannot_show_and_the_book_says_so_last(tmp_path, monkeypatch, capsys):
    """Chapter 1 at the cpu profile in a book root without CUB: it executes, each table and
    figure that needs CUB is replaced by the notice with the fetch command, and the runner's
    last line says which chapters ran on what."""
    root = tmp_path / "clone"
    (root / "notebooks").mkdir(parents=True)
    (root / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    source = NOTEBOOKS[0]
    assert source.name.startswith("01_")
    (root / "notebooks" / source.name).write_text(source.read_text())
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DML_DATA", str(empty))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    status = book.main(["--root", str(root), "--skip-build"])
    out = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    assert out[-1].startswith("chapter 1's figures and tables of CUB-200-2011 were skipped: no CUB-200-2011 under " + str(empty))
    assert f"-m dmlutils download --root {empty}`" in out[-1]
    executed = nbformat.read(root / "book" / "chapters" / source.name, as_version=4)
    notices = book.missing_data_notices(root / "book" / "chapters" / source.name)
    assert len(notices) == 6 and "the grid of training images" in notices
    shown = [o["data"]["text/markdown"] for c in code_cells(executed) for o in c.outputs if "text/markdown" in o.get("data", {})]
    notice = next(text for text in shown if text.startswith("**Not shown: the grid of training images.**"))
    assert str(empty / "CUB_200_2011" / "images.txt") in notice and f"python -m dmlutils download --root {empty}" in notice
    assert not any(o.get("output_type") == "error" for c in code_cells(executed) for o in c.outputs)


def test_download_command_fetches_cub_into_the_data_root_md5_checked(tmp_path, monkeypatch, capsys):
    from data_fixtures import make_cub, make_tar_gz

    from dmlutils.__main__ import main
    from dmlutils.data import CUB200

    source = tmp_path / "source"
    make_cub(source)
    archive = tmp_path / "CUB_200_2011.tgz"
    md5 = make_tar_gz(source, archive)
    monkeypatch.setattr(CUB200, "resources", (((archive.as_uri(),), "0" * 32, archive.name),))
    assert main(["download", "--root", str(tmp_path / "data")]) == 2  # a wrong MD5 is refused
    assert f"expected {'0' * 32}, got {md5}" in capsys.readouterr().err
    monkeypatch.setattr(CUB200, "resources", (((archive.as_uri(),), md5, archive.name),))
    assert main(["download", "--root", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / "CUB_200_2011" / "images.txt").is_file()
    assert main(["download", "--root", str(tmp_path / "data")]) == 0
    assert "already under" in capsys.readouterr().out


def test_provenance_names_profile_commit_and_time():
    text = book.provenance_markdown("smoke", 7)
    assert "profile **smoke**" in text and "seed 7" in text
    assert re.search(r"commit (`[0-9a-f]{12}`|unknown)", text)
    assert re.search(r"executed \d{4}-\d\d-\d\d \d\d:\d\d UTC", text)


def test_a_chapters_opening_helpers_import_neither_the_runner_nor_torch():
    """What every chapter calls first (work_in_repository, show_provenance) comes from the
    notebook tooling, light enough for Colab: no papermill, no torch, no engine."""
    import subprocess

    script = (
        "import sys\n"
        "from dmlutils.book import show_provenance, work_in_repository\n"
        "from dmlutils import notebook_tools\n"
        "assert show_provenance is notebook_tools.show_provenance and work_in_repository is notebook_tools.work_in_repository\n"
        "show_provenance('smoke', 0)\n"
        "print(sorted(m for m in sys.modules if m in ('torch', 'papermill', 'dmlutils.engine')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("**Provenance.** This page was executed with profile **smoke**")
    assert lines[-1] == "[]", f"a chapter's opening imported {lines[-1]}"


# --- creating chapters and re-pointing the Colab cells ----------------------------------------------


def book_root_copy(tmp_path: Path, url: str = REPO_URL) -> Path:
    config = dict(CONFIG, repository=dict(CONFIG["repository"], url=url))
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "notebooks").mkdir()
    return tmp_path


def test_repository_chapters_use_the_standard_install_cell():
    for path in NOTEBOOKS:
        first_code = code_cells(nbformat.read(path, as_version=4))[0]
        assert first_code.source == book.install_cell_source(REPO_URL), f"{path.name}: run --sync-colab"


def test_new_chapter_has_the_opening_cells_and_joins_the_toc(tmp_path):
    root = book_root_copy(tmp_path, "https://github.com/someone/fork")
    path = book.new_chapter(root, "06_training", "Training")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].source.startswith("# Training")
    assert "https://colab.research.google.com/github/someone/fork/blob/main/notebooks/06_training.ipynb" in nb.cells[0].source
    assert code_cells(nb)[0].source == book.install_cell_source("https://github.com/someone/fork")
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert "book/chapters/06_training" in (root / "_toc.yml").read_text()
    with pytest.raises(book.BookError, match="already exists"):
        book.new_chapter(root, "06_training", "Training")
    with pytest.raises(book.BookError, match="must look like"):
        book.new_chapter(root, "training", "Training")


def test_sync_colab_repoints_badge_and_install_cell(tmp_path):
    root = book_root_copy(tmp_path, "https://github.com/old/place")
    path = book.new_chapter(root, "07_main_table", "Main table")
    config = yaml.safe_load((root / "_config.yml").read_text())
    config["repository"]["url"] = "https://github.com/new/home"
    (root / "_config.yml").write_text(yaml.safe_dump(config))
    assert book.sync_colab(root) == [path]
    nb = nbformat.read(path, as_version=4)
    assert "github/new/home/blob/main/notebooks/07_main_table.ipynb" in nb.cells[0].source
    assert "old/place" not in nb.cells[0].source and "old/place" not in code_cells(nb)[0].source
    assert code_cells(nb)[0].source == book.install_cell_source("https://github.com/new/home")
    assert book.sync_colab(root) == []  # idempotent


def test_repository_url_must_be_github(tmp_path):
    root = book_root_copy(tmp_path, "http://example.org/x")
    with pytest.raises(book.BookError, match="https://github.com/<owner>/<name>"):
        book.repository(root)


def test_default_data_root_is_the_books_root_not_the_callers_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("DML_DATA", raising=False)
    root = tmp_path / "book"
    fake_cub(root / "data")
    (root / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path)  # ./data does not exist here
    summary = book.run_book(root=root, skip_build=True, log=lambda *_: None)
    assert summary.profile == "cpu" and summary.executed == []
    assert summary.data.cub is True, "CUB under <book root>/data was not found from another working directory"
