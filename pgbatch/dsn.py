"""Where pgbatch connects to, and how a connection string is shown to people.

``resolve_dsn`` picks the DSN (argument, ``PGBATCH_DSN``, ``DATABASE_URL``, then the embedded
server); ``redact_dsn`` and ``describe_dsn`` are the only ways a DSN should reach a log line or an
error message, so that a password never does.
"""

from __future__ import annotations

import getpass
import os
import re
from urllib.parse import unquote

from psycopg.conninfo import conninfo_to_dict

from pgbatch.errors import InvalidDSN

__all__ = ["UNPARSABLE_DSN", "describe_dsn", "redact_dsn", "resolve_dsn"]

DSN_ENV_VARS = ("PGBATCH_DSN", "DATABASE_URL")
UNPARSABLE_DSN = "<unparsable dsn>"
_MASK = "***"
# sslpassword unlocks the client key: as secret as the password itself.
_SECRET_KEYS = frozenset({"password", "sslpassword"})
_URL_SCHEMES = ("postgresql://", "postgres://")
_SQLALCHEMY_URL = re.compile(r"^postgres(?:ql)?\+[A-Za-z0-9_]+://")


def resolve_dsn(dsn: str | None = None) -> str:
    """Return the DSN to use: ``dsn`` if given, else ``$PGBATCH_DSN``, else ``$DATABASE_URL``,
    else a DSN to the embedded PostgreSQL (started on demand, see :mod:`pgbatch.embedded`).

    An empty environment variable counts as unset. An explicit ``""`` is kept: for libpq it
    means "everything from PG* variables and defaults".

    Raises :class:`~pgbatch.errors.InvalidDSN` (never quoting a password) if it cannot be parsed.
    """
    if dsn is None:
        for name in DSN_ENV_VARS:
            value = os.environ.get(name, "").strip()
            if value:
                dsn = value
                break
    if dsn is None:
        # Imported here: the embedded server is the last resort and drags in process management.
        from pgbatch.embedded import embedded_dsn

        return embedded_dsn()
    _validate(dsn)
    return dsn


def _validate(dsn: str) -> None:
    if _SQLALCHEMY_URL.match(dsn):
        raise InvalidDSN(
            "invalid PostgreSQL DSN: it looks like a SQLAlchemy URL; drop the '+driver' part "
            "(postgresql://user@host:5432/dbname)"
        )
    problem = None
    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:
        problem = _sanitize_libpq_message(str(exc))
    if problem is not None:
        # Raised outside the except block: libpq's message quotes pieces of the input, maybe of
        # the password, and must not travel along as __context__ (even a suppressed one).
        raise InvalidDSN(
            f"invalid PostgreSQL DSN ({problem}); expected a URL like "
            "postgresql://user@host:5432/dbname or key=value pairs like "
            "'host=localhost dbname=app'"
        )
    port = params.get("port")
    if port is not None:
        for item in str(port).split(","):
            if item and not (item.isdigit() and 0 < int(item) < 65536):
                # libpq only checks the port when connecting; fail early with a clear message.
                raise InvalidDSN(f"invalid port {item!r} in PostgreSQL DSN {redact_dsn(dsn)}")


def _sanitize_libpq_message(message: str) -> str:
    """libpq's parse errors, minus the quoted fragments of the input they echo."""
    text = " ".join(message.split()).replace('"="', "'='")
    if text.count('"') % 2:  # an unpaired quote: cut there rather than guess where input ends
        return text.split('"', 1)[0] + "..."
    return re.sub(r'".*"', '"..."', text)


def redact_dsn(dsn: str) -> str:
    """The same DSN with every password (and sslpassword) replaced by ``***``.

    Handles URLs (``postgresql://u:secret@h/db``, ``?password=secret``) and key=value strings
    (``host=h password=secret``). Never raises: returns ``<unparsable dsn>`` for anything libpq
    cannot parse, since then nobody can say which part is the password.
    """
    try:
        conninfo_to_dict(dsn)
    except Exception:
        return UNPARSABLE_DSN
    try:
        redacted = _redact_url(dsn) if dsn.startswith(_URL_SCHEMES) else _redact_keywords(dsn)
        # Belt and braces: whatever libpq reads from the result must hold no secret.
        params = conninfo_to_dict(redacted)
    except Exception:
        return UNPARSABLE_DSN
    if any(params.get(key) not in (None, _MASK) for key in _SECRET_KEYS):
        return UNPARSABLE_DSN
    return redacted


