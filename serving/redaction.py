"""Credentials out of every text the API shows or logs.

Libraries put the URIs they were given into their messages (MLflow: "API request to http://user:password@host/...
failed"), and those messages reach /ready, 503 bodies and a log line per champion poll. A :class:`Redactor` replaces
the userinfo of any URI in a text, and every known secret (the tracking and registry URIs' passwords, the Redis
password, the API tokens) wherever it appears, spelled as given, percent-encoded or percent-decoded.
"""

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit

from churn_common.settings import Settings
from serving.auth import load_tokens

MASK = "***"
# scheme://userinfo@ : the userinfo runs to the last "@" before the authority ends, so an unencoded "@" in a
# password is masked with the rest of it.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")


def uri_password(uri: str) -> str | None:
    try:
        return urlsplit(uri).password
    except ValueError:  # not a URI at all (an unbalanced "[" in its host, say)
        return None


def redactor_for(settings: Settings) -> "Redactor":
    """A redactor of every secret the API process holds: the tracking and registry URIs' passwords, the Redis
    password and the API tokens."""
    secrets = [uri_password(settings.mlflow_tracking_uri), uri_password(settings.registry_url)]
    if settings.redis_password is not None:
        secrets.append(settings.redis_password.get_secret_value())
    tokens = load_tokens(settings)
    secrets += [] if tokens is None else tokens.secrets()
    return Redactor(secret for secret in secrets if secret)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        spellings = {form for secret in secrets for form in (secret, quote(secret, safe=""), unquote(secret))}
        # Longest first: a secret that contains another is masked whole.
        self._secrets = sorted((form for form in spellings if form), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if "://" in text:  # nearly every message has no URI: the search is skipped
            text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text
