"""A reader of a checkpoint that a running job saves again and again sees the old checkpoint or the
new one, whole: never "contents differ", never "tokenizer.json: missing", never advice to rename a
folder the running job is about to delete. (eval, explore and convert --to_hf failed so in about
0.1-0.7 % of calls.)

A writer process saves one checkpoint folder in a loop, alternating between two models; this
process loads it in a loop until the writer is done, and checks each model it gets against the
two. The writer swaps folders with renameat2(RENAME_EXCHANGE) where the kernel has it; the
"two renames" case makes it use the fallback every system has (old folder aside, new one in).
"""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from numformer.model.config import GPTConfig
from numformer.model.gpt import GPT

CONFIG = dict(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=8)
TOKENIZER = '{"type": "char", "format": 1, "chars": ["a", "b", "c", "d", "e", "f", "g", "h"]}'
SAVES = 300            # the writer's saves; it stops earlier after WRITER_SECONDS
WRITER_SECONDS = 40

WRITER = textwrap.dedent(
    """
    import sys, time
    from numformer import checkpoint
    from numformer.model.config import GPTConfig
    from numformer.model.gpt import GPT

    path, saves, seconds, mode, config, tokenizer = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \\
        sys.argv[4], eval(sys.argv[5]), sys.argv[6]
    if mode == "two-renames":
        checkpoint._exchange = lambda a, b: False       # as on a system without RENAME_EXCHANGE
    models = [GPT(GPTConfig(**config), seed=s) for s in (1, 2)]
    print("ready", flush=True)
    end = time.monotonic() + seconds
    for i in range(saves):
        models[i % 2].save(path, tokenizer=tokenizer)
        if time.monotonic() > end:
            break
    """
)


@pytest.mark.parametrize("mode", ["exchange", "two-renames"])
def test_a_reader_sees_the_old_checkpoint_or_the_new_one_whole(tmp_path, mode):
    path = tmp_path / "latest"
    models = [GPT(GPTConfig(**CONFIG), seed=s) for s in (1, 2)]
    models[0].save(path, tokenizer=TOKENIZER)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(SAVES), str(WRITER_SECONDS), mode,
                               repr(CONFIG), TOKENIZER], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        loads, failures = 0, []
        end = time.monotonic() + WRITER_SECONDS + 30
        while writer.poll() is None and time.monotonic() < end:
            try:
                got = GPT.load(path)
            except Exception as e:  # noqa: BLE001 - a CheckpointError, or a traceback (FileNotFoundError)
                failures.append(f"{type(e).__name__}: {e}")
                continue
            finally:
                loads += 1
            assert any(np.array_equal(got.params.flat, m.params.flat) for m in models), "a mixed checkpoint"
            assert got.tokenizer.to_json() == TOKENIZER
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode in (0, -9)
    assert loads >= 50, f"only {loads} loads overlapped the writer's saves"
    kinds = sorted({f.split(":")[0] + ":" + f.rsplit(":", 1)[-1][:60] for f in failures})
    assert not failures, f"{len(failures)} of {loads} loads failed: {kinds}"
