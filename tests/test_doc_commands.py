"""Every shell command in README.md, docs/*.md and examples/ is executed or checked (tests/doc_commands.py holds
the registry, one line per command, and says how to add one).

- run() checks run the command in a temporary clone: `tiny` (tiny params, the pipeline run by `dvc repro`)
  or `fresh` (as committed: the demo's params.yaml, no dataset, nothing run);
- parse() checks give each program of the line its own parser (crn-repro's click parser, torchrun's argparse,
  DVC's, a script's --help) and resolve and validate the params the line names, `dvc exp run -S` edits
  applied by DVC's own code;
- tested() checks name the test that runs the command; stage() commands are dvc.yaml's, run by the tiny clone's
  `dvc repro`; part() entries are fragments of checked commands."""

from __future__ import annotations

import ast
import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from doc_commands import CHECKS, REPO, documented_commands
from workspace import ENV, clone, commit, run, tiny_params, write_params

DOCUMENTED = documented_commands()
KINDS_HELP = ("run() runs it in a tiny clone; parse(why=...) parses it with each program's parser and resolves its "
              "params, for what needs GPUs, a dataset or weights; tested(by='tests/test_x.py::test_name') names the "
              "test that runs it; stage() for a dvc.yaml stage's command; part(of='...') for a fragment of another "
              "documented command; see the top of tests/doc_commands.py")


# --- the registry covers the docs, and only the docs ------------------------------------------------------

def test_every_documented_command_has_a_check():
    missing = {command: where for command, where in DOCUMENTED.items() if command not in CHECKS}
    lines = [f"{where[0]}: `{command}` has no check; add one line to CHECKS in tests/doc_commands.py, e.g.\n"
             f"    {command!r}: run()," for command, where in missing.items()]
    assert not missing, "\n".join(lines) + f"\n({KINDS_HELP})"


def test_every_check_is_of_a_documented_command():
    stale = [command for command in CHECKS if command not in DOCUMENTED]
    assert not stale, ("no longer in README.md, docs/ or examples/ (remove or update the line in tests/doc_commands.py): "
                       + "; ".join(f"`{c}`" for c in stale))


PLACEHOLDER = re.compile(r"^(\.\.\.|<[^>]+>|[A-Z][A-Z0-9_]*|\S*\|\S*)$")


def _is_part(fragment: str, command: str) -> bool:
    """Whether ``fragment``'s words appear in ``command`` in order; placeholders (NAME, <stage>, a|b), in either,
    stand for any one word, `...` for any words, [optional groups] may be absent."""
    words = re.sub(r"\[[^\]]*\]", " ", fragment).split()
    target = command.split()
    i = 0
    for word in words:
        if word == "...":
            continue
        while i < len(target) and not (word == target[i] or PLACEHOLDER.match(word) or word in target[i].split("|")
                                       or PLACEHOLDER.match(target[i])):
            i += 1
        if i == len(target):
            return False
        i += 1
    return True


@pytest.mark.parametrize("command", [c for c, check in CHECKS.items() if check.kind == "part"])
def test_a_part_belongs_to_a_checked_command(command):
    whole = CHECKS[command].of
    assert whole in CHECKS and CHECKS[whole].kind != "part", f"part(of={whole!r}): not a checked command"
    assert _is_part(command, whole), f"`{command}` is not a part of `{whole}`"


def _test_exists(by: str) -> bool:
    path, _, name = by.partition("::")
    file = REPO / path
    if not file.is_file():
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in ast.parse(file.read_text()).body)


@pytest.mark.parametrize("command", [c for c, check in CHECKS.items() if check.kind == "tested"])
def test_a_tested_command_names_a_test_that_exists(command):
    assert _test_exists(CHECKS[command].by), f"`{command}`: tested(by={CHECKS[command].by!r}) names no test"


# --- parse(): each program's own parser, the params resolved ----------------------------------------------

PARSEABLE = ("crn-repro", "dvc", "torchrun", "sbatch", "python")


