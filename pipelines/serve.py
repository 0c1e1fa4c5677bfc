"""The scoring service: `saefs score "some text" [--dataset D]` and `saefs serve [--host H] [--port P]`.

Both run `features.serving.scoring.Scorer` on this checkout's outputs (data/models, data/saes, the Feast
repo and the MLflow registry of `promote.tracking_uri`), with the `extract` and `serve` params.
The HTTP API (FastAPI; its schema at /openapi.json, the docs at /docs):

  POST /score            {"texts": [...], "dataset": "spam"}  new texts, through the online store
  POST /score/many       {"texts": [...], "datasets": [...]}  the same texts for several datasets (default: all
                         served); champions that read the same language model share one forward
  GET  /score/{text_id}  ?dataset=spam                        a text already in the online store
  GET  /latents/{model}/{sae}/{id}                            a latent's card (label, density, contexts, logit
                         lens; built by the latent_cards stage); each score's top latents carry their
                         label, density and three top contexts
  POST /explain          {"text": "...", "dataset": "spam"}      one text's score, its tokens and the per-token
                         activation of each latent behind it
  GET  /                 a page that scores a text, shades its tokens by each top latent and shows their cards
  GET  /docs             the API docs (Swagger UI, served from the pinned assets: they work offline)
  GET  /health           the process is up
  GET  /ready            200 once every served dataset's champion is loaded, 503 (naming those without) before;
                         it never waits for a load (one due starts in the background)

Errors say whose fault they are. The request's: over `serve.max_texts` texts or `serve.max_chars`
characters per text, the wrong shape, malformed JSON or a text with no token get a 422 whose
`detail[].loc` names the field; an unknown text_id, or a latent, SAE or model without cards, a 404; a
body larger than any valid request 413; a body not received within `serve.body_timeout_s` 408;
invalid UTF-8 or JSON nested too deep 400. The server's: no champion, or a registry or store that failed,
503 (may pass: retry); a misconfiguration or a bug 500. A 5xx is logged with its cause, and its body names
the log line (the one for no champion says how to get one).
"""

# No `from __future__ import annotations`: FastAPI must resolve the request models built inside create_app.
import html
import json
import logging
import socket
import uuid
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import typer
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from features.core.naming import sae_name
from features.errors import SaefsError
from features.reporting.assets import SWAGGER_UI, MissingAssets, asset, web_dir
from features.serving.scoring import BadTexts, NoChampion, Score, Scorer, Unavailable, UnknownText
from features.stores import tracking
from features.stores.cards import UnknownLatent, open_cards
from features.stores.feast.store import store_locations
from pipelines import paths, setup_logging
from pipelines.contrast import contrast_command
from pipelines.params import Params, ServeParams, load_params
from pipelines.stores import feature_store, stale_receipts

log = logging.getLogger("saefs.serve")

PAGE = resources.files("features.serving").joinpath("page.html").read_text(encoding="utf-8")
NEW_TEXT_THREADS = 2  # forwards run one at a time; a second thread pushes, reads and predicts meanwhile
RETRY_AFTER_S = 5


def build_scorer(params: Params) -> Scorer:
    """A scorer on this checkout's outputs (run from the project root, as DVC stages are)."""
    served = [params.dataset(name) for name in params.serve.datasets]  # each a key of `datasets`, or a clear error
    from features.core.naming import sae_name
    from features.sources.lm import load_prepared, resolve_device
    from features.sources.sae import SAE_INDEX, load_sae

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
    online = store_locations(store)["online_store"]
    return Scorer(
        store,
        {dataset: tracking.registered_name(dataset) for dataset in params.serve.datasets},
        load_lm, load_model_sae,
        params.extract,
        {name: list(cfg.class_names) for name, cfg in zip(params.serve.datasets, served, strict=True)},
        top_latents=params.serve.top_latents, champion_poll_s=params.serve.champion_poll_s,
        reopen_store=lambda: feature_store(params.feast_apply),
        store_file=Path(online["address"]) if online["type"] == "sqlite" else None,
        load_cards=lambda model, sae: open_cards(paths.cards_dir(model), sae),
    )


class Scored(BaseModel):
    dataset: str
    results: list[Score]


class ScoredMany(BaseModel):
    results: dict[str, list[Score]]  # dataset -> one result per text, in order


class Explained(BaseModel):
    dataset: str
    result: Score
    tokens: list[str] = Field(description="the tokens the model read (the text cut at extract.max_tokens)")
    activations: dict[int, list[float]] = Field(description="each top latent's activation at each token")
    latents_url: str = Field(description="prefix of the cards of this SAE's latents: <latents_url>/<id>")


def max_body_bytes(limits: ServeParams) -> int:
    """The largest POST /score body a valid request needs: `max_texts` texts of `max_chars` characters,
    each JSON-escaped at its longest (12 bytes: an escaped surrogate pair), plus the keys and every dataset."""
    return limits.max_texts * (12 * limits.max_chars + 4) + sum(len(name) + 4 for name in limits.datasets) + 1024


