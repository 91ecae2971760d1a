"""Run by tests/test_distributed.py, as one process or under torchrun: `kdistill run` of a config.

    python tests/ddp_run_proc.py CONFIG run|resume|crash-at-N

crash-at-N stops training after N optimizer steps (as a crash would), leaving its checkpoints.
"""

from __future__ import annotations

import sys

from kdistill import pipeline
from kdistill.train import Trainer


def main() -> None:
    config, mode = sys.argv[1], sys.argv[2]
    if mode.startswith("crash-at-"):
        steps, run = int(mode.rsplit("-", 1)[1]), Trainer.run
        Trainer.run = lambda self, **kwargs: run(self, **{**kwargs, "stop_after_steps": steps})
    pipeline.run(config, progress=False, resume=mode == "resume")


if __name__ == "__main__":
    main()