def _words(line: str) -> list[list[str]]:
    """The simple commands of a line (split at &&, ||, ;, |)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def _parseable(line: str) -> bool:
    return all(argv[0] in PARSEABLE and not (argv[0] == "python" and argv[1:3] == ["-m", "pytest"]) for argv in _words(line))


class Params:
    """The params file a line works on, as values: the shipped params.yaml, then whatever the line does to it."""

    def __init__(self, tmp_path: Path):
        from crn_repro.files import read_yaml

        self.raw = read_yaml(REPO / "params.yaml", "")
        self.tmp = tmp_path

    def validate(self, source: str) -> None:
        from crn_repro.params import parse_params

        parse_params(self.raw, source)

    def set(self, overrides: list[str]) -> None:
        """`dvc exp run -S ...`: DVC's own code edits the file, which must then validate."""
        import yaml
        from dvc.utils.hydra import apply_overrides

        from crn_repro.files import read_yaml

        path = self.tmp / "params.yaml"
        path.write_text(yaml.safe_dump(self.raw))
        apply_overrides(str(path), overrides)
        self.raw = read_yaml(path, "")
        self.validate(f"params.yaml after -S {' -S '.join(overrides)}")


def _parse_crn(args: list[str], params: Params) -> None:
    import typer.main
    from typer.exceptions import Exit

    from crn_repro.cli import app
    from crn_repro.params import load_params, parse_params
    from crn_repro.presets import load_preset

    command, name, parent, chain = typer.main.get_command(app), "crn-repro", None, []
    while True:
        try:
            ctx = command.make_context(name, list(args), parent=parent)
        except Exit:  # --help, --version (printed)
            return
        chain.append(ctx)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not hasattr(command, "resolve_command") or not rest:  # a command, not a group
            break
        name, command, args = command.resolve_command(ctx, rest)
        parent = ctx
    top, leaf = chain[0], chain[-1]
    if top.params["params"] != Path("params.yaml"):
        load_params(REPO / top.params["params"])  # a params file or a preset file, resolved and validated
    else:
        params.validate("params.yaml")
    if leaf.info_name == "preset" and leaf.params.get("name"):
        params.raw = load_preset(leaf.params["name"], REPO / "presets")
    if leaf.info_name == "bench" and leaf.params.get("preset"):
        parse_params(load_preset(leaf.params["preset"], REPO / "presets"))


@functools.cache
def _stage_names() -> frozenset[str]:
    out = run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], REPO)
    return frozenset(out.stdout.split())


def _parse_dvc(args: list[str], params: Params) -> None:
    from dvc.cli import parse_args

    try:
        ns = parse_args(args)
    except SystemExit as stop:
        raise AssertionError(f"dvc {' '.join(args)}: DVC's parser refused it ({stop})") from None
    unknown = set(getattr(ns, "targets", None) or []) - _stage_names() if ns.cmd in ("repro", "run") else set()
    assert not unknown, f"dvc {' '.join(args)}: no stage {', '.join(sorted(unknown))} in dvc.yaml"
    if getattr(ns, "set_param", None):
        params.set(ns.set_param)


def _parse_torchrun(args: list[str], params: Params) -> None:
    from torch.distributed.run import get_args_parser

    ns = get_args_parser().parse_args(args)
    assert ns.module and ns.training_script == "crn_repro", "torchrun: the docs run -m crn_repro"
    _parse_crn(ns.training_script_args, params)


def _parse_sbatch(args: list[str], params: Params) -> None:
    script = next(i for i, a in enumerate(args) if (REPO / a).is_file())
    syntax = subprocess.run(["bash", "-n", str(REPO / args[script])], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    model, params_file, *rest = args[script + 1:]
    models = params.raw["models"] if model == "${item}" else [model]
    for name in models:  # the script runs: crn-repro --params PARAMS_FILE train --model MODEL [options]
        _parse_crn(["--params", params_file, "train", "--model", name, *rest], params)


def _parse_apt_get_install(packages: list[str]) -> None:
    """Every package an `apt-get install` line names is one Debian knows (`apt-cache show`, from the package
    lists `apt-get update` fetched; CI's .ci/run fetches them)."""
    if not any(Path("/var/lib/apt/lists").glob("*Packages*")):
        pytest.skip("no Debian package lists here (run apt-get update) to look the packages up in")
    for package in (p for p in packages if not p.startswith("-")):
        known = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True)
        assert known.returncode == 0 and known.stdout.strip(), f"apt-get install: Debian has no package {package!r}"


