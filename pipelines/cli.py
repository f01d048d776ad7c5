"""The ``mora`` command: every pipeline stage on one machine, without Airflow.

Examples::

    mora run configs/us_counties.yaml             # every stage, then the benchmark table
    mora ingest configs/us_counties.yaml           # zones, rasters, mobility, POIs, census
    mora ingest configs/nyc_manhattan.yaml --modality mobility \
        --start 2015-07-01 --end 2015-08-01        # the trip files of July 2015 only
    mora train configs/us_counties.yaml --resume   # continue from the last checkpoint
    mora benchmark configs/us_counties.yaml --ablations   # every baseline and ablation
    mora scaling configs/us_scaling.yaml           # coverage and data-size scaling curves
    mora data seed ../shared/data                  # fill the data cache without network
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines.errors import MoraError

logger = logging.getLogger("mora")

PROGRESS_ENV = "MORA_PROGRESS"


def _configure_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 1 else logging.INFO if verbosity >= 0 else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # These libraries log every metric or request at INFO.
    for noisy in ("great_expectations", "alembic", "mlflow", "urllib3", "numexpr"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # MLflow resets its logger's level on import, to this variable's value.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(max(level, logging.WARNING)))


def _load(args: argparse.Namespace):
    from pipelines.config import load_config

    overrides = {}
    if getattr(args, "resolution", None) is not None:
        overrides["resolution"] = args.resolution
    # --output-root wins over MORA_OUTPUT_ROOT, which wins over the config's output_root.
    return load_config(args.config, overrides, output_root=getattr(args, "output_root", None))


class _EpochProgress:
    """A tqdm bar per training variant, fed by the trainer's epoch callback."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.bars: dict[str, object] = {}

    def __call__(self, variant: str, metrics: dict[str, float]) -> None:
        from tqdm import tqdm

        bar = self.bars.get(variant)
        if bar is None:
            # Outside a terminal the trainer's INFO line per epoch shows progress;
            # a bar would only fill log files with carriage returns.
            bar = tqdm(
                total=self.max_epochs,
                desc=f"train {variant}",
                unit="epoch",
                leave=True,
                disable=not sys.stderr.isatty(),
            )
            self.bars[variant] = bar
        bar.set_postfix(
            train=f"{metrics.get('train_loss', float('nan')):.4f}",
            val=f"{metrics.get('val_loss', float('nan')):.4f}",
        )
        bar.update(1)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _run(args: argparse.Namespace, stages: Sequence[str], config=None) -> int:
    from pipelines.config import check_variant_names
    from pipelines.partitions import PartitionScope
    from pipelines.runner import RunOptions, run_pipeline

    config = config if config is not None else _load(args)
    progress = _EpochProgress(config.training.max_epochs)
    variants = tuple(args.variant) if getattr(args, "variant", None) else None
    if variants is not None:
        check_variant_names(list(variants), "--variant")
    if getattr(args, "ablations", False):
        variants = tuple(config.benchmark.variants)
    options = RunOptions(
        force=args.force,
        resume=getattr(args, "resume", False),
        variants=variants,
        on_epoch=progress,
        scope=PartitionScope.window(getattr(args, "start", None), getattr(args, "end", None)),
    )
    started = time.perf_counter()

    def on_stage(stage: str, report) -> None:
        done = stages.index(stage) + 1
        logger.info(
            "[%d/%d] %s done (%.0f s elapsed)",
            done,
            len(stages),
            stage,
            time.perf_counter() - started,
        )

    try:
        result = run_pipeline(config, stages, options, run_name=args.run_name, on_stage=on_stage)
    finally:
        progress.close()
    print()
    print(f"region {config.name}: outputs in {config.region_root}")
    for report in result.reports:
        for line in report.summary_lines():
            print("  " + line)
    benchmark = result.report("benchmark")
    if benchmark is not None and benchmark.artifacts:
        table = next((p for p in benchmark.artifacts if Path(p).name == "benchmark.md"), None)
        if table is not None:
            print()
            print(Path(table).read_text(encoding="utf-8"))
    print(f"MLflow run {result.run_id} ({time.perf_counter() - started:.0f} s)")
    return 0


