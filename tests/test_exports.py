"""The public surface: ``pgbatch.__all__`` and the error tree drawn in ``pgbatch.errors``."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pgbatch
from pgbatch import errors

# The names issue 2 makes part of the product's vocabulary.
REQUIRED_EXPORTS = {
    *("connect", "connect_async", "Client", "AsyncClient", "Queue", "AsyncQueue"),
    *("Message", "errors"),
}
TREE_LINE = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)")


def error_classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }


def drawn_tree() -> dict[str, str | None]:
    """{class name: parent name} as drawn in the errors module's docstring."""
    lines = (errors.__doc__ or "").splitlines()
    root_line = next(line for line in lines if line.strip() == "PgBatchError")
    margin = len(root_line) - len(root_line.lstrip())
    tree: dict[str, str | None] = {"PgBatchError": None}
    parents = ["PgBatchError"]  # parents[depth] is the last class drawn at that depth
    for line in lines:
        match = TREE_LINE.match(line[margin:])
        if not match:
            continue
        depth = len(match["indent"]) // 4 + 1
        assert depth <= len(parents), f"{match['name']} is drawn below nothing"
        assert match["name"] not in tree, f"{match['name']} is drawn twice"
        tree[match["name"]] = parents[depth - 1]
        del parents[depth:]
        parents.append(match["name"])
    return tree


def test_all_names_exist_once_with_the_product_vocabulary() -> None:
    assert len(pgbatch.__all__) == len(set(pgbatch.__all__))
    missing = [name for name in pgbatch.__all__ if not hasattr(pgbatch, name)]
    assert missing == []
    assert set(pgbatch.__all__) >= REQUIRED_EXPORTS


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from pgbatch import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(pgbatch.__all__)


def test_every_public_class_and_function_defined_in_pgbatch_is_exported() -> None:
    """Public objects living at the top level are listed in __all__ (no accidental exports)."""
    public = {
        name
        for name, value in vars(pgbatch).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", "").startswith("pgbatch")
    }
    assert sorted(public - set(pgbatch.__all__)) == []


def test_exports_are_the_objects_of_their_modules() -> None:
    from pgbatch import client, models, queue

    assert pgbatch.connect is client.connect and pgbatch.connect_async is client.connect_async
    assert pgbatch.Client is client.Client and pgbatch.AsyncClient is client.AsyncClient
    assert pgbatch.Queue is queue.Queue and pgbatch.AsyncQueue is queue.AsyncQueue
    assert pgbatch.Message is models.Message
    assert pgbatch.errors is errors


def test_import_starts_no_embedded_server() -> None:
    """Importing pgbatch connects to nothing and starts no embedded server."""
    probe = (
        "import sys, pgbatch;"
        " print(sorted(m for m in ('pgbatch.embedded', 'testcontainers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_every_error_class_derives_from_pgbatch_error() -> None:
    classes = error_classes()
    assert len(classes) >= 10
    strays = [name for name, cls in classes.items() if not issubclass(cls, errors.PgBatchError)]
    assert strays == []


def test_the_docstring_tree_names_each_error_class_under_its_real_parent() -> None:
    tree = drawn_tree()
    classes = error_classes()
    assert sorted(tree) == sorted(classes), "the docstring tree and the classes differ"
    for name, parent in tree.items():
        cls = classes[name]
        bases = [base for base in cls.__bases__ if issubclass(base, errors.PgBatchError)]
        if parent is None:
            assert cls is errors.PgBatchError
        else:
            assert [base.__name__ for base in bases] == [parent], name


def test_error_classes_have_docstrings() -> None:
    undocumented = [name for name, cls in error_classes().items() if not cls.__doc__]
    assert undocumented == []
