"""Reading run records (the JSON files `python -m dmlutils train|baseline` writes).

The book builds every table and curve from these; a loss without a record is shown as
"not run", never as a number. But a chapter that finds no record *at all* for the cpu
profile, whose records ship with the repository, was pointed at the wrong folder: it
raises `RecordsNotFound`, naming the folder it looked in and the commands that make the
records, so a batch run fails instead of rendering a book of "not run". At the paper
profile (records made on a GPU, none shipped) it prints a warning block to stderr and goes on.

Records hold no path of the machine that made them (the data is named by a fingerprint,
`dmlutils.data.data_fingerprint`); `strip_machine_paths` removes those older records held.

Reading sits below training and below planning: this module imports nothing of the
engine, the models or the losses, nor of the manifest, the studies, the runner or the
cache (tests check both). What it needs of them it takes as data or arguments (the
study candidates `load_study` reads), or knows as the results layout it reads. Training
the runs a chapter finds missing is orchestration: `dmlutils.manifest.ensure` /
`dmlutils.orchestration.ensure_studies`.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .provenance import REPO_ROOT

DEFAULT_RESULTS = REPO_ROOT / "results"
# Profiles whose records are committed under results/: finding none of them is an error.
SHIPPED_PROFILES = ("cpu",)
# Profiles whose records a chapter warns about when it finds none (the smoke profile trains its own).
WARNED_PROFILES = ("paper",)


class RecordsNotFound(FileNotFoundError):
    """No run record at all where a chapter looked; the message says where and how to make them."""


class DamagedRecord(ValueError):
    """A file where a record should be that cannot be read as one: not JSON (a write or a
    copy cut short), or without the keys every record of its kind has. The message names
    the file, what is wrong and the command that re-makes it (`remake_command`)."""


# The command that re-makes a record, by its place under the results folder (the table of
# results/README.md), so that reading needs nothing of the planning that knows the runs:
# (pattern of the path's tail, kind of file, command). The first pattern that matches wins.
_REMAKE = (
    # a benchmark's report (benchmarks/run_all.py): its numbers wrapped with their provenance
    (r"benchmarks/(?P<name>[^/.]+)\.json", "benchmark report", 'make bench BENCH_ARGS="--only {name}"'),
    # a run's pictures (dmlutils.pictures): a verification re-run draws them again without touching the record
    (r"(?P<profile>[^/]+)/(?P<name>[^/]+)/seed_(?P<seed>\d+)\.pictures\.json", "pictures file",
     "python -m dmlutils verify --profile {profile} --pictures --runs {name}:{seed}"),
    (r"[^/]+\.pictures\.json", "pictures file", None),  # elsewhere: the command that wrote it
    (r"(?P<profile>[^/]+)/recipe/(?:.+/)?selection\.json", "recipe selection", "python -m dmlutils recipe --profile {profile}"),
    (r"(?P<profile>[^/]+)/recipe/.+\.json", "run record", "python -m dmlutils recipe --profile {profile}"),
    (r"(?P<profile>[^/]+)/study/(?P<loss>[^/]+)/selection\.json", "study selection", "python -m dmlutils study {loss} --profile {profile}"),
    (r"(?P<profile>[^/]+)/study/(?P<loss>[^/]+)/[^/]+\.json", "run record", "python -m dmlutils study {loss} --profile {profile}"),
    (r"(?P<profile>[^/]+)/study/[^/]+\.json", "run record", "python -m dmlutils study --profile {profile}"),
    (r"(?P<profile>[^/]+)/tuned/(?P<loss>[^/]+)/seed_\d+\.json", "run record", "python -m dmlutils study {loss} --profile {profile}"),
    (r"(?P<profile>[^/]+)/baseline/seed_(?P<seed>\d+)\.json", "run record", "python -m dmlutils baseline --profile {profile}{seed_option}"),
    (r"(?P<profile>[^/]+)/(?P<name>[^/]+)/seed_(?P<seed>\d+)\.json", "run record",
     "python -m dmlutils ablation {name} --profile {profile} --seed {seed}"),
    (r"verify/(?P<profile>[^/]+)\.json", "verification report", "python -m dmlutils verify --profile {profile}"),
)
# What every file of a kind holds; a file without one of them cannot be read as its kind.
REQUIRED_KEYS = {
    "run record": ("profile", "profile_version", "config", "evaluations", "final"),
    "study selection": ("profile_version", "scores", "chosen"),
    "recipe selection": ("scores", "records", "chosen", "recipe"),
    "verification report": ("checks", "passed"),
    "pictures file": ("kind", "pictures_version", "queries", "map", "batch"),
    "benchmark report": ("name", "provenance", "report"),
}
PICTURES_SUFFIX = ".pictures.json"  # beside a record: what its run draws, not a record


def is_pictures(path) -> bool:
    return Path(path).name.endswith(PICTURES_SUFFIX)


def _place(path) -> tuple[str, str | None]:
    """(kind of file, the command that re-makes it, or None) of a record at `path`."""
    text = Path(path).as_posix()
    for pattern, kind, command in _REMAKE:
        match = re.search(rf"(?:^|/){pattern}$", text)
        if match is None:
            continue
        if command is None:
            return kind, None
        fields = match.groupdict()
        fields["seed_option"] = f" --set seed={fields['seed']}" if fields.get("seed", "0") != "0" else ""
        command = command.format(**fields)
        results = text[: match.start()] or "."  # the results folder the pattern's tail sits in
        if command.startswith("python -m dmlutils") and Path(results).resolve() != DEFAULT_RESULTS.resolve():
            command += f" --results {results}"
        return kind, command
    return "run record", None


def remake_command(path) -> str | None:
    """The command that re-makes the record at `path` (run from the repository root), from
    its place in the results layout (results/README.md); None for a place it does not know."""
    return _place(path)[1]


def _damaged(path, kind: str, problem: str) -> DamagedRecord:
    command = remake_command(path)
    lines = [f"Damaged {kind} {path}: {problem}."]
    if command:
        lines.append(f"Re-make it, from the repository root: {command}")
    else:
        lines.append("Re-make it with the command that wrote it (results/README.md lists the command of every kind of record).")
    try:
        committed = Path(path).resolve().relative_to(REPO_ROOT)
    except ValueError:
        committed = None
    if committed is not None:
        lines.append(f"If it is a committed record, this restores it instead: git checkout -- {committed.as_posix()}")
    return DamagedRecord("\n".join(lines))


def read_record(path) -> dict:
    """The record (or selection, or verification report) at `path`, checked: a file that is
    not JSON, or lacks a key every file of its kind has (`REQUIRED_KEYS`), raises
    `DamagedRecord` naming the file, what is wrong and the command that re-makes it, never a
    bare decoder error. (The engine writes a record once, finished and atomically; a file
    without `final` was cut short or edited, not left by an interrupted run.)"""
    kind = _place(path)[0]
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _damaged(path, kind, f"it is not UTF-8 text ({error})") from None
    if not text.strip():
        raise _damaged(path, kind, "it is empty")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated"):
            problem = f"it is not valid JSON: it stops mid-way after {len(data):,} bytes, truncated (the decoder: {error})"
        else:
            problem = f"it is not valid JSON (the decoder: {error})"
        raise _damaged(path, kind, problem) from None
    if not isinstance(record, dict):
        raise _damaged(path, kind, f"it holds a JSON {type(record).__name__}, not an object")
    missing = [key for key in REQUIRED_KEYS[kind] if key not in record]
    if missing:
        raise _damaged(path, kind, f"it lacks {', '.join(repr(k) for k in missing)} (every {kind} has {', '.join(REQUIRED_KEYS[kind])})")
    return record


def no_records_message(profile: str, folder) -> str:
    """What a reader needs when a chapter finds no record: where it looked, how to make them."""
    folder = Path(folder).expanduser().resolve()
    state = "holds no finished record (*.json)" if folder.is_dir() else "does not exist"
    lines = [f"No run records at the {profile!r} profile: {folder}/ {state}.", "Make them with"]
    if profile == "cpu":
        lines.append("    make results-cpu        # every run of the manifest (dmlutils/manifest.py), from the repository root")
    lines += [
        f"    python -m dmlutils runs --profile {profile} --only multi_similarity   # one run of the manifest",
        f"    python -m dmlutils runs --profile {profile} --dry-run                 # what is missing, and how long it takes",
    ]
    if (DEFAULT_RESULTS / profile).is_dir() and (DEFAULT_RESULTS / profile).resolve() != folder:
        lines.append(f"The repository's records of this profile are in {DEFAULT_RESULTS / profile}/: pass -p results_dir {DEFAULT_RESULTS}.")
    lines.append(f"In a chapter, a relative results_dir is the repository's ({REPO_ROOT}), wherever papermill runs.")
    return "\n".join(lines)


def check_records_found(profile: str, results_dir=None) -> None:
    """Raise `RecordsNotFound` (profiles in SHIPPED_PROFILES) or warn (WARNED_PROFILES) when
    the profile's folder holds no finished record at all; some records present is fine
    (the tables show the others as "not run")."""
    if profile not in SHIPPED_PROFILES + WARNED_PROFILES:
        return
    folder = Path(results_dir or DEFAULT_RESULTS) / profile
    if load_records(profile, results_dir) or any(read_record(p) for p in folder.glob("*/seed_*.json") if not is_pictures(p)):
        return
    message = no_records_message(profile, folder)
    if profile in SHIPPED_PROFILES:
        raise RecordsNotFound(message)
    banner = "!" * 88
    print(f"{banner}\nWARNING: {message}\nThe tables show every row of this profile as 'not run'.\n{banner}", file=sys.stderr)


def load_records(profile: str, results_dir=None) -> dict[str, dict]:
    """{record name: record} of every record of a profile (name = file stem); a damaged
    one raises `DamagedRecord` (`read_record`)."""
    folder = Path(results_dir or DEFAULT_RESULTS) / profile
    records = {}
    for path in sorted(folder.glob("*.json")):
        record = read_record(path)
        record["_path"] = str(path)
        records[path.stem] = record
    return records


def find_records(profile: str, names, results_dir=None) -> dict[str, dict]:
    """{name: record} of the finished records among `names`, in their order (the others are
    "not run"). When the profile has no record at all, `check_records_found` raises (cpu)
    or warns (paper)."""
    folder = Path(results_dir or DEFAULT_RESULTS)
    existing = load_records(profile, folder)
    if not existing:
        check_records_found(profile, folder)
    return {name: existing[name] for name in names if name in existing}


def learning_curve(record: dict, metric: str = "recall@1") -> tuple[list[int], list[float]]:
    """(iterations, metric values) of a record's evaluations."""
    evaluations = record["evaluations"]
    return [e["iteration"] for e in evaluations], [e["metrics"][metric] for e in evaluations]


