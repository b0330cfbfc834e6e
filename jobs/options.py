"""Options several commands share."""

from typing import Annotated

import typer

from churn_common.settings import Settings

CatalogOption = Annotated[
    str | None,
    typer.Option(
        "--catalog", help="Event catalogue as module:NAME (default: CHURN_CATALOG, else products.elearning:CATALOG)."
    ),
]


def settings_for(catalog: str | None) -> Settings:
    """Settings with ``--catalog`` (when given) over CHURN_CATALOG; the catalogue is loaded at once, so a wrong one
    fails before any work with its message."""
    settings = Settings(catalog=catalog) if catalog else Settings()
    settings.event_catalog()
    return settings
