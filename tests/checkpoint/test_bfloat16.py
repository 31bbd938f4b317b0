"""bfloat16 safetensors: every value is widened to float32 exactly, as torch's .float() does."""

import numpy as np
import torch
from safetensors.torch import save_file

from numformer.checkpoint import read_safetensors


def test_bfloat16_tensors_widen_to_float32_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, 1.0, -2.5, 3e38, -3e38, 1e-40, float("inf"), float("-inf")])
    w = torch.cat([torch.randn(199, generator=g) * 10.0 ** torch.randint(-30, 30, (199,), generator=g), special])
    tensors = {"w": w.to(torch.bfloat16).reshape(13, 16), "b": torch.randn(7, generator=g).to(torch.bfloat16),
               "f32": torch.randn(3, 2, generator=g), "i": torch.arange(5, dtype=torch.int64)}
    file = tmp_path / "m.safetensors"
    save_file(tensors, str(file))
    out = read_safetensors(file)
    assert set(out) == set(tensors)
    for name, t in tensors.items():
        want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert out[name].dtype == want.dtype and out[name].shape == want.shape
        # bit for bit, so -0.0, inf and the subnormal are checked too
        assert np.array_equal(out[name].view(np.uint8), want.view(np.uint8)), name


def test_bfloat16_nan_stays_nan(tmp_path):
    file = tmp_path / "m.safetensors"
    save_file({"w": torch.tensor([float("nan"), 1.0]).to(torch.bfloat16)}, str(file))
    out = read_safetensors(file)["w"]
    assert np.isnan(out[0]) and out[1] == 1.0
