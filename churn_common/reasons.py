"""Reasons in plain words: what a support agent or a retention campaign reads instead of feature names."""

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _shown(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def plain_reason(reason: Mapping[str, Any], descriptions: Mapping[str, str], typical: Mapping[str, Any]) -> str:
    """``{"feature": "sessions_30d", "value": 2, ...}`` -> "logins, last 30 days: 2 (typical 11)"."""
    feature = reason["feature"]
    text = descriptions.get(feature, feature)
    return f"{text}: {_shown(reason['value'])} (typical {_shown(typical.get(feature))})"


def plain_reasons(
    reasons: Sequence[Mapping[str, Any]], descriptions: Mapping[str, str], typical: Mapping[str, Any]
) -> str:
    return "; ".join(plain_reason(reason, descriptions, typical) for reason in reasons)
