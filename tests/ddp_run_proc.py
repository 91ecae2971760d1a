"""Run by tests/test_distributed.py, as one process or under torchrun: `kdistill run` of a config.

    python tests/ddp_run_proc.py CONFIG run|resume|crash-at-N

crash-at-N stops training after N optimizer steps (as a crash would), leaving its checkpoints.
Each process first says which it is, as its launcher numbered it ("process R of W" on stderr).
"""

from __future__ import annotations

import os
import sys

from kdistill import pipeline
from kdistill.train import Trainer


def main() -> None:
    config, mode = sys.argv[1], sys.argv[2]
    print(f"process {os.environ.get('RANK', 0)} of {os.environ.get('WORLD_SIZE', 1)}", file=sys.stderr, flush=True)
    if mode.startswith("crash-at-"):
        steps, run = int(mode.rsplit("-", 1)[1]), Trainer.run
        Trainer.run = lambda self, **kwargs: run(self, **{**kwargs, "stop_after_steps": steps})
    pipeline.run(config, progress=False, resume=mode == "resume")


if __name__ == "__main__":
    main()