def _redact_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    slash = rest.find("/")
    authority_end = len(rest) if slash == -1 else slash
    # libpq takes the password from the first ':' to the first '@' before any '/'; masking up to
    # the last '@' also covers an unencoded '@' inside the password.
    at = rest.rfind("@", 0, authority_end)
    if at != -1:
        user, colon, password = rest[:at].partition(":")
        if colon and password:
            rest = f"{user}:{_MASK}{rest[at:]}"
    head, question, query = rest.partition("?")
    if question:
        params = []
        for param in query.split("&"):
            key, equals, _value = param.partition("=")
            if equals and unquote(key) in _SECRET_KEYS:
                param = f"{key}={_MASK}"
            params.append(param)
        query = "&".join(params)
    return f"{scheme}://{head}{question}{query}"


def _redact_keywords(conninfo: str) -> str:
    pieces: list[str] = []
    last = 0
    for key, start, end in _keyword_spans(conninfo):
        if key in _SECRET_KEYS:
            pieces += [conninfo[last:start], _MASK]
            last = end
    pieces.append(conninfo[last:])
    return "".join(pieces)


def _keyword_spans(conninfo: str) -> list[tuple[str, int, int]]:
    """(key, value start, value end) for each ``key=value``, following libpq's conninfo_parse:
    whitespace separates pairs, values may be single-quoted, backslash escapes one character."""
    spans: list[tuple[str, int, int]] = []
    i, n = 0, len(conninfo)
    while True:
        while i < n and conninfo[i].isspace():
            i += 1
        if i >= n:
            return spans
        key_start = i
        while i < n and conninfo[i] != "=" and not conninfo[i].isspace():
            i += 1
        key = conninfo[key_start:i]
        while i < n and conninfo[i].isspace():
            i += 1
        if i >= n or conninfo[i] != "=":
            raise ValueError("missing '='")
        i += 1
        while i < n and conninfo[i].isspace():
            i += 1
        value_start = i
        if i < n and conninfo[i] == "'":
            i += 1
            while i < n and conninfo[i] != "'":
                i += 2 if conninfo[i] == "\\" else 1
            if i >= n:
                raise ValueError("unterminated quoted string")
            i += 1
        else:
            while i < n and not conninfo[i].isspace():
                i += 2 if conninfo[i] == "\\" else 1
            i = min(i, n)
        spans.append((key, value_start, i))


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` for messages such as "cannot connect to PostgreSQL at ...".

    Missing parts come from the PG* environment variables, then libpq's defaults (shown as
    ``localhost``, port 5432, database named after the user). Several hosts are listed
    comma-separated. Never raises; never shows a password.
    """
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return UNPARSABLE_DSN

    def param(key: str, env: str) -> str:
        return str(params.get(key) or os.environ.get(env) or "")

    hosts = (param("host", "PGHOST") or param("hostaddr", "PGHOSTADDR") or "localhost").split(",")
    ports = (param("port", "PGPORT") or "5432").split(",")
    if len(ports) != len(hosts):
        # libpq: a single port applies to every host.
        ports = [ports[0]] * len(hosts)
    dbname = param("dbname", "PGDATABASE") or param("user", "PGUSER") or _os_user()
    where = ",".join(
        # A raw '@' in a URL password makes libpq read its tail as the host: do not show it.
        f"{_bracket(host.rsplit('@', 1)[-1] or 'localhost')}:{port or '5432'}"
        for host, port in zip(hosts, ports, strict=True)
    )
    return f"{where}/{dbname}"


def _bracket(host: str) -> str:
    # Keep "host:port" readable for IPv6 literals.
    return f"[{host}]" if ":" in host and not host.startswith("/") else host


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # e.g. a container uid with no passwd entry
        return "?"
