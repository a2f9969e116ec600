"""Turn step inputs and outputs into stored values, and back.

A value is stored as JSON when JSON gives it back unchanged; otherwise through
Prefect's `PickleSerializer` (cloudpickle, base64), unless pickle is refused by
the ``allow_pickle`` setting. Loading a pickle runs code, so only load a store
you trust: that is why the setting exists.

Every stored value also gets a *preview*: short, with secrets redacted, safe
to show. Redacted are pydantic `SecretStr`/`SecretBytes`, Prefect `Secret`
blocks, and the value of any mapping key or parameter name that looks like a
credential (password, token, secret, api key, authorization, ...).

Error messages and tracebacks are scrubbed before they are stored: every
secret among the run's parameters and the steps' inputs is replaced wherever
it appears in the text, and so are the values of ``name=value`` pairs,
``Authorization:`` headers and URL passwords whose names look like
credentials, since an exception often quotes the URL or request that failed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Set
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from prefect_incomplete.models import Encoded
from prefect_incomplete.settings import get_settings

__all__ = [
    "REDACTED",
    "ValueTooLarge",
    "decode",
    "encode",
    "is_secret_name",
    "preview",
    "scrub",
    "secret_texts",
    "shown",
]

REDACTED = "**********"
PREVIEW_CHARS = 300

_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[-_ ]?key|apikey|auth|credential|"
    r"private[-_ ]?key|session[-_ ]?id|cookie|signature",
    re.IGNORECASE,
)


# `access_token=abc`, `"api_key": "abc"`, `Authorization: Bearer abc`: the
# name must end in the credential word, so `InvalidAccessTokenError: ...`
# (a class name, then the message) keeps its message.
_SECRET_PAIR = re.compile(
    r"""(?P<name>\b[\w-]*?(?:pass(?:word|wd|phrase)?|secret|token|api[-_]?key|"""
    r"""apikey|authorization|auth|credentials?|signature|sig|cookie|session[-_]?id))"""
    r"""(?P<sep>["']?\s*(?:=|:)\s*["']?)"""
    r"""(?P<value>(?:(?:Bearer|Basic|Token)\s+)?[^\s&'",;}]+)""",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+(?=@)", re.I
)
_SHORTEST_SECRET = 4


class ValueTooLarge(ValueError):
    """A value is larger than the store accepts."""


class PickleRefused(ValueError):
    """A stored value is a pickle and the settings refuse to load pickles."""


def is_secret_name(name: str) -> bool:
    """Whether a key or parameter called `name` is treated as a credential."""
    return bool(_SECRET_NAME.search(name))


CONFIDENTIAL = "(confidential)"


def encode(
    value: Any,
    *,
    name: str = "",
    what: str = "value",
    confidential: bool = False,
    secrets: Set[str] = frozenset(),
) -> Encoded:
    """Store `value`; `name` (a parameter or key) decides redaction of the preview,
    and any of the run's `secrets` found in the preview's text is redacted too.

    Raises `ValueTooLarge`, naming `what`, when the stored form is larger than
    the ``max_value_bytes`` setting.
    """
    settings = get_settings()
    text = CONFIDENTIAL if confidential else preview(value, name=name, secrets=secrets)
    fmt, payload = _payload(value, allow_pickle=settings.allow_pickle)

    size = len(payload)
    if size > settings.max_value_bytes:
        raise ValueTooLarge(
            f"{what} takes {size} bytes stored, over the limit of "
            f"{settings.max_value_bytes} (PREFECT_INCOMPLETE_MAX_VALUE_BYTES); "
            "pass a reference (a path or an id) instead of the data"
        )

    digest = _digest(fmt, payload, value)
    return Encoded(
        format=fmt,
        payload=payload,
        preview=text,
        fingerprint=digest,
        holds_secret=bool(secrets) and _quotes(value, secrets),
    )


def _quotes(value: Any, secrets: Set[str]) -> bool:
    """Whether the text of `value` contains one of `secrets`."""
    text = _render(_redacted(value))
    return any(secret in text for secret in secrets)


def decode(encoded: Encoded) -> Any:
    """The value back from its stored form.

    Raises `PickleRefused` for a pickle when pickles are refused, and
    `LookupError` for a value that was never stored.
    """
    if encoded.format == "json":
        return json.loads(encoded.payload)
    if encoded.format == "pickle":
        if not get_settings().allow_pickle:
            raise PickleRefused(
                "this value was stored with pickle and PREFECT_INCOMPLETE_ALLOW_PICKLE "
                "is false; loading it would run code"
            )
        from prefect.serializers import PickleSerializer

        return PickleSerializer().loads(encoded.payload.encode())
    raise LookupError("this value was not stored (pickle was refused when it was)")


def fingerprint(value: Any) -> str:
    """The fingerprint `encode` would give `value`, without the size limit."""
    fmt, payload = _payload(value, allow_pickle=get_settings().allow_pickle)
    return _digest(fmt, payload, value)


def _digest(fmt: str, payload: str, value: Any) -> str:
    """sha256 of a stored value; a value that is not stored counts by its type.

    A client or a connection passed to a step cannot be stored; comparing it
    by type lets the step's recorded output be replayed when its other
    inputs are the same.
    """
    if fmt == "none":
        payload = f"{type(value).__module__}.{type(value).__qualname__}"
    return hashlib.sha256(f"{fmt}:{payload}".encode()).hexdigest()


def _payload(value: Any, *, allow_pickle: bool) -> tuple[str, str]:
    text = _json_or_none(value)
    if text is not None:
        return "json", text
    if not allow_pickle:
        return "none", ""

    from prefect.serializers import PickleSerializer

    try:
        return "pickle", PickleSerializer().dumps(value).decode()
    except Exception:  # locks, sockets, open files: what no pickle can hold
        return "none", ""


def _json_or_none(value: Any) -> str | None:
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    try:
        same = json.loads(text) == value and _same_types(json.loads(text), value)
    except Exception:  # an __eq__ of the user's may raise anything
        return None
    return text if same else None


def _same_types(loaded: Any, value: Any) -> bool:
    if type(loaded) is not type(value):
        return False
    if isinstance(value, dict):
        return all(_same_types(loaded[k], v) for k, v in value.items())
    if isinstance(value, list):
        return all(_same_types(a, b) for a, b in zip(loaded, value, strict=True))
    return True


def preview(value: Any, *, name: str = "", secrets: Set[str] = frozenset()) -> str:
    """A short, redacted text of `value` for people."""
    if name and is_secret_name(name):
        return REDACTED
    text = scrub(_render(_redacted(value)), secrets)
    if len(text) > PREVIEW_CHARS:
        text = text[: PREVIEW_CHARS - 1] + "…"
    return text


def secret_texts(*named_values: Mapping[str, Any]) -> set[str]:
    """The secret strings among named values (parameters, step inputs).

    A value is secret when it is a `SecretStr`, `SecretBytes` or Prefect
    `Secret`, or sits under a name that looks like a credential, at any depth.
    Strings shorter than four characters are left out: replacing them
    everywhere would garble the text and hide nothing.
    """
    found: set[str] = set()
    for values in named_values:
        for name, value in values.items():
            _collect_secrets(value, is_secret_name(str(name)), found)
    schemes = ("Bearer ", "Basic ", "Token ")
    found |= {t.split(" ", 1)[1] for t in found if t.startswith(schemes)}
    return {text for text in found if len(text) >= _SHORTEST_SECRET}


def _collect_secrets(value: Any, secret: bool, found: set[str]) -> None:
    if isinstance(value, SecretStr):
        found.add(value.get_secret_value())
    elif isinstance(value, SecretBytes):
        found.add(value.get_secret_value().decode(errors="replace"))
    elif _is_secret_value(value):
        _collect_secrets(_block_secret(value), True, found)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            field = getattr(value, name, None)
            _collect_secrets(field, secret or is_secret_name(name), found)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key_secret = isinstance(key, str) and is_secret_name(key)
            _collect_secrets(item, secret or key_secret, found)
    elif _is_secret_pair(value):
        _collect_secrets(value[1], True, found)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _collect_secrets(item, secret, found)
    elif (
        secret and isinstance(value, str | int | float) and not isinstance(value, bool)
    ):
        found.add(str(value))


def _block_secret(block: Any) -> Any:
    try:
        return block.get()
    except Exception:  # a block that cannot give its value hides nothing
        return None


def scrub(text: str, secrets: Set[str]) -> str:
    """`text` with each of `secrets` and each credential-looking value redacted."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _SECRET_PAIR.sub(lambda match: match["name"] + match["sep"] + REDACTED, text)
    return _URL_PASSWORD.sub(lambda match: match["head"] + REDACTED, text)


def shown(encoded: Encoded, *, name: str = "") -> Any:
    """A stored value as JSON for scripts (``--json``), redacted like its preview.

    A JSON value comes back as itself, with credentials replaced; anything
    else (a pickle, a value not stored, a confidential one, one that quotes a
    secret of its run) as its preview text.
    """
    hidden = encoded.holds_secret or encoded.preview == CONFIDENTIAL
    if encoded.format != "json" or hidden:
        return encoded.preview
    if name and is_secret_name(name):
        return REDACTED
    return _redacted_json(json.loads(encoded.payload))


def _redacted_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: REDACTED if is_secret_name(key) else _redacted_json(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        if _is_secret_pair(value):  # a header pair: JSON made the tuple a list
            return [value[0], REDACTED]
        return [_redacted_json(item) for item in value]
    if isinstance(value, str):
        return scrub(value, set())
    return value


def _redacted(value: Any) -> Any:
    if _is_secret_value(value):
        return _Redacted()
    if isinstance(value, BaseModel):
        fields = {k: getattr(value, k, None) for k in type(value).model_fields}
        return _Named(type(value).__name__, _redacted(fields))
    if isinstance(value, Mapping):
        return {
            k: _Redacted() if isinstance(k, str) and is_secret_name(k) else _redacted(v)
            for k, v in value.items()
        }
    if isinstance(value, tuple) and _is_secret_pair(value):
        return (value[0], _Redacted())
    if isinstance(value, list | tuple | set | frozenset):
        items = [_redacted(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _is_secret_pair(value: Any) -> bool:
    """A ``(name, value)`` pair, as headers often are, named like a credential."""
    return (
        isinstance(value, tuple | list)
        and len(value) == 2
        and isinstance(value[0], str)
        and is_secret_name(value[0])
    )


def _is_secret_value(value: Any) -> bool:
    if isinstance(value, SecretStr | SecretBytes):
        return True
    cls = type(value)
    return cls.__name__ == "Secret" and cls.__module__.startswith("prefect.blocks")


class _Redacted:
    def __repr__(self) -> str:
        return REDACTED


class _Named:
    def __init__(self, name: str, fields: Any) -> None:
        self.name, self.fields = name, fields

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.name}({inner})"


def _render(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    try:
        return repr(value)
    except Exception:  # a user's __repr__ may raise anything
        return f"<{type(value).__name__}>"


def resolve_futures(parameters: dict[str, Any]) -> dict[str, Any]:
    """`parameters` with every Prefect future replaced by its result."""
    from prefect.futures import PrefectFuture
    from prefect.utilities.collections import visit_collection

    def visit(expr: Any) -> Any:
        if isinstance(expr, PrefectFuture):
            return expr.result(raise_on_failure=False)
        return expr

    return {
        name: visit_collection(value, visit_fn=visit, return_data=True)
        for name, value in parameters.items()
    }


def combine_fingerprints(fingerprints: Mapping[str, str]) -> str:
    """One fingerprint for a step's inputs, from each input's fingerprint."""
    joined = "|".join(f"{name}={fp}" for name, fp in sorted(fingerprints.items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def fingerprint_parameters(parameters: dict[str, Any]) -> str:
    """The fingerprint of a step's inputs as `encode` would store them."""
    resolved = resolve_futures(parameters)
    return combine_fingerprints({k: fingerprint(v) for k, v in resolved.items()})
