"""`numformer check`: run the op table (numformer.ops.table) through its harness.

For every row of the table, on both op sets (the reference ops and the fast ops the GPT trains
with), in float64: the hand-derived gradients against central finite differences and, when
PyTorch can be imported (numformer itself never needs it), the forward value and gradients
against torch autograd; float32 against float64. Then every fast op against its reference at
several block and chunk sizes, in float64 and float32, so that the table's small shapes cross
every block and chunk boundary the GPT's training step takes. Then the quantized weights
(numformer.ops.quant): int8 and bf16 against exact rational arithmetic and their worst-case
bounds (bf16 also against PyTorch's conversion), and the linear map with them on both op sets
(the fast one's compiled kernels and tiles) against float64.

One line per row and op set (the worst error over its tensors), one per fast row (the worst
over its sizes), then which implementation each fast op ran here (numformer.ops.fast.dispatch);
exit status 1 if anything fails. Run it after changing an op.
"""

import sys

import numpy as np

from numformer.errors import UsageError
from numformer.ops import harness
from numformer.ops.fast import dispatch
from numformer.ops.table import CASES, QUANT_CASES, fast_rows

SETS = ("reference", "fast")


def _import_torch():
    try:
        import torch
    except Exception:            # not installed, or broken: finite differences only
        return None
    return torch


def run_checks(use_torch: bool = True, seed: int = 0):
    """Every check of the table. Returns (results, fast_results, torch version or None):
    harness.Result lists for the rows on each op set and for fast against reference; the
    quantization rows' results are in fast_results too (their ops field is "quant" or the op
    set and row count of a product)."""
    torch = _import_torch() if use_torch else None
    results = []
    for case in CASES:
        for ops in SETS:
            results += harness.against_finite_differences(case, ops, seed=seed)
            results += harness.float32_against_float64(case, ops, seed=seed)
            if torch is not None and case.torch is not None:
                results += harness.against_torch(case, ops, torch, seed=seed)
    fast = []
    for case, sizes in fast_rows():
        for dtype in (np.float64, np.float32):
            fast += harness.fast_against_reference(case, sizes, dtype, seed=seed)
    for case in QUANT_CASES:
        fast += harness.quant_checks(case, torch, seed=seed)
    return results, fast, (torch.__version__ if torch is not None else None)


def _worst(results, check):
    errs = [r.rel_err for r in results if r.check == check]
    return max(errs) if errs else None


def _fmt(v):
    return "-" if v is None else f"{v:.2e}"


def _table(header, body):
    widths = [max(len(c[i]) for c in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(c) for c in body)]


def format_report(results, fast, with_torch: bool) -> list[str]:
    """The report as aligned text lines: the rows on each op set, then fast = reference."""
    header = ["op (table row)", "ops", "finite diff", "float32"] + (["torch"] if with_torch else []) + ["result"]
    body = []
    for case in CASES:
        for ops in SETS:
            mine = [r for r in results if r.case == case.id and r.ops == ops]
            cells = [case.id, ops, _fmt(_worst(mine, "finite differences")), _fmt(_worst(mine, "float32"))]
            if with_torch:
                cells.append(_fmt(_worst(mine, "torch")))
            body.append(cells + ["OK" if all(r.ok for r in mine) else "FAIL"])
    lines = _table(header, body)
    header = ["fast = reference (table row)", "sizes", "float64", "float32", "result"]
    body = []
    for case in CASES:
        mine = [r for r in fast if r.case == case.id]
        if not mine:
            continue
        by_dtype = {d: max(r.rel_err for r in mine if r.ops.endswith(d)) for d in ("float64", "float32")}
        sizes = len({r.ops.rsplit(",", 1)[0] for r in mine})
        body.append([case.id, str(sizes), _fmt(by_dtype["float64"]), _fmt(by_dtype["float32"]),
                     "OK" if all(r.ok for r in mine) else "FAIL"])
    lines += [""] + _table(header, body)
    header = ["quantized weights (table row)", "exact", "bound", "torch", "products", "result"]
    body = []
    for case in QUANT_CASES:
        mine = [r for r in fast if r.case == case.id]

        def cell(check, rs=mine):
            ours = [r for r in rs if r.check == check]
            if not ours:
                return "-"
            if check == "exact":                    # bit for bit: equal or not
                return "equal" if all(r.ok for r in ours) else "differ"
            return _fmt(max(r.rel_err for r in ours))

        body.append([case.id, cell("exact"), cell("bound"),
                     ("equal" if all(r.ok for r in mine if r.check == "torch") else "differ")
                     if any(r.check == "torch" for r in mine) else "-",
                     cell("product"), "OK" if all(r.ok for r in mine) else "FAIL"])
    return lines + [""] + _table(header, body)


def add_arguments(parser):
    parser.add_argument("--no_torch", "--no-torch", dest="no_torch", action="store_true",
                        help="finite differences only, even if PyTorch is installed")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random input values (default 0)")


def main(args) -> int:
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    results, fast, torch_version = run_checks(use_torch=not args.no_torch, seed=args.seed)
    with_torch = torch_version is not None
    for line in format_report(results, fast, with_torch):
        print(line)
    print()
    print("which implementation each fast op runs here (numformer.ops.fast.dispatch):")
    for line in dispatch.report_lines():
        print(line)
    every = results + fast
    failed = [r for r in every if not r.ok]
    print()
    print(f"max relative error over each row's tensors; float64, seed {args.seed}; pass if within "
          f"the row's tolerance of finite differences (h = {harness.FD_STEP:g})"
          + (f", {harness.TORCH_RTOL:g} of PyTorch {torch_version}" if with_torch else "")
          + f", {harness.FLOAT32_RTOL:g} float32 to float64; fast = reference within "
          f"{harness.FAST_RTOL[np.dtype(np.float64)]:g} (float64) and {harness.FAST_RTOL[np.dtype(np.float32)]:g} (float32); "
          f"quantized weights: exact = bit for bit as rational arithmetic rounds them, bound = the worst error "
          f"over its bound (pass <= 1), products within {harness.FAST_RTOL[np.dtype(np.float32)]:g} of float64")
    if not with_torch:
        print("PyTorch comparison skipped (--no_torch)" if args.no_torch
              else "PyTorch is not installed: finite differences only")
    if failed:
        for r in failed[:20]:
            print(f"FAIL: {r}", file=sys.stderr)
        print(f"FAIL: {len(failed)} of {len(every)} comparisons failed", file=sys.stderr)
        return 1
    print(f"all {len(every)} comparisons OK")
    return 0
