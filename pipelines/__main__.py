"""`python -m pipelines <stage> [item]`: run a stage in a fork of the warm server (pipelines.warm), as dvc.yaml does.

`python -m pipelines.<stage> [item]` runs the same stage in a process of its own.
"""

import sys

from pipelines.warm import run_stage

if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
    sys.exit("usage: python -m pipelines <stage> [item]  (a module of pipelines/, e.g. extract)")
sys.exit(run_stage(sys.argv[1], sys.argv[2:]))
