"""The Detector API: accepted inputs, maps at input resolution, clear errors for bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wmoe.detector import Detector
from wmoe.model.preprocess import InputError


@pytest.fixture(scope="module")
def detector():
    from wmoe.model.config import ModelConfig
    from wmoe.model.wmoe_clip import WMoECLIP

    torch.manual_seed(0)
    return Detector(WMoECLIP(ModelConfig.tiny()), device="cpu", batch_size=2)


def test_single_numpy_image(detector):
    img = np.random.randint(0, 256, (120, 200, 3), dtype=np.uint8)
    r = detector(img)
    assert r.scores.shape == (1,) and r.maps[0].shape == (120, 200) and r.maps[0].dtype == np.float32
    assert np.isfinite(r.scores).all()


def test_batches_and_types_agree(detector):
    imgs = np.random.randint(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    a = detector(imgs)  # NHWC batch, split into batches of 2 internally
    b = detector([Image.fromarray(i) for i in imgs])
    c = detector(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    assert len(a) == 3
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.scores, c.scores, rtol=0, atol=1e-5)
    # The score of an image does not depend on its batch neighbours.
    single = detector(imgs[2])
    np.testing.assert_allclose(single.scores[0], a.scores[2], rtol=0, atol=1e-5)


def test_mixed_sizes_and_grayscale(detector):
    r = detector([np.zeros((30, 40, 3), np.uint8), np.full((50, 20), 128, np.uint8)])
    assert [m.shape for m in r.maps] == [(30, 40), (50, 20)]


@pytest.mark.parametrize("bad,match", [
    (np.zeros((10, 10, 2), np.uint8), "channels"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((10, 10, 3), np.float64), "uint8"),
    (torch.full((3, 8, 8), float("nan")), "NaN"),
    (torch.zeros(3, 8, 8, dtype=torch.int64), "dtype"),
    ([], "no images"),
    ("image.png", "unsupported type"),
])
def test_bad_inputs(detector, bad, match):
    with pytest.raises(InputError, match=match):
        detector(bad)


def test_reduced_precision_needs_cuda():
    from wmoe.model.config import ModelConfig
    from wmoe.model.wmoe_clip import WMoECLIP

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA"):
        Detector(WMoECLIP(ModelConfig.tiny()), device="cpu", dtype="fp16")


def test_kernel_choice_is_per_detector():
    from wmoe.model.config import ModelConfig
    from wmoe.kernels import Fp32, KernelChoice, Kernels
    from wmoe.model.wmoe_clip import WMoECLIP

    torch.manual_seed(0)
    m = WMoECLIP(ModelConfig.tiny())
    other = WMoECLIP(ModelConfig.tiny())
    Detector(m, device="cpu", kernels=KernelChoice("reference", fp32="tf32"))
    assert all(s.kernels == KernelChoice(Kernels.REFERENCE, Fp32.TF32) for s in m.kernel_stages())
    assert all(s.kernels == KernelChoice() for s in other.kernel_stages())  # another model is untouched
    with pytest.raises(ValueError, match="unknown kernel backend"):
        Detector(m, device="cpu", kernels="gpu")
