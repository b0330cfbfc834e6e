"""Bearer-token auth for the prediction endpoints, mounted by the app factory when settings.api_token is set."""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.deps import SettingsDep

# auto_error=False: a missing header must be our 401 with a clear message, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="Required when the service has an API token configured")


def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = settings.api_token.get_secret_value().encode() if settings.api_token else b""
    if credentials is None:
        raise _unauthorized("missing bearer token")
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise _unauthorized("invalid bearer token")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})
