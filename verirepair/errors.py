"""User-facing errors: each carries one line that says what is wrong and where."""

from __future__ import annotations


class VerirepairError(Exception):
    """Base class for errors caused by the user's input (reported without a traceback)."""


class InputFileError(VerirepairError):
    """A file is missing, unreadable or not what it claims to be."""


class SpecError(VerirepairError):
    """A VNN-LIB property is malformed or unsupported."""

    def __init__(self, message: str, path: str = "<string>", line: int | None = None,
                 column: int | None = None) -> None:
        where = path if line is None else f"{path}:{line}:{column}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.column = column


class ModelError(VerirepairError):
    """An ONNX model is malformed, unsupported or has non-finite weights."""


class MismatchError(VerirepairError):
    """The property does not fit the model (variable counts, shapes)."""


class SolverError(VerirepairError):
    """A requested optimisation solver is not installed or cannot take the problem
    (e.g. the size limit of its licence)."""
