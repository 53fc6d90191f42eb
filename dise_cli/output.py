"""The only place that prints: rich tables and progress bars on a terminal, plain text otherwise,
JSON for machines. Results go to stdout; progress, notes and errors to stderr. Every JSON document
says where it was made (``made_with``, see ``dise_cli.provenance``)."""
from __future__ import annotations

import contextlib
import contextvars
import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dise_cli.files import atomic_path
from dise_cli.provenance import PROVENANCE_KEY, made_with


_RESULTS = contextvars.ContextVar("dise_results_stream", default=None)


def results_stream():
    """Where results go: the stdout a command started with (user code's prints go to stderr meanwhile)."""
    return _RESULTS.get() or sys.stdout


@contextmanager
def user_prints_to_stderr():
    """While a command runs, anything the user's code prints (a model announcing itself at construction)
    goes to stderr, so that stdout holds dise's results only (``--json -`` stays parseable)."""
    token = _RESULTS.set(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _RESULTS.reset(token)


class Output:
    def __init__(self, quiet: bool = False, json_path: str | None = None, device: torch.device | str | None = None):
        self.quiet = quiet
        self.json_path = json_path
        self.device = device      # where the command computes (set once known): the JSON's made_with names it
        self.out = Console(file=results_stream(), soft_wrap=True, highlight=False, markup=False)
        self.err = Console(file=sys.stderr, soft_wrap=True, highlight=False, markup=False)

    @property
    def rich(self) -> bool:
        """Tables and bars only for a person at a terminal."""
        return self.out.is_terminal and not self.quiet

    @property
    def results_to_stdout(self) -> bool:
        """With ``--json -`` stdout carries only the JSON document."""
        return self.json_path != "-"

    def note(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message)

    def line(self, message: str = "") -> None:
        if self.results_to_stdout:
            self.out.print(message)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric: bool = True) -> None:
        """A table: the first column left-aligned, the rest right-aligned when ``numeric``."""
        if not self.results_to_stdout:
            return
        cells = [["" if v is None else str(v) for v in row] for row in rows]
        if self.rich:
            table = Table(title=title, title_justify="left")
            for i, col in enumerate(columns):
                table.add_column(col, justify="right" if numeric and i else "left")
            for row in cells:
                table.add_row(*row)
            self.out.print(table)
            return
        widths = [max(len(str(c)), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        def fmt(row: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if numeric and i else v.ljust(w)
                             for i, (v, w) in enumerate(zip(row, widths))).rstrip()
        self.out.print(title)
        self.out.print(fmt(list(columns)))
        for row in cells:
            self.out.print(fmt(row))

    def json(self, document: dict) -> None:
        """Write ``document`` to ``--json PATH`` (atomically) or to stdout for ``-``, with a top-level
        ``made_with``: the document's own where it has one (a profile's, from its file), else this
        process's versions and ``self.device``."""
        if self.json_path is None:
            return
        if PROVENANCE_KEY not in document:
            document = {**document, PROVENANCE_KEY: made_with(self.device)}
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
        if self.json_path == "-":
            stream = results_stream()
            stream.write(text)
            stream.flush()
            return
        with atomic_path(self.json_path) as tmp:
            tmp.write_text(text)

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr at a terminal; elsewhere a silent callback."""
        if not (self.err.is_terminal and not self.quiet):
            yield lambda n: None
            return
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), console=self.err, transient=True)
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def error_line(message: str) -> None:
    """One ``error: ...`` line on stderr, no markup, no wrapping."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
