"""Files and services results live in: atomic files, feature shards, Feast, MLflow, Great Expectations, reachability."""
