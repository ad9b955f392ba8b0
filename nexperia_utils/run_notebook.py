"""Run a notebook with papermill for a make target, with the project's errors as one clear message.

``python -m nexperia_utils.run_notebook [papermill options] INPUT.ipynb OUTPUT.ipynb [options]`` takes
papermill's own command line (the first two ``.ipynb`` arguments are the input and the output). The executed notebook is written beside ``OUTPUT`` under a temporary name and moved to
``OUTPUT`` only when every cell ran, so an output notebook is always a complete one:

- bad input (a :class:`~nexperia_utils.errors.DataError` or ``ConfigError`` raised by the package:
  a missing folder, a truncated image, an invalid parameter) prints that message — it names the
  file and the fix — and exits with status 2, writing no notebook;
- any other failure keeps the executed notebook as ``<OUTPUT stem>.failed.ipynb`` (the traceback is
  in it), says so, and exits with status 1.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

#: The package's exceptions for bad input (``nexperia_utils.errors``), by the name papermill reports.
INPUT_ERRORS = ("DataError", "ConfigError")

logger = logging.getLogger(__name__)


def _temporary(output: Path) -> Path:
    return output.with_name(f".{output.stem}.running.ipynb")


def failed_path(output: Path) -> Path:
    """Where the executed notebook of a failed run is kept."""
    return output.with_name(f"{output.stem}.failed.ipynb")


def run(argv: list[str]) -> int:
    """Run papermill with ``argv`` (its command line); returns the exit status."""
    from papermill.cli import papermill as papermill_cli
    from papermill.exceptions import PapermillExecutionError

    paths = [i for i, arg in enumerate(argv) if arg.endswith(".ipynb")][:2]
    if len(paths) < 2:
        print("usage: python -m nexperia_utils.run_notebook [papermill options] INPUT.ipynb OUTPUT.ipynb "
              "[papermill options]", file=sys.stderr)
        return 2
    notebook, output = Path(argv[paths[0]]), Path(argv[paths[1]])
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(output)
    args = list(argv)
    args[paths[1]] = str(temporary)
    try:
        papermill_cli.main(args=args, standalone_mode=False)
    except PapermillExecutionError as error:
        if error.ename in INPUT_ERRORS:
            temporary.unlink(missing_ok=True)
            print(f"error: {notebook.name}: {error.evalue}", file=sys.stderr)
            return 2
        kept = failed_path(output)
        if temporary.exists():
            temporary.replace(kept)
        print(f"error: {notebook.name} failed in cell {error.exec_count} with {error.ename}: {error.evalue}\n"
              f"the executed notebook with the traceback: {kept}", file=sys.stderr)
        return 1
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(output)
    failed_path(output).unlink(missing_ok=True)
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
