"""What a reader gets in Jupyter or Colab: the committed records by default, and with
`colab_train = True` training that survives the end of a runtime (dmlutils.colab).

Colab is simulated as the chapters' install cell sees it: a stubbed `google.colab` module
in sys.modules, its `drive.mount` making a temporary folder the reader's "Google Drive";
the GPU check is stubbed too. The data download, the Drive folders, the checkpoint link
and the resumed run are the real code, on a local clone of this repository.
"""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the book's tools are not installed (pip install -e '.[book]')")
papermill = pytest.importorskip("papermill")

from data_fixtures import make_cub, make_tar_gz, md5_of  # noqa: E402

from dmlutils import book, colab, manifest, regimes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = book.chapter_notebooks(ROOT / "notebooks")


def committed_profiles() -> set[str]:
    """The profiles whose run records git tracks (results/<profile>/<run>/seed_<n>.json)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "results"], capture_output=True, text=True, check=True).stdout
    return {Path(line).parts[1] for line in listed.splitlines() if len(Path(line).parts) == 4 and Path(line).name.startswith("seed_")}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_chapter_opened_directly_reads_the_profile_whose_records_are_committed(notebook):
    # The default profile's records are committed, and so may be those of the regimes its
    # chapters show beside it (cpu_full at cpu), which that profile's chapters read.
    committed, shown = committed_profiles(), set(regimes.regimes(book.DEFAULT_PROFILE))
    assert book.DEFAULT_PROFILE in committed and committed <= shown, (
        f"records are committed for {sorted(committed)}, but a chapter opened directly reads {book.DEFAULT_PROFILE} "
        f"and the regimes it shows ({sorted(shown)})")
    defaults = papermill.inspect_notebook(str(notebook))
    assert defaults["profile"]["default"] == f'"{book.DEFAULT_PROFILE}"', (
        f"{notebook.name}: its parameters cell sets profile = {defaults['profile']['default']}; a reader who opens it "
        f"in Jupyter or Colab must see the committed {book.DEFAULT_PROFILE} records (CI passes smoke explicitly)"
    )
    assert f'profile = "{book.DEFAULT_PROFILE}"' in book.PARAMETERS_SOURCE  # and so does a new chapter


@pytest.mark.parametrize("notebook", [n for n in NOTEBOOKS if "train_missing" in papermill.inspect_notebook(str(n))],
                         ids=lambda p: p.stem)
def test_every_chapter_that_can_train_has_the_colab_switch_off(notebook):
    defaults = papermill.inspect_notebook(str(notebook))
    assert defaults.get("colab_train", {}).get("default") == "False", f"{notebook.name}: add colab_train = False to its parameters"
    cells = json.loads(notebook.read_text())["cells"]
    first = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    following = "".join(cells[first + 1]["source"])
    assert "colab.train_here(" in following and "profile, results_dir, data_root, train_missing =" in following, (
        f"{notebook.name}: the cell after the parameters must hand colab_train to dmlutils.colab.train_here"
    )


@pytest.mark.slow
def test_chapter_7_opened_directly_shows_the_committed_multi_similarity_mean_and_std(tmp_path, monkeypatch):
    """No parameter injected, as when a reader opens the chapter: its table is the committed
    cpu records' (here computed from the records themselves), and nothing is trained."""
    from dmlutils import report

    monkeypatch.chdir(tmp_path)  # Jupyter starts kernels in notebooks/, papermill here: the chapter moves itself
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    output = tmp_path / "07.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "07_main_table.ipynb"), str(output), kernel_name="python3",
                               progress_bar=False, extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    committed = manifest.load("cpu", ROOT / "results")["multi_similarity"]
    expected = report.summarise(committed, "recall@1").text_without_n()
    shown = "\n".join(str(o.get("data", {}).get("text/html", "")) + str(o.get("data", {}).get("text/markdown", ""))
                      for c in nbformat.read(output, as_version=4).cells for o in c.get("outputs", []))
    assert "profile **cpu**" in shown
    assert f"<td>{expected}</td>" in shown, f"the committed MS Recall@1 {expected} is not in chapter 7's table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["07.ipynb"]


# --- colab_train ---------------------------------------------------------------------------------


def test_colab_train_off_changes_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert colab.train_here(False, "cpu", "results", None, None) == ("cpu", "results", None, None)