class BodyDeadline:
    """A 408 for a request whose body has not fully arrived `seconds` after it began.

    A slow or stalled sender then holds its own connection for a bounded time and no worker thread
    (bodies are read on the event loop, before the endpoint's thread starts), so other requests go on.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.seconds
        received = False

        async def receive_in_time() -> Message:
            nonlocal received
            if received:  # the body is in; later reads wait for a disconnect, which is not the sender's to hurry
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise HTTPException(408, f"the request body did not arrive within {self.seconds:g} s",
                                    headers={"Connection": "close"})
            received = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, receive_in_time, send)


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped, so a lone surrogate (from a \\ud800 escape) can be sent back."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _server_error(request: Request, err: Exception, status: int, summary: str) -> JSONResponse:
    """A 5xx naming a reference to the log line that holds its cause (addresses and paths stay in the log)."""
    reference = uuid.uuid4().hex[:12]
    log.error("%s %s -> %d, %s [%s]: %s", request.method, request.url.path, status, summary, reference, err,
              exc_info=None if isinstance(err, SaefsError) else err)  # a SaefsError's message names its cause
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"detail": f"{summary}; the service's log has the cause under [{reference}]"},
                        status_code=status, headers=headers)


def create_app(scorer: Scorer, limits: ServeParams) -> FastAPI:
    """The HTTP API on `scorer`, with request models built from the `serve` limits."""
    Dataset = Literal[tuple(limits.datasets)]  # type: ignore[valid-type]
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_chars)]

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Text] = Field(min_length=1, max_length=limits.max_texts,
                                  description=f"1 to {limits.max_texts} texts of 1 to {limits.max_chars} characters")
        dataset: Dataset = Field(limits.datasets[0], description="whose champion scores the texts")  # type: ignore[valid-type]

    class ScoreManyRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[Text] = ScoreRequest.model_fields["texts"]
        datasets: list[Dataset] = Field(  # type: ignore[valid-type]
            list(limits.datasets), min_length=1, description="whose champions score the texts (default: every "
            "served dataset); champions reading the same language model share one forward")

    class ExplainRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: Text
        dataset: Dataset = ScoreRequest.model_fields["dataset"]  # type: ignore[valid-type]

    app = FastAPI(title="saefs scoring", version="1", max_body_size=max_body_bytes(limits),
                  description="Safety classification by linear probes on sparse autoencoder features",
                  docs_url=None, redoc_url=None)  # /docs below loads Swagger UI from the pinned assets, not a CDN
    app.mount("/assets", StaticFiles(directory=web_dir(), check_dir=False), name="assets")
    app.add_middleware(BodyDeadline, seconds=limits.body_timeout_s)
    # New texts queue here, on the event loop, not in worker threads: stored texts never wait behind forwards.
    new_text_threads = anyio.CapacityLimiter(NEW_TEXT_THREADS)
    errors: dict[int | str, dict[str, Any]] = {
        503: {"description": "no champion yet, or a registry or store failed: retry after Retry-After seconds"},
        500: {"description": "the service is misconfigured (logged with its cause)"}}

    @app.exception_handler(RequestValidationError)
    def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each refused input, and fails (500) on one JSON cannot hold (NaN, which
        # Python's parser takes) or UTF-8 cannot (a lone surrogate, also possible in a key, hence ASCII).
        errors = [{key: value for key, value in error.items() if key != "input"} for error in err.errors()]
        return AsciiJSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(BadTexts)
    def _bad_texts(_request: Request, err: BadTexts) -> JSONResponse:  # e.g. a text with no tokens
        return JSONResponse({"detail": [{"loc": ["body", "texts", row], "msg": str(err), "type": "value_error"}
                                        for row in err.rows]}, status_code=422)

    @app.exception_handler(UnknownText)
    @app.exception_handler(UnknownLatent)
    def _unknown(_request: Request, err: SaefsError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(NoChampion)
    def _no_champion(_request: Request, err: NoChampion) -> JSONResponse:
        log.warning("%s", err)
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Unavailable)
    def _unavailable(request: Request, err: Unavailable) -> JSONResponse:
        return _server_error(request, err, 503, "a registry or store the service reads failed")

    @app.exception_handler(SaefsError)
    def _misconfigured(request: Request, err: SaefsError) -> JSONResponse:
        return _server_error(request, err, 500, "the scoring service is misconfigured")

    @app.exception_handler(Exception)
    def _bug(request: Request, err: Exception) -> JSONResponse:
        return _server_error(request, err, 500, "the scoring service failed")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        versions = scorer.status()  # what is loaded now: a readiness probe never waits for a load
        waiting = sorted(name for name, version in versions.items() if version is None)
        body: dict[str, Any] = {"ready": not waiting, "champions": versions}
        if waiting:
            problems = scorer.problems()
            body["detail"] = {name: problems.get(name, "loading its champion (or run `dvc repro promote`)")
                              for name in waiting}
        return JSONResponse(body, status_code=503 if waiting else 200)

    posted = {**errors, 408: {"description": "the body came too slowly"},
              413: {"description": "the body is larger than any valid request"}}

    @app.post("/score", response_model=Scored, responses=posted)
    async def score(request: ScoreRequest) -> Scored:
        results = await anyio.to_thread.run_sync(scorer.score_texts, request.dataset, request.texts,
                                                 limiter=new_text_threads)
        return Scored(dataset=request.dataset, results=results)

    @app.post("/score/many", response_model=ScoredMany, responses=posted)
    async def score_many(request: ScoreManyRequest) -> ScoredMany:
        results = await anyio.to_thread.run_sync(scorer.score_many, request.datasets, request.texts,
                                                 limiter=new_text_threads)
        return ScoredMany(results=results)

    @app.get("/score/{text_id}", response_model=Score,
             responses={**errors, 404: {"description": "the online store holds no features for this text_id"}})
    async def score_stored(text_id: str, dataset: Annotated[Dataset, Query()] = limits.datasets[0]) -> Score:  # type: ignore[valid-type,assignment]
        [result] = await anyio.to_thread.run_sync(scorer.score_stored, dataset, [text_id])
        return result

    @app.post("/explain", response_model=Explained, responses=posted)
    async def explain(request: ExplainRequest) -> Explained:
        result, tokens, champion = await anyio.to_thread.run_sync(scorer.explain, request.dataset, request.text,
                                                                  limiter=new_text_threads)
        return Explained(dataset=request.dataset, result=result, tokens=tokens.tokens,
                         activations=tokens.activations,
                         latents_url=f"/latents/{champion.model}/{sae_name(champion.layer, champion.sae)}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        try:
            files = {file: f"/assets/{asset(SWAGGER_UI, file).relative_to(web_dir()).as_posix()}"
                     for file in SWAGGER_UI.files}
        except MissingAssets as err:
            return HTMLResponse(f"<p>The API docs need Swagger UI: {html.escape(str(err))}. The schema is at "
                                f"<a href='{app.openapi_url}'>{app.openapi_url}</a>.</p>", status_code=503)
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title}: API docs",
                                   swagger_js_url=files["swagger-ui-bundle.js"],
                                   swagger_css_url=files["swagger-ui.css"],
                                   swagger_favicon_url=files["favicon-32x32.png"])

    @app.get("/latents/{model}/{sae}/{latent}",
             responses={404: {"description": "no such model, SAE (e.g. l9__sae4k) or latent id with cards"}})
    async def latent_card(model: str, sae: str, latent: int) -> dict[str, Any]:
        """The latent's whole card: density, label, top and random contexts, logit lens (features.core.cards)."""
        return await anyio.to_thread.run_sync(scorer.card, model, sae, latent)

    return app


