"""The subcommands' argument parsers, apart from the code they run.

These modules import only the standard library and torch-free parts of actmatch, so
``actmatch COMMAND --help`` and a refused argument answer at once; the ``actmatch`` entry point
(:mod:`actmatch.cli`) parses with them before it imports the command's module (torch, timm,
Lightning). Each module's ``parse_args(command, argv)`` returns the checked arguments or exits
with argparse's status 2 and a message that names the flag. Choices that the running code defines
in its registries (the benchmark's methods, the circuit's scorings and ablations) are listed here by
name; ``tests/test_cli_parsers.py`` checks the two lists agree.
"""
