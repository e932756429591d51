"""Find and mask secrets in text and in config mappings, before anything leaves the process.

- :func:`mask_uri` masks credentials *inside text*: the userinfo of every ``scheme://...@host``
  and ``name=value`` / ``"name": "value"`` pairs whose name looks secret (URL query strings,
  JDBC/ODBC/Azure connection strings, dict reprs in log lines).
- :func:`is_secret_key` decides from a setting's name alone (``fs.s3a.secret.key``, ``apiKey``)
  that its value is a secret; :func:`redact_mapping` applies both to a config before it is logged
  anywhere, and :func:`secret_values` lists the literal secrets so that logs can mask them
  wherever they show up verbatim (:mod:`hybridrec.safety.redaction` does that to log records).

The whole userinfo is masked (``http://***@host``), not only the password: a token-only userinfo
(``https://<token>@github.com``) or a token in the user slot (``https://<token>:x-oauth-basic@...``)
is as secret as a password, and which user connected is rarely worth that risk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

MASK = "***"

# Shorter literals would mask ordinary words and digits all over the logs.
MIN_SECRET_CHARS = 4

# Words that name a secret wherever they end a setting name.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "secrets",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "bearer",
        "private",
        "sas",
        "signature",
        "sig",
        # Compound words camelCase splitting cannot see into (``apikey``, ``ACCESSTOKEN``).
        "apikey",
        "accesskey",
        "secretkey",
        "privatekey",
        "authtoken",
        "accesstoken",
        "refreshtoken",
        "sessiontoken",
        "clientsecret",
    }
)
_KEY_WORDS = frozenset({"key", "keys"})
# Before "key"/"token", these mean a data-structure key or an NLP token, not a secret.
_NOT_SECRET_BEFORE = frozenset(
    {
        "partition",
        "partitions",
        "sort",
        "primary",
        "foreign",
        "join",
        "group",
        "grouping",
        "cache",
        "row",
        "hash",
        "dedup",
        "dedupe",
        "natural",
        "composite",
        "surrogate",
        "unique",
        "map",
        "dict",
        "lookup",
        "shard",
        "routing",
        "order",
        "bucket",
        "cluster",
        "distribution",
        "index",
        "sequence",
        "merge",
        "match",
        "idempotency",
        "pad",
        "cls",
        "sep",
        "unk",
        "mask",
        "bos",
        "eos",
        "special",
        "start",
        "end",
        "max",
        "min",
        "num",
        "next",
        "page",
        "continuation",
    }
)
# Before a "key" that is not the last part (``aws_access_key_id``,
# ``fs.azure.account.key.<account>.dfs.core.windows.net``), these make it a secret key.
_SECRET_KEY_QUALIFIERS = frozenset(
    {
        "access",
        "secret",
        "api",
        "private",
        "account",
        "master",
        "encryption",
        "signing",
        "client",
        "hmac",
        "sas",
        "storage",
        "shared",
        "session",
        "service",
        "license",
        "subscription",
        "ssh",
    }
)
# A last part that says the setting names *where* or *what kind of* secret, not the secret itself:
# ``privacy.key_env`` (an environment variable's name), ``keyStore`` (a path), ``keySizeBits``.
_NOT_SECRET_LAST = frozenset(
    {
        "env",
        "var",
        "variable",
        "file",
        "files",
        "path",
        "paths",
        "dir",
        "directory",
        "location",
        "store",
        "provider",
        "providers",
        "class",
        "type",
        "kind",
        "name",
        "names",
        "size",
        "length",
        "len",
        "bits",
        "bytes",
        "algorithm",
        "alg",
        "ttl",
        "timeout",
        "expiry",
        "expiration",
        "seconds",
        "ms",
        "minutes",
        "hours",
        "days",
        "interval",
        "enabled",
        "enable",
        "required",
        "header",
        "field",
        "column",
        "format",
        "mode",
        "version",
        "count",
        "prefix",
        "url",
        "uri",
        "endpoint",
        "host",
        "port",
        "region",
        "scope",
        "scopes",
        "user",
        "username",
        "email",
    }
)
# ``password_b64``, ``token.value``: the part before says what the value is.
_VALUE_SUFFIXES = frozenset({"value", "val", "b64", "base64", "hex", "raw", "str", "string"})
_BOOLEAN_WORDS = frozenset({"true", "false", "none", "null", "yes", "no", "on", "off"})

_CAMEL_LOWER_UPPER = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_TRAILING_DIGITS = re.compile(r"(?<=[a-z])\d+$")

# ``scheme://userinfo@``. First form: userinfo up to the last "@" of the authority, so an
# unencoded "@" inside a password is still covered. Second form: ``user:pass@`` where the
# password holds a "/" (AWS secret keys do); it can over-mask ``host:port/path/@x``, the
# cheaper mistake. That password is bounded: it may run past "/" and so past the next "://",
# and unbounded it made text like "x://x://..." quadratic.
_STOP = r"\s'\"<>`"
_USERINFO = re.compile(
    rf"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    rf"(?P<userinfo>[^{_STOP}/?#]+|[^{_STOP}/?#@:]*:[^{_STOP}?#@]{{1,256}})@"
)
# ``name=value`` in query strings (``?a=1&token=x``), connection strings (``;Password=x;``) and
# free text (``fs.s3a.secret.key=x``); the value ends at a separator, a quote or a blank.
_PAIR = re.compile(
    rf"(?<![A-Za-z0-9_.\-])(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)=(?P<value>[^{_STOP}&;]+)"
)
# ``'name': 'value'`` / ``"name": 123`` as in dict reprs and JSON.
_QUOTED_PAIR = re.compile(
    r"(?P<q>['\"])(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?P=q)(?P<sep>\s*:\s*)"
    r"(?:(?P<vq>['\"])(?P<qvalue>.*?)(?P=vq)|(?P<value>[^\s,}\]'\"]+))"
)


def name_parts(name: str) -> list[str]:
    """Lower-case words of a setting name, split on ``. _ -`` and camelCase boundaries.

    Example: ``spark.ssl.keyStorePassword`` -> ``["spark", "ssl", "key", "store", "password"]``.
    """
    spaced = _CAMEL_ACRONYM.sub(r"\1 \2", _CAMEL_LOWER_UPPER.sub(r"\1 \2", name))
    # ``api_key2`` is still an API key; ``s3a`` keeps its digit.
    return [_TRAILING_DIGITS.sub("", p.lower()) for p in _NON_ALNUM.split(spaced) if p]


def is_secret_key(name: str) -> bool:
    """Whether a setting (or query parameter) of this name holds a secret.

    True when the last word is a secret word (password, passwd, pwd, pass, passphrase,
    secret, token, credential(s), auth, authorization, private, sas, signature, sig), or "key"
    that is not a data key (``partition_key``, ``sort_key``), or a secret-qualified "key" deeper
    in the name (``aws_access_key_id``, ``fs.azure.account.key.<account>.dfs.core.windows.net``).
    False when the last word says the value only points at or describes a secret
    (``privacy.key_env``, ``oauthTokenFile``, ``keyStore``, ``keySizeBits``).
    """
    parts = name_parts(name)
    while len(parts) > 1 and (parts[-1] in _VALUE_SUFFIXES or parts[-1].isdigit()):
        parts.pop()
    if not parts or parts[-1] in _NOT_SECRET_LAST:
        return False
    last = parts[-1]
    before = parts[-2] if len(parts) > 1 else ""
    if last == "token" or last == "key":
        return before not in _NOT_SECRET_BEFORE
    if last == "keys":
        return before in _SECRET_KEY_QUALIFIERS
    if last in _SECRET_WORDS:
        return True
    return any(
        part in _KEY_WORDS and i > 0 and parts[i - 1] in _SECRET_KEY_QUALIFIERS
        for i, part in enumerate(parts[:-1])
    )


def mask_uri(text: str) -> str:
    """Mask the credentials of every URI and secret-named ``name=value`` pair inside ``text``.

    Works on free text (log lines, exception messages), not only whole URIs:

    - ``postgresql://alice:pw@db/x`` -> ``postgresql://***@db/x`` (the whole userinfo,
      token-only ``https://tok@host`` too; ``alice@example.com`` without a scheme is left alone);
    - ``?X-Amz-Signature=ab&x=1`` -> ``?X-Amz-Signature=***&x=1``, likewise ``token``,
      ``access_token``, ``sig``, ``;Password=x;``, ``fs.s3a.secret.key=x``;
    - ``{'password': 'x'}`` -> ``{'password': '***'}``.
    """
    if not text:
        return text
    masked = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    masked = _PAIR.sub(_mask_pair, masked)
    return _QUOTED_PAIR.sub(_mask_quoted_pair, masked)


def _mask_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match["name"]) or match["value"] == MASK:
        return match[0]
    return f"{match['name']}={MASK}"


def _mask_quoted_pair(match: re.Match[str]) -> str:
    if not is_secret_key(match["name"]):
        return match[0]
    head = f"{match['q']}{match['name']}{match['q']}{match['sep']}"
    if match["vq"] is not None:
        return f"{head}{match['vq']}{MASK}{match['vq']}"
    return f"{head}{MASK}"


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """:func:`mask_uri`, then every literal in ``secrets`` replaced by :data:`MASK`."""
    return mask_with_pattern(text, literal_pattern(secrets))


def mask_with_pattern(text: str, pattern: re.Pattern[str] | None) -> str:
    """:func:`mask_uri`, then every match of ``pattern`` (from :func:`literal_pattern`) masked."""
    masked = mask_uri(text)
    return pattern.sub(MASK, masked) if pattern is not None else masked


def literal_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for the literals of at least :data:`MIN_SECRET_CHARS` characters, or None."""
    # Longest first, so a secret that contains another is masked whole.
    literals = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    if not literals:
        return None
    return re.compile("|".join(re.escape(s) for s in literals))