def threads_of(record: dict) -> int | None:
    """The CPU threads a run trained on (None where the record does not say): a run's wall
    time depends on them, so the plan's and the cost tables' medians are taken per count."""
    return record.get("environment", {}).get("cpu_threads")


def provenance(record: dict) -> str:
    """One line saying where a record's numbers come from."""
    git = record.get("git", {})
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    return (
        f"{record.get('kind', 'train')} run, profile {record['profile']}, loss {record.get('loss')}, "
        f"seed {record.get('seed')}, commit {str(git.get('commit', 'unknown'))[:10]}{dirty}, "
        f"device {record.get('device')}, {record.get('wall_time_seconds', 0):.0f} s, "
        f"finished {record.get('finished', record.get('started', '?'))}"
    )


def study_dir(results, profile: str, loss: str) -> Path:
    """Where a loss's setting study keeps its records: `<results>/<profile>/study/<loss>/`
    (the layout is the reader's; `dmlutils.studies` writes there)."""
    return Path(results) / profile / "study" / loss


def load_study(profile: str, loss: str, results_dir=None, candidates=None) -> dict:
    """A loss's setting study (dmlutils.studies): {"validation": {setting: record},
    "selection": the choice or None, "tuned": {seed: the chosen setting's test record} or
    None}, each only if made under the profile's current version.

    `candidates`: the settings to read (the planner's, `dmlutils.studies.study(loss)`, as
    `orchestration.ensure_studies` passes them); None reads every setting record the
    study's folder holds. Reading takes them as data: it imports nothing of the planning."""
    results = Path(results_dir or DEFAULT_RESULTS)
    folder = study_dir(results, profile, loss)

    def read(path):
        path = Path(path)
        if not path.exists():
            return None
        record = read_record(path)
        return record if is_current(record, profile) else None

    if candidates is None:
        candidates = [path.stem for path in sorted(folder.glob("*.json")) if path.name != "selection.json"]
    validation = {name: read(folder / f"{name}.json") for name in candidates}
    selection = read(folder / "selection.json")
    tuned = {int(seed): read(results / path) for seed, path in (selection or {}).get("test_records", {}).items()}
    return {
        "validation": {name: r for name, r in validation.items() if r is not None},
        "selection": selection,
        "tuned": {seed: r for seed, r in sorted(tuned.items()) if r is not None} or None,
    }


