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


FINISHED = {"profile": "cpu", "profile_version": 2, "loss": "triplet", "config": {"seed": 0}, "evaluations": [],
            "final": {"iteration": 0, "recall@1": 0.5}}


def test_records_are_read_with_their_curves_and_provenance(tmp_path):
    folder = tmp_path / "cpu"
    folder.mkdir()
    finished = {**FINISHED, "evaluations": [{"iteration": 0, "metrics": {"recall@1": 0.5}}], "git": {"commit": "abc", "dirty": False}}
    (folder / "triplet.json").write_text(json.dumps(finished))
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
(results / "cpu" / "triplet.json").write_text(json.dumps({{"profile": "cpu", "profile_version": 2, "config": {{}}, "final": {{"recall@1": 0.5}}, "evaluations": []}}))
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


# --- a damaged record: the file, what is wrong, the command that re-makes it -----------------

COMMITTED = DEFAULT_RESULTS / "cpu" / "triplet" / "seed_0.json"


def damaged_copy(results, cut=None, drop=()):
    """A copy of a committed record under `results`, cut after `cut` bytes or without `drop` keys."""
    path = results / "cpu" / "triplet" / "seed_0.json"
    path.parent.mkdir(parents=True)
    if cut is not None:
        path.write_bytes(COMMITTED.read_bytes()[:cut])
    else:
        record = json.loads(COMMITTED.read_text())
        path.write_text(json.dumps({k: v for k, v in record.items() if k not in drop}))
    return path


def test_a_truncated_record_names_the_file_says_it_is_cut_short_and_gives_the_command(tmp_path):
    from dmlutils import manifest

    path = damaged_copy(tmp_path, cut=300)
    command = f"python -m dmlutils ablation triplet --profile cpu --seed 0 --results {tmp_path}"
    # ValueError: a chapter showed json's JSONDecodeError (a ValueError too) before
    for read in (lambda: manifest.load("cpu", tmp_path), lambda: manifest.ensure("cpu", tmp_path, only=["triplet"]),
                 lambda: check_records_found("cpu", tmp_path)):
        with pytest.raises(ValueError) as error:
            read()
        message = str(error.value)
        assert f"Damaged run record {path}: it is not valid JSON" in message and "truncated" in message and "after 300 bytes" in message
        assert command in message
        assert "git checkout" not in message  # outside the repository: nothing committed to restore


def test_a_record_without_the_keys_every_record_has_is_damaged_too(tmp_path):
    from dmlutils import manifest

    path = damaged_copy(tmp_path, drop=("final", "profile_version"))
    with pytest.raises(ValueError) as error:
        manifest.load("cpu", tmp_path)
    message = str(error.value)
    assert f"Damaged run record {path}: it lacks 'profile_version', 'final'" in message
    assert f"python -m dmlutils ablation triplet --profile cpu --seed 0 --results {tmp_path}" in message
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        manifest.load("cpu", tmp_path)


def test_the_planner_re_makes_a_damaged_record_instead_of_failing_on_it(tmp_path):
    from dmlutils import manifest, runner

    path = damaged_copy(tmp_path, cut=300)
    listed = {job.name: done for job, done in manifest.jobs("cpu", tmp_path, only=["triplet"])}
    assert listed == {"triplet seed 0": False, "triplet seed 1": False, "triplet seed 2": False}
    assert runner.finished(path) is False and manifest.measured_run_seconds("cpu", tmp_path) == {}


@pytest.mark.parametrize("place, command", [
    ("cpu/multi_similarity/seed_2.json", "python -m dmlutils ablation multi_similarity --profile cpu --seed 2"),
    ("cpu/baseline/seed_0.json", "python -m dmlutils baseline --profile cpu"),
    ("paper/baseline/seed_1.json", "python -m dmlutils baseline --profile paper --set seed=1"),
    ("cpu/study/npair/scale_10.json", "python -m dmlutils study npair --profile cpu"),
    ("cpu/study/npair/selection.json", "python -m dmlutils study npair --profile cpu"),
    ("cpu/study/baseline.json", "python -m dmlutils study --profile cpu"),
    ("cpu/tuned/npair/seed_1.json", "python -m dmlutils study npair --profile cpu"),
    ("cpu/recipe/pooling/max.json", "python -m dmlutils recipe --profile cpu"),
    ("cpu_full/recipe/rates/1e-4.json", "python -m dmlutils recipe --profile cpu_full"),
    ("cpu/multi_similarity/seed_0.pictures.json", "python -m dmlutils verify --profile cpu --pictures --runs multi_similarity:0"),
    ("cpu/baseline/seed_0.pictures.json", "python -m dmlutils verify --profile cpu --pictures --runs baseline:0"),
    ("cpu/recipe/seeds/seed_1.json", "python -m dmlutils recipe --profile cpu"),
    ("verify/cpu.json", "python -m dmlutils verify --profile cpu"),
])
def test_the_command_that_re_makes_a_record_follows_its_place_in_the_results_layout(place, command, tmp_path):
    from dmlutils.records import remake_command

    assert remake_command(DEFAULT_RESULTS / place) == command  # the repository's results/ need no --results
    assert remake_command(tmp_path / "elsewhere" / place) == f"{command} --results {tmp_path / 'elsewhere'}"


