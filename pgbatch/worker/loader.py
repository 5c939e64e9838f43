"""Finding the App a worker runs from an import path such as ``myproject.tasks:app``.

Only the named module is imported (with its parent packages, as any import does); nothing
from the command line is evaluated.
"""

from __future__ import annotations

import importlib
import re

from pgbatch import errors
from pgbatch.worker.app import App

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_APP_PATH = re.compile(rf"^(?P<module>{_DOTTED}):(?P<attr>{_DOTTED})$")


def load_app(path: str) -> App:
    """The App at ``"package.module:attr"``; ConfigurationError, saying why, otherwise."""
    match = _APP_PATH.match(path.strip())
    if not match:
        raise errors.ConfigurationError(
            f"invalid app path {path!r}: expected 'package.module:attribute', e.g."
            " 'myproject.tasks:app'"
        )
    module_name, attr = match["module"], match["attr"]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise errors.ConfigurationError(
                f"cannot import {module_name!r} for app path {path!r}: no module named"
                f" {exc.name!r} (is its folder on the Python path, e.g. the current directory?)"
            ) from None
        raise  # a missing dependency of the user's module: their traceback says more
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise errors.ConfigurationError(
                f"module {module_name!r} has no attribute {attr!r} (app path {path!r})"
            )
        target = getattr(target, part)
    if not isinstance(target, App):
        raise errors.ConfigurationError(f"{path!r} is a {type(target).__name__}, not a pgbatch.App")
    return target
