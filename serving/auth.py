"""Bearer tokens of the prediction endpoints, each with an id the audit log records.

Tokens come from ``Settings.api_tokens`` (JSON ``{id: token}``, or the path of a file holding it: a mounted Secret)
and ``Settings.api_token`` (id ``default``). They are checked by serving.gateway before the request's body is read,
so a client without a token cannot make the API buffer or parse anything. No message here quotes a token.
"""

import hmac
import json
from collections.abc import Mapping
from pathlib import Path

from churn_common.errors import ChurnError, ConfigurationError
from churn_common.settings import Settings

DEFAULT_TOKEN_ID = "default"


class Unauthorized(ChurnError):
    """The request's credentials are missing or wrong; the message says which, never what was sent."""


class Tokens:
    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ConfigurationError("no API tokens configured")
        self._tokens = [(token_id, token.encode()) for token_id, token in tokens.items()]

    def secrets(self) -> list[str]:
        return [token.decode() for _, token in self._tokens]

    def identify(self, authorization: bytes | None) -> str:
        """The id of the token an ``Authorization`` header carries; Unauthorized if none matches."""
        scheme, _, credentials = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not credentials:
            raise Unauthorized("missing bearer token")
        matched = None
        # Every token compared, in constant time: the response time must not say how close a guess was, or which.
        for token_id, token in self._tokens:
            if hmac.compare_digest(credentials, token):
                matched = token_id
        if matched is None:
            raise Unauthorized("invalid bearer token")
        return matched


def load_tokens(settings: Settings) -> Tokens | None:
    """The configured tokens; None when there are none (the API is then open)."""
    named = {} if settings.api_tokens is None else _named_tokens(settings.api_tokens.get_secret_value())
    if settings.api_token is not None:
        if DEFAULT_TOKEN_ID in named:
            raise ConfigurationError(f"CHURN_API_TOKENS names a token {DEFAULT_TOKEN_ID!r}, as CHURN_API_TOKEN does")
        named[DEFAULT_TOKEN_ID] = settings.api_token.get_secret_value()
    if not named:
        return None
    _check_tokens(named)
    return Tokens(named)


def _named_tokens(value: str) -> dict[str, str]:
    text = value.strip()
    if text[:1] not in ("{", "["):  # a path, not JSON
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ConfigurationError(f"CHURN_API_TOKENS: cannot read the token file {text}: {exc.strerror}") from exc
    try:
        tokens = json.loads(text)
    except json.JSONDecodeError as exc:
        # The position only: the text holds the tokens.
        raise ConfigurationError(f"CHURN_API_TOKENS is not JSON {{id: token}} (line {exc.lineno})") from None
    if not isinstance(tokens, dict):
        raise ConfigurationError("CHURN_API_TOKENS must be a JSON object {id: token}")
    return tokens


def _check_tokens(tokens: Mapping[str, object]) -> None:
    bad = sorted(key for key, token in tokens.items() if not key or not isinstance(token, str) or not token.strip())
    if bad:
        raise ConfigurationError(f"API tokens {bad}: each needs a non-empty id and a non-empty string token")
    by_token: dict[object, list[str]] = {}
    for token_id, token in tokens.items():
        by_token.setdefault(token, []).append(token_id)
    shared = [ids for ids in by_token.values() if len(ids) > 1]
    if shared:
        raise ConfigurationError(f"API token ids {shared[0]} share one token: a request could not be attributed")
