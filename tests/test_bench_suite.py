"""The benchmark suite (benchmarks/run_all.py) runs every benchmark and reports what it promises.

Benchmarks are not tests: nothing here checks a speed. The suite runs once at its tiny
size (`--small`, into a temporary folder) and the tests check the reports' contents
against independent sources: git for the commit, the installed libraries for versions,
the reports' own raw numbers for every derived ratio, fit and projection, numpy's
polyfit for the log-log exponents, and EfficientNet-Lite0's architecture for the shape
of the cached activations.
"""
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_growth  # noqa: E402
import common  # noqa: E402
import run_all  # noqa: E402

from dmlutils.losses import LOSSES  # noqa: E402

from dmlutils.profiles import PROFILES  # noqa: E402

CUB_TRAIN, CUB_TEST = 5_864, 5_924
CPU = PROFILES["cpu"]
VIEWS = CPU["cache_views"]  # the cpu profile's cache: its views of each training image + the test images
# Channels entering EfficientNet-Lite0's block 8 (the 80-channel stage's output) and block 11
# (the 112-channel stage's), both at stride 16.
CACHED_CHANNELS = {8: 80, 11: 112}
MAP_SIDE = -(-CPU["image_size"] // 16)
COMMITTED = REPO / "results" / "benchmarks"
# An absolute path in a text: POSIX (/tmp/..., /work/..., /home/..., /root/...), home (~/...), a Windows drive
# (C:\... or C:/...) or share (\\server\...), after a space, quote, backtick, bracket, '=', ':' or ','.
ABSOLUTE = re.compile(r"(?:^|(?<=[\s`'\"(\[=:,]))(?:~/|/(?=[\w.~-])|[A-Za-z]:[\\/]|\\\\(?=\w))[^\s`'\"(),;]*", re.M)


def absolute_paths(text: str) -> list[str]:
    return ABSOLUTE.findall(text)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    status = run_all.main(["--small", "--threads", "1", "--out-dir", str(out)])
    reports = {name: json.loads((out / f"{name}.json").read_text()) for name in run_all.BENCHMARKS}
    return status, out, reports


def test_every_benchmark_writes_json_markdown_and_the_readme_gathers_them(suite):
    status, out, reports = suite
    assert status == 0
    readme = (out / "README.md").read_text()
    positions = []
    for name, bench in run_all.BENCHMARKS.items():
        markdown = (out / f"{name}.md").read_text()
        assert markdown.startswith(f"**{bench.title}.** Commit `")
        assert "|---" in markdown or "*Skipped:*" in markdown  # a table, or the reason there is none
        assert markdown.strip() in readme
        positions.append(readme.index(f"## {bench.title}"))
    assert positions == sorted(positions)  # the suite's order
    assert (out / "growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![Cost growth, log-log](growth.png)" in readme
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]  # no temp files left


def test_reports_hold_no_path_of_this_machine(suite):
    from dmlutils.records import machine_paths

    _, out, reports = suite
    for name, report in reports.items():
        assert machine_paths(report) == [], name  # written to a temporary folder, run with absolute paths
        # the markdown too, its command line included; and it is what the JSON report makes
        assert absolute_paths((out / f"{name}.md").read_text()) == [], name
        assert (out / f"{name}.md").read_text() == run_all.report_markdown(run_all.BENCHMARKS[name], report), name
    assert absolute_paths((out / "README.md").read_text()) == []
    # the raw JSON went to a scratch folder, the plot to the (temporary) output folder
    assert "--out <tmp>/raw.json" in reports["losses"]["provenance"]["command"]
    assert reports["growth"]["provenance"]["command"].endswith(" --plot <out-dir>/growth.png")
    assert "--out-dir <tmp>/" in reports["losses"]["suite_command"]


def test_provenance_names_the_code_libraries_threads_machine_and_time(suite):
    import faiss
    import torch

    _, _, reports = suite
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    head = git.stdout.strip() if git.returncode == 0 else "unknown"  # e.g. an unpacked archive
    for name, report in reports.items():
        prov = report["provenance"]
        assert prov["git"]["commit"] == head, name
        assert isinstance(prov["git"]["dirty"], bool) or head == "unknown"
        assert prov["versions"]["torch"] == torch.__version__
        assert prov["versions"]["numpy"] == np.__version__
        assert prov["versions"]["faiss"] == faiss.__version__
        assert prov["threads"]["torch_threads"] == 1 and prov["threads"]["OMP_NUM_THREADS"] == "1"
        assert prov["cpu_model"]
        assert len(prov["load_average_before"]) == 3 and len(prov["load_average_after"]) == 3
        age = dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(prov["date"])
        assert dt.timedelta(0) <= age < dt.timedelta(hours=1)
        assert prov["command"].startswith(f"python benchmarks/{run_all.BENCHMARKS[name].script} ")
        assert "--small" in report["suite_command"] and report["small"] is True
        if "skipped" not in report:
            assert prov["wall_seconds"] > 0
            assert report["peak_rss_mib_benchmark_process"] > 50  # a process that imported torch
        else:  # skipped (no CUB): decided in milliseconds, which may round to 0.0 s
            assert prov["wall_seconds"] >= 0


def test_benchmarks_ran_with_the_threads_the_suite_set(suite):
    _, _, reports = suite
    assert reports["losses"]["report"]["threads"] == 1
    assert reports["growth"]["report"]["torch_threads"] == 1
    assert reports["engine"]["report"]["torch_threads"] == 1
    environment = reports["metrics"]["report"]["config"]["environment"]
    assert environment["torch_threads"] == 1 and environment["faiss_threads"] == 1


def test_loss_report_has_every_contender_and_ratios_from_its_own_numbers(suite):
    _, _, reports = suite
    report = reports["losses"]["report"]
    ms = report["multi_similarity"]["10"]
    ours = ms["seconds"]["ours (vectorised)"]
    assert set(ms["seconds"]) == {"ours (vectorised)", "official per-anchor loop", "pytorch-metric-learning loss + miner"}
    for label, ratio in ms["speed-up vs"].items():
        assert ratio == pytest.approx(ms["seconds"][label] / ours, rel=1e-12)
    assert report["all_losses"]["10"].keys() == LOSSES.keys()


def test_metrics_report_agrees_with_faiss_and_sklearn(suite):
    _, _, reports = suite
    (case,) = reports["metrics"]["report"]["cases"]
    assert set(case["runs"]) == {"ours", "faiss", "sklearn"}
    for reference in ("faiss", "sklearn"):
        # the same metrics from an independent nearest-neighbour search
        assert case["ratios"][f"max_abs_metric_difference_vs_{reference}"] < 1e-6
        assert case["ratios"][f"time_ours_over_{reference}"] == pytest.approx(
            case["runs"]["ours"]["seconds"] / case["runs"][reference]["seconds"], rel=1e-12
        )
        assert case["runs"][reference]["peak_rss_mib"] > 0


def test_growth_report_fits_match_numpy_on_its_own_points(suite):
    _, _, reports = suite
    report = reports["growth"]["report"]
    assert report["losses"].keys() == LOSSES.keys()
    curves = {**report["losses"], **report["evaluation"]}
    for name, curve in curves.items():
        sizes = np.array([p["size"] for p in curve["points"]], dtype=float)
        seconds = np.array([p["seconds"] for p in curve["points"]])
        tail = slice(-report["fit_points"], None)
        assert curve["slope"] == pytest.approx(np.polyfit(np.log(sizes[tail]), np.log(seconds[tail]), 1)[0]), name
        assert curve["slope_all_points"] == pytest.approx(np.polyfit(np.log(sizes), np.log(seconds), 1)[0]), name
    assert [p["size"] for p in report["evaluation"]["evaluate"]["points"]] == report["galleries"]


def test_engine_report_measures_the_cpu_profile(suite):
    _, _, reports = suite
    report = reports["engine"]["report"]
    # The activations entering the profile's first trained block, at stride 16 of its crop.
    assert report["activation_shape"] == [CACHED_CHANNELS[CPU["cache_from_block"]], MAP_SIDE, MAP_SIDE]
    ms = report["training"]["multi_similarity"]
    assert ms["batch"] == 80 and ms["steps"] >= 1
    assert ms["iterations_per_s"] == pytest.approx(1 / ms["seconds_per_step_median"])
    assert ms["projected_training_seconds"] == pytest.approx(400 * ms["seconds_per_step_median"])
    evaluation = report["evaluation"]
    assert evaluation["seconds"] == pytest.approx(evaluation["embed_seconds"] + evaluation["metrics_seconds"])
    twins = report["side_by_side"]  # two processes really ran, each timing its own steps
    assert len(twins["side_by_side_seconds_per_step"]) == 2 and all(t > 0 for t in twins["side_by_side_seconds_per_step"])
    assert twins["slowdown"] == pytest.approx(sum(twins["side_by_side_seconds_per_step"]) / 2 / twins["alone_seconds_per_step"])
    cache = report["cache_build"]
    if "skipped" in cache:
        pytest.skip(cache["skipped"])
    full = VIEWS * CUB_TRAIN + CUB_TEST
    assert cache["full_cache_images"] == full
    assert cache["images"] == cache["views"] * cache["train_images"] + cache["test_images"]
    assert cache["projected_full_cache_seconds"] == pytest.approx(full * cache["seconds"] / cache["images"])
    assert cache["full_cache_bytes"] == full * CACHED_CHANNELS[CPU["cache_from_block"]] * MAP_SIDE**2 * 2  # float16


def test_data_and_model_reports_have_their_rows(suite):
    _, _, reports = suite
    models = reports["models"]["report"]
    assert {r["block"] for r in models["cache"]} == {8, 11}
    assert len(models["forward"]) == 8  # 1 size x 2 batches x (BN folded or not) x (memory format)
    data = reports["data"]
    if "skipped" in data:
        pytest.skip(data["skipped"])
    rows = data["report"]["rows"]
    assert {(r["pipeline"], r["workers"]) for r in rows} == {
        (p, w) for p in ("efficientnet_lite0", "bninception") for w in (0, 1)
    }
    assert all(r["images"] == 16 and r["images_per_s"] == pytest.approx(16 / r["seconds"], rel=1e-2) for r in rows)


# ------------------------------------------------------------ parts, without running the suite


def test_committed_reports_hold_no_absolute_path():
    texts = {p: p.read_text() for p in sorted(COMMITTED.rglob("*")) if p.suffix in (".md", ".json")}
    assert {p.name for p in texts} >= {f"{name}.{ext}" for name in run_all.BENCHMARKS for ext in ("md", "json")}
    assert {p.relative_to(REPO).as_posix(): absolute_paths(text) for p, text in texts.items() if absolute_paths(text)} == {}
    # the pattern finds what it is meant to find
    assert absolute_paths("Command: `python x.py --out /tmp/a/raw.json --plot /work/main/g.png`") == [
        "/tmp/a/raw.json", "/work/main/g.png"]
    assert absolute_paths('"/home/me/x", `/root/y`, ~/data, C:\\Users\\me, D:/data, \\\\server\\share') == [
        "/home/me/x", "/root/y", "~/data", "C:\\Users\\me", "D:/data", "\\\\server\\share"]
    assert absolute_paths("s / step, images/s, 1/2, https://example.org/a, results/benchmarks/growth.png") == []


def test_committed_markdown_is_what_its_json_report_makes():
    """Each committed <name>.md, and README.md gathering them, is made from the JSON beside it
    by the current code: the two agree, and the report format is unchanged."""
    for name, bench in run_all.BENCHMARKS.items():
        wrapped = json.loads((COMMITTED / f"{name}.json").read_text())
        assert run_all.report_markdown(bench, wrapped) == (COMMITTED / f"{name}.md").read_text(), name


def test_committed_readme_gathers_the_committed_reports(tmp_path):
    for path in COMMITTED.iterdir():
        if path.name != "README.md":
            shutil.copy(path, tmp_path / path.name)
    assert run_all.write_readme(tmp_path).read_text() == (COMMITTED / "README.md").read_text()


def test_commands_name_paths_relative_to_the_repository_or_a_placeholder(tmp_path):
    growth = run_all.BENCHMARKS["growth"]
    inside = run_all.REPO / "_build" / "benchmarks-small"
    # --out inside the repository: relative to its root, as typed there
    command = run_all.benchmark_command(growth, True, 1, inside / "raw.json", inside)
    assert command[0] == sys.executable and Path(command[command.index("--out") + 1]).is_absolute()  # runs as is
    assert run_all.display_command(command, inside) == (
        "python benchmarks/bench_growth.py --small --threads 1 --out _build/benchmarks-small/raw.json "
        "--plot _build/benchmarks-small/growth.png")
    # outside it: the scratch folder and the output folder by placeholders, without their names
    scratch, out_dir = tmp_path / "bench_growth_x1y2", tmp_path / "somewhere" / "bench"
    command = run_all.benchmark_command(growth, True, 1, scratch / "raw.json", out_dir)
    shown = run_all.display_command(command, out_dir, scratch=scratch)
    assert shown == "python benchmarks/bench_growth.py --small --threads 1 --out <tmp>/raw.json --plot <out-dir>/growth.png"
    # any other absolute path: under the temporary folder, or by its name alone
    other = Path(tempfile.gettempdir()) / "bench" / "x.json"
    assert run_all.display_command([sys.executable, str(run_all.HERE / "run_all.py"), "--out-dir", str(other.parent),
                                    f"--plot={other}", "--x", "/opt/data/CUB_200_2011", "--y", "relative/p.json"]) == (
        "python benchmarks/run_all.py --out-dir <tmp>/bench --plot=<tmp>/bench/x.json --x <local>/CUB_200_2011 "
        "--y relative/p.json")
    for bench in run_all.BENCHMARKS.values():
        for small in (False, True):
            command = run_all.benchmark_command(bench, small, 1, scratch / "raw.json", out_dir)
            assert absolute_paths(run_all.display_command(command, out_dir, scratch=scratch)) == [], bench.name


def test_loglog_slope_recovers_known_exponents():
    sizes = np.array([40, 80, 160, 320, 640, 1280])
    assert common.loglog_slope(sizes, 3e-9 * sizes**2.0) == pytest.approx(2.0)
    assert common.loglog_slope(sizes, 1e-12 * sizes**3.0) == pytest.approx(3.0)
    noisy = 3e-9 * sizes**2.0 * np.random.default_rng(0).uniform(0.9, 1.1, len(sizes))
    assert common.loglog_slope(sizes, noisy) == pytest.approx(2.0, abs=0.1)
    with pytest.raises(ValueError, match="positive"):
        common.loglog_slope([10, 20], [0.0, 1.0])


def test_fit_uses_the_largest_sizes_where_overhead_no_longer_hides_the_growth():
    sizes = [40, 80, 160, 320, 640, 1280]
    # a fixed 1 ms per call plus a B^2 term that only dominates at the large sizes
    curves = {"toy": {"points": [{"size": b, "seconds": 1e-3 + 1e-8 * b**2} for b in sizes]}}
    bench_growth.add_fits(curves, fit_points=2)
    toy = curves["toy"]
    assert toy["fit_sizes"] == [640, 1280]
    assert toy["slope"] == pytest.approx(np.log((1e-3 + 1e-8 * 1280**2) / (1e-3 + 1e-8 * 640**2)) / np.log(2))
    assert 1.6 < toy["slope"] < 2.0 and toy["slope_all_points"] < toy["slope"]


def test_peak_rss_sees_an_allocation_made_inside_the_block():
    with common.PeakRSS() as memory:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        del block
    assert 190 < memory.increase_mib < 400


def test_only_rejects_unknown_names_and_lists_the_choices():
    assert run_all.parse_only("growth, losses") == ["growth", "losses"]
    assert run_all.parse_only(None) == list(run_all.BENCHMARKS)
    with pytest.raises(ValueError, match="losses, growth, metrics"):
        run_all.parse_only("losses,speed")
    with pytest.raises(ValueError, match="loss=size"):
        bench_growth.parse_max_batch(["triplet=big"])
    assert bench_growth.parse_max_batch(["triplet=640"])["triplet"] == 640


def test_a_failing_benchmark_keeps_the_previous_report_and_fails_the_suite(tmp_path, monkeypatch):
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent("""
        import json, os, sys
        out = sys.argv[sys.argv.index("--out") + 1]
        json.dump({"value": 42, "omp": os.environ["OMP_NUM_THREADS"]}, open(out, "w"))
    """))
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit('broken on purpose')\n")
    fake = {
        "good": run_all.Benchmark("good", "Good", str(good), [], [], lambda r: f"| value |\n|---|\n| {r['value']} |"),
        "bad": run_all.Benchmark("bad", "Bad", str(bad), [], [], lambda r: ""),
    }
    out = tmp_path / "out"
    out.mkdir()
    (out / "bad.md").write_text("previous report\n")
    monkeypatch.setattr(run_all, "BENCHMARKS", fake)
    assert run_all.main(["--out-dir", str(out), "--threads", "2"]) == 1
    good_report = json.loads((out / "good.json").read_text())
    assert good_report["report"] == {"value": 42, "omp": "2"}
    assert good_report["provenance"]["threads"]["torch_threads"] == 2
    assert "| 42 |" in (out / "good.md").read_text()
    assert (out / "bad.md").read_text() == "previous report\n"
    assert not (out / "bad.json").exists()


