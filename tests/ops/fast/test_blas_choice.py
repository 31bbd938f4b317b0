"""numformer.ops.fast.blas_choice: which BLAS makes the linear maps' products, measured once per
machine and cached; and how numformer.ops.fast.dispatch follows it (NUMFORMER_BLAS=mkl|numpy
forcing either). The measurement itself is replaced by a fake of known times wherever the test is
about the rule or the cache, so that those tests neither depend on this machine's speed nor
spend a second measuring."""

import json
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from numformer.ops.fast import blas_choice, mkl

MKL_EXPECTED = platform.machine() == "x86_64" and sys.platform == "linux"   # as the test extras say


class FakeMeasure:
    """Stands in for blas_choice.measure: returns the given (MKL, NumPy) seconds and counts calls."""

    def __init__(self, mkl_s, numpy_s, pause=0.0):
        self.times, self.pause, self.calls = (mkl_s, numpy_s), pause, 0

    def __call__(self, gemm):
        assert gemm == "gemm"                         # what load_gemm gave
        self.calls += 1
        time.sleep(self.pause)
        return self.times


def load_gemm():
    return "gemm"


@pytest.mark.parametrize("mkl_s, numpy_s, faster", [
    (0.080, 0.100, True),        # 20 % faster
    (0.0969, 0.100, True),       # just past the 3 % margin
    (0.098, 0.100, False),       # faster, but within this machine's noise
    (0.100, 0.100, False),
    (0.117, 0.100, False),       # the AMD EPYC of issue 21
])
def test_mkl_is_chosen_only_when_measured_faster(tmp_path, mkl_s, numpy_s, faster):
    v = blas_choice.verdict(load_gemm, tmp_path, FakeMeasure(mkl_s, numpy_s))
    assert v.mkl_faster is faster
    assert (v.mkl_ms, v.numpy_ms) == pytest.approx((mkl_s * 1e3, numpy_s * 1e3))
    assert v.measured_now and v.file.parent == tmp_path


def test_a_machine_measures_once(tmp_path):
    first = FakeMeasure(0.05, 0.1)
    v1 = blas_choice.verdict(load_gemm, tmp_path, first)
    again = FakeMeasure(0.2, 0.1)                     # would say the opposite, if it were asked
    v2 = blas_choice.verdict(load_gemm, tmp_path, again)
    assert (first.calls, again.calls) == (1, 0)
    assert not v2.measured_now and v2.file == v1.file and (v2.mkl_ms, v2.numpy_ms) == (50.0, 100.0)
    record = json.loads(v1.file.read_text())
    assert record["key"] == blas_choice.machine_key() and record["mkl_faster"] is True
    assert v2.why().endswith(f"(cached in {v1.file})") and "MKL 50.0 ms, NumPy 100.0 ms" in v2.why()
    assert v1.why().endswith(f"(measured now, cached in {v1.file})")


@pytest.mark.parametrize("change", ["cpu", "mkl version", "numpy's blas", "coretype"])
def test_another_cpu_or_version_is_measured_again(tmp_path, monkeypatch, change):
    blas_choice.verdict(load_gemm, tmp_path, FakeMeasure(0.05, 0.1))
    if change == "cpu":
        monkeypatch.setattr(blas_choice, "cpu_identity",
                            lambda: {"model": "Intel(R) Xeon(R) Platinum 8488C", "family/model/stepping": "6/143/8",
                                     "flags_sha256": "0" * 64})
    elif change == "mkl version":
        monkeypatch.setattr(blas_choice, "mkl_version", lambda: "2099.1")
    elif change == "numpy's blas":
        monkeypatch.setattr(blas_choice, "numpy_blas", lambda: "OpenBLAS 0.3.99 SkylakeX")
    else:
        monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")
    measure = FakeMeasure(0.2, 0.1)
    v = blas_choice.verdict(load_gemm, tmp_path, measure)
    assert measure.calls == 1 and v.measured_now and not v.mkl_faster
    assert len(list(tmp_path.glob("blas-*.json"))) == 2      # each machine's answer kept under its own key


def test_a_record_of_another_machine_under_this_key_is_measured_again(tmp_path, capsys):
    v = blas_choice.verdict(load_gemm, tmp_path, FakeMeasure(0.05, 0.1))
    record = json.loads(v.file.read_text())
    record["key"]["cpu"]["model"] = "Some Other CPU"         # a file copied from another machine
    v.file.write_text(json.dumps(record))
    measure = FakeMeasure(0.2, 0.1)
    assert not blas_choice.verdict(load_gemm, tmp_path, measure).mkl_faster
    assert measure.calls == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was measured for another CPU or other library versions" in err[0]


