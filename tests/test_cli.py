import json

import pytest
import yaml
from typer.testing import CliRunner

from crn_repro.cli import app

runner = CliRunner()


def _write(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("command", [[], ["prepare"], ["train"], ["synthesize"], ["report"], ["info"]])
def test_help(command):
    result = runner.invoke(app, command + ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_info_json_for_presets():
    result = runner.invoke(app, ["info", "--model", "crn", "--preset", "cityscapes-1024p", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["model"] == "crn" and info["preset"] == "cityscapes-1024p"
    assert info["parameters"] == 98_674_531 and info["networks"] == {"G": 98_674_531}


def test_unknown_model_lists_valid_ones():
    result = runner.invoke(app, ["train", "--model", "crnn"])
    assert result.exit_code != 0
    assert "crn" in result.output


def test_misspelled_params_key_is_one_line_error(tmp_path, tiny_raw):
    tiny_raw["train"]["totl_steps"] = 3
    result = runner.invoke(app, ["--params", _write(tmp_path, tiny_raw), "prepare"])
    assert result.exit_code == 1
    assert "train.totl_steps: unknown key" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_debug_shows_traceback(tmp_path, tiny_raw):
    tiny_raw["train"]["totl_steps"] = 3
    result = runner.invoke(app, ["--debug", "--params", _write(tmp_path, tiny_raw), "prepare"])
    assert result.exit_code != 0 and result.exception is not None


def test_missing_dataset_root(tmp_path, tiny_raw):
    tiny_raw["data"]["dataset"] = "cityscapes"
    tiny_raw["cityscapes"]["root"] = str(tmp_path / "nowhere")
    tiny_raw["paths"]["raw"] = str(tmp_path / "nowhere")
    result = runner.invoke(app, ["--params", _write(tmp_path, tiny_raw), "prepare"])
    assert result.exit_code == 1
    assert "nowhere: dataset root not found" in result.output


def test_missing_weights_file(tmp_path, tiny_raw, prepared_tiny):
    root, _ = prepared_tiny
    tiny_raw["paths"]["prepared"] = str(root / "data/prepared")
    tiny_raw["vgg"].update(weights="matconvnet", path=str(tmp_path / "imagenet-vgg-verydeep-19.mat"))
    result = runner.invoke(app, ["--params", _write(tmp_path, tiny_raw), "train", "--model", "crn"])
    assert result.exit_code == 1
    assert "imagenet-vgg-verydeep-19.mat" in result.output and "Traceback" not in result.output


def test_synthesize_before_train(tmp_path, tiny_raw):
    result = runner.invoke(app, ["--params", _write(tmp_path, tiny_raw), "synthesize", "--model", "crn"])
    assert result.exit_code == 1
    assert "model.pt: model file not found" in result.output


@pytest.mark.slow
def test_stages_end_to_end(tmp_path, tiny_raw):
    params = _write(tmp_path, tiny_raw)
    tiny_raw["segmenter"]["network"] = {"base_width": 4, "depth": 2, "max_width": 8}
    tiny_raw["evaluate"]["bootstrap_resamples"] = 20
    params = _write(tmp_path, tiny_raw)
    stages = (["prepare"], ["train", "--model", "segmenter"], ["train", "--model", "crn"], ["synthesize", "--model", "crn"], ["evaluate"], ["report"])
    for command in stages:
        result = runner.invoke(app, ["--params", params] + command)
        assert result.exit_code == 0, (command, result.output)
    report = (tmp_path / "reports/report.md").read_text()
    assert "random" in report and "synthetic" in report and "16x32" in report
    assert (tmp_path / "reports/figures/qualitative.png").stat().st_size > 1000
    synth = sorted(p.name for p in (tmp_path / "data/synth/crn").glob("*.png"))
    assert len(synth) == 5


def _commands(app_, prefix=()):
    """Every command path of the CLI, e.g. ("train",), ("study", "make")."""
    import typer.main

    group = typer.main.get_command(app_)
    paths = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths += [(name, sub) for sub in command.commands]
        else:
            paths.append((name,))
    return paths


def test_every_command_has_an_example_and_clean_help():
    runner = CliRunner()
    leaked = ("<bool>", "<list", "<int>", "<float>", "<str>", "<Path", "Optional[", "NoneType", "ModelName.", "Via.")
    commands = _commands(app)
    assert {("train",), ("study", "make"), ("bench",)} <= set(commands)
    for path in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example: crn-repro" in result.output, path
        options = result.output.split("Options:", 1)[1]
        assert not [word for word in leaked if word in options], (path, options)


def test_version():
    from crn_repro import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"crn-repro {__version__}"
