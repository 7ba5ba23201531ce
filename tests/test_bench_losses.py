"""The loss benchmark's code runs and reports what it promises (at a tiny size; timing is not tested)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_losses  # noqa: E402

from dmlutils.losses import LOSSES  # noqa: E402


def test_benchmark_reports_every_contender_and_loss(tmp_path):
    out = tmp_path / "losses.json"
    report = bench_losses.main(["--batch", "10", "--dim", "8", "--min-run-time", "0.01", "--out", str(out), "--threads", "1"])
    on_disk = json.loads(out.read_text())
    assert on_disk["all_losses"]["10"].keys() == LOSSES.keys()
    ms = on_disk["multi_similarity"]["10"]
    assert set(ms["seconds"]) == {"ours (vectorised)", "official per-anchor loop", "pytorch-metric-learning loss + miner"}
    assert all(v > 0 for v in ms["seconds"].values())
    assert set(ms["speed-up vs"]) == set(ms["seconds"]) - {"ours (vectorised)"}
    assert "| 10 | official per-anchor loop |" in bench_losses.markdown(report)
    assert out.with_suffix(".md").read_text().startswith("Forward + backward")
