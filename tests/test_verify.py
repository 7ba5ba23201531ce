"""Verification re-runs (dmlutils.verify): identical on the same machine, loud on a mismatch."""
import json

import pytest

from dmlutils import manifest, verify
from dmlutils.__main__ import main as cli
from dmlutils.engine import write_json


@pytest.fixture
def committed(tmp_path):
    results = tmp_path / "results"
    manifest.run_manifest("smoke", results, tmp_path / "runs", only=["ms_beta_10"], echo=lambda *_: None, progress=False)
    return results


def test_a_rerun_on_the_same_machine_is_identical(committed, tmp_path):
    report = verify.verify("smoke", ["ms_beta_10"], committed, report_dir=tmp_path / "report", echo=lambda *_: None)
    (check,) = report["checks"]
    assert check["same_machine"] and check["verdict"] == "identical" and check["largest_difference"] == 0.0
    assert report["passed"]
    assert json.loads((tmp_path / "report/smoke.json").read_text())["checks"][0]["verdict"] == "identical"
    assert "| ms_beta_10 seed 0 | recall@1 |" in (tmp_path / "report/smoke.md").read_text()


def test_a_changed_record_is_a_mismatch_and_the_cli_fails(committed, capsys):
    path = manifest.record_path(committed, "smoke", "ms_beta_10", 0)
    record = json.loads(path.read_text())
    record["final"]["recall@1"] += 0.001  # smaller than the tolerance, but this machine made it: must be identical
    write_json(path, record)
    assert cli(["verify", "--profile", "smoke", "--runs", "ms_beta_10:0", "--results", str(committed), "--no-report"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_another_machine_gets_the_tolerance():
    committed = {"final": {"recall@1": 0.500, "map@r": 0.200}}
    rerun = {"final": {"recall@1": 0.505, "map@r": 0.198}}
    assert verify.compare(committed, rerun, 0.01, identical_expected=False)["verdict"] == "within tolerance"
    assert verify.compare(committed, rerun, 0.001, identical_expected=False)["verdict"] == "MISMATCH"
    assert verify.compare(committed, rerun, 0.01, identical_expected=True)["verdict"] == "MISMATCH"


def test_a_missing_record_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dmlutils runs --profile smoke --only ms_beta_20"):
        verify.verify("smoke", ["ms_beta_20:0"], tmp_path, echo=lambda *_: None)
    with pytest.raises(ValueError, match="<name>\\[:<seed>\\]"):
        verify.parse("ms:one")


def test_a_matching_rerun_leaves_its_pictures_beside_the_committed_record_and_a_mismatch_leaves_none(committed):
    from dmlutils.pictures import pictures_path, read_pictures

    path = manifest.record_path(committed, "smoke", "ms_beta_10", 0)
    drawn = pictures_path(path)
    first = read_pictures(drawn)  # the manifest's run drew them
    drawn.unlink()  # as for a record made before runs drew pictures
    verify.verify("smoke", ["ms_beta_10"], committed, echo=lambda *_: None, pictures=True)
    again = read_pictures(drawn)
    assert again["verified"] == {"record_git": json.loads(path.read_text())["git"], "verdict": "identical", "largest_difference": 0.0}
    assert again["queries"] == first["queries"] and again["batch"] == first["batch"]
    drawn.unlink()
    record = json.loads(path.read_text())
    record["final"]["map@r"] += 0.5
    write_json(path, record)
    verify.verify("smoke", ["ms_beta_10"], committed, echo=lambda *_: None, pictures=True)
    assert not drawn.exists()
