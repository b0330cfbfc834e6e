"""``churn forget``: erase a user everywhere the platform keeps them."""

import json
from typing import Annotated

import typer

from jobs.options import CatalogOption, settings_for


def forget_command(
    user_id: Annotated[int, typer.Argument(min=0, help="The user to erase.")],
    requested_by: Annotated[str, typer.Option(help="Who asked (recorded in the audit trail).")],
    reason: Annotated[str, typer.Option(help="Why, e.g. a ticket number (recorded in the audit trail).")],
    catalog: CatalogOption = None,
) -> None:
    """Remove the user from the online store, every data file, the prediction logs and the MLflow artifacts; add
    them to the erasure register so later drops cannot bring them back; audit the erasure (counts, never data)."""
    from jobs.forget import forget

    erasure = forget(settings_for(catalog), user_id, requested_by=requested_by, reason=reason)
    typer.echo(json.dumps({"user_id": user_id, **erasure.summary(), "files_changed": erasure.files}, indent=2))


def register_top_level(root: typer.Typer) -> None:
    root.command("forget")(forget_command)