def load_studies(profile: str, losses, results_dir=None, candidates=None) -> dict[str, dict]:
    """{loss: load_study(...)} of several losses' setting studies (`candidates`: {loss:
    its settings}, as `load_study` takes them; None: what each folder holds)."""
    return {loss: load_study(profile, loss, results_dir, (candidates or {}).get(loss)) for loss in losses}


def load_validation_runs(profile: str, results_dir=None) -> dict[str, dict]:
    """The runs beside the studies on their held-out classes, {name: record}: every record
    at `<results>/<profile>/study/<name>.json` (the studies write the baseline and the
    reference MS run there), those made under the profile's current version."""
    found = {}
    for path in sorted((Path(results_dir or DEFAULT_RESULTS) / profile / "study").glob("*.json")):
        if is_current(record := read_record(path), profile):
            found[path.stem] = record
    return found


def is_current(record: dict, profile: str) -> bool:
    """Whether a record (or a study's selection) was made under the profile's current
    version: a table never shows an older version's records beside the current ones."""
    from .profiles import PROFILE_VERSIONS

    return record.get("profile_version", 1) == PROFILE_VERSIONS[profile]


# --- no paths of the machine that made a record -------------------------------------------

# An absolute path: POSIX (/...), home (~/...) or a Windows drive (C:\\... or C:/...).
_ABSOLUTE = re.compile(r"(?:^|(?<=[\s'\"(=:,]))(?:~/|/(?=[\w.~-])|[A-Za-z]:[\\/])[^\s'\"(),;]*")


