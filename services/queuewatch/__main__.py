"""`python -m queuewatch` runs the CLI: used to start child processes with this interpreter."""

from queuewatch.cli import main

main()
