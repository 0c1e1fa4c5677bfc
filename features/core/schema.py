"""The prepared-dataset contract shared by every stage (one schema for every source)."""

from __future__ import annotations

# column -> pandas dtype of a prepared dataset parquet
PREPARED_COLUMNS: dict[str, str] = {
    "text_id": "string",  # stable: derived from the dataset name and the text
    "text": "string",
    "label": "int64",  # 0..K-1, the position of the raw label in the dataset's declared labels
    "label_name": "string",
    "split": "string",  # "train" or "test"
    "lang": "string",
    "event_timestamp": "datetime64[ns, UTC]",  # Feast's event time; fixed per dataset for reproducibility
}
SPLITS = ("train", "test")

