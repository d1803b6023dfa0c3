"""Shared by the CLI tests: run `difforge.cli.main(argv)` in-process."""

from difforge.cli import main


def run(argv: list[str]) -> int:
    """Run the CLI in-process; return its exit code (0 when it returns without exiting)."""
    try:
        main(argv)
    except SystemExit as e:
        return 0 if e.code is None else e.code
    return 0
