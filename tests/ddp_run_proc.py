"""Run by tests/test_distributed.py, as one process or under torchrun: `kdistill run` of a config.

    python tests/ddp_run_proc.py CONFIG run|resume|crash-at-N|resume-crash-at-N

crash-at-N stops training after N optimizer steps (as a crash would), leaving its checkpoints;
resume-crash-at-N resumes from them and stops again after N steps in all.
Each process first says which it is, as its launcher numbered it ("process R of W" on stderr), and
at the start of training how much of the student it holds ("holds P% of the student": 100 unless
sharded).
"""

from __future__ import annotations

import os
import sys

from kdistill import api
from kdistill.train.loop import Trainer


def main() -> None:
    config, mode = sys.argv[1], sys.argv[2]
    print(f"process {os.environ.get('RANK', 0)} of {os.environ.get('WORLD_SIZE', 1)}", file=sys.stderr, flush=True)
    train = Trainer.run

    def run_and_say_what_is_held(self, **kwargs):
        params = list(self.model.module.parameters())
        held = sum(getattr(p, "to_local", lambda: p)().numel() for p in params) / sum(p.numel() for p in params)
        print(f"holds {100 * held:.0f}% of the student", file=sys.stderr, flush=True)
        return train(self, **kwargs)

    Trainer.run = run_and_say_what_is_held
    if "crash-at-" in mode:
        steps, run = int(mode.rsplit("-", 1)[1]), Trainer.run
        Trainer.run = lambda self, **kwargs: run(self, **{**kwargs, "stop_after_steps": steps})
    api.run(config, progress=False, resume=mode.startswith("resume"))


if __name__ == "__main__":
    main()
