"""Command line: `python -m dmlutils train|ablation|study|recipe|runs|verify|cache|baseline|profiles|download|book ...`.

    python -m dmlutils train --profile cpu --loss multi_similarity --set loss.beta=50 --set iterations=300
    python -m dmlutils train --profile cpu --loss multi_similarity --resume
    python -m dmlutils ablation ms_no_mining --profile cpu
    python -m dmlutils baseline --profile cpu
    python -m dmlutils study [contrastive ...] --profile cpu --processes 2
    python -m dmlutils recipe --processes 2
    python -m dmlutils recipe --profile cpu_full
    python -m dmlutils runs --profile cpu --processes 2 [--only group:beta] [--dry-run]
    python -m dmlutils verify --profile cpu [--runs multi_similarity:0]
    python -m dmlutils cache --profile cpu --set seed=1
    python -m dmlutils profiles
    python -m dmlutils download [--root DATA_ROOT]
    python -m dmlutils book --profile smoke
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .profiles import PROFILES, make_config, parse_set_arguments


def _record_path(args, name: str, seed: int = 0) -> Path:
    """--record, else the run's place in the manifest layout: results/<profile>/<name>/seed_<n>.json."""
    from .manifest import record_path

    if args.record:
        return Path(args.record)
    return record_path(args.results, args.profile, name, seed)