def _data(args: argparse.Namespace) -> int:
    from pipelines import datasets

    if args.data_command == "seed":
        report = datasets.seed_cache(Path(args.directory))
        print(
            f"cache {datasets.cache_dir()}: copied {len(report.copied)}, "
            f"already cached {len(report.already_cached)}, missing {len(report.missing)}, "
            f"wrong hash {len(report.mismatched)}"
        )
        for key in report.mismatched:
            print(f"  wrong sha256, not copied: {key}")
        return 1 if report.mismatched else 0
    if args.data_command == "fetch":
        for key in args.keys:
            print(datasets.fetch(key))
        return 0
    for key, entry in sorted(datasets.registry().items()):
        print(f"{datasets.cache_status(key):<12} {entry.size_bytes:>10} {key}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import mlflow

    from pipelines.config import OUTPUT_ROOT_ENV
    from pipelines.run_compare import compare_runs, format_diff
    from pipelines.tracking import redact_uri, tracking_uri

    root = args.output_root or Path(os.environ.get(OUTPUT_ROOT_ENV, "outputs"))
    uri = args.tracking_uri or tracking_uri(root)
    client = mlflow.MlflowClient(tracking_uri=uri)
    diff = compare_runs(client, args.run_a, args.run_b)
    print(f"tracking store {redact_uri(uri)}")
    print(format_diff(diff, args.run_a, args.run_b, changed_only=not args.all), end="")
    return 0


def _register(args: argparse.Namespace) -> int:
    from pipelines.orchestration import RegistrySettings
    from pipelines.registry import register_model

    config = _load(args)
    settings = RegistrySettings(
        probe=args.probe, split=args.split, min_improvement=args.min_improvement
    )
    decision = register_model(config, args.run, settings)
    champion = "none" if decision.champion is None else f"{decision.champion:.4f}"
    print(f"{decision.model_name} version {decision.version}: {decision.reason}")
    print(f"  {decision.metric}: challenger {decision.challenger:.4f}, champion {champion}")
    print(
        f"  champion alias {'moved to' if decision.promoted else 'kept on'} "
        f"version {decision.version if decision.promoted else decision.champion_version}"
    )
    return 0


def _embed(args: argparse.Namespace) -> int:
    from pipelines import embedding
    from pipelines.config import check_variant_names
    from pipelines.errors import ConfigError

    config = _load(args)
    check_variant_names([args.variant], "--variant")
    if args.cell:
        result = embedding.embed_cells(config, args.cell, args.variant)
    elif args.lon is not None:
        if args.lat is None:
            raise ConfigError("--lon needs --lat")
        result = embedding.embed_points(
            config, [args.lon], [args.lat], args.variant, encoder_only=args.encoder_only
        )
    elif args.points is not None:
        lon, lat = embedding.read_points(args.points, args.lon_column, args.lat_column)
        result = embedding.embed_points(
            config, lon, lat, args.variant, encoder_only=args.encoder_only
        )
    else:
        result = embedding.embed_polygons(
            config,
            args.polygons,
            id_column=args.id_column,
            layer=args.layer,
            crs=args.crs,
            variant=args.variant,
        )
    if args.output is not None:
        path = embedding.write_table(result, args.output)
        print(f"wrote {len(result)} embeddings to {path}")
    else:
        print(result.to_csv(index=False), end="")
    return 0


def _quarantine(args: argparse.Namespace) -> int:
    from pipelines.config import OUTPUT_ROOT_ENV
    from pipelines.errors import DataNotFoundError
    from pipelines.storage import read_quarantine

    config = _load(args)
    tables = config.region_root / "tables"
    if not tables.is_dir():
        raise DataNotFoundError(
            f"region {config.name} has no outputs at {config.region_root}; run "
            f"`mora ingest {args.config}` first, or point --output-root or "
            f"{OUTPUT_ROOT_ENV} at the root it was run with"
        )
    rows = read_quarantine(config.region_root)
    if rows.empty:
        print(f"no quarantined rows in {config.region_root}")
        return 0
    summary = rows.groupby(["stage", "source", "rule"]).size().rename("rows").reset_index()
    print(summary.to_string(index=False))
    return 0


def _benchmark_options(command: argparse.ArgumentParser, *, ablation_flag: bool = True) -> None:
    if ablation_flag:
        command.add_argument(
            "--ablations",
            action="store_true",
            help="also train and score every baseline and ablation (runs the stages they need)",
        )
    labels = command.add_argument_group(
        "extra task", "score one more task from any label table (added to the config's tasks)"
    )
    labels.add_argument("--labels", type=Path, help="label table: CSV or vector file")
    labels.add_argument("--target", help="column of the label to predict")
    labels.add_argument("--task-name", help="task name in the results (default: the target)")
    labels.add_argument("--id", dest="label_id", help="id column joined to the region's zone ids")
    labels.add_argument("--lon", help="longitude column: each row is a point task unit")
    labels.add_argument("--lat", help="latitude column")
    labels.add_argument("--h3", help="column of H3 cells: each cell is a unit")
    labels.add_argument(
        "--geometry", action="store_true", help="units are the polygons of the label file"
    )
    labels.add_argument("--crs", help="CRS of the coordinates or polygons when the file has none")
    labels.add_argument("--transform", choices=["none", "log1p"], default="none")


def _benchmark(args: argparse.Namespace) -> int:
    from pipelines.benchmarking import label_task, with_ablations, with_tasks
    from pipelines.errors import ConfigError
    from pipelines.runner import STAGES

    config = _load(args)
    if args.labels is not None:
        if not args.target:
            raise ConfigError("--labels needs --target COLUMN, the label to predict")
        task = label_task(
            args.labels,
            args.target,
            name=args.task_name,
            id_column=args.label_id,
            lon=args.lon,
            lat=args.lat,
            h3=args.h3,
            geometry=args.geometry,
            crs=args.crs,
            transform=args.transform,
        )
        config = with_tasks(config, [task])
    args.ablations = args.command == "ablations" or getattr(args, "ablations", False)
    if args.ablations:
        return _run(args, STAGES, with_ablations(config))
    return _run(args, ("benchmark",), config)


def _scaling(args: argparse.Namespace) -> int:
    from pipelines.scaling import run_scaling

    config = _load(args)
    curves = ("coverage", "flows") if args.curve == "both" else (args.curve,)
    result = run_scaling(
        config, curves=curves, max_epochs=args.max_epochs, force=args.force, run_name=args.run_name
    )
    print(result.table_path.read_text(encoding="utf-8"))
    print(f"scaling outputs in {result.out_dir}; MLflow run {result.run_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``mora`` command."""
    parser = argparse.ArgumentParser(
        prog="mora",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True)

    def stage_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("config", type=Path, help="region config YAML")
        command.add_argument(
            "--force",
            action="store_true",
            help="rebuild outputs even when their inputs are unchanged",
        )
        command.add_argument("--resolution", type=int, help="override the config's H3 resolution")
        command.add_argument("--output-root", type=Path, help="override the config's output root")
        command.add_argument("--run-name", help="MLflow run name")
        return command

    stage_command("run", "run every stage: ingest, features, train, benchmark")
    ingest = stage_command("ingest", "ingest zones, rasters, mobility, POIs and census")
    ingest.add_argument(
        "--modality",
        action="append",
        choices=["zones", "imagery", "mobility", "poi", "census"],
        help="ingest only these (repeatable); zones are needed first",
    )
    ingest.add_argument(
        "--start",
        help="first day (YYYY-MM-DD) of the trip and ping files to ingest; with --end, a backfill",
    )
    ingest.add_argument("--end", help="day after the last day to ingest (exclusive)")
    stage_command("features", "build the sparsified graph and the feature tables")
    train = stage_command("train", "pre-train the model and write embeddings")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument(
        "--variant", action="append", help="variant to train (repeatable): mora, h3_adjacency, ..."
    )
    benchmark = stage_command("benchmark", "score embeddings and baselines on the benchmark tasks")
    _benchmark_options(benchmark)
    ablations = stage_command(
        "ablations",
        "train every baseline and ablation, then benchmark them (benchmark --ablations)",
    )
    _benchmark_options(ablations, ablation_flag=False)
    scaling = stage_command(
        "scaling", "pre-train on growing coverage and flow shares; fit power laws of R²"
    )
    scaling.add_argument(
        "--curve",
        choices=["coverage", "flows", "both"],
        default="both",
        help="which scaling curve to run (default: both)",
    )
    scaling.add_argument("--max-epochs", type=int, help="training epochs per point of the curves")

    compare = commands.add_parser("compare", help="print the param and metric diffs of two runs")
    compare.add_argument("run_a", help="MLflow run id A")
    compare.add_argument("run_b", help="MLflow run id B")
    compare.add_argument(
        "--tracking-uri",
        help="tracking store; default MLFLOW_TRACKING_URI, else <output root>/mlflow.db",
    )
    compare.add_argument(
        "--output-root",
        type=Path,
        help="output root whose mlflow.db is read (default MORA_OUTPUT_ROOT, else outputs)",
    )
    compare.add_argument("--all", action="store_true", help="list equal metrics too")

    register = commands.add_parser(
        "register", help="log a run's model to the registry; move `champion` if it wins"
    )
    register.add_argument("config", type=Path, help="region config YAML")
    register.add_argument("--run", required=True, help="MLflow run id of the pipeline run")
    register.add_argument("--output-root", type=Path, help="override the config's output root")
    register.add_argument("--probe", default="linear", help="probe of the headline compared")
    register.add_argument("--split", default="blocked", help="split of the headline compared")
    register.add_argument(
        "--min-improvement",
        type=float,
        default=0.0,
        help="margin (a fraction) by which the headline must beat the champion's",
    )

    quarantine = commands.add_parser("quarantine", help="summarise rejected rows of a region")
    quarantine.add_argument("config", type=Path, help="region config YAML")
    quarantine.add_argument("--output-root", type=Path, help="override the config's output root")

    embed = commands.add_parser(
        "embed", help="embeddings of H3 cells, of any coordinates or of a polygon layer"
    )
    embed.add_argument("config", type=Path, help="region config YAML (trained)")
    embed.add_argument("--output-root", type=Path, help="override the config's output root")
    target = embed.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--cell",
        action="append",
        help="H3 cell, hexadecimal (852a1073fffffff) or decimal uint64 (repeatable)",
    )
    target.add_argument("--lon", type=float, help="longitude in degrees of one point (with --lat)")
    target.add_argument(
        "--points", type=Path, help="CSV of points (with --lon-column/--lat-column)"
    )
    target.add_argument("--polygons", type=Path, help="vector file of polygons to embed")
    embed.add_argument("--lat", type=float, help="latitude in degrees of the point given by --lon")
    embed.add_argument("--lon-column", default="lon", help="longitude column of --points")
    embed.add_argument("--lat-column", default="lat", help="latitude column of --points")
    embed.add_argument("--id", dest="id_column", help="id column of --polygons")
    embed.add_argument("--layer", help="layer of a multi-layer --polygons file")
    embed.add_argument("--crs", help="CRS of --polygons when the file declares none")
    embed.add_argument(
        "--encoder-only",
        action="store_true",
        help="embed points with the location encoder even inside trained cells",
    )
    embed.add_argument("--variant", default="mora", help="trained variant (default: mora)")
    embed.add_argument(
        "--output", type=Path, help="write a .parquet or .csv file instead of printing"
    )

    data = commands.add_parser("data", help="the dataset registry and the local cache")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    data_commands.add_parser("list", help="list registered files and whether they are cached")
    seed = data_commands.add_parser("seed", help="copy registered files from a local directory")
    seed.add_argument("directory", help="directory laid out like the cache (DIR/us/...)")
    fetch = data_commands.add_parser("fetch", help="download registered files into the cache")
    fetch.add_argument("keys", nargs="+", help="registry keys, e.g. us/poi/vega_airports.csv")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mora`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(-1 if args.quiet else args.verbose)
    os.environ.setdefault(PROGRESS_ENV, "1" if sys.stderr.isatty() else "0")
    try:
        if args.command == "data":
            return _data(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "register":
            return _register(args)
        if args.command == "quarantine":
            return _quarantine(args)
        if args.command == "embed":
            return _embed(args)
        from pipelines.runner import INGEST_STAGES, STAGES

        if args.command in ("benchmark", "ablations"):
            return _benchmark(args)
        if args.command == "scaling":
            return _scaling(args)
        if args.command == "run":
            return _run(args, STAGES)
        if args.command == "ingest":
            stages = tuple(args.modality) if args.modality else INGEST_STAGES
            return _run(args, stages)
        return _run(args, (args.command,))
    except MoraError as error:
        logger.error("%s", error)
        return 2
    except BrokenPipeError:
        # The reader of stdout exited (`mora data list | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        logger.error(
            "interrupted; published tables are intact, staging files are removed on the next run"
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