def test_colab_train_outside_colab_says_where_to_train_instead(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    with pytest.raises(colab.ColabError, match="python -m dmlutils runs --profile paper"):
        colab.train_here(True, "cpu", "results", None, None)


def fake_colab(monkeypatch, refuse: bool = False) -> list[str]:
    """google.colab with a `drive` whose mount makes <mountpoint>/MyDrive (or is refused, as
    when the reader declines access); returns the mount points asked for."""
    mounted = []

    def mount(mountpoint, *args, **kwargs):
        mounted.append(mountpoint)
        if refuse:
            raise ValueError("mount failed: the user declined access")  # what Colab raises is its own type
        (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)

    module = types.ModuleType("google.colab")
    module.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google.colab", module)
    monkeypatch.setitem(sys.modules, "google.colab.drive", module.drive)
    return mounted


def test_colab_train_without_a_gpu_says_how_to_get_one(monkeypatch):
    import torch

    fake_colab(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(colab.ColabError, match="Runtime > Change runtime type"):
        colab.train_here(True, "cpu", "results", None, None)


def local_clone(destination: Path) -> Path:
    """What the install cell makes in Colab: a shallow clone of the repository."""
    subprocess.run(["git", "clone", "-q", "--depth", "1", ROOT.as_uri(), str(destination)], check=True)
    return destination


@pytest.fixture
def cub_archive(tmp_path, monkeypatch):
    """CUB-200-2011's official resource pointed at a tiny archive of the official layout (file://)."""
    from dmlutils.data import CUB200

    source = tmp_path / "cub-source"
    make_cub(source)
    archive = tmp_path / "CUB_200_2011.tgz"
    md5 = make_tar_gz(source, archive)
    monkeypatch.setattr(CUB200, "resources", (((archive.as_uri(),), md5, "CUB_200_2011.tgz"),))
    return md5


def start_runtime(monkeypatch, checkout: Path, mountpoint: Path):
    """A new Colab runtime: the chapter's colab cell with colab_train = True, on a stubbed GPU."""
    import torch

    monkeypatch.chdir(checkout)
    with monkeypatch.context() as gpu:  # only for the check: the smoke runs below train on the CPU
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        gpu.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla T4 (stub)")
        return colab.train_here(True, "cpu", "results", None, None, checkout=checkout, mountpoint=mountpoint)


@pytest.mark.slow
def test_colab_training_keeps_results_and_runs_on_drive_and_a_new_runtime_resumes(tmp_path, monkeypatch, cub_archive, capsys):
    monkeypatch.delenv("DML_DATA", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mounted = fake_colab(monkeypatch)
    mountpoint = tmp_path / "content" / "drive"
    drive = mountpoint / "MyDrive" / colab.DRIVE_FOLDER
    checkout = local_clone(tmp_path / "content" / "ms-loss-reproduced")

    profile, results_dir, data_root, train_missing = start_runtime(monkeypatch, checkout, mountpoint)
    # the paper profile, trained here, with the records on Drive and CUB fetched (MD5-checked) onto the runtime's disk
    assert (profile, results_dir, data_root, train_missing) == ("paper", str(drive / "results"), str(checkout / "data"), True)
    assert mounted == [str(mountpoint)]
    assert md5_of(checkout / "data" / "CUB_200_2011.tgz") == cub_archive and (checkout / "data" / "CUB_200_2011" / "images.txt").is_file()
    assert (checkout / "runs").is_symlink() and (checkout / "runs").resolve() == (drive / "runs").resolve()
    assert "on Google Drive" in capsys.readouterr().out

    # A run of the manifest (at the smoke profile: seconds, not a GPU's minutes) where the
    # chapter's runner puts it, interrupted after its evaluation at iteration 20.
    from dmlutils.engine import train

    entry = manifest.run("multi_similarity")
    config = manifest.config_of(entry, "smoke", 0)
    record_path = manifest.record_path(results_dir, "smoke", entry.name, 0)
    train(config, Path("runs") / "smoke" / entry.name / "seed_0", resume=True, record_path=record_path, stop_after=20, progress=False)
    assert not record_path.exists()
    assert (drive / "runs" / "smoke" / entry.name / "seed_0" / "checkpoint.pt").is_file(), "the checkpoint must be on Drive"

    # Colab ends the runtime: its disk (the clone, CUB, the link) is gone; Drive is not.
    subprocess.run(["rm", "-rf", str(checkout)], check=True)
    monkeypatch.chdir(tmp_path)
    local_clone(checkout)
    _, results_dir, _, train_missing = start_runtime(monkeypatch, checkout, mountpoint)
    assert results_dir == str(drive / "results") and (checkout / "runs").resolve() == (drive / "runs").resolve()

    # The chapter's own call: the runner resumes seed 0 from Drive and trains seed 1 afresh.
    runs = manifest.ensure("smoke", results_dir, only=[entry.name], train_missing=train_missing)
    assert sorted(runs[entry.name]) == [0, 1]
    resumed = json.loads(record_path.read_text())
    assert resumed["resumed_at"] == [20] and resumed["final"]["iteration"] == config["iterations"]
    assert "resumed_at" not in runs[entry.name][1]
    assert (drive / "results" / "smoke" / entry.name / "seed_1.json").is_file()


def test_declining_drive_keeps_the_work_on_the_runtime_and_says_it_is_lost_with_it(tmp_path, monkeypatch, capsys):
    mounted = fake_colab(monkeypatch, refuse=True)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    folders = colab.use_drive(checkout, tmp_path / "drive")
    assert mounted and folders == colab.Folders(checkout / "results", checkout / "runs", on_drive=False)
    assert not (checkout / "runs").is_symlink()
    assert "lost when it ends" in capsys.readouterr().out


def test_checkpoints_made_before_drive_was_mounted_move_there(tmp_path):
    checkout, runs = tmp_path / "checkout", tmp_path / "drive" / "runs"
    (checkout / "runs" / "paper" / "npair" / "seed_0").mkdir(parents=True)
    (checkout / "runs" / "paper" / "npair" / "seed_0" / "checkpoint.pt").write_bytes(b"local")
    (checkout / "runs" / "paper" / "triplet" / "seed_0").mkdir(parents=True)
    (checkout / "runs" / "paper" / "triplet" / "seed_0" / "checkpoint.pt").write_bytes(b"local, newer")
    (runs / "paper" / "triplet" / "seed_0").mkdir(parents=True)
    (runs / "paper" / "triplet" / "seed_0" / "checkpoint.pt").write_bytes(b"drive")
    colab.keep_runs_in(runs, checkout)
    assert (checkout / "runs").is_symlink()
    assert (runs / "paper" / "npair" / "seed_0" / "checkpoint.pt").read_bytes() == b"local"
    assert (runs / "paper" / "triplet" / "seed_0" / "checkpoint.pt").read_bytes() == b"drive"  # Drive's is kept
    assert colab.keep_runs_in(runs, checkout) == checkout / "runs"  # a second call changes nothing