def machine_paths(record, where: str = "") -> list[tuple[str, str]]:
    """(JSON path, string) of every string in a record that is or holds an absolute path."""
    found = []
    if isinstance(record, dict):
        for key, value in record.items():
            found += machine_paths(value, f"{where}.{key}" if where else str(key))
    elif isinstance(record, list):
        for i, value in enumerate(record):
            found += machine_paths(value, f"{where}[{i}]")
    elif isinstance(record, str) and _ABSOLUTE.search(record):
        found.append((where, record))
    return found


def _is_path(value) -> bool:
    return isinstance(value, str) and bool(_ABSOLUTE.fullmatch(value.strip()))


def _portable(path: str) -> str:
    """An absolute path inside a text (e.g. a command line), written without this machine:
    relative to the repository when inside it, else `<tmp>/...` or `<local>/<name>`."""
    import tempfile

    for base, prefix in ((REPO_ROOT, ""), (Path(tempfile.gettempdir()), "<tmp>/"), (Path("/tmp"), "<tmp>/")):
        try:
            return prefix + Path(path).relative_to(base).as_posix()
        except ValueError:
            continue
    return "<local>/" + re.split(r"[\\/]", path.rstrip("/\\"))[-1]


def strip_machine_paths(record):
    """A copy of `record` without paths of the machine that made it: an entry whose value is
    an absolute path (e.g. the `data.root` of older records) is dropped; an absolute path
    inside a longer string (a command line) is made relative to the repository, or to
    `<tmp>` or `<local>` (see `_portable`)."""
    if isinstance(record, dict):
        return {k: strip_machine_paths(v) for k, v in record.items() if not _is_path(v)}
    if isinstance(record, list):
        return [strip_machine_paths(v) for v in record if not _is_path(v)]
    if isinstance(record, str):
        return _ABSOLUTE.sub(lambda m: _portable(m.group(0)), record)
    return record


def strip_machine_paths_in(folder=None) -> list[Path]:
    """Rewrite every JSON file under `folder` (default results/) that holds a machine path,
    with `strip_machine_paths` (atomically, in the records' own format); the files changed."""
    from .provenance import write_json

    changed = []
    for path in sorted(Path(folder or DEFAULT_RESULTS).rglob("*.json")):
        data = json.loads(path.read_text())
        if machine_paths(data):
            write_json(path, strip_machine_paths(data))
            changed.append(path)
    return changed
