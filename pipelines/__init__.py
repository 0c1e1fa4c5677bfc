"""DVC stage entry points (`python -m pipelines.<stage> ...`): read params, call `features`, write atomically.

Importing this package sets the offline, no-telemetry environment before any Hugging Face,
MLflow or DVC module is imported, so a bare `dvc repro` behaves like `make repro`. Values
already set win: export HF_HUB_OFFLINE=0 to let the paper profile reach the hub.
"""

import argparse
import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import Literal, NoReturn

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "WANDB_MODE": "disabled",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None,
            action: Callable[[argparse.Namespace], object]) -> int:
    """Parse `argv`, run `action`; an input error (SaefsError) is logged as one line and exits with 2."""
    from features.errors import SaefsError

    setup_logging()
    args = parser.parse_args(argv)
    try:
        action(args)
    except SaefsError as err:
        logging.getLogger("saefs").error("%s", err)
        return 2
    return 0


def stage_main(run: Callable[..., object], argv: list[str] | None, *, doc: str, arg: str | None = None,
               help: str | None = None, cost: Literal["per_item", "per_stage", "off"] = "per_item") -> int:
    """The shared shape of a stage: `run(<arg>)` for a per-item stage (`arg` names the item), `run()` without.

    Its cost is recorded to metrics/cost (pipelines.cost), one file per item or one for the stage (whose
    argument is not a grid item); "off" for commands that DVC runs on every repro (a tracked file would
    change on every repro) or does not run at all.
    """
    from pipelines import cost as cost_record
    from pipelines import paths

    # a stage started as `python -m pipelines.<stage>` runs as __main__: its spec keeps the module's name
    spec = getattr(sys.modules.get(run.__module__), "__spec__", None)
    stage = (spec.name if spec else run.__module__).rpartition(".")[2]
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if arg is not None:
        parser.add_argument(arg, help=help)

    def action(args: argparse.Namespace) -> None:
        item = getattr(args, arg) if arg else None
        where = None if cost == "off" else paths.stage_cost(stage, item if cost == "per_item" else None)
        with cost_record.recording(where):
            run(*([item] if arg else []))

    return run_cli(parser, argv, action)


def exit_quickly(code: int) -> NoReturn:
    """`sys.exit(code)` minus the collector's passes over every object the process made, which run as the
    interpreter exits: 0.6 s once MLflow is imported. For the stages DVC starts on every repro; the OS frees
    the memory, and atexit handlers (logging's flush) still run."""
    gc.freeze()
    sys.exit(code)
