"""`crn-repro`: one command per pipeline stage (dvc.yaml), each a thin call into the library."""

from __future__ import annotations

import enum
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from crn_repro.errors import CrnError
from crn_repro.registry import GENERATORS, MODELS

app = typer.Typer(
    help="Cascaded Refinement Networks (Chen & Koltun, ICCV 2017) and its baselines: prepare, train, "
    "synthesize, evaluate, report (the stages of `dvc repro`), plus bench, info and the human study. Every "
    "setting comes from params.yaml.\n\nExamples: dvc repro  |  crn-repro train --model crn  |  crn-repro report  "
    "|  crn-repro preset cityscapes-256p (params.yaml for the paper's 256p experiment)",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)
STATE = {"params": Path("params.yaml"), "debug": False}

ModelName = enum.Enum("ModelName", {name: name for name in MODELS}, type=str)
GeneratorName = enum.Enum("GeneratorName", {name: name for name in GENERATORS}, type=str)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, torchrun stopping its workers), raised where the program is, so that
    it unwinds as Ctrl-C does: temporary files removed, the previous outputs intact."""


def _terminate(number, frame) -> None:
    raise Terminated


def _handled(fn):
    """A command whose user errors print as one line and exit 1 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CrnError as error:
            if STATE["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as stop:
            name = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
            err_console.print(f"[yellow]interrupted[/] ({name}): every output is written whole or not at all; run the same "
                              "command again (training resumes from its last checkpoint)", soft_wrap=True)
            raise typer.Exit(143 if isinstance(stop, Terminated) else 130) from None

    return wrapper


def _command(fn):
    """Register a top-level command (errors as in ``_handled``)."""
    return app.command()(_handled(fn))


def _params():
    from crn_repro.params import load_params

    return load_params(STATE["params"])


def _version(value: bool) -> None:
    if value:
        from crn_repro import __version__

        print(f"crn-repro {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    params: Path = typer.Option(Path("params.yaml"), "--params", "-p", metavar="FILE", help="params file (the single source of truth), or a preset file (presets/NAME.yaml: resolved over presets/demo.yaml as `crn-repro preset NAME` resolves it)"),
    debug: bool = typer.Option(False, "--debug", metavar="", help="show tracebacks for errors"),
    version: bool = typer.Option(False, "--version", metavar="", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    STATE["params"], STATE["debug"] = params, debug


@_command
def prepare() -> None:
    """Stage `prepare`: generate the synthetic city or read Cityscapes, and write the prepared cache.

    \b
    Example: crn-repro prepare
    For the paper's data: crn-repro preset cityscapes-256p && crn-repro prepare"""
    from crn_repro.prepare import prepare as run

    params = _params()
    meta = run(params, err_console)
    counts = ", ".join(f"{split} {info['count']}" for split, info in meta["splits"].items())
    console.print(f"prepared {meta['dataset']} at {meta['image_size_hw'][0]}x{meta['image_size_hw'][1]}: {counts} -> {params.paths.prepared}")


@_command
def train(
    model: ModelName = typer.Option(..., "--model", "-m", help="model from the registry"),
    until_step: Optional[int] = typer.Option(None, metavar="STEP", help="stop after this step (resumable); default: train.total_steps"),
) -> None:
    """Stage `train`: train one model; running it again resumes from the last checkpoint. With
    train.processes above 1 it runs itself under `torchrun --standalone` (one process per GPU).

    \b
    Example: crn-repro train --model crn
    A time-sliced job: crn-repro train --model crn --until-step 5000"""
    from crn_repro.runtime import launch_under_torchrun
    from crn_repro.trainer import train as run

    if until_step is not None and until_step < 1:
        raise CrnError(f"--until-step {until_step}: must be a step >= 1 (or left out: train.total_steps)")
    params = _params()
    processes = params.model(model.value).train.processes
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(launch_under_torchrun(processes, sys.argv[1:]))
    summary = run(params, model.value, until_step=until_step, console=err_console)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        console.print(f"{model.value}: step {summary['steps']}/{summary['total_steps']}, {summary['wall_time_s']} s")


@_command
def synthesize(
    model: GeneratorName = typer.Option(..., "--model", "-m", help="image synthesis model from the registry"),
    labels: Optional[Path] = typer.Option(None, "--labels", metavar="DIR|FILE", help="synthesize from these label images (a folder of PNGs, or one; any size, resized to the model's resolution) instead of the validation split"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="with --labels: the folder to write (required)"),
    label_format: str = typer.Option("label_ids", "--label-format", metavar="FORMAT", help="with --labels: label_ids (Cityscapes labelIds PNG) | color (Cityscapes colour labels) | nyu (0 = unlabeled, 1.. classes)"),
    model_file: Optional[Path] = typer.Option(None, "--model-file", metavar="FILE", help="with --labels: the model file (default: paths.runs/<model>/model.pt)"),
    release_layout: bool = typer.Option(False, "--release-layout", help="with --labels: the release's files, <name>_output.jpg, k outputs as one grid"),
) -> None:
    """Stage `synthesize`: write the model's images for every validation layout (PNG). With --labels, a
    rendering engine for your own layouts: every label image in a folder (or one file), resized to the
    model's resolution, at which every output is written (another aspect ratio is stretched, with a
    warning). Label images must be lossless (PNG): JPEG is refused.

    \b
    Example: crn-repro synthesize --model crn
    Your layouts: crn-repro synthesize --model crn --labels my_labels/ --out my_images/"""
    from crn_repro.synthesize import synthesize as run, synthesize_layouts

    params = _params()
    if labels is None:
        index = run(params, model.value, err_console)
        console.print(f"{model.value}: {len(index['names'])} layouts x {index['k']} images -> {params.paths.synth}/{model.value}")
        return
    if out is None:
        raise CrnError("--labels needs --out DIR, the folder to write the images to")
    file = model_file or Path(params.paths.runs) / model.value / "model.pt"
    index = synthesize_layouts(file, labels, out, label_format, release_layout, params.synthesize.batch_size, err_console,
                               expected=model.value)
    h, w = index["image_size_hw"]
    console.print(f"{index['model']}: {len(index['names'])} layouts x {index['k']} images at the model's resolution "
                  f"{w}x{h} (width x height) -> {out}", soft_wrap=True)


@app.command("import-release")
@_handled
def import_release(
    checkpoint: Path = typer.Argument(..., metavar="PREFIX", help="the release checkpoint's prefix, e.g. result_1024p/model.ckpt"),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="model file to write, e.g. runs/crn/model.pt"),
    model: Optional[GeneratorName] = typer.Option(None, "--model", "-m", help="model name to record (default: crn, crn-diverse for k > 1)"),
) -> None:
    """Import one of the authors' released CRN checkpoints (TensorFlow; no TensorFlow needed) as a model
    file that synthesize, evaluate and the study use.

    \b
    Example: crn-repro import-release result_1024p/model.ckpt --out runs/crn/model.pt"""
    from crn_repro.release import import_release as run

    facts = run(checkpoint, out, model.value if model else None)
    h, w = facts["image_size_hw"]
    console.print(f"{checkpoint} -> {out}: {facts['model']}, {h}x{w}, {facts['parameters']['G']:,} parameters; next: "
                  f"`crn-repro synthesize --model {facts['model']}` with that model file in runs/{facts['model']}/", soft_wrap=True)


@_command
def evaluate() -> None:
    """Stage `evaluate`: metrics with bootstrap intervals and the preference table (reports/metrics.json).

    \b
    Example: crn-repro evaluate"""
    from crn_repro.evaluate import evaluate as run

    params = _params()
    out = run(params, err_console)
    console.print(f"evaluated {len(out['models'])} models on {out['num_val_images']} layouts -> {params.paths.reports}/metrics.json")


@_command
def report() -> None:
    """Stage `report`: write reports/report.md and its figures.

    \b
    Example: crn-repro report"""
    from crn_repro.report import write_report

    console.print(f"wrote {write_report(_params())}")


@_command
def bench(
    model: Optional[ModelName] = typer.Option(None, "--model", "-m", help="model from the registry (default: crn)"),
    preset: Optional[str] = typer.Option(None, metavar="NAME", help="measure with preset NAME (e.g. cityscapes-1024p, see `crn-repro preset`) instead of --params"),
    quick: bool = typer.Option(False, "--quick", metavar="", help="3 warm-up and 5 timed steps; on a CPU at 1/4 of the height and width (--scale 4)"),
    scale: Optional[int] = typer.Option(None, metavar="S", help="time the networks at 1/SCALE of the height and width"),
    steps: Optional[int] = typer.Option(None, metavar="N", help="timed steps (default 10, --quick 5)"),
    cpu_rss: bool = typer.Option(False, "--cpu-rss", metavar="", help="also measure the peak resident memory of one full-size step on the CPU (bf16, activation checkpointing) in a fresh process"),
    table: bool = typer.Option(False, "--table", metavar="", help="print every result in benchmarks/results/ as a markdown table and stop"),
    suite: Optional[str] = typer.Option(None, "--suite", metavar="gpu", help="gpu: every measurement wanted from a GPU in one run (CRN 256p and 1024p in bf16 and fp32, pix2pix 256p, the checkpointed 1024p step's memory, device-vs-CPU loss parity, DRN-D-105 with TF32 on and off) -> benchmarks/results/<device>-suite.json"),
    smoke: bool = typer.Option(False, "--smoke", metavar="", help="with --suite gpu: the same parts at tiny sizes (on the CPU where there is no GPU), to check the suite runs"),
) -> None:
    """Training and synthesis speed (median and IQR of timed steps), model and hardware FLOPs, fraction of
    the sustained matmul peak, memory and projected schedule time of a model on this machine
    (benchmarks/results/<device>.json).

    \b
    Example: crn-repro bench --model crn --preset cityscapes-1024p"""
    from crn_repro.bench import bench as run, results_table

    if table:
        print(results_table())
        return
    if suite is not None or smoke:
        return _bench_suite(suite, smoke)
    params, source = _bench_params(preset)
    name = model.value if model else "crn"
    e = run(params, name, source, scale=scale, quick=quick, steps=steps, console=err_console, cpu_rss=cpu_rss)
    h, w = e["timed_at_hw"]
    console.print(
        f"{name} ({source}, {e['precision']}, {e['device']}) at {h}x{w}: train step {e['train_step_s']['median_s']:.3g} s "
        f"median (IQR {e['train_step_s']['iqr_s']:.2g} s), {e['train_images_per_s_at_timed_size']:.3g} img/s, "
        f"{e['hardware_train_tflops_per_s']:.3g} hardware TFLOP/s = {e['train_fraction_of_sustained_peak']:.0%} of the "
        f"sustained matmul peak {e['sustained_peak_tflops_per_s']:.3g}; synthesis "
        f"{e['synthesis_images_per_s_at_timed_size']:.3g} img/s; schedule of {e['total_steps']} steps: "
        f"{e['projected_schedule_hours']:.3g} h ({e['projection']}) -> {e['path']}",
        highlight=False, soft_wrap=True,
    )


def _bench_suite(suite: Optional[str], smoke: bool) -> None:
    """`bench --suite gpu [--smoke]`: run the suite, print one line per part, exit 1 if a part failed."""
    from crn_repro.benchsuite import run_suite, summary_lines

    if suite != "gpu":
        raise CrnError(f"--suite {suite}: the one suite is `gpu` (`crn-repro bench --suite gpu`, or with --smoke)"
                       if suite else "--smoke: goes with --suite gpu (`crn-repro bench --suite gpu --smoke`)")
    results = run_suite(smoke=smoke, console=err_console)
    for line in summary_lines(results):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if results["failed"]:
        raise CrnError(f"bench --suite gpu: {len(results['failed'])} part(s) failed ({', '.join(results['failed'])}); "
                       f"their errors and every other part's figures are in {results['path']}")


def _bench_params(preset: Optional[str]):
    """The params bench measures with: a preset's, or --params'; and their name."""
    from crn_repro.params import load_params, parse_params
    from crn_repro.presets import load_preset, preset_names

    if preset:
        if preset not in preset_names():
            raise CrnError(f"--preset {preset}: no presets/{preset}.yaml (presets: {', '.join(preset_names())})")
        return parse_params(load_preset(preset), f"preset {preset}"), f"preset {preset}"
    return load_params(STATE["params"]), str(STATE["params"])


@_command
def preset(
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="a preset of presets/ (without it: list them)"),
    force: bool = typer.Option(False, "--force", metavar="", help="replace a params file that holds edits of its own"),
) -> None:
    """Write the params file (--params, default params.yaml) for a preset: presets/demo.yaml, the
    defaults, with the preset's overrides merged in. The paper's experiments are presets.

    \b
    Example: crn-repro preset cityscapes-256p && dvc repro
    Back to the embedded demo: crn-repro preset demo"""
    from crn_repro.params import write_preset
    from crn_repro.presets import preset_names

    if name is None:
        console.print("presets: " + ", ".join(preset_names()) + "  (crn-repro preset NAME writes params.yaml)")
        return
    console.print(f"wrote {write_preset(name, STATE['params'], force)} from presets/{name}.yaml")


@_command
def info(
    model: ModelName = typer.Option(..., "--model", "-m", help="model from the registry"),
    preset: Optional[str] = typer.Option(None, metavar="NAME", help="named configuration, e.g. cityscapes-1024p (default: the --params file)"),
    as_json: bool = typer.Option(False, "--json", metavar="", help="print one JSON object"),
) -> None:
    """Parameter counts of a model's networks (exact trainable counts).

    \b
    Example: crn-repro info --model crn --preset cityscapes-1024p --json"""
    from crn_repro.info import describe

    result = describe(_params(), model.value, preset)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"[bold]{result['model']}[/] ({result['preset'] or STATE['params']}, {result['image_size_hw'][0]}x{result['image_size_hw'][1]})")
        for name, count in result["networks"].items():
            console.print(f"  {name}: {count:,} parameters")
        console.print(f"  generator total: {result['parameters']:,}")


