"""Expected answers computed straight from the rows the test wrote (snapshots with the account attributes valid at
their time, as the world holds them), without Feast or the API."""

import pandas as pd

from churn_common.feature_frame import ServiceSchema, normalize
from churn_common.model import ChurnModel


def latest_row(snapshots: pd.DataFrame, user_id: int) -> pd.DataFrame:
    rows = snapshots[snapshots["user_id"] == user_id].sort_values(["event_timestamp", "created"])
    return rows.tail(1).reset_index(drop=True)


def expected_prediction(model: ChurnModel, schema: ServiceSchema, snapshots: pd.DataFrame, user_id: int) -> dict:
    row = latest_row(snapshots, user_id)
    frame = normalize(row, schema)
    probability = float(model.predict_proba(frame)[0])
    return {
        "probability": probability,
        "risk_band": model.risk_band(probability),
        "reasons": model.explain(frame, top_k=3)[0],
        "as_of": row["event_timestamp"].iloc[0].to_pydatetime(),
    }
