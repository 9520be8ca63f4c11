"""`crn-repro`: one command per pipeline stage (dvc.yaml), each a thin call into the library."""

from __future__ import annotations

import enum
import functools
import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from crn_repro.errors import CrnError
from crn_repro.registry import GENERATORS, MODELS

app = typer.Typer(
    help="Cascaded Refinement Networks (Chen & Koltun, ICCV 2017) and its baselines: prepare, train, "
    "synthesize, report. Every setting comes from params.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
STATE = {"params": Path("params.yaml"), "debug": False}

ModelName = enum.Enum("ModelName", {name: name for name in MODELS}, type=str)
GeneratorName = enum.Enum("GeneratorName", {name: name for name in GENERATORS}, type=str)


def _command(fn):
    """Register a command whose user errors print as one line and exit 1 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CrnError as error:
            if STATE["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: the last checkpoint is intact; run the same command to resume")
            raise typer.Exit(130) from None

    return app.command()(wrapper)


def _params():
    from crn_repro.params import load_params

    return load_params(STATE["params"])


@app.callback()
def _options(
    params: Path = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (the single source of truth)"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks for errors"),
) -> None:
    STATE["params"], STATE["debug"] = params, debug


@_command
def prepare() -> None:
    """Stage `prepare`: generate the synthetic city or read Cityscapes, and write the prepared cache."""
    from crn_repro.prepare import prepare as run

    params = _params()
    meta = run(params, err_console)
    counts = ", ".join(f"{split} {info['count']}" for split, info in meta["splits"].items())
    console.print(f"prepared {meta['dataset']} at {meta['image_size_hw'][0]}x{meta['image_size_hw'][1]}: {counts} -> {params.paths.prepared}")


@_command
def train(
    model: ModelName = typer.Option(..., "--model", "-m", help="model from the registry"),
    until_step: Optional[int] = typer.Option(None, help="stop after this step (resumable); default: train.total_steps"),
) -> None:
    """Stage `train`: train one model; running it again resumes from the last checkpoint."""
    from crn_repro.trainer import train as run

    summary = run(_params(), model.value, until_step=until_step, console=err_console)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        console.print(f"{model.value}: step {summary['steps']}/{summary['total_steps']}, {summary['wall_time_s']} s")


@_command
def synthesize(model: GeneratorName = typer.Option(..., "--model", "-m", help="image synthesis model from the registry")) -> None:
    """Stage `synthesize`: write the model's images for every validation layout (PNG)."""
    from crn_repro.synthesize import synthesize as run

    params = _params()
    index = run(params, model.value, err_console)
    console.print(f"{model.value}: {len(index['names'])} layouts x {index['k']} images -> {params.paths.synth}/{model.value}")


@_command
def evaluate() -> None:
    """Stage `evaluate`: metrics with bootstrap intervals and the preference table (reports/metrics.json)."""
    from crn_repro.evaluate import evaluate as run

    params = _params()
    out = run(params, err_console)
    console.print(f"evaluated {len(out['models'])} models on {out['num_val_images']} layouts -> {params.paths.reports}/metrics.json")


@_command
def report() -> None:
    """Stage `report`: write reports/report.md and its figures."""
    from crn_repro.report import write_report

    console.print(f"wrote {write_report(_params())}")


@_command
def info(
    model: ModelName = typer.Option(..., "--model", "-m", help="model from the registry"),
    preset: Optional[str] = typer.Option(None, help="named configuration, e.g. cityscapes-1024p (default: params.yaml)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Parameter counts of a model's networks (exact trainable counts)."""
    from crn_repro.info import describe

    result = describe(_params(), model.value, preset)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"[bold]{result['model']}[/] ({result['preset'] or 'params.yaml'}, {result['image_size_hw'][0]}x{result['image_size_hw'][1]})")
        for name, count in result["networks"].items():
            console.print(f"  {name}: {count:,} parameters")
        console.print(f"  generator total: {result['parameters']:,}")


def main() -> None:
    app()
