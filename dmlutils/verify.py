"""Verification re-runs: train committed records again from scratch and compare.

    python -m dmlutils verify --profile cpu                      # MS loss, seed 0
    python -m dmlutils verify --profile cpu --runs npair:1 --runs baseline

Each named record (`<manifest run>[:<seed>]`) is trained again with the settings stored
in the manifest, into a temporary folder, and its final metrics are compared with the
committed record's. On the machine and thread count that made the record the re-run is
bit-identical (every random draw is seeded); elsewhere floating-point summation order
differs and the result drifts within `TOLERANCE`. The command prints a table (record,
committed, re-run, difference, verdict), writes the report to
`results/verify/<profile>.json` and `.md` (the book's appendix shows the last one), and
exits non-zero if any record falls outside the tolerance.

`--pictures` keeps what the re-run draws (`dmlutils.pictures`): when it matches the
committed record, its pictures file goes beside that record, naming the re-run's commit
and the verdict. That is how a record made before runs drew pictures gets them.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")
TOLERANCE = 0.01  # |difference| of a metric in [0, 1] (one Recall@1 point) off the recording machine
DEFAULT_RUNS = ("multi_similarity:0",)


def parse(spec: str) -> tuple[str, int]:
    name, _, seed = spec.partition(":")
    try:
        return name, int(seed) if seed else 0
    except ValueError:
        raise ValueError(f"a run to verify is <name>[:<seed>], got {spec!r}") from None


def same_machine(record: dict) -> bool:
    """Whether this process runs where the record was made (platform, versions, threads)."""
    from .provenance import environment

    here, there = environment(), record.get("environment", {})
    return all(here.get(k) == there.get(k) for k in ("platform", "torch", "python", "cpu_threads"))


def compare(committed: dict, rerun: dict, tolerance: float, identical_expected: bool) -> dict:
    rows, worst = [], 0.0
    for metric in METRICS:
        if metric not in committed["final"]:
            continue
        a, b = float(committed["final"][metric]), float(rerun["final"][metric])
        worst = max(worst, abs(b - a))
        rows.append({"metric": metric, "committed": a, "rerun": b, "difference": b - a})
    identical = worst == 0.0
    if identical:
        verdict = "identical"
    elif worst <= tolerance and not identical_expected:
        verdict = "within tolerance"
    else:
        verdict = "MISMATCH"
    return {"metrics": rows, "largest_difference": worst, "verdict": verdict}


def verify(profile: str = "cpu", specs=DEFAULT_RUNS, results="results", root=None, tolerance: float = TOLERANCE,
           fresh_cache: bool = False, report_dir=None, echo=print, pictures: bool = False) -> dict:
    from . import engine, manifest
    from .pictures import pictures_path, write_pictures
    from .provenance import atomic_write_bytes

    checks = []
    with tempfile.TemporaryDirectory(prefix="dmlutils_verify_") as tmp:
        previous_cache = os.environ.get("DML_CACHE")
        if fresh_cache:
            os.environ["DML_CACHE"] = str(Path(tmp) / "cache")
        try:
            for spec in specs:
                name, seed = parse(spec)
                entry = manifest.run(name)
                config = manifest.config_of(entry, profile, seed)
                path = manifest.record_path(results, profile, name, seed)
                committed = manifest.valid_record(path, config)
                if committed is None:
                    raise FileNotFoundError(
                        f"no valid committed record of {name} seed {seed} at the {profile!r} profile ({path}); "
                        f"make it with: python -m dmlutils runs --profile {profile} --only {name}"
                    )
                echo(f"re-training {name} seed {seed} from scratch ...")
                drawn = Path(tmp) / "records" / name / f"seed_{seed}.json" if pictures else None
                if entry.kind == "baseline":
                    rerun = engine.baseline(config, root=root, progress=False, record_path=drawn)
                else:
                    rerun = engine.train(config, Path(tmp) / name / str(seed), root=root, progress=True, record_path=drawn)
                expected = same_machine(committed)
                result = compare(committed, rerun, tolerance, identical_expected=expected)
                if drawn is not None and result["verdict"] != "MISMATCH":
                    kept = json.loads(pictures_path(drawn).read_text())
                    kept["verified"] = {"record_git": committed["git"], "verdict": result["verdict"],
                                        "largest_difference": result["largest_difference"]}
                    write_pictures(path, kept)
                    echo(f"pictures of the re-run ({result['verdict']}) written to {pictures_path(path)}")
                checks.append({"record": f"{name} seed {seed}", "path": str(Path(path).relative_to(results)) if Path(path).is_relative_to(results) else str(path),
                               "same_machine": expected, "rerun_seconds": rerun.get("wall_time_seconds"), **result})
        finally:
            if fresh_cache:
                if previous_cache is None:
                    os.environ.pop("DML_CACHE", None)
                else:
                    os.environ["DML_CACHE"] = previous_cache
    report = {
        "profile": profile,
        "tolerance": tolerance,
        "fresh_cache": fresh_cache,
        "checks": checks,
        "passed": all(c["verdict"] != "MISMATCH" for c in checks),
        "git": engine.code_version(),
        "environment": engine.environment(),
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    text = markdown(report)
    echo(text)
    if report_dir is not None:
        folder = Path(report_dir)
        engine.write_json(folder / f"{profile}.json", report)
        atomic_write_bytes(folder / f"{profile}.md", lambda f: f.write((text + "\n").encode()))
    return report


def markdown(report: dict) -> str:
    lines = [
        "| record | metric | committed | re-run | difference | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    for check in report["checks"]:
        for i, row in enumerate(check["metrics"]):
            lines.append(
                f"| {check['record'] if i == 0 else ''} | {row['metric']} | {row['committed']:.4f} | {row['rerun']:.4f} "
                f"| {row['difference']:+.4f} | {check['verdict'] if i == 0 else ''} |"
            )
    where = ", ".join(f"{c['record']}: {'the machine that made it' if c['same_machine'] else 'another machine or thread count'}" for c in report["checks"])
    lines += ["", f"Profile {report['profile']}; re-run on {where}. Identical results are expected on the recording "
              f"machine; elsewhere a difference of at most {report['tolerance']:.2f} per metric is accepted. "
              f"{'Activation cache rebuilt from scratch.' if report['fresh_cache'] else 'Activation cache reused (it depends only on the data, the frozen backbone and the seed).'} "
              f"Verdict: {'passed' if report['passed'] else 'FAILED'}."]
    return "\n".join(lines)


def load_report(profile: str, results="results") -> dict | None:
    """The last verification report of `profile`, or None; a damaged one raises
    `records.DamagedRecord`, naming it and the command that re-makes it."""
    from .records import read_record

    path = Path(results) / "verify" / f"{profile}.json"
    return read_record(path) if path.exists() else None