def parse_line(line: str, tmp_path: Path) -> None:
    params = Params(tmp_path)
    for argv in _words(line):
        program, args = argv[0], argv[1:]
        if program == "crn-repro":
            _parse_crn(args, params)
        elif program == "python" and args[:2] == ["-m", "crn_repro"]:
            _parse_crn(args[2:], params)
        elif program == "python" and args and args[0].endswith(".py"):
            out = subprocess.run([sys.executable, str(REPO / args[0]), "--help"], capture_output=True, text=True, cwd=REPO)
            assert out.returncode == 0, out.stderr
        elif program == "dvc":
            _parse_dvc(args, params)
        elif program == "torchrun":
            _parse_torchrun(args, params)
        elif program == "sbatch":
            _parse_sbatch(args, params)
        elif program == "apt-get" and args[:1] == ["install"]:
            _parse_apt_get_install(args[1:])
        else:
            raise AssertionError(f"`{' '.join(argv)}`: no parser for {program}; check it with run() or tested()")


@pytest.mark.parametrize("command", [c for c, check in CHECKS.items() if check.kind == "parse"
                                     or (check.kind == "tested" and _parseable(check.instance or c))])
def test_a_command_parses_and_its_params_resolve(command, tmp_path):
    parse_line(CHECKS[command].instance or command, tmp_path)


def test_a_wrong_option_or_key_fails_the_parse(tmp_path):
    """The parse checks can fail: a misspelled option, a key params.yaml does not have, a preset that does not
    resolve, a stage that does not exist."""
    for line, problem in [("crn-repro train --modle crn", "No such option"),
                          ("dvc exp run -S train.total_stepz=3", "Invalid `--set-param`"),
                          ("dvc exp run -S train.total_steps=0", "out of range"),
                          ("crn-repro -p presets/nope.yaml info --model crn", "params file not found"),
                          ("dvc repro prepare segmentr", "no stage segmentr"),
                          ("torchrun --nnodes 4 -m crn_repro train --model nope", "nope")]:
        with pytest.raises(Exception, match=problem):
            parse_line(line, tmp_path)


# --- run(): in a clone -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clone(tmp_path_factory) -> Path:
    """A clone with tiny params (the CRN and the segmenter, 16x32, 4 steps) after `dvc repro`."""
    work = clone(tmp_path_factory.mktemp("docs") / "tiny")
    (work / "dvc.lock").unlink()
    write_params(work, tiny_params())
    commit(work, "tiny params")
    run(["dvc", "repro"], work, timeout=900)
    return work


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    return clone(tmp_path_factory.mktemp("docs") / "fresh")


def _run_check(command: str, work: Path) -> None:
    check = CHECKS[command]
    result = run(["bash", "-c", check.instance or command], work, check=False, timeout=check.timeout)
    output = result.stdout + result.stderr
    if check.fails_with:
        assert result.returncode != 0, f"`{command}` was documented to fail, but exited 0:\n{output}"
        for text in check.fails_with:
            assert text in output, f"`{command}` failed without saying {text!r}:\n{output}"
    else:
        assert result.returncode == 0, f"`{command}` exited {result.returncode} in {work}:\n{output}"
    for text in check.expect:
        assert text in output, f"`{command}`: its output does not say {text!r}:\n{output}"


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c, check in CHECKS.items() if check.kind == "run" and check.where == "tiny"])
def test_runs_in_a_clone_with_tiny_params(command, tiny_clone):
    _run_check(command, tiny_clone)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c, check in CHECKS.items() if check.kind == "run" and check.where == "fresh"])
def test_runs_in_a_fresh_clone(command, fresh_clone):
    _run_check(command, fresh_clone)


