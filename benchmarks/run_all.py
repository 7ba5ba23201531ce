"""Run every benchmark and write its report: results/benchmarks/<name>.json + <name>.md.

    python benchmarks/run_all.py                       # the full suite, 1 thread (~12 min)
    python benchmarks/run_all.py --only losses,growth  # some of them
    python benchmarks/run_all.py --small --out-dir /tmp/bench   # tiny sizes, a minute
    python benchmarks/run_all.py --render-only         # re-write each <name>.md from its JSON, measuring nothing

Benchmarks (each a script in benchmarks/, runnable on its own):

    losses   forward + backward of the nine losses; MS vs the official per-anchor loop
             vs pytorch-metric-learning (bench_losses.py)
    growth   loss time vs batch size 40..1280, evaluation time vs gallery 1k..64k,
             fitted log-log exponents and a plot, growth.png (bench_growth.py)
    metrics  Recall@K / MAP@R of 60,502 and 11,000 embeddings vs faiss and
             scikit-learn: time and peak RSS, each method in its own process (bench_metrics.py)
    engine   the cpu profile: training iterations/s on cached activations, evaluation
             time, activation-cache build rate and projected full build (bench_engine.py)
    data     decode + augment images/s of the CUB loader, 0/1/2 workers (bench_data.py)
    models   EfficientNet-Lite0 forward images/s (bench_models.py)
    whole_backbone  the cpu_full step on decoded images: float32 vs bf16, overhead over the bare
             step, GFLOP/s, one run on two threads vs two on one (bench_whole_backbone.py)

Each benchmark runs in its own process with OMP_NUM_THREADS = MKL_NUM_THREADS =
--threads (default 1: per-core numbers, comparable between machines, and a 2-core
machine shared with other work is not oversubscribed). Its JSON report is the
script's own report under "report", beside "provenance": git commit and whether the
tree had uncommitted changes, library versions, threads, CPU model, load average
before and after, date, wall time, the command (paths relative to the repository
root; a temporary or outside folder as a placeholder: `<tmp>`, `<out-dir>`); and the
peak RSS of the benchmark's process. The markdown file, made from the JSON report,
holds a provenance sentence and the script's tables. README.md in the output folder
gathers every report present there (and the growth plot). Files are written
atomically; a benchmark that fails leaves its previous report in place and makes the
exit status non-zero. Benchmarks that need CUB-200-2011 (data; the engine's cache
build) say so in their report when it is not found.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, provenance, provenance_line, write_json_atomically, write_text_atomically  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = REPO / "results" / "benchmarks"
SMALL_OUT_DIR = REPO / "_build" / "benchmarks-small"  # never over the real reports


@dataclass
class Benchmark:
    name: str
    title: str
    script: str
    full_args: list[str]
    small_args: list[str]
    markdown: object  # report -> markdown text (imported lazily: the scripts import torch)
    threads_flag: bool = False  # the script takes --threads (else it follows OMP_NUM_THREADS)
    needs_cub: bool = False
    extra_outputs: list[str] = field(default_factory=list)  # files the script writes beside its JSON


def _losses_markdown(report):
    import bench_losses

    return bench_losses.markdown(report)


def _growth_markdown(report):
    import bench_growth

    return bench_growth.markdown(report)


def _metrics_markdown(report):
    import bench_metrics

    config = report["config"]
    return (
        "Synthetic clustered embeddings; each method evaluated in its own process on the same data. "
        "Time: the evaluation only (data loaded before); eval. RSS increase: the peak RSS during the "
        f"evaluation above the RSS before it. Our chunk memory budget: {config['memory_budget_mib']:.0f} MiB; "
        f"faiss searched in blocks of {config['faiss_query_block']:,} queries; fastest of {config['repeats']} run(s).\n\n"
        + bench_metrics.markdown_table(report["cases"])
    )


def _engine_markdown(report):
    import bench_engine

    return bench_engine.markdown(report)


def _data_markdown(report):
    import bench_data

    return (
        f"Decode + training augmentation of {report['num_images']} CUB training images (batches of "
        f"{report['batch_size']}), files read once before timing; worker start-up included.\n\n"
        + bench_data.markdown_table(report)
    )


def _models_markdown(report):
    import bench_models

    return bench_models.markdown(report)


def _whole_backbone_markdown(report):
    import bench_whole_backbone

    return bench_whole_backbone.markdown(report)


BENCHMARKS = {
    b.name: b
    for b in [
        Benchmark("losses", "Losses: forward + backward time", "bench_losses.py",
                  ["--batch", "80", "1000", "--min-run-time", "1.0"],
                  ["--batch", "10", "--dim", "8", "--min-run-time", "0.01"],
                  _losses_markdown, threads_flag=True),
        Benchmark("growth", "Cost growth with batch and gallery size", "bench_growth.py",
                  [], ["--small"], _growth_markdown, threads_flag=True, extra_outputs=["growth.png"]),
        Benchmark("metrics", "Retrieval metrics vs faiss and scikit-learn: time and peak RSS", "bench_metrics.py",
                  # --small on one case: it still runs all three methods, in fewer processes
                  [], ["--small", "--cases", "cub_like"], _metrics_markdown),
        Benchmark("engine", "The cpu profile: training step, evaluation, activation cache", "bench_engine.py",
                  ["--losses", "all"], ["--small"], _engine_markdown, threads_flag=True),
        Benchmark("data", "Data loading: decode + augment", "bench_data.py",
                  [], ["--num-images", "16", "--workers", "0", "1"], _data_markdown, needs_cub=True),
        Benchmark("models", "EfficientNet-Lite0 forward speed", "bench_models.py",
                  [], ["--small"], _models_markdown, threads_flag=True),
        # its own thread counts: the cpu_full profile runs on both cores (and it compares that with two runs of one)
        Benchmark("whole_backbone", "The cpu_full profile: the whole backbone's step on decoded images", "bench_whole_backbone.py",
                  [], ["--small"], _whole_backbone_markdown, needs_cub=True),
    ]
}


def benchmark_command(bench: Benchmark, small: bool, threads: int, json_path: Path, out_dir: Path) -> list[str]:
    command = [sys.executable, str(HERE / bench.script), *(bench.small_args if small else bench.full_args)]
    if bench.threads_flag:
        command += ["--threads", str(threads)]
    command += ["--out", str(json_path)]
    if bench.name == "growth":
        command += ["--plot", str(out_dir / "growth.png")]
    return command


def display_command(command: list[str], out_dir: Path | None = None, scratch: Path | None = None) -> str:
    """The command as one would type it from the repository root, naming no folder of this
    machine: the interpreter as `python`; a path inside the repository relative to its root;
    one in `scratch` (the temporary folder that receives a script's raw JSON) as `<tmp>/...`;
    one in an output folder `out_dir` outside the repository as `<out-dir>/...`; any other
    absolute path as `<tmp>/...` when in the temporary folder, else `<local>/<its name>`."""
    return " ".join(["python", *(_display_argument(part, out_dir, scratch) for part in command[1:])])


def _display_argument(part: str, out_dir: Path | None, scratch: Path | None) -> str:
    if part.startswith("--") and "=" in part:  # --option=/a/path
        option, value = part.split("=", 1)
        return f"{option}={_display_argument(value, out_dir, scratch)}"
    path = Path(part)
    if not path.is_absolute():
        return part
    for base, prefix in ((scratch, "<tmp>/"), (REPO, ""), (out_dir, "<out-dir>/"), (Path(tempfile.gettempdir()), "<tmp>/")):
        if base is None:
            continue
        for candidate, root in ((path, Path(base)), (path.resolve(), Path(base).resolve())):  # e.g. /tmp -> /private/tmp
            if candidate.is_relative_to(root):
                return (prefix + candidate.relative_to(root).as_posix()).rstrip("/") or "."
    return "<local>/" + path.name


def run_benchmark(bench: Benchmark, out_dir: Path, small: bool, threads: int, suite_command: str,
                  data_root: str | None) -> dict:
    """Run one benchmark in its own process; write <name>.json and <name>.md; return the report."""
    with tempfile.TemporaryDirectory(prefix=f"bench_{bench.name}_") as scratch:
        # The script's raw outputs go to scratch; only the wrapped reports reach out_dir.
        wrapped = _run_and_wrap(bench, out_dir, small, threads, suite_command, data_root, Path(scratch) / "raw.json")
    return wrapped


def _run_and_wrap(bench, out_dir, small, threads, suite_command, data_root, json_path) -> dict:
    from dmlutils.data import cub_found
    from dmlutils.records import strip_machine_paths

    load_before = os.getloadavg()
    started = time.perf_counter()
    command = benchmark_command(bench, small, threads, json_path, out_dir)
    shown = display_command(command, out_dir, scratch=json_path.parent)
    wrapped = {"name": bench.name, "title": bench.title, "small": small, "suite_command": suite_command}
    if bench.needs_cub and not cub_found(data_root):
        where = data_root or os.environ.get("DML_DATA") or "./data"
        wrapped["skipped"] = f"CUB-200-2011 not found under {where} (set DML_DATA)"
        wrapped["provenance"] = provenance(shown, load_before, started, threads)
    else:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        if data_root:
            env["DML_DATA"] = str(data_root)
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
        stdout = process.stdout.read()  # the script's own printout (its tables); kept out of the way
        # wait4, not wait, for the child's resource usage: on Linux its ru_maxrss is the largest peak
        # RSS of the child and of the processes it waited for (metric workers, DataLoader workers).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"benchmark {bench.name!r} failed (exit status {process.returncode}): "
                               f"{shown}\n{stdout[-2000:]}")
        report = json.loads(json_path.read_text())
        wrapped["provenance"] = provenance(shown, load_before, started, threads)
        wrapped["peak_rss_mib_benchmark_process"] = round(usage.ru_maxrss / 1024, 1)
        wrapped["report"] = report
    # Reports, like run records, hold no path of this machine; the markdown is made from what is stored.
    wrapped = strip_machine_paths(wrapped)
    write_json_atomically(out_dir / f"{bench.name}.json", wrapped)
    write_text_atomically(out_dir / f"{bench.name}.md", report_markdown(bench, wrapped))
    return wrapped


def report_markdown(bench: Benchmark, wrapped: dict) -> str:
    """<name>.md of a wrapped report: a provenance sentence, then the benchmark's tables (or
    why it was skipped). Made from the JSON report alone, so the two always agree."""
    prov = wrapped["provenance"]
    busy = prov["load_average_before"][0] > prov["threads"]["torch_threads"] + 0.5
    body = f"*Skipped:* {wrapped['skipped']}." if "skipped" in wrapped else bench.markdown(wrapped["report"])
    lines = [
        f"**{bench.title}.** " + provenance_line(prov)
        + (f" Largest peak RSS of the benchmark's processes (its own and the workers it started): "
           f"{wrapped['peak_rss_mib_benchmark_process']:.0f} MiB."
           if "peak_rss_mib_benchmark_process" in wrapped else "")
        + (" The load average exceeded the thread count: other processes shared the cores, so times are "
           "pessimistic (ratios from the same run hold better)." if busy else ""),
        "",
        body,
    ]
    return "\n".join(lines) + "\n"


def write_readme(out_dir: Path) -> Path:
    """README.md gathering every <name>.md present in out_dir, in the suite's order."""
    known = [name for name in BENCHMARKS if (out_dir / f"{name}.md").exists()]
    others = sorted(p.stem for p in out_dir.glob("*.md") if p.stem not in BENCHMARKS and p.name != "README.md")
    parts = [
        "# Benchmark reports",
        "",
        "Written by `python benchmarks/run_all.py` (`make bench`); each report's first sentence says which "
        "commit, libraries, threads and machine made it, and the load on the machine. Numbers are read from "
        "the JSON files beside this one; nothing here is typed by hand. Absolute times depend on the machine; "
        "ratios measured in the same run hold better.",
    ]
    for name in known + others:
        title = BENCHMARKS[name].title if name in BENCHMARKS else name
        parts += ["", f"## {title}", "", f"`{name}.json`", "", (out_dir / f"{name}.md").read_text().rstrip()]
        if name == "growth" and (out_dir / "growth.png").exists():
            parts += ["", "![Cost growth, log-log](growth.png)"]
    path = out_dir / "README.md"
    write_text_atomically(path, "\n".join(parts) + "\n")
    return path


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(BENCHMARKS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"--only: unknown benchmark(s) {unknown or text!r}; choose from {', '.join(BENCHMARKS)}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--small", action="store_true",
                        help=f"tiny sizes, seconds each: checks the code runs (default output {SMALL_OUT_DIR.relative_to(REPO)})")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per benchmark (default 1)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where the reports go (default {DEFAULT_OUT_DIR.relative_to(REPO)})")
    parser.add_argument("--data-root", default=None, help="folder holding CUB_200_2011/ (default $DML_DATA, else ./data)")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: re-write each report's markdown (and README.md) from its JSON, after a change to how reports are written")
    args = parser.parse_args(argv)
    try:
        names = parse_only(args.only)
    except ValueError as error:
        parser.error(str(error))
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    out_dir = (args.out_dir or (SMALL_OUT_DIR if args.small else DEFAULT_OUT_DIR)).resolve()
    if args.render_only:
        for name in names:
            report = out_dir / f"{name}.json"
            if report.is_file():
                wrapped = json.loads(report.read_text())
                write_text_atomically(out_dir / f"{name}.md", report_markdown(BENCHMARKS[name], wrapped))
                if name == "growth" and "report" in wrapped:  # its plot is made from the report too
                    import bench_growth

                    bench_growth.plot(wrapped["report"], out_dir / "growth.png")
                print(f"{name}: rendered {out_dir / (name + '.md')} from its JSON", file=sys.stderr)
        print(f"wrote {write_readme(out_dir)}", file=sys.stderr)
        return 0
    suite_command = display_command([sys.executable, str(HERE / "run_all.py"), *(sys.argv[1:] if argv is None else argv)])

    from tqdm import tqdm

    failures = []
    bar = tqdm(names, desc="benchmarks", file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        started = time.perf_counter()
        try:
            run_benchmark(BENCHMARKS[name], out_dir, args.small, args.threads, suite_command, args.data_root)
            tqdm.write(f"{name}: done in {time.perf_counter() - started:.0f} s -> {out_dir / (name + '.md')}", file=sys.stderr)
        except Exception as error:  # one broken benchmark must not cost the others' reports
            failures.append(name)
            tqdm.write(f"{name}: FAILED after {time.perf_counter() - started:.0f} s: {error}", file=sys.stderr)
    readme = write_readme(out_dir)
    print(f"wrote {readme}", file=sys.stderr)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
