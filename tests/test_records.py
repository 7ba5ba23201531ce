"""Run records as the book reads them."""
import json
import subprocess
import sys

import pytest

from dmlutils.provenance import REPO_ROOT, write_json
from dmlutils.profiles import make_config
from dmlutils.records import (
    DEFAULT_RESULTS,
    RecordsNotFound,
    check_records_found,
    find_records,
    learning_curve,
    load_records,
    machine_paths,
    provenance,
    strip_machine_paths,
    strip_machine_paths_in,
)


def test_unfinished_records_are_not_results(tmp_path):
    folder = tmp_path / "cpu"
    folder.mkdir()
    finished = {"profile": "cpu", "loss": "triplet", "evaluations": [{"iteration": 0, "metrics": {"recall@1": 0.5}}],
                "final": {"iteration": 0, "recall@1": 0.5}, "git": {"commit": "abc", "dirty": False}}
    (folder / "triplet.json").write_text(json.dumps(finished))
    del_final = dict(finished)
    del del_final["final"]
    (folder / "npair.json").write_text(json.dumps(del_final))
    records = load_records("cpu", tmp_path)
    assert list(records) == ["triplet"]
    assert learning_curve(records["triplet"]) == ([0], [0.5])
    assert "commit abc" in provenance(records["triplet"])


def test_reading_records_imports_nothing_of_training(tmp_path):
    """Reading sits below the engine: importing dmlutils.records and calling its readers
    (including the studies' and the validation runs') loads neither the engine nor torch."""
    script = f"""
import json, sys
from pathlib import Path
results = Path({str(tmp_path)!r})
(results / "cpu").mkdir()
(results / "cpu" / "triplet.json").write_text(json.dumps({{"profile": "cpu", "final": {{"recall@1": 0.5}}, "evaluations": []}}))
from dmlutils import records
assert list(records.find_records("cpu", ["triplet", "npair"], results)) == ["triplet"]
records.load_study("cpu", "contrastive", results)
records.load_studies("cpu", ["npair"], results)
records.load_validation_runs("cpu", results)
print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("dmlutils.engine", "dmlutils.losses", "dmlutils.models", "dmlutils.orchestration"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"reading records imported: {done.stdout.strip()}"


PLANNING = ("dmlutils.studies", "dmlutils.manifest", "dmlutils.runner", "dmlutils.cache", "dmlutils.recipe", "dmlutils.orchestration")


def test_reading_records_and_reporting_on_them_load_nothing_of_the_planning(tmp_path):
    """Reading sits below planning: a chapter that only reads records and computes its
    numbers (records, report) never loads the manifest, the studies, the runner or the
    cache, neither on import nor when its readers run (lazy imports included)."""
    script = f"""
import json, sys
from pathlib import Path
PLANNING = {PLANNING!r}
def planning():
    return sorted(m for m in sys.modules if m in PLANNING)
import dmlutils.records, dmlutils.report
assert planning() == [], f"importing records and report loaded {{planning()}}"
from dmlutils import records, report
from dmlutils.profiles import PROFILE_VERSIONS
results = Path({str(tmp_path)!r})
record = {{"profile": "cpu", "profile_version": PROFILE_VERSIONS["cpu"], "config": {{"seed": 0}}, "evaluations": [],
          "final": {{"recall@1": 0.5, "map@r": 0.2}}, "cache_seconds": 60.0}}
for path in ["cpu/triplet/seed_0.json", "cpu/study/npair/default.json", "cpu/study/baseline.json"]:
    (results / path).parent.mkdir(parents=True, exist_ok=True)
    (results / path).write_text(json.dumps(record))
(results / "cpu" / "study" / "npair" / "selection.json").write_text(json.dumps(
    {{"profile_version": PROFILE_VERSIONS["cpu"], "chosen": "default", "scores": {{"default": 0.2}}, "test_records": {{"0": "cpu/triplet/seed_0.json"}}}}))
records.check_records_found("cpu", results)
study = records.load_study("cpu", "npair", results)
assert set(study["validation"]) == {{"default"}} and study["selection"]["chosen"] == "default" and list(study["tuned"]) == [0], study
assert set(records.load_studies("cpu", ["npair"], results)) == {{"npair"}}
assert set(records.load_validation_runs("cpu", results)) == {{"baseline"}}
by_seed = {{0: study["tuned"][0]}}
report.summarise(by_seed), report.cpu_seconds({{"triplet": by_seed}}), report.run_cost({{"triplet": by_seed}})
assert planning() == [], f"reading records and reporting on them loaded {{planning()}}"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --- no records at all: loud at the cpu and paper profiles ---------------------------------

FINISHED = {"profile": "cpu", "loss": "triplet", "evaluations": [], "final": {"iteration": 0, "recall@1": 0.5}}


