"""The e-learning portal: its event catalogue (the platform's default, ``CHURN_CATALOG=products.elearning:CATALOG``)
and, in ``generator``, a synthetic portal with a hidden churn process."""

from churn_common.catalog import EventCatalog, EventType, Ratio

CATALOG = EventCatalog(
    event_types=(
        EventType("login", "sessions", True, description="logins"),
        EventType(
            "video_watch",
            "videos_watched",
            True,
            "watch_minutes",
            "sum",
            0.0,
            600.0,
            description="video watch events",
            value_description="minutes of video watched",
        ),
        EventType(
            "quiz_attempt",
            "quiz_attempts",
            True,
            "quiz_score_mean",
            "mean",
            0.0,
            100.0,
            description="quiz attempts",
            value_description="mean quiz score (null without attempts)",
        ),
        EventType("course_enroll", "enrolls", True, description="course enrolments"),
        EventType("course_complete", "completions", True, description="course completions"),
        # Renewals and failed charges happen without the user doing anything: not engagement.
        EventType(
            "payment_success",
            "payments",
            False,
            "amount_paid",
            "sum",
            0.0,
            5_000.0,
            description="successful payments",
            value_description="amount paid",
        ),
        EventType("payment_failed", "payment_failures", False, description="failed payments"),
        EventType("support_ticket", "support_tickets", False, description="support tickets opened"),
    ),
    ratios=(
        Ratio(
            "payment_fail_rate",
            "payment_failed",
            ("payment_success", "payment_failed"),
            description="failed share of payment attempts (null without attempts)",
        ),
    ),
    trend_features=("active_days", "watch_minutes"),
    # v1 read the account attributes from the daily snapshots; v2 reads them, with their history, from user_account.
    feature_service="churn_model_v2",
    label="inactivity",
)
FEATURE_SERVICE = CATALOG.feature_service
