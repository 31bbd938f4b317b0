"""Test driver, run under mpirun by tests/parallel/mpi/test_mpi_train.py: `numformer train` with a failure
injected on one rank by monkeypatching (test-only; numformer itself has no such hook).

    python driver.py MODE RANK STEP -- train flags...

MODE  raise     Trainer.step raises RuntimeError on rank RANK when it is about to run step STEP
      nan       the model's training loss on rank RANK is NaN at step STEP
      kill-save rank RANK is killed with SIGKILL half-way through writing the checkpoint of step STEP
                (after the first file of out_dir/latest's temporary folder is written)
      kill      rank RANK is killed with SIGKILL when it is about to run step STEP
      slow      every step sleeps STEP milliseconds (to interrupt a run part-way, from outside)
      hang      rank RANK sleeps for an hour when it is about to run step STEP (no error, no exit)

Before failing, the rank writes the time to $NUMFORMER_TEST_MARK (so the test can measure how
fast the job stops).
"""

import os
import signal
import sys
import time


def mark():
    path = os.environ.get("NUMFORMER_TEST_MARK")
    if path:
        with open(path, "w") as f:
            f.write(repr(time.time()))


def main():
    mode, rank, at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    assert sys.argv[4] == "--"
    argv = sys.argv[5:]

    import numformer.checkpoint as checkpoint
    from numformer import cli
    from numformer.training import loop as train
    from numformer.model.gpt import GPT

    real_step, real_forward, real_save, real_write = train.Trainer.step, GPT.forward_tape, train.Trainer.save, checkpoint._write_file
    current = {"trainer": None, "armed": False}

    def step(self):
        current["trainer"] = self
        if mode == "raise" and self.world.rank == rank and self.iter_num == at:
            mark()
            raise RuntimeError(f"injected failure at step {self.iter_num}")
        if mode == "kill" and self.world.rank == rank and self.iter_num == at:
            mark()
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang" and self.world.rank == rank and self.iter_num == at:
            mark()
            time.sleep(3600)
        if mode == "slow":
            time.sleep(at / 1000)
        return real_step(self)

    def forward(self, idx, targets=None, rng=None):
        out, tape = real_forward(self, idx, targets, rng)
        tr = current["trainer"]
        if (mode == "nan" and targets is not None and self.training and tr is not None
                and tr.world.rank == rank and tr.iter_num == at):
            mark()
            out = (out[0], float("nan"))
        return out, tape

    def save(self, path):
        current["armed"] = mode == "kill-save" and self.world.rank == rank and self.iter_num == at and path.name == "latest"
        real_save(self, path)

    def write(file, data):
        real_write(file, data)
        if current["armed"]:
            mark()
            os.kill(os.getpid(), signal.SIGKILL)

    train.Trainer.step, GPT.forward_tape, train.Trainer.save, checkpoint._write_file = step, forward, save, write
    return cli.main(argv)   # argv: train FLAGS...


if __name__ == "__main__":
    sys.exit(main())