# --- the human perceptual study (Sec. 5.1): `crn-repro study ...` ---------------------------------

study_app = typer.Typer(
    short_help="Human perceptual study: make, preregister, serve, export-mturk, analyze, power, simulate.",
    help="Human perceptual study (paper Sec. 5.1): build it, run it in a browser or on MTurk, analyse it.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")


def _study_command(name: str):
    """Register ``crn-repro study <name>`` (errors as in ``_handled``)."""
    return lambda fn: study_app.command(name)(_handled(fn))


class Design(str, enum.Enum):
    paper = "paper"
    timed = "timed"
    mixed = "mixed"
    hype = "hype"


class Via(str, enum.Enum):
    web = "web"
    mturk = "mturk"


StudyDir = typer.Argument(..., metavar="STUDY", help="study folder written by `crn-repro study make`")


@_study_command("make")
def study_make(
    design: Optional[Design] = typer.Option(None, help="default: study.design (paper: Table 1 as the authors ran it)"),
    out: Optional[Path] = typer.Option(None, metavar="DIR", help="study folder to write; default: study.dir"),
    force: bool = typer.Option(False, "--force", metavar="", help="replace a study that already holds responses or an MTurk export (they are lost)"),
) -> None:
    """Build a study folder (manifest.json + 400x200 stimuli) from the synthesized validation sets, and
    estimate a session's length and reward.

    \b
    Example: crn-repro study make --design timed --out studies/timed"""
    from crn_repro.study.make import make_study
    from crn_repro.study.power import simulated_session_minutes

    params = _params()
    manifest = make_study(params, design.value if design else None, out, force, err_console)
    folder = out or Path(params.study.dir)
    trials = sum(len(job["trials"]) for job in manifest["jobs"])
    console.print(f"study {manifest['study_id']!r} ({manifest['design']}): {len(manifest['jobs'])} jobs, {trials} trials -> {folder}")
    _print_pay(params.study, simulated_session_minutes(manifest, seed=params.study.seed), "simulated participants")
    console.print(f"next: `crn-repro study preregister {folder}`, then `crn-repro study serve {folder}` (lab, Prolific) or "
                  f"`crn-repro study export-mturk {folder} OUT_DIR --base-url URL`", soft_wrap=True)


