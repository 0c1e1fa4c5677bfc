"""Stage extract: pooled SAE codes and hidden states of one dataset's texts under one model.

With `scale_out.extract_workers` > 1 (or under torchrun) each worker holds a model replica and
takes turns on shard-sized blocks; rank 0 writes them in order (features.forward.distributed), so the
shards are the same as one process's.

Writes CSR shards (features.stores.shards) holding, per row, every `l<L>__sae<W>__<pooling>` code
matrix and every `l<L>__hidden__<last|mean>` hidden state, plus the SAE quality on these texts
(variance explained, L0, dead latents) as a DVC metric. A killed run restarts after its last
finished shard (the output is `persist`ed in dvc.yaml).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import features
from features.core.naming import codes_name, hidden_name, sae_name
from features.errors import SaefsError
from features.forward import distributed
from features.sources.models import check_depth, model_identity
from features.stores.files import write_json
from features.stores.shards import ShardWriter
from pipelines import cost, paths, stage_main
from pipelines.params import Params, load_params

if TYPE_CHECKING:
    from sae_lens import SAE

    from features.forward.extract import SaeKey
    from features.sources.sae import QualityMeter

log = logging.getLogger("saefs.extract")


# The code that decides what the shards hold: a change to it starts the shards over.
FEATURE_CODE = ("forward/extract.py", "sources/lm.py", "core/layers.py", "core/pooling.py", "sources/sae.py")
REPORT = "extract_report.json"  # the finished job's metrics, kept with its shards


def job_fingerprint(settings: dict, identities: dict[str, str], text_ids: list[str]) -> str:
    """What the shards depend on: settings, feature code, the model and each SAE (see `identities`) and the rows."""
    digest = hashlib.sha256(json.dumps([settings, identities], sort_keys=True).encode())
    for module in FEATURE_CODE:
        digest.update((Path(features.__file__).parent / module).read_bytes())
    digest.update("\n".join(text_ids).encode())
    return digest.hexdigest()


def job_identities(model_name: str, model_dtype: str, saes: dict[str, SAE[Any]]) -> dict[str, str]:
    """The model (its prepared manifest, with the weights' hash, and the dtype it runs in) and every SAE by content.

    The output is `persist`ed, so a model or SAE that changed under the same params must not find its old shards.
    """
    from features.sources.sae import sae_identity

    return {"model": model_identity(paths.model_dir(model_name)), "model_dtype": model_dtype} | {
        name: sae_identity(sae) for name, sae in saes.items()}


def check_validated(dataset: str) -> None:
    """Refuse texts that failed the validate_data gate, which `dvc repro` orders before extract.

    Texts never validated (no record: a scratch project, a benchmark) are extracted with a warning.
    """
    results = paths.validation_dir(dataset) / "results.json"
    rerun = f"then run `dvc repro validate_data@{dataset}` (or `python -m pipelines.validate_data {dataset}`)"
    if not results.is_file():
        log.warning("dataset %r has not been validated (no %s): extracting anyway; %s", dataset, results, rerun)
        return
    recorded = json.loads(results.read_text())
    if not recorded["success"]:
        failed = "; ".join(f"{f['expectation']} ({f['detail']})" for f in recorded["failures"])
        raise SaefsError(f"dataset {dataset!r} failed validation, recorded in {results}: {failed}. Fix the source "
                         f"or its params (prepare_data, validate_data), {rerun} before extract")


def run(item: str) -> None:
    params = load_params()
    model_name, _, dataset = item.partition("/")
    params.dataset(dataset)
    # Cheap checks first: no model is loaded (nor torchrun started) for a request that must fail.
    check_depth(paths.model_dir(model_name), params.sae_of(model_name).layers, f"params.yaml sae.{model_name}.layers")
    check_validated(dataset)
    workers = params.scale_out.extract_workers
    if workers > 1 and not distributed.launched():
        log.info("%s: extracting with %d workers (torchrun)", item, workers)
        distributed.launch("pipelines.extract", [item], workers)
        return
    world = distributed.join_world()
    try:
        _extract(item, params, world)
    finally:
        distributed.leave_world()


def _extract(item: str, params: Params, world: distributed.World) -> None:
    """Every worker loads a model replica and extracts its turns of shard-sized blocks; the writer stores them."""
    # Imported here, not at the top: a process that only starts torchrun skips their ~8 s (sae-lens, torch).
    from features.forward.extract import extract, quality_meters
    from features.forward.gpu import forward_batching
    from features.forward.throughput import throughput, truncated_forward_flops
    from features.sources.lm import load_prepared, resolve_device
    from features.sources.sae import SAE_INDEX, load_sae

    model_name, _, dataset = item.partition("/")
    cfg, ex = params.sae_of(model_name), params.extract
    device = resolve_device(ex.device)
    df = pd.read_parquet(paths.prepared(dataset), columns=["text_id", "text"])
    model, tokenizer = load_prepared(paths.model_dir(model_name), device)
    specs = json.loads((paths.sae_dir(model_name) / SAE_INDEX).read_text())
    saes = {layer: {width: load_sae(specs[sae_name(layer, width)], device) for width in cfg.widths}
            for layer in cfg.layers}
    meters = quality_meters(saes)  # on the writer: the quality over every row written so far
    batching = forward_batching(model, cfg.layers, ex.max_tokens, ex.batch_size)  # a GPU's: a token budget
    named = {sae_name(layer, width): sae for layer, widths in saes.items() for width, sae in widths.items()}
    fingerprint = job_fingerprint(ex.model_dump() | {"sae": cfg.model_dump()},
                                  job_identities(model_name, str(model.dtype), named), df["text_id"].tolist())
    out_dir = paths.features_dir(model_name, dataset)
    started, n_tokens, n_truncated, n_unknown = time.perf_counter(), 0, 0, 0
    writer = ShardWriter(out_dir, ex.shard_rows, fingerprint) if world.is_writer else None
    done = writer.resume(df["text_id"].tolist()) if writer else 0
    finished = writer is not None and done == len(df) and (out_dir / REPORT).is_file()
    done, finished = distributed.broadcast((done, finished), world)
    if finished:
        if writer:
            log.info("%s: the same job already finished; keeping its shards and report", item)
            write_json(paths.extract_metrics(model_name, dataset), json.loads((out_dir / REPORT).read_text()))
        return
    if writer:
        (out_dir / REPORT).unlink(missing_ok=True)  # whatever it said, it is not this job's
        if done:
            log.info("%s: resuming after %d rows already extracted", item, done)
            _restore_meters(meters, writer.stored_checkpoint(), out_dir)
    for turns in distributed.rounds(done, len(df), ex.shard_rows, world):
        mine = turns[world.rank]
        block = None
        if mine is not None:
            rows, block_meters = df.iloc[mine[0] : mine[1]], quality_meters(saes)
            out = extract(model, tokenizer, rows["text"].tolist(), cfg.layers, saes, ex.poolings,
                          max_tokens=ex.max_tokens, batch_size=batching.batch_size,
                          tokens_per_batch=batching.tokens_per_batch,
                          include_bos=ex.pools_bos, paper_compat=ex.paper_compat,
                          meters=block_meters, progress=world.size == 1)
            block = (out, rows["text_id"].tolist(), block_meters)
        blocks = distributed.gather(block, world)
        if not writer:
            continue
        for out, text_ids, block_meters in filter(None, blocks):
            distributed.merge_meters([meters, block_meters])
            sparse = {codes_name(layer, width, spec): m for (layer, width, spec), m in out.codes.items()}
            dense = {hidden_name(layer, spec): h for (layer, spec), h in out.hidden.items()}
            writer.append(text_ids, sparse=sparse, dense=dense | {"n_tokens": out.n_tokens, "truncated": out.truncated},
                          checkpoint=_meters_checkpoint(meters))
            n_tokens, n_truncated = n_tokens + int(out.n_tokens.sum()), n_truncated + out.n_truncated
            n_unknown += int(out.unknown.sum())
        log.info("%s: %d/%d rows", item, max(turn[1] for turn in turns if turn), len(df))
    if not writer:
        return
    writer.close()
    seconds = time.perf_counter() - started
    # The quality covers every row, resumed ones included (restored from the last shard's checkpoint).
    quality = {sae_name(layer, width): asdict(meter.result()) | {"tokens": meter.n_tokens}
               for (layer, width), meter in meters.items() if meter.n_tokens}
    report = {
        "texts": len(df), "texts_extracted_now": len(df) - done, "tokens": n_tokens,
        "truncated": n_truncated, "unknown_tokens": n_unknown,
        "seconds": round(seconds, 1), "tokens_per_second": round(n_tokens / max(seconds, 1e-9), 1),
        "max_tokens": ex.max_tokens, "sae_quality": quality,
    }
    write_json(out_dir / REPORT, report)
    write_json(paths.extract_metrics(model_name, dataset), report)
    # Every text runs its BOS through the model too; each SAE encoder is a matmul on every counted token.
    encoders = sum(sae.cfg.d_in * sae.cfg.d_sae for sae in named.values())
    cost.work(texts=len(df) - done, tokens=n_tokens)
    cost.forward("extract", throughput(n_tokens + len(df) - done, seconds, truncated_forward_flops(
        model, cfg.layers, encoders), device))
    if n_unknown:
        log.warning("%s: %d tokens were unknown to the tokenizer (characters it cannot represent)", item, n_unknown)
    if n_truncated:
        log.warning("%s: %d of %d texts were cut at max_tokens=%d",
                    item, n_truncated, len(df) - done, ex.max_tokens)
    log.info("%s: %d tokens in %.0f s (%.0f tok/s)", item, n_tokens, seconds, n_tokens / max(seconds, 1e-9))


def _meters_checkpoint(meters: dict[SaeKey, QualityMeter]) -> dict[str, np.ndarray]:
    """The SAE quality sums over the rows written so far, stored with each shard (ShardWriter checkpoints)."""
    return {f"{sae_name(layer, width)}__{key}": array for (layer, width), meter in meters.items()
            for key, array in meter.state().items()}


def _restore_meters(meters: dict[SaeKey, QualityMeter], checkpoint: dict[str, np.ndarray], out_dir: Path) -> None:
    """Continue the quality sums of the rows already stored, so that the metrics cover all rows."""
    for (layer, width), meter in meters.items():
        prefix = f"{sae_name(layer, width)}__"
        state = {key.removeprefix(prefix): array for key, array in checkpoint.items() if key.startswith(prefix)}
        if not state:
            raise SaefsError(f"the shards in {out_dir} carry no SAE quality for {sae_name(layer, width)} "
                             "(written by an older saefs): delete the folder to extract it again")
        meter.load_state(state)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, argv, doc=__doc__, arg="item", help="<model>/<dataset>, keys of `sae` and `datasets`")


if __name__ == "__main__":
    sys.exit(main())