def test_the_books_benchmark_section_shows_every_report_and_the_plot(suite):
    """Run the code of notebook A1's benchmark cell on the suite's output folder."""
    IPython_display = pytest.importorskip("IPython.display")
    _, out, _ = suite
    notebook = json.loads((REPO / "notebooks" / "A1_environment_and_provenance.ipynb").read_text())
    (cell,) = [c for c in notebook["cells"] if c["cell_type"] == "code" and "benchmarks_dir" in "".join(c["source"])]
    shown = []
    results = out.parent / "results"
    results.mkdir(exist_ok=True)
    if not (results / "benchmarks").exists():
        (results / "benchmarks").symlink_to(out)
    namespace = {"Path": Path, "Markdown": IPython_display.Markdown, "display": shown.append, "results_dir": str(results)}
    exec("".join(cell["source"]), namespace)
    markdown = [item.data for item in shown if isinstance(item, IPython_display.Markdown)]
    images = [item for item in shown if isinstance(item, IPython_display.Image)]
    for name in run_all.BENCHMARKS:
        assert any((out / f"{name}.md").read_text() in text for text in markdown), name
    assert len(images) == 1 and images[0].data == (out / "growth.png").read_bytes()


def test_the_whole_backbone_report_derives_its_ratio_and_rate_from_its_own_times(suite):
    _, _, reports = suite
    report = reports["whole_backbone"]
    assert "skipped" not in report, report.get("skipped")  # CI has the CUB copy
    rows = report["report"]["precisions"]
    assert rows[0]["amp"] == "off" and ("bf16" in [r["amp"] for r in rows]) == report["report"]["cpu_has_bf16"]
    for row in rows:
        assert row["overhead_ratio"] == pytest.approx(row["engine_seconds_per_step"] / row["bare_seconds_per_step"])
        assert row["gflops_per_second"] == pytest.approx(row["gflop_per_step"] / row["engine_seconds_per_step"])
    parallel = report["report"]["parallel"]
    assert parallel["steps_per_minute_two_runs"] == pytest.approx(sum(60 / s for s in parallel["two_runs_one_thread_seconds_per_step"]))
    assert parallel["faster"] == ("two runs side by side" if parallel["steps_per_minute_two_runs"] > parallel["steps_per_minute_one_run"]
                                  else "one run on two threads")
    kept = report["report"]["allocator"]  # CI runs on glibc
    assert kept["speedup"] == pytest.approx(kept["default"]["seconds_per_step"] / kept["kept"]["seconds_per_step"])
    assert "defaults" in kept["default"]["allocator"] and "kept" in kept["kept"]["allocator"]  # each process did as told


def test_render_only_rewrites_a_reports_markdown_from_its_json_and_measures_nothing(tmp_path, monkeypatch):
    shutil.copy(COMMITTED / "losses.json", tmp_path / "losses.json")
    (tmp_path / "losses.md").write_text("stale\n")
    monkeypatch.setattr(run_all, "run_benchmark", lambda *args, **kwargs: pytest.fail("--render-only ran a benchmark"))
    assert run_all.main(["--render-only", "--only", "losses", "--out-dir", str(tmp_path)]) == 0
    rendered = (tmp_path / "losses.md").read_text()
    assert rendered == run_all.report_markdown(run_all.BENCHMARKS["losses"], json.loads((tmp_path / "losses.json").read_text()))
    assert "| Multi-Similarity | " in rendered and "| multi_similarity |" not in rendered  # a reader's names, not registry keys
    assert "stale" not in (tmp_path / "README.md").read_text()
