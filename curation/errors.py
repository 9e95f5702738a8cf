"""Errors the library raises for bad input or bad state.

Every message names what is wrong (file, row, column), and how to fix it, so the CLI can print it
as is and exit non-zero, and the app can show it on the page.
"""

from __future__ import annotations


class CurationError(Exception):
    """Base class: an error a user can act on (not a bug)."""


class InputError(CurationError):
    """Bad input data: the message names the file, the row or column, and the fix.

    Parameters
    ----------
    problem : str
        What is wrong, in one sentence.
    file : str, optional
        The file (or folder) the problem is in.
    row : int, optional
        0-based data row (the message shows it 0-based as "row N", plus the CSV line when known).
    column : str, optional
        The column concerned.
    fix : str, optional
        What the user should do.
    """

    def __init__(self, problem: str, *, file=None, row=None, column=None, fix=None):
        self.problem, self.file, self.row, self.column, self.fix = problem, file, row, column, fix
        where = []
        if file is not None:
            where.append(f"file {file}")
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}")
        msg = problem
        if where:
            msg = f"{', '.join(where)}: {problem}"
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


class StateError(CurationError):
    """The dataset is not in the state an operation needs (no analysis yet, fingerprint changed...)."""


class PairError(CurationError):
    """One image-caption pair cannot be embedded (missing or undecodable image, empty caption...):
    the pair is skipped and its reason reported; the run goes on."""


class InterruptedAfterWrite(KeyboardInterrupt):
    """Ctrl-C that arrived while a set of files was being moved into place: it was held back until
    the set was complete, so the files are written. ``str(e)`` says what was written."""