def _stage_commands() -> dict[str, str]:
    """{command: stage} as dvc.yaml runs them, `foreach` stages once per model of the tiny clone's params."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, body in stages.items():
        if "foreach" in body:
            for model in tiny_params()["models"]:
                out[body["do"]["cmd"].replace("${item}", model)] = f"{name}@{model}"
        else:
            out[body["cmd"]] = name
    return out


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c, check in CHECKS.items() if check.kind == "stage"])
def test_a_stage_command_is_what_dvc_repro_ran(command, tiny_clone):
    """dvc.yaml runs the command exactly as the docs write it, and the tiny clone's `dvc repro` ran that stage
    (its lock entry records the command)."""
    import yaml

    locked = yaml.safe_load((tiny_clone / "dvc.lock").read_text())["stages"]
    for part in command.split(" && "):
        stage_name = _stage_commands().get(part)
        assert stage_name, f"`{part}` is no stage's command in dvc.yaml"
        assert locked[stage_name]["cmd"] == part, (stage_name, locked[stage_name]["cmd"])


# --- commands checked by name in the registry -------------------------------------------------------------------

def _readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    return text.split(marker, 1)[1].split("```bash\n", 1)[1].split("\n", 1)[0]


TEST_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest -q --slow"
FIRST_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && dvc repro"


def test_ci_runs_the_readme_test_command_exactly():
    """.ci/run takes the line after the README's test-command marker and runs it verbatim with bash."""
    script = (REPO / ".ci/run").read_text()
    extract = re.search(r"^cmd=\$\((awk .*)\)$", script, flags=re.M).group(1)
    out = subprocess.run(["bash", "-c", extract], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == TEST_COMMAND == _readme_block("<!-- test-command")
    assert 'bash -c "$cmd"' in script


def test_the_first_command_installs_as_the_test_command_does_then_runs_dvc_repro():
    """The README's first command is the test command's install without the test extras, then `dvc repro`:
    CI runs that install (test command), and `dvc repro` runs here in every run() clone (tiny params) and
    on the full demo for the figures the README quotes."""
    assert FIRST_COMMAND in (REPO / "README.md").read_text()
    install = TEST_COMMAND.rsplit(" && ", 1)[0]
    assert FIRST_COMMAND == install.replace("'.[test]'", ".") + " && dvc repro"


def test_ci_installs_the_engines_the_tests_require():
    """`apt-get install chromium nginx openssl` (README) is what .ci/run does for the browser and reverse-proxy
    tests, and slurm-wlm with munge for the SLURM tests, and it turns their skips into failures."""
    script = (REPO / ".ci/run").read_text()
    for package in ("chromium", "nginx", "openssl", "slurm-wlm", "munge"):
        assert f"packages+=({package})" in script, package
    assert 'apt-get install -y -q --no-install-recommends "${packages[@]}"' in script
    assert "export CRN_REQUIRE_BROWSER=1 CRN_REQUIRE_PROXY=1 CRN_REQUIRE_SLURM=1" in script
    ok = subprocess.run(["bash", "-n", str(REPO / ".ci/run")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def _run_facts(work: Path, model: str) -> dict:
    import torch

    summary = json.loads((work / "runs" / model / "summary.json").read_text())
    metrics = json.loads((work / "runs" / model / "metrics.json").read_text())
    state = torch.load(work / "runs" / model / "state.pt", weights_only=True)
    return {"state": int(state["step"]), "summary": summary["steps"], "metrics": metrics["steps"],
            "live": json.loads((work / "runs" / model / "live/metrics.json").read_text())["step"]}


@pytest.mark.slow
def test_back_from_the_smoke_experiment_with_one_command(tiny_clone):
    """The README's way back: commit a run (its documented git command), run the smoke experiment
    (`dvc exp run -S train.schedule_scale=0.05`), then `dvc exp apply HEAD`: every model's training state,
    summary, headline metrics and dvclive log are the committed run's again, and DVC has nothing to rerun."""
    work = tiny_clone
    if run(["git", "status", "--porcelain"], work).stdout.strip():
        run(["bash", "-c", 'git add dvc.lock reports && git commit -m "demo run"'], work)
    before = {model: _run_facts(work, model) for model in ("crn", "segmenter")}
    assert before["crn"] == {"state": 4, "summary": 4, "metrics": 4, "live": 4}
    judge = json.loads((work / "reports/headline/crn.json").read_text())["judge"]
    run(["bash", "-c", "dvc exp run -S train.schedule_scale=0.05"], work, timeout=900)
    assert _run_facts(work, "crn")["summary"] == 1  # 4 steps x 0.05, at least one
    # the same judge scored the smoke run: the segmenter kept its schedule and weights (issue 20)
    assert _run_facts(work, "segmenter") == before["segmenter"]
    assert json.loads((work / "reports/headline/crn.json").read_text())["judge"] == judge
    shown = run(["dvc", "exp", "show", "--csv"], work).stdout
    header, *rows = [line.split(",") for line in shown.splitlines()]
    column = next(i for i, name in enumerate(header) if name.endswith("judge"))
    assert len(rows) >= 2 and {row[column] for row in rows} == {judge}, shown
    run(["bash", "-c", "dvc exp apply HEAD"], work)
    assert {model: _run_facts(work, model) for model in ("crn", "segmenter")} == before
    status = run(["dvc", "status"], work)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], work).stdout == ""
