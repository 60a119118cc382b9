"""``omnifuse <verb>``: the command line. Results go to stdout, progress and logs to stderr.

One module per verb group registers its commands on :data:`omnifuse.cli.common.app` (``train``: validate and
train; ``evaluate``: eval, report, compare; ``chat``: chat and explain; ``export``; ``sweep``; ``serve``; ``data``:
assets and data; ``recipes``: ls and cp; ``quickstart``); what they print lives in ``render``. :func:`main` is the entry point:
errors the user can fix are printed as one paragraph with a non-zero exit code; ``--debug`` (anywhere on
the command line) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import typer
from rich.markup import escape

from omnifuse.cli import console
from omnifuse.cli.common import app
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import RecipeDeprecation

# Each import registers its verbs; their order is the order of `omnifuse --help`.
# isort: off
from omnifuse.cli import train, evaluate, chat, export, sweep, serve, data, recipes, quickstart  # noqa: E402, F401
# isort: on


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # omnifuse draws its own bars for long work (`--progress/--no-progress`); transformers' bar for loading
    # local weights is noise beside them and would ignore --no-progress. Read when transformers is imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    else:  # transformers' own notices (logged, not warned) are for its developers; --debug shows them
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        with warnings.catch_warnings():  # restores the caller's hook and filters (tests call main in-process)
            warnings.showwarning = _warning_printer(debug)
            if debug:
                warnings.simplefilter("default")  # each warning once per place, as Python shows them
            result = app(args=args, prog_name="omnifuse", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # a usage error: unknown option, missing argument, bad value
        exc.show()
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        console.err.print(
            "interrupted; a training run continues with `omnifuse train RECIPE --out RUN --resume`"
        )
        return 130
    except OmnifuseError as exc:
        if debug:
            traceback.print_exc()
        console.err.print(f"[bold red]error:[/bold red] {escape(str(exc))}")
        return 2
    except Exception as exc:  # anything else is a bug of ours; still no traceback unless asked
        if debug:
            traceback.print_exc()
        console.err.print(
            f"[bold red]internal error:[/bold red] {escape(type(exc).__name__)}: {escape(str(exc))}\n"
            "This is a bug in omnifuse; rerun with --debug for the traceback and report it."
        )
        return 1


def _warning_printer(debug: bool):
    """Our own notices (an old recipe spelling) as one line on stderr; other libraries' warnings only
    with --debug, in Python's format."""

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RecipeDeprecation):
            console.err.print(f"[yellow]note:[/yellow] {escape(str(filename))}: {escape(str(message))}")
        elif debug:
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    return show
