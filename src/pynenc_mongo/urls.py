"""MongoDB connection-string parsing and redaction.

Everything that looks at a connection string lives here so that one function,
:func:`redact_url`, decides what of it may be shown: in logs, reprs, exception
messages and the AppInfo that pynenc stores. Parsing uses PyMongo's public URI
helpers (``pymongo.uri_parser``) so the rules are MongoDB's own, as described in
the MongoDB manual's "Connection Strings" page; for ``mongodb+srv://`` no DNS
lookup happens here (PyMongo resolves SRV records when the client connects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

from pymongo import uri_parser
from pymongo.errors import ConfigurationError, InvalidURI

MONGODB_SCHEME = "mongodb://"
SRV_SCHEME = "mongodb+srv://"
MOCK_SCHEME = "mongomock://"
SCHEMES = (MONGODB_SCHEME, SRV_SCHEME, MOCK_SCHEME)

#: URI options whose values are secrets (MongoDB manual, "Connection String Options").
SECRET_OPTIONS = frozenset(
    {
        "tlscertificatekeyfilepassword",
        "sslpemkeypassword",
        "authmechanismproperties",
    }
)
REDACTED = "***"
#: MongoDB's limit on database names (MongoDB manual, "Naming Restrictions").
MAX_DATABASE_NAME_BYTES = 63
_BAD_DB_CHARS = re.compile(r"[/\\. \"$\x00]")


class MongoUrlError(ValueError):
    """A connection string is malformed. The message never contains a password."""


@dataclass(frozen=True)
class ParsedUrl:
    """The parts of a connection string this package needs.

    :ivar str scheme: one of ``mongodb://``, ``mongodb+srv://``, ``mongomock://``.
    :ivar list[str] hosts: ``host:port`` strings (for SRV, the one DNS name).
    :ivar str | None database: the database named in the URL path, if any.
    :ivar bool has_password: whether the URL carries a password.
    """

    scheme: str
    hosts: tuple[str, ...]
    database: str | None
    has_password: bool

    @property
    def is_mock(self) -> bool:
        """True for ``mongomock://`` URLs (the in-process embedded store)."""
        return self.scheme == MOCK_SCHEME


def _split(url: str, lenient: bool = False) -> tuple[str, str, str, str]:
    """Split ``url`` into (scheme, userinfo, hosts, rest-after-hosts); never raises.

    ``scheme`` is ``""`` when the URL has none of :data:`SCHEMES`. The strict
    split is PyMongo's (the host part ends at the first ``/`` or ``?``). A
    password holding an unescaped ``/`` or ``?`` (which PyMongo refuses) would
    then end the host part early and be shown as hosts or path; so with
    ``lenient`` (used for redaction), when the host part has no ``@`` but the
    text after it does, everything up to the last ``@`` counts as user info.
    """
    scheme = next((s for s in SCHEMES if url.startswith(s)), "")
    body = url[len(scheme) :]
    end = len(body)
    for sep in ("/", "?"):
        pos = body.find(sep)
        if pos != -1:
            end = min(end, pos)
    netloc, rest = body[:end], body[end:]
    if lenient and "@" not in netloc and "@" in rest:
        # Unescaped '/' or '?' inside the password: the last '@' ends the user info.
        at = body.rfind("@")
        after = body[at + 1 :]
        cut = len(after)
        for sep in ("/", "?"):
            pos = after.find(sep)
            if pos != -1:
                cut = min(cut, pos)
        return scheme, body[:at], after[:cut], after[cut:]
    userinfo, _, hosts = netloc.rpartition("@")
    return scheme, userinfo, hosts, rest


def _filter_query(rest: str, keep_secret_as: str | None) -> str:
    """Rewrite the ``?query`` part of ``rest``: secret options masked or dropped."""
    path, qmark, query = rest.partition("?")
    if not qmark:
        return rest
    parts = []
    for item in query.replace(";", "&").split("&"):
        key, eq, _value = item.partition("=")
        if eq and key.lower() in SECRET_OPTIONS:
            if keep_secret_as is not None:
                parts.append(f"{key}={keep_secret_as}")
        else:
            parts.append(item)
    return path + ("?" + "&".join(parts) if parts else "")


