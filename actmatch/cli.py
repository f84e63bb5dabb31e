"""The ``actmatch`` command: one entry, one module per subcommand.

* ``explain``, ``demo``: per-image explanations of image files (actmatch.commands.explain)
* ``circuit``: channel circuits behind decisions (actmatch.commands.circuit)
* ``benchmark``: actmatch against the baselines (actmatch.commands.benchmark)
* ``throughput``: images per minute of ``explain`` by batch size (actmatch.commands.throughput)
* ``report``: rebuild report.html of an explain or benchmark folder (actmatch.commands.report)
* ``study``: per-image fit configs side by side on a fixed image list (actmatch.commands.study)
* ``fit``, ``validate``, ``test``, ``predict``: LightningCLI over experiments/ configs
  (actmatch.commands.lightning)

``actmatch --version`` prints the installed package's version (pyproject.toml's ``version``).

A command with a parser in :mod:`actmatch.commands.parsers` is parsed before its module is imported,
so ``--help`` and a refused argument answer without loading torch; ``fit`` and its siblings build
their parser from the classes (LightningCLI) and load them first.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys

__all__ = ["main", "SUBCOMMANDS", "version"]

SUBCOMMANDS = {
    "explain": ("actmatch.commands.explain", "explain images with per-image activation-matching masks"),
    "demo": ("actmatch.commands.explain", "explain a bundled real photo (scikit-image's coffee)"),
    "circuit": ("actmatch.commands.circuit", "read out the channel circuit behind decisions"),
    "benchmark": ("actmatch.commands.benchmark", "compare actmatch with baseline explainers"),
    "throughput": ("actmatch.commands.throughput", "images per minute of `explain` for several batch sizes"),
    "study": ("actmatch.commands.study", "one row per explainer config on a fixed image list (the fit study)"),
    "report": ("actmatch.commands.report", "rebuild OUT/report.html from an explain or benchmark output folder"),
    "fit": ("actmatch.commands.lightning", "train the amortized explainer (LightningCLI)"),
    "validate": ("actmatch.commands.lightning", "validate an explainer (LightningCLI)"),
    "test": ("actmatch.commands.lightning", "test an explainer (LightningCLI)"),
    "predict": ("actmatch.commands.lightning", "predict masks (LightningCLI)"),
}


def version() -> str:
    """The installed actmatch's version, from its package metadata (pyproject.toml's ``version``)."""
    try:
        return importlib.metadata.version("actmatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (actmatch is not installed: run `pip install -e .` in the repository)"


def usage() -> str:
    lines = ["usage: actmatch COMMAND [ARGS]", "       actmatch --version", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`actmatch COMMAND --help` describes each command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from actmatch.memory import keep_freed_memory

    keep_freed_memory()  # classifier passes on the CPU: reuse freed buffers instead of fresh pages
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"actmatch {version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"actmatch: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[command][0]
    parser_name = module_name.replace("actmatch.commands.", "actmatch.commands.parsers.")
    if importlib.util.find_spec(parser_name) is None:  # LightningCLI: the parser needs the classes
        return int(importlib.import_module(module_name).main(command, rest) or 0)
    args = importlib.import_module(parser_name).parse_args(command, rest)
    return int(importlib.import_module(module_name).run(command, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