def _print_pay(study, minutes: float, source: str, hourly_rate: float | None = None) -> None:
    """The median session and its reward at the hourly rate, with Prolific's warnings."""
    from crn_repro.study.params import PROLIFIC_MINIMUM_HOURLY
    from crn_repro.study.power import pay_estimate

    consent = study.consent
    rate = hourly_rate if hourly_rate is not None else study.prolific.hourly_rate
    pay = pay_estimate(minutes, rate, consent.currency, PROLIFIC_MINIMUM_HOURLY.get(consent.currency), consent.reward,
                       consent.duration_minutes)
    console.print(f"session: median {minutes:.1f} minutes ({source}); at {rate:.2f} {consent.currency}/h the reward is "
                  f"{pay['reward']:.2f} {consent.currency} (stated: {consent.pay or 'unpaid'}, {consent.duration_minutes} min)",
                  soft_wrap=True, highlight=False)
    for warning in pay["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True, highlight=False)


@_study_command("serve")
def study_serve(
    study: Path = StudyDir,
    host: str = typer.Option("127.0.0.1", metavar="ADDRESS", help="address to listen on (127.0.0.1: this machine only)"),
    port: int = typer.Option(8000, metavar="PORT", help="port (0: any free one)"),
    trusted_proxy: list[str] = typer.Option([], "--trusted-proxy", metavar="ADDRESS",
                                            help="a reverse proxy (address or network) whose X-Forwarded-For/-Proto name "
                                                 "the client; repeat for several (docs/study-deployment.md)"),
    joins_per_minute: int = typer.Option(120, metavar="N", help="joins per client address: N at once, then N a minute (0: no limit)"),
    public_url: Optional[str] = typer.Option(None, metavar="URL", help="the address participants open (behind a proxy), "
                                                                       "for the printed Prolific study URL"),
) -> None:
    """Run the study's web app until Ctrl-C (a lab, or Prolific behind an HTTPS proxy); answers are saved as given.

    \b
    Example: crn-repro study serve studies/demo --port 8000"""
    from crn_repro.study.server import serve

    serve(study, host, port, trusted_proxies=trusted_proxy, joins_per_minute=joins_per_minute, public_url=public_url)


@_study_command("export-mturk")
def study_export_mturk(
    study: Path = StudyDir,
    out_dir: Path = typer.Argument(..., metavar="OUT_DIR", help="folder for hit.html and batch_input.csv"),
    base_url: str = typer.Option(..., metavar="URL", help="http(s) URL where you host the study folder's images/ (e.g. an S3 bucket)"),
) -> None:
    """Write an MTurk HIT template (one HIT per job) and its batch input CSV.

    \b
    Example: crn-repro study export-mturk studies/demo studies/demo/mturk --base-url https://example.org/study"""
    from crn_repro.study.mturk import export_mturk

    paths = export_mturk(study, out_dir, base_url)
    console.print(f"wrote {paths['hit']} and {paths['batch_input']}; upload {study}/images/ to {base_url.rstrip('/')}/images/, "
                  f"create a project with hit.html as its layout, publish a batch from batch_input.csv, then "
                  f"`crn-repro study analyze {study} --mturk Batch_..._batch_results.csv`", soft_wrap=True)


@_study_command("analyze")
def study_analyze(
    study: Path = StudyDir,
    mturk: list[Path] = typer.Option([], "--mturk", metavar="CSV", help="MTurk batch results CSV (repeatable)"),
    prolific: Optional[Path] = typer.Option(None, "--prolific", metavar="CSV", help="Prolific's submissions export: writes analysis/payments.csv"),
    no_web: bool = typer.Option(False, "--no-web", metavar="", help="ignore the web app's responses.sqlite"),
) -> None:
    """Exclude by sentinels, then per comparison: rates with Wilson intervals, binomial p, bootstraps over
    workers, images and both, a logistic mixed model with crossed random effects; a Bradley-Terry ranking.

    \b
    Example: crn-repro study analyze studies/demo --mturk Batch_123_batch_results.csv"""
    from crn_repro.config import to_dict
    from crn_repro.study.analyze import analyze_study

    sp = _params().study
    result = analyze_study(study, mturk, not no_web, sp.min_sentinel_accuracy, sp.bootstrap_resamples, sp.seed,
                           sp.timing_tolerance_frames, alpha=sp.alpha, prolific_csv=prolific,
                           reject_min_failed_sentinels=sp.prolific.reject_min_failed_sentinels, study_params=to_dict(sp))
    _print_analysis(result, sp)


def _print_analysis(result: dict, sp) -> None:
    from crn_repro.study.analyze import hype_table, print_whole, ranking_table, summary_table

    plain = {"highlight": False, "markup": False, "soft_wrap": True}
    ex = result["exclusions"]
    if result["note"]:
        console.print(result["note"], **plain)
    who = "simulated participants" if result["simulated"] else "participants"
    console.print(f"{len(result['analysed'])} answers from {len(ex)} {who}; {int(ex.excluded.sum())} excluded "
                  f"(sentinel accuracy < {sp.min_sentinel_accuracy:.0%}, or withdrawn)", **plain)
    for r in ex[ex.excluded].itertuples():
        console.print(f"  excluded {r.source}:{r.participant}: {r.reason}", **plain)
    mistimed = result["mistimed"]
    if result["analysed"].duration_ms.notna().any():  # a timed design
        console.print(f"{len(mistimed)} timed test answers left out: on screen more than {sp.timing_tolerance_frames:g} frame(s) "
                      f"from the target, or not measured ({int(mistimed.measured_ms.isna().sum())}) -> "
                      f"{result['paths']['mistimed']}", **plain)
    if "hype" in result:
        print_whole(console, hype_table(result["hype"]))
    else:
        print_whole(console, summary_table(result["summary"], sp.alpha))
    if "ranking" in result:
        print_whole(console, ranking_table(result["ranking"]))
    elif result["ranking_note"]:
        console.print(result["ranking_note"], **plain)
    if "payments" in result:
        decisions = result["payments"].decision.value_counts()
        console.print(f"payments (Prolific): {', '.join(f'{n} {d}' for d, n in decisions.items()) or 'no submissions'} -> "
                      f"{result['paths']['payments']}", **plain)
    registration = result["registration"]
    console.print(registration["note"] + ("" if not registration["registered"] else
                  ": the analysis ran as registered" if registration["as_registered"] else ": deviations from it:"), **plain)
    for deviation in registration["deviations"]:
        console.print(f"  deviation: {deviation}", **plain)
    judgments = result["paths"]["judgments"]
    console.print(f"study build {result['build']}; wrote {judgments.parent}/; the report uses it after: dvc exp run -S "
                  f"'evaluate.human_judgments={judgments}' (or set evaluate.human_judgments: {judgments} in params.yaml and run "
                  "`dvc repro report`)", **plain)


@_study_command("preregister")
def study_preregister(
    study: Path = StudyDir,
    force: bool = typer.Option(False, "--force", metavar="", help="register again (refused once anyone has answered)"),
) -> None:
    """Freeze the analysis before the first real answer: the study's params, exclusion and payment rules,
    model formula and alpha, with the manifest's hash, into STUDY/preregistration.json.

    \b
    Example: crn-repro study preregister studies/demo"""
    from crn_repro.config import to_dict
    from crn_repro.study.registration import REGISTRATION, preregister

    record = preregister(study, to_dict(_params().study), force)
    console.print(f"registered {record['study_id']} ({record['design']}) at {record['registered_utc']}: params "
                  f"{record['params_sha256'][:12]}, manifest {record['manifest_sha256'][:12]}, alpha {record['alpha']:g} -> "
                  f"{study / REGISTRATION}; `crn-repro study analyze` lists any deviation", soft_wrap=True, highlight=False)


@_study_command("power")
def study_power(
    rate: Optional[float] = typer.Option(None, metavar="RATE", help="true preference rate in (0, 1), not 0.5 (default: a table from 0.55 to 0.99)"),
    alpha: Optional[float] = typer.Option(None, metavar="ALPHA", help="significance level (default: study.alpha, else 1e-3; paper: p < 1e-3)"),
    power: float = typer.Option(0.9, metavar="POWER", help="probability of reaching it"),
    design: Optional[Design] = typer.Option(None, help="the design to simulate (default: study.design)"),
    participant_sd: float = typer.Option(0.5, metavar="SD", help="participants' bias sd, log-odds (a pilot's analysis overrides)"),
    layout_sd: float = typer.Option(0.5, metavar="SD", help="layouts' difficulty sd, log-odds (a pilot's analysis overrides)"),
    replicates: int = typer.Option(100, metavar="N", help="simulated studies per size tried"),
    pilot: Optional[Path] = typer.Option(None, metavar="STUDY", help="a pilot study: its median session time, and its fitted sds"),
    hourly_rate: Optional[float] = typer.Option(None, metavar="RATE", help="pay per hour (default: study.prolific.hourly_rate)"),
) -> None:
    """How many judgments (exact binomial test) and participants (the crossed design, simulated) a
    comparison needs for p < alpha at a true preference rate; and a session's length and reward.

    \b
    Example: crn-repro study power --rate 0.7"""
    from crn_repro.study.power import DEFAULT_RATES

    for name, value in (("--rate", rate), ("--alpha", alpha), ("--power", power)):
        if value is not None and not 0.0 < value < 1.0:
            raise CrnError(f"study power: {name} {value:g} must lie strictly between 0 and 1")
    if participant_sd < 0 or layout_sd < 0 or replicates < 10:
        raise CrnError("study power: need --participant-sd >= 0, --layout-sd >= 0 and --replicates >= 10")
    params = _params() if STATE["params"].is_file() else None
    alpha = alpha if alpha is not None else params.study.alpha if params else 1e-3
    plans = _power_binomial((rate,) if rate is not None else DEFAULT_RATES, alpha, power, params)
    if params is None:
        return
    sds = (participant_sd, layout_sd)
    if pilot is not None:
        sds = _pilot(pilot, params.study, hourly_rate, sds)
    name = design.value if design else params.study.design
    if name == "hype":
        console.print("the crossed simulation plans pair comparisons; for the hype design, the fool rate's comparison with 50% "
                      "follows the binomial table above", soft_wrap=True)
        return
    if name not in plans:
        from crn_repro.study.design import study_plan

        study_plan(params.study, name, params.models, [f"layout-{i}" for i in range(_power_layouts(params))])  # says why
    _power_crossed(plans[name], (rate,) if rate is not None else (0.6, 0.7, 0.8), alpha, power, sds, replicates, params)


def _power_binomial(rates, alpha: float, power: float, params) -> dict:
    """The exact binomial table, with the jobs of each design; returns the designs' plans."""
    from rich.table import Table

    from crn_repro.stats import SUSTAINED_SEARCH_FACTOR
    from crn_repro.study.analyze import print_whole
    from crn_repro.study.design import study_plan
    from crn_repro.study.power import jobs_needed, power_table

    plans = {}
    if params is not None:  # jobs per design when run next to a params file
        layouts = [f"layout-{i}" for i in range(_power_layouts(params))]
        for name in ("paper", "timed", "mixed", "hype"):
            try:
                plans[name] = study_plan(params.study, name, params.models, layouts)
            except CrnError:
                if name == params.study.design:
                    raise  # another design's settings may not fit these layouts; the one in use must
    try:
        rows = power_table(rates, alpha, power)
    except ValueError as error:
        raise CrnError(f"study power: {error}") from None
    table = Table("true rate", "judgments", "power there", "first reached at", *[f"jobs ({name})" for name in plans],
                  title=f"judgments for p < {alpha:g} with power {power:g} (exact two-sided binomial test)")
    for row in rows:
        jobs = [str(jobs_needed(row["judgments"], plan)) for plan in plans.values()]
        table.add_row(f"{row['rate']:.0%}", str(row["judgments"]), f"{row['power']:.3f}", str(row["first"]), *jobs)
    print_whole(console, table)
    console.print(f"judgments: the smallest n from which every larger n keeps the power (checked up to {SUSTAINED_SEARCH_FACTOR}x "
                  "'first reached at'); exact power is a sawtooth in n. It counts every judgment as independent; the "
                  "crossed simulation below does not", soft_wrap=True)
    return plans


def _power_layouts(params) -> int:
    """Validation layouts: the prepared split's, else the dataset's configured count."""
    from crn_repro.datasets import PreparedSplit

    try:
        return len(PreparedSplit(Path(params.paths.prepared), "val").names)
    except (CrnError, OSError):
        return {"synthetic": params.synthetic.num_val, "cityscapes": params.cityscapes.expected_val or 500,
                "nyu": 654}.get(params.data.dataset, 500)


def _pilot(pilot: Path, study, hourly_rate, sds: tuple[float, float]) -> tuple[float, float]:
    """A pilot's median session (and its reward), and its fitted sds where it was analysed."""
    import pandas as pd

    from crn_repro.study.analyze import gather_responses, real_or_simulated
    from crn_repro.study.manifest import load_manifest
    from crn_repro.study.power import pilot_session_minutes

    responses, simulated, _ = real_or_simulated(gather_responses(pilot))
    try:
        minutes, finished = pilot_session_minutes(responses, load_manifest(pilot))
    except ValueError as error:
        raise CrnError(f"study power --pilot {pilot}: {error}") from None
    _print_pay(study, minutes, f"{finished} {'simulated ' if simulated else ''}pilot participants", hourly_rate)
    summary = Path(pilot) / "analysis" / "summary.csv"
    if summary.is_file():
        fitted = pd.read_csv(summary)[["participant_sd", "layout_sd"]].median()
        if fitted.notna().all():
            console.print(f"sds from the pilot's mixed models (median over comparisons): participant {fitted.participant_sd:.2f}, "
                          f"layout {fitted.layout_sd:.2f}", soft_wrap=True)
            return float(fitted.participant_sd), float(fitted.layout_sd)
    return sds


def _power_crossed(plan, rates, alpha: float, power: float, sds: tuple[float, float], replicates: int, params) -> None:
    """Participants per comparison from simulated studies of the design (``power.participants_needed``)."""
    import math

    from rich.table import Table

    from crn_repro.progress import StageProgress
    from crn_repro.stats import judgments_needed
    from crn_repro.study.analyze import print_whole
    from crn_repro.study.observer import CrossedPopulation
    from crn_repro.study.power import CrossedLayout, participants_needed

    layout = CrossedLayout.of(plan, _power_layouts(params))
    table = Table("true rate", "participants", "power there", "judgments", "jobs, all comparisons",
                  title=f"the {plan.design} design, simulated: participants per comparison for mixed-model p < {alpha:g} with "
                        f"power {power:g} (sd participant {sds[0]:g}, layout {sds[1]:g}; {replicates} studies per size)")
    with StageProgress(err_console) as progress:
        task = progress.add_task("simulated studies", total=None)
        for rate in rates:
            population = CrossedPopulation(math.log(rate / (1 - rate)), bias_sd=sds[0], difficulty_sd=sds[1])
            start = math.ceil(judgments_needed(rate, alpha, power) / layout.per_participant)
            n, reached = participants_needed(population, layout, alpha, power, replicates, params.study.seed, start,
                                             progress=lambda n, p: progress.update(task, description=f"rate {rate:g}: {n} participants, power {p:.2f}"))
            table.add_row(f"{rate:.0%}", str(n), f"{reached:.2f}", str(n * layout.per_participant),
                          str(plan.jobs_for(n * layout.per_participant)))
    print_whole(console, table)
    console.print(f"each participant gives a comparison {layout.per_participant} judgments over {layout.layouts} layouts; "
                  f"a typical participant's rate is the true rate (participants and layouts vary around it); power has a "
                  f"Monte Carlo error of about {math.sqrt(power * (1 - power) / replicates):.2f}", soft_wrap=True)


@_study_command("simulate")
def study_simulate(
    study: Path = StudyDir,
    participants: int = typer.Option(..., "--participants", "-n", metavar="N", help="simulated participants"),
    via: Via = typer.Option(Via.web, help="web: through the real web app over HTTP | mturk: an MTurk results CSV"),
    seed: int = typer.Option(0, metavar="SEED", help="seed of the simulated observers"),
    careless_fraction: float = typer.Option(0.1, metavar="FRACTION", help="fraction of participants who answer at random"),
    mturk_input: Optional[Path] = typer.Option(None, metavar="CSV", help="batch_input.csv (default: STUDY/mturk/batch_input.csv)"),
    out: Optional[Path] = typer.Option(None, metavar="CSV", help="results CSV to write (default: STUDY/mturk/simulated_results.csv)"),
) -> None:
    """Simulated participants (a seeded observer model) answer the study end to end, for tests and planning.
    Their answers are marked simulated and never count as human judgments.

    \b
    Example: crn-repro study simulate studies/demo -n 20 --via web"""
    from crn_repro.study.manifest import load_manifest
    from crn_repro.study.observer import hype_criterion, observer_factory

    if participants < 1 or not 0.0 <= careless_fraction <= 1.0:
        raise CrnError("study simulate: need --participants >= 1 and 0 <= --careless-fraction <= 1")
    factory = observer_factory(seed, careless_fraction, criterion=hype_criterion(load_manifest(study)))
    if via is Via.web:
        from crn_repro.study.client import simulate_web_participants
        from crn_repro.study.server import make_server

        server = make_server(study, "127.0.0.1", 0, simulated=True).start()  # records them as simulated
        try:
            ids = simulate_web_participants(server.url, factory, participants, study)
        finally:
            server.stop()
        console.print(f"{len(ids)} simulated participants answered through the web app -> {study}/responses.sqlite, "
                      f"marked simulated (ids sim-...); next: `crn-repro study analyze {study}`", soft_wrap=True)
    else:
        from crn_repro.study.mturk import simulate_results

        path = simulate_results(study, mturk_input or study / "mturk" / "batch_input.csv",
                                out or study / "mturk" / "simulated_results.csv", participants, seed, careless_fraction)
        console.print(f"{participants} simulated MTurk workers -> {path}, marked simulated; "
                      f"next: `crn-repro study analyze {study} --mturk {path}`", soft_wrap=True)


def install_stop_handlers() -> None:
    """Every command stops cleanly on SIGINT (Ctrl-C) and SIGTERM (`kill`, a scheduler, torchrun),
    whatever disposition it inherited: a shell starts background jobs with SIGINT ignored (`cmd &` in a
    script, nohup), and Python then leaves it ignored, so a Ctrl-C or `kill -INT` sent on purpose would do
    nothing. Both unwind as an interruption (temporary files removed, dvclive files cut back to the last
    checkpoint, previous outputs intact) and exit 130 or 143. A Python handler installed before (a
    program calling ``main`` itself) stays."""
    if not callable(signal.getsignal(signal.SIGINT)):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not callable(signal.getsignal(signal.SIGTERM)):
        signal.signal(signal.SIGTERM, _terminate)


def main() -> None:
    install_stop_handlers()
    app()
