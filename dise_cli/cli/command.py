"""What turns a plain function into a ``dise`` command: one error line and an exit code for every
failure, library warnings kept quiet, examples in the help, and the shared model and data options
injected as one options object."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import traceback
import warnings
from typing import Any, Callable

import typer

from dise_cli.cli.options import SHARED
from dise_cli import distributed
from dise_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, DiseError, GateFailed, UsageError, first_line
from dise_cli.files import writable_target
from dise_cli.output import error_line, user_prints_to_stderr
from dise_cli.sources import options_from


def command(*examples: str, ranks: bool = False) -> Callable[[Callable], Callable]:
    """Map every failure to one stderr line and an exit code (DESIGN.md), silence warnings from torch
    and other libraries (``--debug`` shows them and re-raises), and put ``examples`` in the help,
    one copy-pasteable line each. ``ranks``: the command shares its work among torchrun's processes
    (distributed.py); others refuse to run under torchrun. Under torchrun only rank 0 prints errors
    (a failed rank is named in rank 0's line)."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            debug = bool(kwargs.get("debug"))
            together = False           # under torchrun: whether every rank ends here with this rank
            try:
                with warnings.catch_warnings(), user_prints_to_stderr():
                    if not debug:
                        warnings.simplefilter("ignore")
                    if distributed.launched():
                        if not ranks:
                            raise UsageError(f"dise {fn.__name__.replace('_', '-')} runs in one process; under "
                                             f"torchrun only profile, evaluate and run share their work among the ranks")
                        distributed.engage()
                    result = fn(*args, **kwargs)
                    together = True
                    return result
            except typer.Exit:
                raise
            except DiseError as exc:
                together = isinstance(exc, distributed.RankFailed) or isinstance(exc, GateFailed)
                if debug:
                    traceback.print_exc(file=sys.stderr)
                if not distributed.secondary():
                    error_line(str(exc))
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt:
                error_line("interrupted; nothing was written")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except Exception as exc:  # noqa: BLE001 - the last line of defence
                if debug:
                    traceback.print_exc(file=sys.stderr)
                error_line(f"internal error: {type(exc).__name__}: {first_line(exc)}"
                           f"{'' if debug else ' (rerun with --debug for the traceback)'}")
                raise typer.Exit(EXIT_INTERNAL) from None
            finally:
                distributed.finish(together)
        wrapper.__doc__ = help_text(fn.__doc__ or "", examples)
        wrapper.examples = examples
        return wrapper
    return decorate


def help_text(doc: str, examples: tuple[str, ...]) -> str:
    """The docstring, then an examples block that Click prints as written (its ``\\b`` marker)."""
    text = inspect.cleandoc(doc)
    if examples:
        text += "\n\n\b\nExamples:\n" + "\n".join(f"  {line}" for line in examples)
    return text


REPORTING = ("json_path", "plot", "quiet", "debug")


def with_options(options: type, exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Give the command the options of the ``options`` dataclass (``ModelOptions`` or ``DataOptions``):
    they appear in its signature (so in ``--help``) and reach it as one object, ``source``."""
    names = [f.name for f in dataclasses.fields(options) if f.name not in exclude]

    def decorate(fn: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "source"]
        first = [_parameter(n) for n in names if n == "model"]
        rest = [_parameter(n, None) for n in names if n != "model"]
        reporting = [p for p in own if p.name in REPORTING]
        own = [p for p in own if p.name not in REPORTING]
        parameters = first + own + rest + reporting      # the command's own options, the shared ones, then output

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            picked = {n: kwargs.pop(n) for n in names}
            return fn(source=options_from(options, picked)[0], **kwargs)
        wrapper.__signature__ = inspect.Signature(parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper
    return decorate


def _parameter(name: str, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=SHARED[name])


def check_report_targets(json_path: str | None, plot: str | None) -> None:
    """Before any work: the --json file can be written, and --plot has a known format and matplotlib."""
    if json_path not in (None, "-"):
        writable_target(json_path, "--json")
    if plot is not None:
        from dise_cli.plots import check_plot_path
        check_plot_path(plot, "--plot")
