"""Every shell command in README.md, docs/*.md and examples/, and how the test suite checks it.

`tests/test_doc_commands.py` extracts the commands (fenced bash/sh/shell/console blocks line by line,
`cmd:` lines of fenced YAML, inline code that starts with a command such as `crn-repro`, `dvc`, `torchrun`,
`sbatch`, `python`, `git`; example scripts and the commands in their comments) and fails for any command
without an entry in CHECKS below, or an entry whose command is no longer documented.

ADDING A CHECK for a new documented command is one line in CHECKS: the command exactly as the docs write it
(whitespace collapsed to single spaces; a trailing `# comment` of a fenced line left out) mapped to one of

  run()                      run it in a temporary clone with tiny params (the pipeline already run there by
                             `dvc repro`); it must exit 0. run(instance="...") runs that instead (placeholders
                             filled in); where="fresh": in a clone as committed (the demo's params.yaml, nothing
                             run yet); fails_with=("text", ...): it must fail, saying each text; expect=(...):
                             its output must say each text.
  parse(why="...")           for what a test machine cannot run (GPUs, a dataset, weights, hours): every program
                             of the line parses it with its own parser (crn-repro's, torchrun's, DVC's), and the
                             params it names resolve and validate (-p FILE, --preset NAME, `crn-repro preset
                             NAME`, `dvc exp run -S key=value` applied by DVC's own code).
  tested(by="tests/test_x.py::test_name")  another test runs it (that test must exist); crn-repro, dvc and
                             torchrun lines are also parsed as by parse().
  part(of="...")             a fragment or a template of another documented command (placeholders such as
                             NAME, <stage>, N, ... stand for any word), which has its own check.
  stage()                    a pipeline stage's command exactly as dvc.yaml runs it (`crn-repro train --model crn`
                             is train@crn): the test checks dvc.yaml says so, and the tiny clone's `dvc repro`
                             ran it; a chain of stage commands (a && b) is checked part by part.

The registry is plain data so that several people can add lines at once without touching the test code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROGRAMS = ("crn-repro", "dvc", "torchrun", "sbatch", "srun", "python", "python3", "pip", "pytest", "bash", "git",
            "ln", "rmdir", "export", "nvidia-smi", "scontrol", "squeue", "scancel", "apt-get", "playwright", "npm",
            "npx", "curl", "wget", "mkdir", "cp", "mv", "rm", "tar", "unzip", "docker", "caddy", "nginx", "systemctl",
            "Rscript")
SHELL_FENCES = ("bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Check:
    kind: str  # run | parse | tested | part | stage
    instance: str | None = None
    where: str = "tiny"
    fails_with: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()
    by: str | None = None
    of: str | None = None
    why: str = ""
    timeout: float = 600


def run(instance: str | None = None, where: str = "tiny", fails_with: tuple[str, ...] = (), expect: tuple[str, ...] = (),
        timeout: float = 600) -> Check:
    assert where in ("tiny", "fresh"), where
    return Check("run", instance=instance, where=where, fails_with=tuple(fails_with), expect=tuple(expect), timeout=timeout)


def parse(why: str, instance: str | None = None) -> Check:
    return Check("parse", instance=instance, why=why)


def tested(by: str, instance: str | None = None, why: str = "") -> Check:
    return Check("tested", instance=instance, by=by, why=why)


def part(of: str) -> Check:
    return Check("part", of=of)


def stage() -> Check:
    return Check("stage")


CHECKS: dict[str, Check] = {
    # --- README: the two commands, CI ---------------------------------------------------------------------
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && dvc repro":
        tested(by="tests/test_doc_commands.py::test_the_first_command_installs_as_the_test_command_does_then_runs_dvc_repro"),
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest -q --slow":
        tested(by="tests/test_doc_commands.py::test_ci_runs_the_readme_test_command_exactly"),
    "python -m pytest": part(of="python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest -q --slow"),
    "pytest": part(of="python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest -q --slow"),
    "python -m pytest -q --slow": part(of="python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest -q --slow"),
    "pytest --slow": part(of="python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest -q --slow"),
    "bash .ci/run": tested(by="tests/test_doc_commands.py::test_ci_runs_the_readme_test_command_exactly", why="it is CI"),
    "apt-get install chromium nginx openssl": tested(by="tests/test_doc_commands.py::test_ci_installs_the_engines_the_tests_require"),
    "apt-get install nginx": tested(by="tests/test_doc_commands.py::test_ci_installs_the_engines_the_tests_require"),
    "nginx": part(of="apt-get install nginx"),
    # --- docs/study-deployment.md: the HTTPS deployment (tests/study/test_proxy.py runs its marked blocks) ---
    "crn-repro study serve": part(of="crn-repro study serve studies/demo"),
    "openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout privkey.pem -out fullchain.pem":
        tested(by="tests/study/test_proxy.py::test_the_documented_proxy_serves_the_study_over_https_only"),
    "crn-repro study serve studies/demo --host 127.0.0.1 --port 8000 --trusted-proxy 127.0.0.1 --public-url https://study.example.org":
        tested(by="tests/study/test_proxy.py::test_the_documented_proxy_serves_the_study_over_https_only"),
    "apt-get install certbot python3-certbot-nginx": parse(why="a certificate from Let's Encrypt needs a public domain name and the internet"),
    "ln -s /etc/nginx/sites-available/crn-study /etc/nginx/sites-enabled/ && nginx -t && systemctl reload nginx": tested(
        by="tests/study/test_proxy.py::test_the_documented_proxy_serves_the_study_over_https_only",
        why="the test runs `nginx -t` and nginx itself on this site configuration; enabling it in /etc and reloading a "
            "system nginx need systemd, which a test machine lacks"),
    # --- the pipeline, in a clone with tiny params after `dvc repro` ---------------------------------------
    "dvc repro": run(expect=("Data and pipelines are up to date",)),
    "dvc status": run(expect=("up to date",)),
    "dvc status --json": run(),
    "dvc params diff": run(),
    "dvc metrics show": run(expect=("runs/crn/metrics.json",)),
    "dvc plots show": run(expect=("dvc_plots/index.html",)),
    "dvc exp show": run(),
    "dvc exp show --drop '.*' --keep 'Experiment|reports/headline/crn.json:(miou|fd_seg|realism)'": run(expect=("fd_seg",)),
    "crn-repro prepare": stage(),
    "crn-repro <stage>": part(of="crn-repro prepare"),
    "crn-repro train --model segmenter": stage(),
    "crn-repro train --model crn": stage(),
    "crn-repro train --model NAME": part(of="crn-repro train --model crn"),
    "crn-repro train": part(of="crn-repro train --model crn"),
    "crn-repro train --model crn --until-step N": run(instance="crn-repro train --model crn --until-step 2"),
    "crn-repro train --until-step N": part(of="crn-repro train --model crn --until-step N"),
    "crn-repro synthesize --model crn": stage(),
    "crn-repro synthesize --model NAME": part(of="crn-repro synthesize --model crn"),
    "crn-repro synthesize --model crn && crn-repro evaluate": stage(),
    "crn-repro evaluate": stage(),
    "crn-repro report": stage(),
    "crn-repro synthesize --model crn --labels DIR --out DIR": run(
        instance="mkdir -p my_labels && python -c \"import numpy as np; from PIL import Image; "
                 "Image.fromarray(np.full((64, 128), 7, np.uint8)).save('my_labels/a_gtFine_labelIds.png')\" "
                 "&& crn-repro synthesize --model crn --labels my_labels --out my_images",
        expect=("crn: 1 layouts x 1 images at the model's resolution", "-> my_images")),
    "crn-repro --version": run(expect=("crn-repro 0.1.0",)),
    "crn-repro --help": run(expect=("prepare", "train", "report")),
    "crn-repro COMMAND --help": run(instance=(
        "python -c \"from typer.main import get_command; from typer.testing import CliRunner; from crn_repro.cli import app; "
        "group = get_command(app); names = [[n] for n in group.list_commands(None)] + [['study', n] for n in "
        "group.get_command(None, 'study').list_commands(None)]; bad = [n for n in names if "
        "CliRunner().invoke(app, [*n, '--help']).exit_code]; print(len(names), 'commands, --help failed for', bad); "
        "raise SystemExit(bool(bad))\""), expect=("commands, --help failed for []",)),
    "crn-repro info --model crn --preset cityscapes-1024p --json": run(expect=('"parameters": 98674531',)),
    "crn-repro info --model NAME --json": part(of="crn-repro info --model crn --preset cityscapes-1024p --json"),
    "crn-repro info": part(of="crn-repro info --model crn --preset cityscapes-1024p --json"),
    "crn-repro bench": run(expect=("crn (params.yaml",)),
    "crn-repro bench --table": run(expect=("| device |",)),
    "crn-repro bench --suite gpu": parse(
        why="a CUDA GPU (none lent to us: never run on one); tests/test_benchsuite.py runs --smoke and checks the refusal without CUDA"),
    "crn-repro bench --suite gpu --smoke": tested(
        by="tests/test_benchsuite.py::test_the_smoke_suite_runs_every_part_and_writes_its_file"),
    "crn-repro bench --model crn --preset cityscapes-1024p": parse(why="a GPU: minutes"),
    "crn-repro bench --model crn --preset cityscapes-256p --quick": parse(
        why="minutes on our 2-core CPU (8 steps at 64x128 at the paper's widths); tests/test_bench.py runs bench on tiny params"),
    "crn-repro bench --preset cityscapes-1024p --cpu-rss": parse(
        why="a 1024x2048 step on the CPU: 147 s and 7.7 GB; tests/test_bench.py runs --cpu-rss's function on tiny params"),
    # --- experiments and the way back ----------------------------------------------------------------------
    "dvc exp run -S train.schedule_scale=0.05": tested(by="tests/test_doc_commands.py::test_back_from_the_smoke_experiment_with_one_command"),
    "dvc exp apply HEAD": tested(by="tests/test_doc_commands.py::test_back_from_the_smoke_experiment_with_one_command"),
    'git add dvc.lock reports && git commit -m "demo run"': tested(by="tests/test_doc_commands.py::test_back_from_the_smoke_experiment_with_one_command"),
    "dvc exp run -S": part(of="dvc exp run -S train.schedule_scale=0.05"),
    "dvc exp run -S crn.optimizer.G.lr=0.002": parse(
        why="trains as the smoke run does (that one runs); here DVC's own -S edit of params.yaml is applied and validated"),
    "dvc exp run -S train.processes=8": parse(why="8 GPUs"),
    "dvc exp run --dry": run(where="fresh", fails_with=("No such file or directory",)),
    "dvc repro --dry": run(where="fresh", fails_with=("No such file or directory",)),
    # --- presets and data, in a clone as committed (no dataset here) -------------------------------------
    "crn-repro preset": run(where="fresh", expect=("cityscapes-256p", "nyu")),
    "crn-repro preset NAME": part(of="crn-repro preset demo"),
    "crn-repro preset cityscapes-256p && dvc repro": run(where="fresh", fails_with=("data/raw/cityscapes/leftImg8bit/train: split folder missing",)),
    "crn-repro preset cityscapes-512p && dvc repro": run(where="fresh", fails_with=("data/raw/cityscapes/leftImg8bit/train: split folder missing",)),
    "crn-repro preset cityscapes-1024p && dvc repro": run(where="fresh", fails_with=("data/raw/cityscapes/leftImg8bit/train: split folder missing",)),
    "crn-repro preset nyu && dvc repro": run(where="fresh", fails_with=("nyu_depth_v2_labeled.mat: NYU labeled set not found; download",)),
    "crn-repro preset cityscapes-1024p && dvc repro prepare segmenter": run(where="fresh", fails_with=("data/raw/cityscapes/leftImg8bit/train: split folder missing",)),
    "crn-repro preset demo": run(where="fresh", expect=("wrote params.yaml from presets/demo.yaml",)),
    "crn-repro preset cityscapes-512p && dvc exp run -S crn.train.init_from=runs/cityscapes-256p/crn-diverse/model.pt": parse(
        why="needs Cityscapes and the 256p run's model file"),
    "crn-repro preset cityscapes-1024p --force && dvc exp run -S crn.train.init_from=runs/cityscapes-512p/crn/model.pt -S crn.train.train_last_modules=2": parse(
        why="needs Cityscapes and the 512p run's model file"),
    "dvc config cache.type hardlink,symlink": run(where="fresh"),
    "dvc add": run(where="fresh", instance="dvc add /tmp", fails_with=("outside of DVC project",)),
    "rmdir data/raw/cityscapes && ln -s /datasets/cityscapes data/raw/cityscapes": run(
        where="fresh", instance="crn-repro preset cityscapes-256p && rmdir data/raw/cityscapes && ln -s /datasets/cityscapes "
                               "data/raw/cityscapes && test -L data/raw/cityscapes && rm data/raw/cityscapes && crn-repro preset demo"),
    "python benchmarks/loader_vs_step.py": parse(why="a 256x512 CRN training step takes minutes on a CPU"),
    # --- the authors' models, your own layouts -------------------------------------------------------------
    "crn-repro import-release result_1024p/model.ckpt --out runs/cityscapes-1024p/crn/model.pt": tested(
        by="tests/test_release.py::test_cli_import_then_the_model_file_is_checked",
        why="needs the authors' checkpoint; the test writes release checkpoints with TensorFlow's own Saver"),
    "crn-repro import-release PREFIX --out FILE": part(of="crn-repro import-release result_1024p/model.ckpt --out runs/cityscapes-1024p/crn/model.pt"),
    "crn-repro import-release": part(of="crn-repro import-release result_1024p/model.ckpt --out runs/cityscapes-1024p/crn/model.pt"),
    # --- several GPUs and machines ------------------------------------------------------------------------
    "torchrun": part(of="torchrun --standalone --nproc_per_node 8 -m crn_repro train --model crn"),
    "torchrun --standalone --nproc_per_node 8 -m crn_repro train --model crn": tested(
        by="tests/test_distributed.py::test_two_processes_compute_what_one_process_with_twice_the_batch_does",
        why="8 GPUs; the test runs 2 CPU processes through the same `torchrun --standalone`"),
    "torchrun --nnodes 2": tested(by="tests/test_distributed.py::test_an_interrupted_two_node_run_resumes", instance=(
        "torchrun --nnodes 2 --nproc_per_node 1 --node_rank 0 --rdzv_backend c10d --rdzv_id crn-test "
        "--rdzv_endpoint 127.0.0.1:29500 -m crn_repro --params params.yaml train --model crn")),
    "torchrun --standalone --nproc_per_node N -m crn_repro train ...": part(of="torchrun --standalone --nproc_per_node 8 -m crn_repro train --model crn"),
    "torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_id crn --rdzv_endpoint node001:29500 -m crn_repro -p presets/cityscapes-1024p.yaml train --model crn": tested(
        by="tests/test_distributed.py::test_two_nodes_at_a_c10d_rendezvous_train_what_one_process_at_twice_the_batch_does",
        why="4 machines with 8 GPUs and Cityscapes; the test starts 2 such launchers on 127.0.0.1"),
    "torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_id crn-1024p --rdzv_endpoint node001:29500 -m crn_repro -p presets/cityscapes-1024p.yaml train --model crn": tested(
        by="tests/test_distributed.py::test_two_nodes_at_a_c10d_rendezvous_train_what_one_process_at_twice_the_batch_does",
        why="4 machines with 8 GPUs and Cityscapes; the test starts 2 such launchers on 127.0.0.1"),
    "sbatch --nodes 4 examples/slurm/train.sbatch crn presets/cityscapes-1024p.yaml": tested(
        by="tests/test_slurm.py::test_the_documented_submissions_pass_sbatchs_own_check",
        why="GPU nodes and Cityscapes; sbatch --test-only on the test cluster, and tiny params run as a two-node job"),
    "sbatch --nodes 4 examples/slurm/train.sbatch MODEL PARAMS_FILE [crn-repro train options ...]": part(
        of="sbatch --nodes 4 examples/slurm/train.sbatch crn presets/cityscapes-1024p.yaml"),
    "sbatch --gpus-per-node 4 ...": tested(by="tests/test_slurm.py::test_the_documented_submissions_pass_sbatchs_own_check",
                                          instance="sbatch --test-only --gpus-per-node 0 --nodes 4 examples/slurm/train.sbatch crn params.yaml"),
    "examples/slurm/train.sbatch": tested(by="tests/test_slurm.py::test_sbatch_trains_then_a_longer_submission_resumes"),
    "sbatch --wait --nodes 4 examples/slurm/train.sbatch ${item} params.yaml": tested(
        by="tests/test_slurm.py::test_a_dvc_stage_that_submits_the_job_and_waits"),
    "sbatch --wait": part(of="sbatch --wait --nodes 4 examples/slurm/train.sbatch ${item} params.yaml"),
    # --- the human study (tests/study runs each command on a tiny trained pipeline) ---------------------
    "crn-repro study": part(of="crn-repro study make"),
    "crn-repro study ...": part(of="crn-repro study make"),
    "crn-repro study make": tested(by="tests/study/test_cli_study.py::test_study_end_to_end"),
    "crn-repro study serve studies/demo": tested(by="tests/study/test_server.py::test_cli_serve_runs_until_ctrl_c"),
    "crn-repro study serve STUDY [--host 127.0.0.1] [--port 8000]": part(of="crn-repro study serve studies/demo"),
    "crn-repro study export-mturk studies/demo studies/demo/mturk --base-url URL": tested(
        by="tests/study/test_cli_study.py::test_study_end_to_end",
        instance="crn-repro study export-mturk studies/demo studies/demo/mturk --base-url https://example.org/demo"),
    "crn-repro study preregister studies/demo": tested(by="tests/study/test_cli_study.py::test_study_end_to_end"),
    "crn-repro study preregister STUDY": part(of="crn-repro study preregister studies/demo"),
    "crn-repro study analyze studies/demo [--mturk Batch_123_batch_results.csv ...] [--prolific prolific_export.csv] [--no-web]": tested(
        by="tests/study/test_cli_study.py::test_study_end_to_end",
        instance="crn-repro study analyze studies/demo --mturk studies/demo/mturk/simulated_results.csv"),
    "crn-repro study simulate STUDY -n 20 --via web|mturk": tested(
        by="tests/study/test_cli_study.py::test_study_end_to_end", instance="crn-repro study simulate studies/demo -n 20 --via web"),
    "crn-repro study simulate --via web": part(of="crn-repro study simulate STUDY -n 20 --via web|mturk"),
    "crn-repro study power [--rate 0.7] [--alpha 1e-3] [--power 0.9]": run(
        where="fresh", instance="crn-repro study power --rate 0.7 --alpha 1e-3 --power 0.9", expect=("judgments for p < 0.001",)),
    "dvc exp run -S evaluate.human_judgments=studies/demo/analysis/judgments.csv": parse(
        why="needs a study's answers; tests/study/test_cli_study.py runs evaluate and report with this setting"),
    "dvc exp run -S 'evaluate.human_judgments=[studies/demo/analysis/judgments.csv,studies/timed/analysis/judgments.csv]'": parse(
        why="needs both studies' answers; tests/study/test_cli_study.py runs evaluate and report with this setting"),
}


# --- extraction -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Found:
    command: str  # whitespace collapsed
    where: str  # file:line


def normalise(text: str) -> str:
    return " ".join(text.split())


def _strip_comment(line: str) -> str:
    """A shell line without its trailing `# comment` (a # that starts a word, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _is_command(text: str) -> bool:
    first = text.split(maxsplit=1)[0] if text.strip() else ""
    return first in PROGRAMS or first.startswith("./") or first == "$"  # "$ cmd": a prompt; `$name` is a variable


def _shell_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Logical lines of a shell block: continuations joined, comments and prompts removed."""
    out, pending, start = [], "", 0
    for number, line in lines:
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = _strip_comment(pending + line).strip()
        pending = ""
        text = text[2:] if text.startswith("$ ") else text
        if text:
            out.append((start, text))
    return out


def markdown_commands(path: Path) -> list[Found]:
    rel = path.relative_to(REPO)
    found: list[Found] = []
    fence, block, paragraph = None, [], []

    def flush_paragraph():
        text = " ".join(line for _, line in paragraph)
        for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", text):
            if _is_command(span):
                found.append(Found(normalise(span), f"{rel}:{paragraph[0][0]}"))
        paragraph.clear()

    for number, line in enumerate(path.read_text().splitlines(), 1):
        marker = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if marker and fence is None:
            flush_paragraph()
            fence, info, block = marker.group(1), marker.group(2).lower(), []
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                if info in SHELL_FENCES:
                    found += [Found(normalise(text), f"{rel}:{n}") for n, text in _shell_lines(block)]
                elif info in ("yaml", "yml"):
                    found += [Found(normalise(m.group(1)), f"{rel}:{n}") for n, text in block
                              if (m := re.match(r"^\s*cmd:\s*(.+?)\s*$", text))]
                fence = None
            else:
                block.append((number, line))
            continue
        if line.strip():
            paragraph.append((number, line.strip()))
        else:
            flush_paragraph()
    flush_paragraph()
    return found


def example_commands(path: Path) -> list[Found]:
    """An example script is a command of its own (`examples/...`); the commands its comments show too."""
    rel = path.relative_to(REPO)
    found = [Found(str(rel), f"{rel}:1")]
    for number, line in enumerate(path.read_text().splitlines(), 1):
        comment = re.match(r"^\s*#\s+(.*)$", line)
        if comment and _is_command(comment.group(1)) and not line.startswith("#!"):
            found.append(Found(normalise(comment.group(1)), f"{rel}:{number}"))
    return found


def documented_commands(repo: Path = REPO) -> dict[str, list[str]]:
    """{command: [file:line, ...]} over README.md, docs/*.md and examples/."""
    found: list[Found] = []
    for path in [repo / "README.md", *sorted((repo / "docs").glob("*.md")), *sorted((repo / "examples").rglob("*.md"))]:
        found += markdown_commands(path)
    for path in sorted((repo / "examples").rglob("*")):
        if path.is_file() and path.suffix != ".md":
            found += example_commands(path)
    out: dict[str, list[str]] = {}
    for item in found:
        out.setdefault(item.command, []).append(item.where)
    return out
