from feast import Entity, ValueType

from churn_common.names import ENTITY_NAME, JOIN_KEY

user = Entity(
    name=ENTITY_NAME,
    join_keys=[JOIN_KEY],
    value_type=ValueType.INT64,
    description="A learner account on the e-learning portal.",
    owner="ml-platform@example.com",
)
