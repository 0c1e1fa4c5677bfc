"""Where models, SAEs, datasets and items come from: one registry per kind, keyed by the spec's prefix."""