def _is_maskable(value: Any) -> bool:
    # A flag says nothing secret, and masking "" or None would only hide that it is unset.
    return value is not None and value != "" and not isinstance(value, bool)


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def redact_mapping(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``flat`` safe to log: secret-named values masked, URIs in strings masked.

    Keys are dotted names (``Config.flat()``) or a nested mapping (``Config.to_dict()``); a nested
    key is judged by its full dotted path, so both forms redact alike
    (``spark.conf`` -> ``{"spark.hadoop.fs.s3a.secret.key": ...}`` is masked). A secret-named key
    gets :data:`MASK` for its whole value, unless that value is None, empty or a bool. Non-secret
    values keep their type; strings, also inside lists and nested mappings, go through
    :func:`mask_uri`.
    """
    return {key: _redact_value(str(key), value) for key, value in flat.items()}


def _redact_value(path: str, value: Any) -> Any:
    if is_secret_key(path) and _is_maskable(value):
        return MASK
    if isinstance(value, str):
        return mask_uri(value)
    if isinstance(value, Mapping):
        return {key: _redact_value(_join(path, key), item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(path, item) for item in value]
    return value


def secret_values(flat: Mapping[str, Any]) -> set[str]:
    """The literal secrets in ``flat``, for log filters to mask wherever they appear.

    That is every value of a secret-named key (nested ones included, as in
    :func:`redact_mapping`), and inside any string value the userinfo secret of a URI (the
    password of ``user:password``, the whole of a token-only userinfo) and the value of a
    secret-named ``name=value`` pair, each raw and percent-decoded. Values shorter than
    :data:`MIN_SECRET_CHARS` characters and boolean words are left out: masking them everywhere
    would garble the logs for no gain.

    Works on ``os.environ`` too (``AWS_SECRET_ACCESS_KEY``, ``MLFLOW_TRACKING_PASSWORD``).
    """
    found: set[str] = set()
    for key, value in flat.items():
        found.update(_secrets_in(str(key), value))
    return {
        s
        for s in found
        if len(s) >= MIN_SECRET_CHARS and s.lower() not in _BOOLEAN_WORDS and s != MASK
    }


def _secrets_in(path: str, value: Any) -> Iterator[str]:
    if is_secret_key(path) and _is_maskable(value):
        yield from _leaves(value)
    if isinstance(value, str):
        yield from _secrets_in_text(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _secrets_in(_join(path, key), item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _secrets_in(path, item)


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif _is_maskable(value):
        yield str(value)


def _secrets_in_text(text: str) -> Iterator[str]:
    for match in _USERINFO.finditer(text):
        userinfo = match["userinfo"]
        secret = userinfo.partition(":")[2] if ":" in userinfo else userinfo
        yield from (secret, unquote(secret))
    for match in _PAIR.finditer(text):
        if is_secret_key(match["name"]):
            yield from (match["value"], unquote(match["value"]))
    for match in _QUOTED_PAIR.finditer(text):
        if is_secret_key(match["name"]):
            yield match["qvalue"] if match["vq"] is not None else match["value"]
