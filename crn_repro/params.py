"""params.yaml: the single, validated source of truth for every stage (STYLE convention 5).

Loaded once into frozen dataclasses; unknown keys, missing keys and wrong types are all reported
at once, each with its dotted key. Every experiment setting lives in the file: the dataclasses
below document the keys but hold no defaults.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from crn_repro.config import SEED, Problems, doc, from_dict, to_dict
from crn_repro.errors import CrnError
from crn_repro.files import atomic_write_text, read_yaml
from crn_repro.losses import VggParams
from crn_repro.presets import BASE, PRESETS_DIR, closest_preset, load_preset, preset_file, resolve
from crn_repro.registry import GENERATORS, MODELS
from crn_repro.study.params import StudyParams


@dataclass(frozen=True)
class PathsParams:
    prepared: str = doc("prepared dataset cache (output of `prepare`)")
    runs: str = doc("training runs, one folder per model: model file, training state, logs")
    synth: str = doc("synthesized validation images, one folder per model")
    reports: str = doc("report.md and figures")
    raw: str = doc("this experiment's raw dataset folder, a DVC dependency of `prepare` (data/raw/cityscapes, data/raw/nyu)")
    studies: str = doc("human studies (`crn-repro study`), a DVC dependency of `evaluate`: keep study folders here")


@dataclass(frozen=True)
class DataParams:
    dataset: Literal["synthetic", "cityscapes", "nyu"] = doc(
        "built-in synthetic city, real Cityscapes (section `cityscapes`) or NYU Depth v2 (section `nyu`)"
    )
    image_size_hw: tuple[int, int] = doc("training and evaluation resolution (height, width), aspect 1:2", 4, 16384)
    max_train_images: int | None = doc("use only the first N training frames (null = all)", 1)
    max_val_images: int | None = doc("use only the first N validation frames (null = all)", 1)

    def validate(self):
        if min(self.image_size_hw) < 4:
            yield "image_size_hw", "must be at least 4x8"
        for key in ("max_train_images", "max_val_images"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                yield key, "must be >= 1 or null"


@dataclass(frozen=True)
class CityscapesParams:
    """params.yaml ``cityscapes`` (docs/facts.md §4): the official archives' layout."""

    root: str = doc("folder holding leftImg8bit/{train,val}/<city>/ and gtFine/{train,val}/<city>/")
    labels: Literal["label_ids", "color"] = doc(
        "label_ids: *_gtFine_labelIds.png through the official table (paper); "
        "color: *_gtFine_color.png matched by colour, as the release did"
    )
    expected_train: int | None = doc("frames the train split must hold (official: 2975; null = no check)", 1)
    expected_val: int | None = doc("frames the val split must hold (official: 500; null = no check)", 1)
    frame_size_hw: tuple[int, int] | None = doc("size every frame must have (official: 1024x2048; null = no check)", 1, 65536)
    vivid_train_images: bool = doc(
        "the release's tone-mapped ('vivid') training images, as its 512p and 1024p models were trained (multi-scale "
        "WLS tone mapping, docs/facts.md §12; not in the paper; validation images stay as they are)"
    )
    keep_full_resolution_val_labels: bool = doc(
        "also keep the validation labels at the frames' own size (val/labels_full.npy, 1 GB for Cityscapes val), so "
        "that evaluate can score images upsampled to it with DRN-D-105 (the upsampled variant); false at 1024p (the same)"
    )
    keep_label_ids: bool = doc(
        "also keep each pixel's official labelId ({train,val}/label_ids.npy, 1 byte per pixel: +7.3 GB at "
        "1024p), from which pix2pix with input 'color' reads the official gtFine_color map; true only "
        "when pix2pix trains with input 'color'"
    )

    def validate(self):
        for key in ("expected_train", "expected_val"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                yield key, "must be >= 1 or null"


@dataclass(frozen=True)
class NyuParams:
    """params.yaml ``nyu`` (paper Sec. 5.1, docs/facts.md §4): the NYU Depth v2 labeled set."""

    path: str = doc("nyu_depth_v2_labeled.mat (MATLAB v7.3)")
    class_mapping: str | None = doc(
        "classMapping40.mat (mapClass, className) for the 40-class grouping; null = the `num_classes` "
        "most frequent raw classes of the training split"
    )
    num_classes: int = doc("classes besides void (40 with the standard mapping); c = num_classes + 1", 1, 1000)
    fit: Literal["crop", "pad"] = doc(
        "how 4:3 frames meet the cascade's 1:2: crop (central 320x640 band) or pad (to 480x960 with void)"
    )
    num_frames: int = doc("frames the file must hold (official: 1449)", 2)
    frame_size_hw: tuple[int, int] | None = doc("size every frame must have (official: 480x640; null = no check)", 1, 65536)
    num_train: int = doc("the first N frames train, the rest are the test (val) split (paper: 1200)", 1)

    def validate(self):
        if self.num_classes < 1:
            yield "num_classes", "must be >= 1"
        if not 1 <= self.num_train < self.num_frames:
            yield "num_train", "must be >= 1 and less than num_frames"


@dataclass(frozen=True)
class SyntheticParams:
    seed: int = doc("seed of the synthetic city generator", range=SEED)
    num_train: int = doc("training frames", 1, 1_000_000)
    num_val: int = doc("validation frames", 1, 1_000_000)
    image_size_hw: tuple[int, int] = doc("resolution the frames are rendered at (then resized like real data)", 4, 16384)
    num_cities: int = doc("cities per split", 1, 10_000)

    def validate(self):
        if self.num_train < 1 or self.num_val < 1:
            yield "num_train", "num_train and num_val must be >= 1"


@dataclass(frozen=True)
class TrainParams:
    seed: int = doc("seed; batches and noise at step s derive from (seed, s), so resuming is exact", range=SEED)
    total_steps: int = doc("optimizer steps in total (a re-run resumes up to this)", 1)
    batch_size_per_process: int = doc(
        "images per step in each process (paper: 1); the global batch of a step is this times the number of "
        "processes (train.processes, or the world size of an outer torchrun)", 1, 4096
    )
    processes: int = doc(
        "training processes on this machine, one per GPU: above 1, `crn-repro train` (and so `dvc repro`) "
        "relaunches itself through `torchrun --standalone --nproc_per_node N`; under an outer torchrun "
        "(several nodes) torchrun's world size counts and this must match its processes per node", 1, 4096
    )
    schedule_scale: float = doc(
        "multiplies every model's total_steps, its own `train:` override included (rounded, at least 1): one "
        "setting for a smoke run, `dvc exp run -S train.schedule_scale=0.05`, or a longer one; 1 = as written. The "
        "segmenter, the judge of every experiment's automatic scores, keeps its own schedule", 0, 1000, low_open=True
    )
    checkpoint_every_steps: int = doc("write the model file and training state every N steps (a multiple of log_every_steps)", 1)
    log_every_steps: int = doc(
        "steps between synchronisations with the host: the losses averaged over the interval are logged, "
        "shown and checked for NaN/inf (a GPU is never kept waiting in between)", 1
    )
    prefetch_batches: int = doc("batches read (and pinned, on CUDA) ahead of the step in a background thread; 0 = none", 0, 64)
    precision: Literal["auto", "fp32", "bf16"] = doc("auto = bf16 autocast on CUDA, fp32 on CPU; bf16 also runs on CPUs")
    channels_last: Literal["auto", "on", "off"] = doc("auto = channels_last memory format on CUDA")
    compile: bool = doc("torch.compile the networks (pays off on GPUs over long runs; compiling takes minutes)")
    activation_checkpointing: bool = doc(
        "CRN models: keep only each refinement module's input and recompute the module in the backward pass "
        "(about a third more compute; the 1024p CRN then trains in 12 GB in bf16)"
    )
    fused_adam: bool = doc("Adam's fused implementation: one kernel for all parameters (CUDA and CPU)")
    sync_batchnorm: bool = doc(
        "BatchNorm models (pix2pix, gan-semseg) under several processes: torch's SyncBatchNorm takes batch statistics "
        "over the global batch, so N processes at batch b compute what one process at N x b does; false: each process "
        "normalises its own b images (the running statistics are then the first process's). CUDA only (torch's "
        "SyncBatchNorm does not run on CPUs); no effect on one process or on models without BatchNorm"
    )
    adam_epsilon: Literal["pytorch", "tensorflow"] = doc(
        "where Adam's epsilon (1e-8) enters: pytorch = torch.optim.Adam (added to sqrt(v_hat)); tensorflow = "
        "TensorFlow 1's epsilon hat, as the authors' release trained (docs/facts.md §3); they differ early in training"
    )
    cache_reference_features: bool = doc(
        "keep the perception network's features of every training image after their first use (the data has "
        "no augmentation, so they never change): a third less VGG-19 work per step, for small datasets only "
        "(the demo's 96 images: 0.2 GB in bf16; Cityscapes at 256p would need about 100 GB)"
    )
    cpu_threads: int | None = doc(
        "torch threads per process on a CPU (null: torch's default, one per core); on a shared machine fewer "
        "threads than cores avoid oversubscription", 1, 4096
    )
    init_from: str | None = doc(
        "model.pt to initialise a fresh run from: every tensor whose name and shape match is copied "
        "(the release's progressive 256p -> 512p -> 1024p schedule, docs/facts.md §3); null = from scratch"
    )
    train_last_modules: int | None = doc(
        "CRN models: train only the last N refinement modules (and the output layer), freezing the rest "
        "(the release's 1024p run: 2); null = train everything", 1
    )

    def validate(self):
        for key in ("total_steps", "batch_size_per_process", "processes", "checkpoint_every_steps", "log_every_steps"):
            if getattr(self, key) < 1:
                yield key, "must be >= 1"
        if self.log_every_steps >= 1 and self.checkpoint_every_steps % self.log_every_steps:
            yield "checkpoint_every_steps", f"must be a multiple of log_every_steps ({self.log_every_steps})"
        if self.prefetch_batches < 0:
            yield "prefetch_batches", "must be >= 0"
        if not self.schedule_scale > 0:
            yield "schedule_scale", "must be > 0"
        if self.cpu_threads is not None and self.cpu_threads < 1:
            yield "cpu_threads", "must be >= 1 or null"
        if self.train_last_modules is not None and self.train_last_modules < 1:
            yield "train_last_modules", "must be >= 1 or null"


@dataclass(frozen=True)
class OptimizerParams:
    lr: float = doc("Adam learning rate (paper: 1e-4)", 0, 1, low_open=True)
    betas: tuple[float, float] = doc("Adam betas (paper/release: 0.9, 0.999)", 0, 1, high_open=True)


@dataclass(frozen=True)
class SynthesizeParams:
    batch_size: int = doc("layouts per forward pass", 1, 4096)


@dataclass(frozen=True)
class EvaluateParams:
    """params.yaml ``evaluate``."""

    reference_model: str = doc("the model every other one is compared against in the preference table (paper: crn)")
    baselines: tuple[str, ...] | None = doc(
        "the models Table 1 compares it with (paper: image-space, gan-semseg, pix2pix, unet, fullres); null = every other model"
    )
    segmenter: str | None = doc("segmenter model file for the segmentation score; null = the pipeline's own")
    inception: Literal["none", "pytorch-fid", "torchvision"] = doc(
        "Inception weights for FID/KID: pytorch-fid (the published FID protocol), torchvision, or none"
    )
    inception_path: str | None = doc("the Inception weights file (pt_inception-2015-12-05-6726825d.pth for pytorch-fid)")
    drn_weights: str | None = doc(
        "fyu/drn's drn-d-105_ms_cityscapes.pth: Cityscapes mIoU and pixel accuracy with DRN-D-105 (SPADE's segmenter) "
        "beside the pipeline's own segmenter; null or a missing file: reported as missing"
    )
    lpips_backbone: str | None = doc(
        "torchvision's AlexNet weights (alexnet-owt-7be5be79.pth) for diversity with LPIPS v0.1 (the lpips package's "
        "learned weights); null: LPIPS diversity is reported as missing"
    )
    human_judgments: str | tuple[str, ...] | None = doc(
        "CSV(s) of human pairwise judgments (judgments.csv of `crn-repro study analyze`; a list combines the "
        "unlimited and the timed study); null = none"
    )
    bootstrap_resamples: int = doc("bootstrap resamples for every interval", 10, 1_000_000)
    realism_k: int = doc("k of the k-NN radii of the realism score (Kynkäänniemi et al. 2019: 3)", 1, 1000)
    batch_size: int = doc("images per forward pass", 1, 4096)
    seed: int = doc("seed of the bootstrap", range=SEED)

    @property
    def judgment_files(self) -> tuple[str, ...]:
        """``human_judgments`` as a tuple of paths (empty when null)."""
        if self.human_judgments is None:
            return ()
        return (self.human_judgments,) if isinstance(self.human_judgments, str) else tuple(self.human_judgments)

    def validate(self):
        if self.inception != "none" and not self.inception_path:
            yield "inception_path", "required when inception is set (no weights are downloaded)"
        if self.bootstrap_resamples < 10:
            yield "bootstrap_resamples", "must be >= 10"


@dataclass(frozen=True)
class ReportParams:
    figure_rows: int = doc("validation layouts shown in the qualitative figure", 1, 1000)


@dataclass(frozen=True)
class ModelParams:
    network: Any
    objective: Any
    optimizer: dict[str, OptimizerParams]
    train: TrainParams  # the global `train` section with this model's `train` overrides applied


@dataclass(frozen=True)
class Params:
    paths: PathsParams
    data: DataParams
    cityscapes: CityscapesParams
    nyu: NyuParams
    synthetic: SyntheticParams
    models: tuple[str, ...]
    train: TrainParams
    vgg: VggParams
    synthesize: SynthesizeParams
    evaluate: EvaluateParams
    report: ReportParams
    study: StudyParams
    model_sections: dict[str, ModelParams]

    def model(self, name: str) -> ModelParams:
        if name not in self.model_sections:
            raise CrnError(f"params: no `{name}` section (models with sections: {', '.join(self.model_sections)})")
        return self.model_sections[name]

    def to_dict(self) -> dict:
        out = to_dict({k: getattr(self, k) for k in ("paths", "data", "cityscapes", "nyu", "synthetic", "models", "train", "vgg", "synthesize", "evaluate", "report", "study")})
        out.update(to_dict(self.model_sections))  # model `train` entries show the merged values
        return out


STATIC_SECTIONS = {
    "paths": PathsParams,
    "data": DataParams,
    "cityscapes": CityscapesParams,
    "nyu": NyuParams,
    "synthetic": SyntheticParams,
    "train": TrainParams,
    "vgg": VggParams,
    "synthesize": SynthesizeParams,
    "evaluate": EvaluateParams,
    "report": ReportParams,
    "study": StudyParams,
}


MODEL_KEYS = ("network", "objective", "optimizer", "train")


def _model_section(name: str, raw: Any, global_train: Any, problems: Problems) -> ModelParams | None:
    spec = MODELS[name]
    if not isinstance(raw, dict):
        problems.append(f"{name}: expected a mapping with {', '.join(MODEL_KEYS)}")
        return None
    for key in raw:
        if key not in MODEL_KEYS:
            problems.append(f"{name}.{key}: unknown key (valid keys: {', '.join(MODEL_KEYS)})")
    missing = [key for key in MODEL_KEYS if key not in raw]
    for key in missing:
        problems.append(f"{name}.{key}: missing key")
    if missing:
        return None
    network = from_dict(spec.network_params, raw["network"], f"{name}.network", problems)
    objective = from_dict(spec.objective_params, raw["objective"], f"{name}.objective", problems)
    optimizer = {}
    opt_raw = raw["optimizer"]
    expected = list(spec.networks)
    if not isinstance(opt_raw, dict) or sorted(opt_raw) != sorted(expected):
        problems.append(f"{name}.optimizer: expected one entry per network: {', '.join(expected)}")
    else:
        for net_name in expected:
            optimizer[net_name] = from_dict(OptimizerParams, opt_raw[net_name], f"{name}.optimizer.{net_name}", problems)
    overrides = raw["train"] or {}
    if not isinstance(overrides, dict):
        problems.append(f"{name}.train: expected a mapping of `train` keys to override (or {{}})")
        return None
    train = None
    if isinstance(global_train, dict):
        merged = Problems()
        train = from_dict(TrainParams, {**global_train, **overrides}, f"{name}.train", merged)
        prefix = f"{name}.train."  # a problem of the global `train` section is reported once, as train.<key>
        problems.extend(p for p in merged if not (p.startswith(prefix) and "train." + p[len(prefix):] in problems))
    if train is not None and train.schedule_scale != 1.0 and spec.role != "segmenter":  # every model's, not the judge's
        train = dataclasses.replace(train, total_steps=max(1, round(train.total_steps * train.schedule_scale)))
    return ModelParams(network, objective, optimizer, train)


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, as written or with links resolved."""
    return any(
        Path(fn(path)).is_relative_to(fn(folder)) for fn in (os.path.abspath, os.path.realpath)
    )


def _raw_dependency_problems(sections: dict) -> list[str]:
    """What `prepare` reads must lie in ``paths.raw``, the folder DVC watches for it; otherwise a changed
    dataset would not rerun the pipeline (or DVC would watch a folder that prepare does not read)."""
    raw, dataset = sections["paths"].raw, sections["data"].dataset
    read = {
        "cityscapes": {"cityscapes.root": getattr(sections.get("cityscapes"), "root", None)},
        "nyu": {"nyu.path": getattr(sections.get("nyu"), "path", None),
                "nyu.class_mapping": getattr(sections.get("nyu"), "class_mapping", None)},
    }.get(dataset, {})
    return [
        f"{key}: {value} is outside paths.raw ({raw}), the folder DVC watches for `prepare`; "
        f"put the data under paths.raw (a symlinked folder is fine) or set paths.raw to the folder holding it"
        for key, value in read.items() if value is not None and not _inside(value, raw)
    ]


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate a parsed params mapping; raise CrnError listing every problem."""
    if not isinstance(raw, dict):
        raise CrnError(f"{source}: expected a mapping of sections")
    problems = Problems()
    valid = list(STATIC_SECTIONS) + ["models"] + list(MODELS)
    for key in raw:
        if key not in valid:
            problems.append(f"{key}: unknown section (valid: {', '.join(valid)})")
    sections = {}
    for key, cls in STATIC_SECTIONS.items():
        if key not in raw:
            problems.append(f"{key}: missing section")
        else:
            sections[key] = from_dict(cls, raw[key], key, problems)
    models = raw.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        problems.append("models: expected a non-empty list of model names")
        models = []
    for name in models:
        if name not in GENERATORS:
            problems.append(f"models: unknown model {name!r} (valid: {', '.join(GENERATORS)})")
        elif name not in raw:
            problems.append(f"{name}: missing section for listed model")
    global_train = raw.get("train")
    if isinstance(global_train, dict):
        for key in ("init_from", "train_last_modules"):
            if global_train.get(key) is not None:
                problems.append(f"train.{key}: set it per model (e.g. crn.train.{key}); every model, the segmenter too, reads `train`")
    model_sections = {}
    for name in MODELS:
        if name in raw:
            model_sections[name] = _model_section(name, raw[name], raw.get("train"), problems)
    if sections.get("paths") is not None and sections.get("data") is not None:
        problems.extend(_raw_dependency_problems(sections))
    if problems:
        raise CrnError(f"{source}: invalid params: " + "; ".join(problems))
    return Params(models=tuple(models), model_sections=model_sections, **sections)


REQUIRED_SECTIONS = (*STATIC_SECTIONS, "models")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file: a full one (params.yaml) or a preset (``presets/NAME.yaml``, an
    override file, resolved over ``presets/demo.yaml`` exactly as `crn-repro preset NAME` resolves it).
    Values are read as DVC reads them (YAML 1.2: ``2e-4`` is a float)."""
    path = Path(path)
    if not path.is_file():
        raise CrnError(f"{path}: params file not found; run from the repository root or pass --params")
    preset = preset_file(path)
    if preset is not None:
        name, folder = preset
        return parse_params(load_preset(name, folder), f"{path} (resolved over {folder / BASE}.yaml)")
    raw = read_yaml(path, "fix the file or write it again with `crn-repro preset NAME`")
    missing = [key for key in REQUIRED_SECTIONS if not isinstance(raw, dict) or key not in raw]
    if isinstance(raw, dict) and missing and len(missing) < len(REQUIRED_SECTIONS):
        raise CrnError(
            f"{path}: a partial params file (no {', '.join(missing)}) that is not a preset; --params takes a full "
            f"params file or a preset (presets/NAME.yaml, overrides of presets/demo.yaml): move it into presets/ "
            f"and pass that, or write a full file with `crn-repro --params FILE preset demo` and edit it")
    return parse_params(raw, str(path))


def write_preset(name: str, out: Path, force: bool = False, presets_dir: Path = PRESETS_DIR) -> Path:
    """Write the resolved preset ``name`` to ``out`` (atomically); a preset that does not validate is
    never written. An ``out`` whose values are no preset's holds edits of its own: it is replaced only
    with ``force``, and the refusal lists the edits against the closest preset. The preset's raw-data
    folder (``paths.raw``, next to ``out``) is created empty if missing, so that `dvc repro` reaches
    `prepare`, which says what to download and where to put it, instead of DVC stopping at the missing
    dependency ("No such file or directory")."""
    presets_dir, out = Path(presets_dir), Path(out)
    text = resolve(name, presets_dir)
    params = parse_params(load_preset(name, presets_dir), f"{presets_dir / name}.yaml (resolved)")
    if preset_file(out) is not None:
        raise CrnError(f"{out}: is a preset file; write the params file elsewhere (default: params.yaml)")
    if out.exists() and not force:
        try:
            current = read_yaml(out, "")
        except CrnError as error:
            raise CrnError(f"{str(error).rstrip('; ')}; to replace it, run again with --force") from None
        closest, changes = closest_preset(current, presets_dir)
        if changes:
            shown = "; ".join(changes[:12]) + (f"; and {len(changes) - 12} more" if len(changes) > 12 else "")
            raise CrnError(f"{out}: has edits that no preset holds (against preset {closest}: {shown}); keep them "
                           "(commit or copy the file), then run again with --force to replace it")
    atomic_write_text(out, text)
    raw = out.parent / params.paths.raw  # prepare's DVC dependency: without it DVC stops before prepare can say
    if not raw.exists() and not raw.is_symlink():  # what to download, so it starts as an empty folder
        raw.mkdir(parents=True)
    return out