def resume_command(argv=None) -> str:
    """The command line that continues this one's run: the same arguments, with --resume."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", "dmlutils", *args, *([] if "--resume" in args else ["--resume"])])


def _download(root) -> int:
    """Fetch CUB-200-2011 into the data root (a copy already there is kept); the exit status."""
    from .data import CUB200, ChecksumError, DownloadError, cub_found, resolve_data_root

    target = resolve_data_root(root)
    if cub_found(root):
        print(f"CUB-200-2011 is already under {target}: nothing to fetch.")
        return 0
    try:
        CUB200(root, split="train", download=True)  # the archive's MD5 is checked before it is unpacked
    except (ChecksumError, DownloadError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"CUB-200-2011 is under {target / CUB200.folder}; `make book` now shows chapter 1's figures too.")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmlutils", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p, one_record=True):
        p.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile setting, or loss.<hparam>")
        p.add_argument("--root", default=None, help="data root (default: $DML_DATA, else ./data)")
        p.add_argument("--results", default="results", help="folder of run records (default: results/)")
        if one_record:  # a study writes many records, each at its own place under --results
            p.add_argument("--record", default=None, help="write the run record here instead of results/<profile>/<name>/seed_<n>.json")
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")

    train_parser = commands.add_parser("train", help="train one loss and write its run record")
    common(train_parser)
    train_parser.add_argument("--loss", default="multi_similarity")
    train_parser.add_argument("--name", default=None, help="record name (default: the loss name)")
    train_parser.add_argument("--run-dir", default=None, help="checkpoint folder (default: runs/<profile>/<name>)")
    train_parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    train_parser.add_argument("--same-code", action="store_true", help="with --resume: refuse a checkpoint written by other code")
    train_parser.add_argument("--quiet", action="store_true", help="no progress bars")

    ablation_parser = commands.add_parser("ablation", help="train one run of the run manifest by name (dmlutils.manifest)")
    common(ablation_parser)
    ablation_parser.add_argument("name", help="e.g. ms_no_mining; see dmlutils/manifest.py")
    ablation_parser.add_argument("--seed", type=int, default=0)
    ablation_parser.add_argument("--resume", action="store_true")
    ablation_parser.add_argument("--same-code", action="store_true", help="with --resume: refuse a checkpoint written by other code")
    ablation_parser.add_argument("--quiet", action="store_true")

    study_parser = commands.add_parser("study", help="choose losses' settings on held-out training classes, then train them (dmlutils.studies)")
    common(study_parser, one_record=False)
    study_parser.add_argument("loss", nargs="*", help="losses with a study in dmlutils/studies.py (default: every one the manifest runs at --profile)")
    study_parser.add_argument("--processes", type=int, default=1, help="runs side by side, one thread each (default: 1)")
    study_parser.add_argument("--runs", default="runs", help="folder of checkpoints (default: runs/)")
    study_parser.add_argument("--quiet", action="store_true")

    recipe_parser = commands.add_parser("recipe", help="choose a profile's recipe on held-out training classes (dmlutils.recipe)")
    recipe_parser.add_argument("--profile", default="cpu", choices=["cpu", "cpu_full"], help="whose recipe (default: cpu)")
    recipe_parser.add_argument("--root", default=None, help="data root (default: $DML_DATA, else ./data)")
    recipe_parser.add_argument("--results", default="results", help="folder of run records (default: results/)")
    recipe_parser.add_argument("--runs", default="runs", help="folder of checkpoints (default: runs/)")
    recipe_parser.add_argument("--processes", type=int, default=1, help="runs side by side, one thread each (default: 1)")

    runs_parser = commands.add_parser("runs", help="run every missing record of the book's run manifest (dmlutils.manifest)")
    runs_parser.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
    runs_parser.add_argument("--root", default=None, help="data root (default: $DML_DATA, else ./data)")
    runs_parser.add_argument("--results", default="results", help="folder of run records (default: results/)")
    runs_parser.add_argument("--runs", default="runs", help="folder of checkpoints (default: runs/)")
    runs_parser.add_argument("--processes", type=int, default=1, help="runs side by side, one thread each (default: 1)")
    runs_parser.add_argument("--only", action="append", default=None, metavar="NAME", help="a run name, or group:<group>; repeatable")
    runs_parser.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate, run nothing")

    verify_parser = commands.add_parser("verify", help="re-train committed records from scratch and compare (dmlutils.verify)")
    verify_parser.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
    verify_parser.add_argument("--runs", action="append", default=None, metavar="NAME[:SEED]", help="a manifest run (default: multi_similarity:0); repeatable")
    verify_parser.add_argument("--root", default=None, help="data root (default: $DML_DATA, else ./data)")
    verify_parser.add_argument("--results", default="results", help="folder of run records (default: results/)")
    verify_parser.add_argument("--fresh-cache", action="store_true", help="rebuild the activation cache too, in a temporary folder")
    verify_parser.add_argument("--no-report", action="store_true", help="do not write results/verify/<profile>.json/.md")
    verify_parser.add_argument("--pictures", action="store_true", help="keep the re-run's pictures beside the committed record when it matches")

    cache_parser = commands.add_parser("cache", help="build the activation cache of a profile (and --set overrides) ahead of its runs")
    common(cache_parser)

    baseline_parser = commands.add_parser("baseline", help="evaluate the pretrained backbone's pooled features")
    common(baseline_parser)

    commands.add_parser("profiles", help="print the profiles and their settings")

    download_parser = commands.add_parser("download", help="fetch CUB-200-2011 (about 1.1 GB, MD5-checked) into the data root")
    download_parser.add_argument("--root", default=None, help="data root (default: $DML_DATA, else ./data)")

    from .book import add_book_arguments, run_book_command

    book_parser = commands.add_parser("book", help="execute every chapter with papermill and build the book")
    add_book_arguments(book_parser)

    args = parser.parse_args(argv)
    if args.command == "book":
        return run_book_command(args)
    try:
        if args.command == "profiles":
            print(json.dumps(PROFILES, indent=2, default=list))
            return 0
        if args.command == "download":
            return _download(args.root)
        from . import engine

        if args.command == "verify":
            from .verify import DEFAULT_RUNS, verify

            report = verify(args.profile, args.runs or DEFAULT_RUNS, args.results, args.root, fresh_cache=args.fresh_cache,
                            report_dir=None if args.no_report else Path(args.results) / "verify", pictures=args.pictures)
            return 0 if report["passed"] else 1
        if args.command == "cache":
            path = engine.prepare_cache(make_config(args.profile, "multi_similarity", parse_set_arguments(args.set)), root=args.root)
            print(f"activation cache ready: {path.name}")
            return 0
        if args.command == "runs":
            from .manifest import run_manifest

            run_manifest(args.profile, args.results, args.runs, args.processes, args.root, args.only, args.dry_run)
            return 0
        if args.command == "recipe":
            from .recipe import run_recipe_study

            recipe = run_recipe_study(args.results, args.runs, processes=args.processes, root=args.root, profile=args.profile)
            print("recipe: " + ", ".join(f"{k}={v}" for k, v in recipe.items()))
            return 0
        if args.command == "study":
            from .studies import run_studies, studied_losses

            selections = run_studies(
                args.loss or studied_losses(args.profile), args.profile, args.results, args.runs, processes=args.processes, root=args.root,
                device=args.device, progress=not args.quiet, extra_overrides=parse_set_arguments(args.set),
            )
            for loss, selection in selections.items():
                scores = ", ".join(f"{k}={v:.4f}" for k, v in selection["scores"].items())
                print(f"{loss}: validation {scores}; chose {selection['chosen']}; test records {', '.join(selection['test_records'].values())}")
            return 0
        if args.command in ("train", "ablation"):
            if args.command == "ablation":
                from .manifest import run as manifest_run

                entry = manifest_run(args.name)
                if entry.loss is None:
                    raise ValueError(f"{args.name} is not a training run; use: python -m dmlutils baseline --profile {args.profile}")
                loss = entry.loss
                overrides = {**{k: str(v) for k, v in entry.overrides.items()}, "seed": str(args.seed), **parse_set_arguments(args.set)}
                name, run_dir = args.name, Path("runs") / args.profile / args.name / f"seed_{args.seed}"
            else:
                loss, overrides = args.loss, parse_set_arguments(args.set)
                name, run_dir = args.name or args.loss, args.run_dir
            config = make_config(args.profile, loss, overrides)
            run_dir = run_dir or Path("runs") / args.profile / name
            record_path = _record_path(args, name, config["seed"])
            try:
                record = engine.train(config, run_dir, resume=args.resume, root=args.root, record_path=record_path,
                                      progress=not args.quiet, device=args.device, same_code=args.same_code)
            except engine.RunInterrupted as stopped:
                print(f"interrupted at step {stopped.step} of {config['iterations']}; the checkpoint is in {stopped.run_dir}. "
                      f"Resume with:\n  {resume_command(argv)}", file=sys.stderr)
                return 130
        else:
            config = make_config(args.profile, "multi_similarity", parse_set_arguments(args.set))
            record_path = _record_path(args, "baseline", config["seed"])
            record = engine.baseline(config, root=args.root, record_path=record_path, device=args.device)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stopped:  # engine.RunInterrupted, or a second Ctrl-C
        what = str(stopped) or "interrupted"
        # a batch (runs, recipe, study, verify) skips finished records and resumes its checkpoints when run again
        print(f"{what}\nRun the same command again to continue:\n  {shlex.join(['python', '-m', 'dmlutils', *(sys.argv[1:] if argv is None else argv)])}",
              file=sys.stderr)
        return 130
    final = record.get("final", {})
    summary = ", ".join(f"{k}={v:.4f}" for k, v in final.items() if k != "iteration")
    print(f"wrote {record_path}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
