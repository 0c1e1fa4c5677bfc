"""The one entity: a text, keyed by the `text_id` of the prepared data (unique across datasets)."""

from feast import Entity, ValueType

from features.stores.feast.columns import ENTITY, JOIN_KEY

text = Entity(name=ENTITY, join_keys=[JOIN_KEY], value_type=ValueType.STRING,
              description="a text of a prepared dataset; text_id = dataset name + SHA-256 of the text")