@pytest.mark.parametrize("content, problem", [
    (b"{\"key\": {\"form", "is damaged (not JSON)"),
    (b"\xff\xfe\x00garbage", "cannot be read (UnicodeDecodeError)"),
    (b"[1, 2, 3]", "is damaged (not a JSON object)"),
    (b"", "is damaged (not JSON)"),
    (None, "is damaged (mkl_ms is -1.0, not a positive time)"),
    (None, "is damaged (numpy_ms is 'fast', not a positive time)"),
])
def test_a_damaged_cache_file_is_one_note_and_measured_again(tmp_path, capsys, content, problem):
    v = blas_choice.verdict(load_gemm, tmp_path, FakeMeasure(0.05, 0.1))
    if content is None:                               # a record of this machine with an impossible time
        record = json.loads(v.file.read_text())
        record["mkl_ms" if "mkl_ms" in problem else "numpy_ms"] = -1.0 if "mkl_ms" in problem else "fast"
        content = json.dumps(record).encode()
    v.file.write_bytes(content)
    measure = FakeMeasure(0.2, 0.1)
    again = blas_choice.verdict(load_gemm, tmp_path, measure)
    assert measure.calls == 1 and again.measured_now and (again.mkl_ms, again.numpy_ms) == (200.0, 100.0)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"numformer: note: the BLAS choice cached in {v.file} {problem}; "
                   "measuring again which BLAS is faster here"]
    assert json.loads(v.file.read_text())["mkl_ms"] == 200.0      # repaired
    assert not blas_choice.verdict(load_gemm, tmp_path, FakeMeasure(0.05, 0.1)).measured_now


def test_an_unwritable_cache_is_one_note_and_the_answer_still_comes(tmp_path, capsys):
    folder = tmp_path / "not-a-folder"
    folder.write_text("a file where the cache folder should be")
    v = blas_choice.verdict(load_gemm, folder, FakeMeasure(0.05, 0.1))
    assert v.mkl_faster and v.file is None and v.why().endswith("(measured now, not cached)")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("numformer: note: could not write the BLAS choice to ")


def test_processes_that_start_together_measure_once(tmp_path):
    """The lock: the second asker waits for the first one's measurement and reads it."""
    measure = FakeMeasure(0.05, 0.1, pause=0.5)
    found = []
    threads = [threading.Thread(target=lambda: found.append(blas_choice.verdict(load_gemm, tmp_path, measure)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert measure.calls == 1
    assert sorted(v.measured_now for v in found) == [False, False, True]
    assert {(v.mkl_ms, v.numpy_ms) for v in found} == {(50.0, 100.0)}


def test_the_real_measurement(tmp_path):
    """MKL's and NumPy's products measured for real: positive times, written and read back."""
    if not MKL_EXPECTED:
        pytest.skip("no MKL on this platform (the mkl wheel is x86-64 only)")
    v = blas_choice.verdict(lambda: mkl.load().gemm[np.dtype(np.float32)], tmp_path)
    assert v.measured_now and v.mkl_ms > 0 and v.numpy_ms > 0
    assert blas_choice.verdict(load_gemm, tmp_path, FakeMeasure(1.0, 1.0)).numpy_ms == v.numpy_ms


# ----------------------------------------------------------------------------- dispatch follows it

REPORT = ("import json, sys; from numformer.ops.fast import dispatch; "
          "r = {c.dtype: [c.runs, c.why] for c in dispatch.report() if c.op == 'linear'}; "
          "print(json.dumps([r, dispatch.linear_line(), "
          "any('libmkl' in line for line in open('/proc/self/maps'))]))")


def cached_times(folder, mkl_ms, numpy_ms):
    """Write this machine's record with the given times into `folder`, as a measurement would."""
    code = ("import sys; from pathlib import Path; from numformer.ops.fast import blas_choice; "
            "key = blas_choice.machine_key(); "
            f"blas_choice.write(blas_choice.cache_file(key, Path(sys.argv[1])), key, {mkl_ms}, {numpy_ms})")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, timeout=120,
                   env={**os.environ, "NUMFORMER_CACHE": str(folder)})


def report(folder, blas=None):
    env = {k: v for k, v in os.environ.items() if k != "NUMFORMER_BLAS"}
    env["NUMFORMER_CACHE"] = str(folder)
    if blas:
        env["NUMFORMER_BLAS"] = blas
    out = subprocess.run([sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("mkl_ms, numpy_ms, blas, runs", [
    (50.0, 100.0, None, "MKL"),        # measured faster: used
    (120.0, 100.0, None, "NumPy"),     # measured slower: not used, not even loaded
    (120.0, 100.0, "mkl", "MKL"),      # forced
    (50.0, 100.0, "numpy", "NumPy"),   # switched off
])
def test_dispatch_follows_the_cached_measurement_and_the_switches(tmp_path, mkl_ms, numpy_ms, blas, runs):
    if not MKL_EXPECTED:
        pytest.skip("no MKL on this platform (the mkl wheel is x86-64 only)")
    cached_times(tmp_path, mkl_ms, numpy_ms)
    rows, line, mkl_loaded = report(tmp_path, blas)
    assert rows["float32"][0] == rows["float64"][0] == runs
    assert mkl_loaded is (runs == "MKL")
    times = f"MKL {mkl_ms:.1f} ms, NumPy {numpy_ms:.1f} ms"
    if blas is None:
        assert times in rows["float32"][1] and times in line        # the report says why: the times
    if runs == "NumPy":
        assert line.startswith("NumPy's matmul (")
        assert line.endswith("(NUMFORMER_BLAS=numpy)" if blas else "NUMFORMER_BLAS=mkl forces it)")
    else:
        assert line.startswith("MKL's gemm while BLAS runs on one thread")
        assert ("forced by NUMFORMER_BLAS=mkl" in line) is (blas == "mkl")
    assert len(list(tmp_path.glob("blas-*.json"))) == 1                # read, not measured again
