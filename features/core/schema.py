"""The prepared-dataset contract shared by every stage (one schema for every source)."""

from __future__ import annotations

import pandas as pd

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


def check_prepared(df: pd.DataFrame, name: str = "dataset") -> pd.DataFrame:
    """Raise a ValueError naming what is missing if `df` does not follow the prepared schema."""
    missing = [c for c in PREPARED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: prepared data lacks columns {missing}; expected {list(PREPARED_COLUMNS)}")
    return df
