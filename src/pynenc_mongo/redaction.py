"""Credentials removed from any config value before it is stored or shown.

pynenc stores an app's ``config_values`` in its app info, which anyone allowed to
discover apps can read (the monitor, :mod:`pynenc_mongo.discovery`). A setting
may hold a credential whatever it is called, so :func:`redact_config` looks at
every value, not only at the setting names:

* a setting whose **name** looks secret (``password``, ``token``, ``api_key``,
  ``credential``, ``signature``...) is dropped, unless the name says it is a URL
  (its value is then cleaned as below);
* a **URL** loses the password of its user info (``redis://:pw@h`` ->
  ``redis://***@h``; MongoDB URLs keep the user and drop the password and secret
  options, :func:`pynenc_mongo.urls.strip_password`);
* every ``name=value`` pair whose name looks secret, in a URL query string
  (``?password=X``, ``X-Amz-Signature=X``, ``X-Goog-Credential=X``, Azure SAS
  ``sig=X``, ``access_token=X``), in a libpq DSN (``host=db password=X``, quoted
  values included) or in an ODBC string (``Server=x;Pwd=X``), gets ``***`` as value;
* dicts, lists, tuples, sets and frozensets are walked; keys and the other values
  are kept as they are.

Stricter still, :func:`redact_config` takes an allow-list of setting names
(``allowed``; e.g. :func:`known_setting_names`): top-level settings not in it are
dropped whatever their value.

The names that count as secret are in :data:`SECRET_SETTING` (setting names) and
:func:`is_secret_parameter` (``name=value`` pairs). Ordinary values (``authSource=admin``,
``page=2``, ``host=db``, ``monkey``) are left unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Final

from pynenc_mongo.urls import REDACTED, SCHEMES, strip_password

#: Setting names whose value is a secret (searched, case-insensitive): the pattern the
#: state backend's ``_SECRET_KEY`` used, so :func:`redact_config` drops what it dropped.
SECRET_SETTING: Final = re.compile(
    r"pass(word)?|passwd|pwd|secret|token|credential|api_?key|private_?key|auth(?!ors?\b)|"
    r"(^|_)key$|cookie|session|signature",
    re.IGNORECASE,
)

#: Words that make a ``name=value`` pair secret when the name holds one of them
#: (the name split at ``-_.`` and camelCase): ``sslPassword``, ``X-Amz-Signature``,
#: ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``X-Goog-Signature``, Azure SAS ``sig``.
SECRET_WORDS: Final = frozenset(
    {"password", "passwd", "pwd", "pass", "passphrase", "secret", "token", "signature"}
    | {"sig", "credential", "credentials", "apikey", "jwt"}
)
#: Whole names that are secret on their own (``?key=`` of API keys, OAuth ``code``).
SECRET_NAMES: Final = frozenset({"key", "auth", "authorization", "session", "sessionid"} | {"code"})
#: Secret runs of words written together (``sslpassword``, ``AWSAccessKeyId``).
SECRET_RUNS: Final = (
    "password",
    "passwd",
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "accesstoken",
    "authtoken",
    "sessiontoken",
    "clientsecret",
)
_WORD: Final = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def is_secret_parameter(name: str) -> bool:
    """True when a ``name=value`` pair named ``name`` holds a secret.

    :param str name: e.g. ``"password"``, ``"X-Amz-Signature"``, ``"authSource"``.
    :return: True for :data:`SECRET_NAMES`, a name holding one of :data:`SECRET_WORDS`
        or :data:`SECRET_RUNS`; False for ``authSource``, ``bypass``, ``tokenizer``.
    """
    lowered = name.lower()
    if lowered in SECRET_NAMES:
        return True
    words = [word.lower() for word in _WORD.findall(name)]
    if any(word in SECRET_WORDS for word in words):
        return True
    joined = "".join(words)
    return any(run in joined for run in SECRET_RUNS)


#: ``name=value`` pairs: the name starts the string or follows a separator of URL
#: queries (``? & ;``), DSNs (whitespace) or lists (``,``); the value is quoted
#: (libpq allows ``'...'`` with ``\\'`` escapes) or runs to the next separator.
_PAIR: Final = re.compile(
    r"(?P<lead>^|[?&;,\s])(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?P<eq>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s&;,'\"]*)"
)
#: A URL with user info (any scheme), or ``user:password@host`` without one; the
#: state backend's ``_URL_USERINFO``.
_URL_USERINFO: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*@|^[^/?#\s]*:[^/?#\s]*@")


def _redact_pair(match: re.Match[str]) -> str:
    if not is_secret_parameter(match["name"]) or not match["value"]:
        return match[0]
    return f"{match['lead']}{match['name']}{match['eq']}{REDACTED}"


def redact_text(text: str) -> str:
    """``text`` with the credentials it may hold replaced (see the module docstring).

    :param str text: any string: a URL, a DSN, a plain value.
    :return: the string with user-info passwords and secret ``name=value`` values
        replaced by ``***``; unchanged when it holds none.
    """
    if _URL_USERINFO.search(text) or text.startswith(SCHEMES):
        text = strip_password(text)
    if "=" in text:
        text = _PAIR.sub(_redact_pair, text)
    return text


def redact_config(value: Any, key: Any = None, *, allowed: Collection[str] | None = None) -> Any:
    """A copy of a config value with credentials removed, recursively.

    A superset of what the state backend's ``_without_secrets`` removes (same
    secret setting names, same URL user-info rule), plus secret ``name=value``
    pairs anywhere in a string (URL queries, DSNs, pre-signed URLs).

    :param value: a config value: ``config_values`` itself, or any value in it.
    :param key: the name ``value`` is stored under (kept for the old signature;
        unused).
    :param allowed: when given and ``value`` is a dict, only its keys in
        ``allowed`` are kept (an allow-list of setting names; nested dicts are not
        filtered by it).
    :return: the cleaned copy; strings, dicts, lists, tuples, sets and frozensets are
        rebuilt, any other object is returned as is.
    """
    del key
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        safe: dict[Any, Any] = {}
        for k, v in value.items():
            if allowed is not None and k not in allowed:
                continue
            if isinstance(k, str) and SECRET_SETTING.search(k) and "url" not in k.lower():
                continue
            safe[k] = redact_config(v, k)
        return safe
    if isinstance(value, list):
        return [redact_config(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_config(v) for v in value)
    if isinstance(value, set | frozenset):
        return type(value)(redact_config(v) for v in value)
    return value


def known_setting_names() -> frozenset[str]:
    """Names of every setting of the config classes loaded in this process (pynenc's,
    pynenc-mongo's and any plugin's): cistell ``ConfigField`` attributes of every
    subclass of ``cistell.ConfigBase``. An allow-list for :func:`redact_config`.

    :return: the setting names (e.g. ``"mongo_url"``, ``"app_id"``).
    """
    from cistell import ConfigBase, ConfigField

    names: set[str] = set()
    pending: list[type[Any]] = [ConfigBase]
    seen: set[type[Any]] = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        names.update(k for k, v in vars(cls).items() if isinstance(v, ConfigField))
    return frozenset(names)


__all__ = [
    "SECRET_NAMES",
    "SECRET_RUNS",
    "SECRET_SETTING",
    "SECRET_WORDS",
    "is_secret_parameter",
    "known_setting_names",
    "redact_config",
    "redact_text",
]