def test_no_record_at_all_at_the_cpu_profile_raises_naming_the_folder_and_the_command(tmp_path):
    with pytest.raises(RecordsNotFound) as error:
        find_records("cpu", ["triplet"], tmp_path / "elsewhere")
    message = str(error.value)
    assert f"{tmp_path / 'elsewhere' / 'cpu'}/ does not exist" in message
    assert "make results-cpu" in message and "python -m dmlutils runs --profile cpu" in message
    assert f"-p results_dir {DEFAULT_RESULTS}" in message  # where the repository's records are
    (tmp_path / "elsewhere" / "cpu").mkdir(parents=True)
    with pytest.raises(RecordsNotFound, match="holds no finished record"):
        find_records("cpu", ["triplet"], tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "cpu" / "triplet").mkdir()
    (tmp_path / "elsewhere" / "cpu" / "triplet" / "seed_0.json").write_text(json.dumps(FINISHED))
    check_records_found("cpu", tmp_path / "elsewhere")  # a record in the manifest layout counts


def test_some_records_present_keep_the_others_as_not_run(tmp_path, capsys):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "triplet.json").write_text(json.dumps(FINISHED))
    found = find_records("cpu", ["triplet", "npair"], tmp_path)
    assert list(found) == ["triplet"]
    # a chapter's other tables (e.g. an ablation group) may have none of theirs: still fine
    assert find_records("cpu", ["ms_no_mining"], tmp_path) == {}
    assert capsys.readouterr().err == ""


def test_no_record_at_the_paper_profile_prints_a_warning_block_and_goes_on(tmp_path, capsys):
    assert find_records("paper", ["triplet"], tmp_path) == {}
    err = capsys.readouterr().err
    assert err.startswith("!" * 20) and "WARNING: No run records at the 'paper' profile" in err
    assert str(tmp_path / "paper") in err and "python -m dmlutils runs --profile paper" in err


def test_the_smoke_profile_stays_quiet_without_records(tmp_path, capsys):
    assert find_records("smoke", ["triplet"], tmp_path) == {}
    assert capsys.readouterr().err == ""


# --- no paths of the machine that made a record --------------------------------------------


def test_strip_machine_paths_drops_path_values_and_rewrites_paths_in_commands():
    record = {
        "data": {"train_images": 5864, "root": "/work/shared/data/CUB_200_2011"},
        "report": {"root": "C:\\Users\\me\\data", "rate": "300 images/s", "ratio": "1/2"},
        "command": f"python benchmarks/run_all.py --out-dir {REPO_ROOT}/results/benchmarks --tmp /tmp/bench_x1/raw.json",
        "homes": ["~/data", "results/cpu"],
        "final": {"recall@1": 0.5},
    }
    assert {where for where, _ in machine_paths(record)} == {"data.root", "report.root", "command", "homes[0]"}
    stripped = strip_machine_paths(record)
    assert stripped == {
        "data": {"train_images": 5864},
        "report": {"rate": "300 images/s", "ratio": "1/2"},
        "command": "python benchmarks/run_all.py --out-dir results/benchmarks --tmp <tmp>/bench_x1/raw.json",
        "homes": ["results/cpu"],
        "final": {"recall@1": 0.5},
    }
    assert machine_paths(stripped) == [] and strip_machine_paths(stripped) == stripped
    assert record["data"]["root"]  # the argument is left as it was


def test_strip_machine_paths_in_rewrites_only_the_files_that_need_it(tmp_path):
    write_json(tmp_path / "cpu" / "a.json", {"data": {"root": "/home/x/CUB_200_2011", "test_images": 3}})
    write_json(tmp_path / "cpu" / "b.json", {"data": {"test_images": 3}})
    untouched = (tmp_path / "cpu" / "b.json").stat().st_mtime_ns
    assert strip_machine_paths_in(tmp_path) == [tmp_path / "cpu" / "a.json"]
    assert json.loads((tmp_path / "cpu" / "a.json").read_text()) == {"data": {"test_images": 3}}
    assert (tmp_path / "cpu" / "a.json").read_text() == (tmp_path / "cpu" / "b.json").read_text()  # the records' format
    assert (tmp_path / "cpu" / "b.json").stat().st_mtime_ns == untouched


def test_no_json_under_results_holds_a_path_of_the_machine_that_wrote_it():
    """Committed records and reports, and any new one about to be (results/cpu/recipe/, ...)."""
    paths = sorted(DEFAULT_RESULTS.rglob("*.json"))
    assert len(paths) > 20  # the committed records and benchmark reports are there to check
    offending = {}
    for path in paths:
        found = machine_paths(json.loads(path.read_text()))
        if found:
            offending[str(path.relative_to(DEFAULT_RESULTS))] = found[:3]
    assert not offending, (
        "absolute paths in run records / reports (fix the writer; then "
        "`python -c 'from dmlutils.records import strip_machine_paths_in; strip_machine_paths_in()'`): "
        f"{offending}"
    )


def test_a_changed_record_does_not_make_the_code_dirty_but_changed_code_does(tmp_path, monkeypatch):
    import subprocess

    from dmlutils import provenance

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)
    assert provenance.git_commit()["dirty"] is False
    (tmp_path / "results" / "r.json").write_text('{"rewritten": true}')
    assert provenance.git_commit()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_commit()["dirty"] is True