def test_a_damaged_benchmark_report_names_the_make_bench_that_re_makes_it(tmp_path):
    from dmlutils.records import DamagedRecord, read_record, remake_command

    assert remake_command(DEFAULT_RESULTS / "benchmarks" / "whole_backbone.json") == 'make bench BENCH_ARGS="--only whole_backbone"'
    report = tmp_path / "benchmarks" / "losses.json"
    report.parent.mkdir()
    report.write_text('{"name": "losses", "report": {}}')  # unwrapped: the suite wraps it with its provenance
    with pytest.raises(DamagedRecord, match=r"(?s)Damaged benchmark report .*losses.json: it lacks 'provenance'.*"
                                            r'make bench BENCH_ARGS="--only losses"$'):
        read_record(report)


def test_a_damaged_study_selection_says_so(tmp_path):
    from dmlutils.records import DamagedRecord, load_study

    selection = tmp_path / "cpu" / "study" / "npair" / "selection.json"
    selection.parent.mkdir(parents=True)
    selection.write_text('{"chosen": "default", "scores": {"default": 0.2}}')
    with pytest.raises(DamagedRecord, match=r"(?s)Damaged study selection .*selection.json: it lacks 'profile_version'.*"
                                            r"python -m dmlutils study npair --profile cpu --results"):
        load_study("cpu", "npair", tmp_path)
    selection.write_text("")
    with pytest.raises(DamagedRecord, match="it is empty"):
        load_study("cpu", "npair", tmp_path)


def test_a_damaged_record_of_the_repository_says_how_to_restore_the_committed_copy(tmp_path, monkeypatch):
    from dmlutils import records

    monkeypatch.setattr(records, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(records, "DEFAULT_RESULTS", tmp_path / "results")
    path = damaged_copy(tmp_path / "results", cut=300)
    with pytest.raises(records.DamagedRecord) as error:
        records.read_record(path)
    message = str(error.value)
    assert message.endswith("python -m dmlutils ablation triplet --profile cpu --seed 0\n"
                            "If it is a committed record, this restores it instead: git checkout -- results/cpu/triplet/seed_0.json")


def test_every_committed_record_reads_whole():
    """The keys `read_record` requires are ones every committed record, selection and report has."""
    from dmlutils.records import read_record

    paths = sorted(DEFAULT_RESULTS.rglob("*.json"))
    assert len(paths) > 100 and any("benchmarks" in p.parts for p in paths)
    for path in paths:
        read_record(path)


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


def test_a_decision_is_rewritten_only_when_it_changes(tmp_path, monkeypatch):
    from dmlutils import provenance

    path = tmp_path / "selection.json"
    first = provenance.write_decision(path, {"chosen": "a", "scores": {"a": 0.5}, "recipe": {"milestones": (1, 2)}})
    written = path.read_bytes()
    monkeypatch.setattr(provenance, "code_version", lambda: {"commit": "f" * 40, "dirty": False})  # a later commit
    assert provenance.write_decision(path, {"chosen": "a", "scores": {"a": 0.5}, "recipe": {"milestones": (1, 2)}}) == first
    assert path.read_bytes() == written  # same decision (tuples read back as lists): the file stays as it was
    changed = provenance.write_decision(path, {"chosen": "b", "scores": {"a": 0.5}, "recipe": {"milestones": (1, 2)}})
    assert changed["chosen"] == "b" and changed["git"]["commit"] == "f" * 40 and json.loads(path.read_text()) == changed
