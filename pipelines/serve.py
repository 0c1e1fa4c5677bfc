"""The scoring service: `saefs score "some text" [--dataset D]` and `saefs serve [--host H] [--port P]`.

Both run `features.scoring.Scorer` on this checkout's outputs (data/models, data/saes, the Feast
repo and the MLflow registry of `promote.tracking_uri`), with the `extract` and `serve` params.
The HTTP API (FastAPI; its schema at /openapi.json, the docs at /docs):

  POST /score            {"texts": [...], "dataset": "spam"}  new texts, through the online store
  GET  /score/{text_id}  ?dataset=spam                        a text already in the online store
  GET  /health           the process is up
  GET  /ready            200 once every served dataset has a champion, 503 (naming those without) before

Requests over `serve.max_texts` texts or `serve.max_chars` characters per text, or of the wrong
shape, get a 422 whose `detail` names the field; no champion gives 503; an unknown text_id 404.
"""

# No `from __future__ import annotations`: FastAPI must resolve the request models built inside create_app.
import json
import logging
from dataclasses import asdict
from typing import Annotated, Any, Literal

import typer
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from features import tracking
from features.errors import SaefsError
from features.scoring import ExtractSettings, NoChampion, Score, Scorer, UnknownText
from pipelines import paths, setup_logging
from pipelines.params import Params, ServeParams, load_params
from pipelines.promote import registered_name
from pipelines.stores import feature_store, stale_receipts

log = logging.getLogger("saefs.serve")


def build_scorer(params: Params) -> Scorer:
    """A scorer on this checkout's outputs (run from the project root, as DVC stages are)."""
    served = [params.dataset(name) for name in params.serve.datasets]  # each a key of `datasets`, or a clear error
    from features.lm import load_prepared, resolve_device
    from features.naming import sae_name
    from features.sae import load_sae
    from pipelines.train_sae import SAE_INDEX

    if params.serve.torch_threads:
        import torch

        torch.set_num_threads(params.serve.torch_threads)
    device = resolve_device(params.extract.device)

    def load_lm(model: str) -> tuple[Any, Any]:
        log.info("loading %s on %s", model, device)
        return load_prepared(paths.model_dir(model), device)

    def load_model_sae(model: str, layer: int, width: str) -> Any:
        specs = json.loads((paths.sae_dir(model) / SAE_INDEX).read_text())
        return load_sae(specs[sae_name(layer, width)], device)

    tracking.configure(params.promote.tracking_uri)
    store = feature_store(params.feast_apply)
    for line in stale_receipts(store):
        log.warning("stored texts may be missing online: %s", line)
    ex = params.extract
    return Scorer(
        store,
        {dataset: registered_name(dataset) for dataset in params.serve.datasets},
        load_lm, load_model_sae,
        ExtractSettings(ex.max_tokens, ex.batch_size, ex.pools_bos, ex.paper_compat),
        {name: cfg.label_names or [str(v) for v in cfg.labels] for name, cfg in zip(params.serve.datasets, served,
                                                                                      strict=True)},
        top_latents=params.serve.top_latents, champion_poll_s=params.serve.champion_poll_s,
    )


class Scored(BaseModel):
    dataset: str
    results: list[Score]


def create_app(scorer: Scorer, limits: ServeParams) -> FastAPI:
    """The HTTP API on `scorer`, with request models built from the `serve` limits."""
    Dataset = Literal[tuple(limits.datasets)]  # type: ignore[valid-type]
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_chars)]

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Text] = Field(min_length=1, max_length=limits.max_texts,
                                  description=f"1 to {limits.max_texts} texts of 1 to {limits.max_chars} characters")
        dataset: Dataset = Field(limits.datasets[0], description="whose champion scores the texts")  # type: ignore[valid-type]

    app = FastAPI(title="saefs scoring", version="1",
                  description="Safety classification by linear probes on sparse autoencoder features")

    @app.exception_handler(NoChampion)
    def _no_champion(_request: Request, err: NoChampion) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503)

    @app.exception_handler(UnknownText)
    def _unknown(_request: Request, err: UnknownText) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(SaefsError)
    def _bad_input(_request: Request, err: SaefsError) -> JSONResponse:  # e.g. a text with no tokens
        return JSONResponse({"detail": [{"loc": ["body", "texts"], "msg": str(err), "type": "value_error"}]},
                            status_code=422)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        versions = scorer.status()
        waiting = sorted(name for name, version in versions.items() if version is None)
        body = {"ready": not waiting, "champions": versions}
        if waiting:
            body["detail"] = f"no champion yet for {waiting}: run `dvc repro promote`"
        return JSONResponse(body, status_code=503 if waiting else 200)

    @app.post("/score", response_model=Scored)
    def score(request: ScoreRequest) -> Scored:
        return Scored(dataset=request.dataset, results=scorer.score_texts(request.dataset, request.texts))

    @app.get("/score/{text_id}", response_model=Score)
    def score_stored(text_id: str, dataset: Annotated[Dataset, Query()] = limits.datasets[0]) -> Score:  # type: ignore[valid-type,assignment]
        return scorer.score_stored(dataset, [text_id])[0]

    return app


cli = typer.Typer(help="Score texts with the champion probes (see pipelines/serve.py).", no_args_is_help=True,
                  add_completion=False)


@cli.command("score")
def score_command(texts: list[str], dataset: Annotated[str | None, typer.Option(help="default: serve.datasets[0]")]
                  = None) -> None:
    """Score texts with the champion of a dataset and print the results as JSON."""
    setup_logging()
    params = load_params()
    dataset = dataset or params.serve.datasets[0]
    try:
        results = build_scorer(params).score_texts(dataset, texts)
    except SaefsError as err:
        log.error("%s", err)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"dataset": dataset, "results": [asdict(r) for r in results]}, indent=2))


@cli.command("serve")
def serve_command(host: Annotated[str | None, typer.Option(help="default: serve.host (127.0.0.1)")] = None,
                  port: Annotated[int | None, typer.Option(help="default: serve.port")] = None) -> None:
    """Start the HTTP API (models load before it listens)."""
    import uvicorn

    setup_logging()
    params = load_params()
    scorer = build_scorer(params)
    scorer.warm_up()
    uvicorn.run(create_app(scorer, params.serve), host=host or params.serve.host, port=port or params.serve.port,
                workers=1, log_level="info")


if __name__ == "__main__":
    cli()