cli = typer.Typer(help="Score texts with the champion probes (see pipelines/serve.py).", no_args_is_help=True,
                  add_completion=False)


@cli.command("score")
def score_command(texts: list[str], dataset: Annotated[list[str] | None, typer.Option(
        help="repeat for several (their champions share a forward per language model); default: serve.datasets[0]")]
                  = None) -> None:
    """Score texts with the champion of each dataset and print the results as JSON."""
    setup_logging()
    params = load_params()
    datasets = dataset or [params.serve.datasets[0]]
    try:
        results = build_scorer(params).score_many(datasets, texts)
    except SaefsError as err:
        log.error("%s", err)
        raise typer.Exit(2) from None
    printable = {name: [asdict(r) for r in scored] for name, scored in results.items()}
    if len(printable) == 1:
        [(name, scored)] = printable.items()
        typer.echo(json.dumps({"dataset": name, "results": scored}, indent=2))
    else:
        typer.echo(json.dumps({"results": printable}, indent=2))


@cli.command("serve")
def serve_command(host: Annotated[str | None, typer.Option(help="default: serve.host (127.0.0.1)")] = None,
                  port: Annotated[int | None, typer.Option(help="default: serve.port")] = None) -> None:
    """Start the HTTP API and the scoring page at / (models load before it listens)."""
    import uvicorn

    setup_logging()
    try:
        params = load_params()
        host, port = host or params.serve.host, port or params.serve.port
        check_port(host, port)  # before minutes of loading, not after
        scorer = build_scorer(params)
        scorer.warm_up()
    except SaefsError as err:
        log.error("%s", err)
        raise typer.Exit(2) from None
    log.info("serving on http://%s:%d (the scoring page at /, the API docs at /docs)", host, port)
    uvicorn.run(create_app(scorer, params.serve), host=host, port=port, workers=1, log_level="info")


def check_port(host: str, port: int) -> None:
    """SaefsError naming the address and the cause where the service could not listen on it."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise SaefsError(f"cannot serve on {host}:{port}: {err.strerror or err} (pass --port, or stop what "
                             "holds it)") from None


cli.command("contrast")(contrast_command)

if __name__ == "__main__":
    cli()
