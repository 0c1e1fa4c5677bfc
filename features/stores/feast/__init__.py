"""Feast feature views of pooled SAE codes, one job per module.

A view holds one grid cell of one model for every dataset's texts, keyed by `text_id`:

  sparse  `latent_ids: Array(Int32)` + `latent_values: Array(Float32)`, the active latents of the
          pooled codes (`gemma3_270m__l9__sae4k__sum__raw`)
  binary  `latent_ids` only: the latents above a threshold (`...__sum__bin1`, `...__sum__binge0p5`)
  dense   `hidden: Array(Float32)`, a pooled hidden state (`gemma3_270m__l9__hidden__last`)

  names      what a view is called
  columns    a view's key and feature columns, and CSR <-> Arrow list columns
  catalog    ViewSpec, and the catalog (JSON) of the views `build_features` wrote
  offline    the offline parquet of each view (`build_features`)
  store      the Feast store: open, apply, materialize, rebuild the SQLite online store
  retrieval  point-in-time feature frames from a feature service

`feature_repo/` turns the catalog into Feast objects. Only `store` and `retrieval` talk to Feast, and they import
it inside their functions (it costs ~16 s), so the rest stays cheap to import.
"""