def _redact_foreign(url: str) -> str:
    """Redact a string that is not a URL of :data:`SCHEMES` (never raises).

    ``http://user:pw@host`` keeps its user; anything else holding an ``@``
    (``user:pw@host``, ``MONGODB://u:p@h``) loses everything before the last
    ``@``: when in doubt, hide more.
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)?(.*)$", url, re.DOTALL)
    prefix, body = (match.group(1) or "", match.group(2)) if match else ("", url)
    if "@" not in body:
        return url
    userinfo, _, after = body.rpartition("@")
    user = userinfo.split(":", 1)[0] if prefix and ":" in userinfo else ""
    if user and not re.search(r"[/?#]", user):
        return f"{prefix}{user}:{REDACTED}@{after}"
    return f"{prefix}{REDACTED}@{after}"


def redact_url(url: str) -> str:
    """Return ``url`` with its password and secret options replaced by ``***``.

    Works on malformed URLs too (it never raises), so it is safe to call in
    error paths. ``mongodb://user:pw@h/db?authSource=admin`` becomes
    ``mongodb://user:***@h/db?authSource=admin``.

    :param str url: any string, ideally a MongoDB connection string.
    :return: the same string with secrets replaced.
    """
    scheme, userinfo, hosts, rest = _split(url, lenient=True)
    if not scheme:
        return _redact_foreign(url)
    netloc = hosts
    if userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hosts}" if ":" in userinfo else f"{user}@{hosts}"
    return scheme + netloc + _filter_query(rest, REDACTED)


def strip_password(url: str) -> str:
    """Return ``url`` with the password and secret options removed entirely.

    Used for the AppInfo that pynenc stores (``AppInfo.config_values``): the
    monitor and other readers take the password from their own environment.

    :param str url: a MongoDB connection string.
    :return: ``mongodb://user@host/...`` (password and secret options dropped).
    """
    scheme, userinfo, hosts, rest = _split(url, lenient=True)
    if not scheme:
        return _redact_foreign(url)
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}@{hosts}" if userinfo else hosts
    return scheme + netloc + _filter_query(rest, None)


def option_names(url: str) -> set[str]:
    """The names of the URI options in ``url``'s query string, lower-cased (never
    raises; nothing is validated).

    :param str url: a connection string.
    :return: e.g. ``{"authsource", "timeoutms"}``.
    """
    _scheme, _userinfo, _hosts, rest = _split(url, lenient=True)
    _path, _qmark, query = rest.partition("?")
    return {
        item.partition("=")[0].strip().lower()
        for item in query.replace(";", "&").split("&")
        if item.strip()
    }


def _validate_options(query: str) -> None:
    """Validate URI options one by one so the error names the offending option."""
    for item in query.replace(";", "&").split("&"):
        if not item:
            continue
        try:
            uri_parser.split_options(item, validate=True, warn=False)
        except (InvalidURI, ConfigurationError, ValueError, OSError) as exc:
            key, _, value = item.partition("=")
            shown = REDACTED if key.lower() in SECRET_OPTIONS else repr(unquote_plus(value))
            raise InvalidURI(f"URI option {key!r}={shown} is not accepted: {exc}") from None
    uri_parser.split_options(query, validate=True, warn=False)


def parse_url(url: str) -> ParsedUrl:
    """Validate a connection string without connecting or resolving DNS.

    Uses PyMongo's public parser pieces (``split_hosts``, ``split_options``,
    ``parse_userinfo``) so unknown options, bad ports and bad database names
    are refused exactly as ``MongoClient`` would refuse them.

    :param str url: ``mongodb://``, ``mongodb+srv://`` or ``mongomock://`` URL.
    :return: the parsed parts.
    :raises MongoUrlError: naming the setting, the redacted URL and the problem.
    """
    if not isinstance(url, str) or not url:
        raise MongoUrlError(f"mongo_url: expected a non-empty string, got {type(url).__name__}")
    scheme, userinfo, hosts, rest = _split(url)
    shown = redact_url(url)
    if not scheme:
        raise MongoUrlError(
            f"mongo_url {shown!r}: expected a URL starting with "
            f"{MONGODB_SCHEME!r}, {SRV_SCHEME!r} or {MOCK_SCHEME!r}"
        )
    path, _, query = rest.partition("?")
    database = unquote_plus(path.lstrip("/")) or None
    try:
        has_password = False
        if userinfo:
            _user, password = uri_parser.parse_userinfo(userinfo)
            has_password = bool(password)
        if scheme == MOCK_SCHEME:
            host_list = [hosts or "localhost"]
        else:
            if not hosts:
                raise InvalidURI("no host given")
            if scheme == SRV_SCHEME:
                if "," in hosts or ":" in hosts:
                    raise InvalidURI("mongodb+srv:// URLs take exactly one host name, no port")
                host_list = [hosts]
            else:
                host_list = [f"{h}:{p}" for h, p in uri_parser.split_hosts(hosts)]
            if query:
                _validate_options(query)
        if database is not None:
            database = database.split(".", 1)[0]
            if _BAD_DB_CHARS.search(database):
                raise InvalidURI(f"bad database name {database!r}")
            if len(database.encode("utf-8", "surrogatepass")) > MAX_DATABASE_NAME_BYTES:
                raise InvalidURI(
                    f"database name {database[:20]!r}... is longer than MongoDB's limit of "
                    f"{MAX_DATABASE_NAME_BYTES} bytes"
                )
    except (InvalidURI, ConfigurationError, ValueError, OSError) as exc:
        # PyMongo messages name the option, never the password; redact anyway.
        message = str(exc)
        for secret in (userinfo, _split(url, lenient=True)[1]):
            if secret:
                message = message.replace(secret, REDACTED)
        raise MongoUrlError(f"mongo_url {shown!r}: {message}") from None
    return ParsedUrl(
        scheme=scheme, hosts=tuple(host_list), database=database, has_password=has_password
    )
