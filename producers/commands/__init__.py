"""The producer side's commands, one module per group; `pipeline/cli.py` holds the table of
every command and imports only the module of the one that runs."""

from rich.console import Console

err = Console(stderr=True)  # what a command says besides its result (stdout)
