"""The command line answers ``--help`` and refuses bad arguments without importing torch
(actmatch.commands.parsers), and the parsers' lists of names agree with the registries they name.

Whether torch was imported is read from ``sys.modules`` in a fresh interpreter, so nothing the
test process already loaded can hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from actmatch.cli import SUBCOMMANDS

LIGHT = ("torch", "timm", "lightning")
PARSED_FIRST = [name for name, (module, _) in SUBCOMMANDS.items() if module != "actmatch.commands.lightning"]


def run_cli(argv: list[str]) -> dict:
    """``actmatch.cli.main(argv)`` in a fresh interpreter: its exit status, stderr, and which of
    :data:`LIGHT` it imported."""
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from actmatch.cli import main
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                status = main({argv!r})
            except SystemExit as stop:
                status = stop.code
        print(json.dumps({{"status": status, "stderr": err.getvalue(),
                           "imported": [m for m in {LIGHT!r} if m in sys.modules]}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_command_but_lightnings_is_parsed_first():
    assert set(PARSED_FIRST) == {"explain", "demo", "circuit", "benchmark", "throughput", "study", "report"}


def test_the_probe_sees_an_import():
    """The control: LightningCLI builds ``fit``'s parser from the classes, so its help loads them."""
    result = run_cli(["fit", "--help"])
    assert result["status"] == 0
    assert result["imported"] == list(LIGHT)


@pytest.mark.parametrize("command", PARSED_FIRST)
def test_help_imports_no_torch(command):
    result = run_cli([command, "--help"])
    assert result["status"] == 0
    assert result["imported"] == []


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["explain", "photo.jpg", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["explain", "photo.jpg", "--preset", "tiny"], "unknown preset 'tiny'"),
        (["benchmark", "--images", "x", "--seed", "1000"], "--exam-seed must differ from --seed"),
        (["benchmark", "--images", "x", "--methods", "am,lime"], "--methods: unknown method(s) ['lime']"),
        (["benchmark", "--images", "x", "--methods", "am-amortized"], "method 'am-amortized' needs --checkpoint CKPT"),
        (["study", "x", "--scan", "4"], "--scan refines the masks of one amortized pass"),
        (["circuit", "x", "--scoring", "magic"], "argument --scoring: invalid choice: 'magic'"),
        (["throughput", "x", "--batch-sizes", "0"], "batch sizes and --limit must be >= 1"),
    ],
)
def test_a_refused_argument_exits_2_naming_the_flag_without_torch(argv, named):
    result = run_cli(argv)
    assert result["status"] == 2
    assert named in result["stderr"]
    assert result["imported"] == []


def test_report_rebuilds_a_benchmark_page_without_torch(tmp_path):
    from test_report import make_benchmark_folder

    out = make_benchmark_folder(tmp_path / "bench")
    (out / "report.html").unlink(missing_ok=True)
    result = run_cli(["report", str(out)])
    assert result["status"] == 0
    assert result["imported"] == []
    assert "method" in (out / "report.html").read_text()


def test_the_parsers_name_what_the_registries_hold():
    from actmatch.commands.parsers import benchmark, circuit
    from actmatch.evaluation.families import EXAM_SEED
    from actmatch.evaluation.methods import METHODS
    from actmatch.explainers.circuits import ABLATIONS, DEFAULT_FRACTIONS, RANKINGS, SCORINGS

    assert benchmark.METHOD_NAMES == tuple(METHODS)
    assert set(benchmark.method_names(benchmark.DEFAULT_METHODS)) <= set(METHODS)
    assert circuit.RANKING_NAMES == tuple(RANKINGS)
    assert circuit.SCORING_NAMES == tuple(sorted(SCORINGS))
    assert circuit.ABLATION_NAMES == tuple(sorted(ABLATIONS))
    assert circuit.SEARCH_FRACTIONS == tuple(DEFAULT_FRACTIONS)
    assert benchmark.parse_args("benchmark", ["--images", "x"]).exam_seed == EXAM_SEED == 1000


def test_the_presets_are_the_recipe_files():
    from actmatch.commands.parsers.explain import PRESETS

    recipes = Path(__file__).resolve().parents[1] / "experiments" / "explain"
    assert all((recipes / f"{name}.yaml").is_file() for name in PRESETS)


def test_the_cli_runs_the_command_on_the_parsed_arguments(tmp_path, capsys):
    from actmatch.cli import main

    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "actmatch report: error:" in capsys.readouterr().err
