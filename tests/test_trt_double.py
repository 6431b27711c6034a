"""The generated TensorRT double (tests/trt_double.py) is strict, and ``wmoe export trt`` builds under it.

The double's surface is generated at test time from tensorrt-stubs 10.13 and each bindings wheel's ``tensorrt.so``
(10.9, 10.16, 11.4); nothing generated is committed. These tests show that it refuses what TensorRT refuses (a
method TensorRT lacks, a wrong argument count, a flag a version removed). ``build_engine`` and the rest of the
TensorRT path run through it in tests/test_trt_dry_run.py (which failed on the old code at ``prof.is_valid()``).
"""
import pytest

import trt_behaviour
import trt_double as D

VERSIONS = ["10.9", "10.16", "11.4"]


@pytest.fixture(params=VERSIONS)
def trt(request):
    yield D.load(request.param)
    D.unload()


def test_stub_and_wheels_installed():
    """make install puts them there: the double must not silently lose a version in CI."""
    assert (D.stub_dir() / "tensorrt_bindings" / "tensorrt.pyi").is_file()
    have = D.bindings_dirs()
    for v in VERSIONS:
        assert any(k == v or k.startswith(v + ".") for k in have), (v, sorted(have))


def test_a_method_tensorrt_lacks_fails(trt):
    profile = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_optimization_profile()
    with pytest.raises(AttributeError, match="IOptimizationProfile' object has no attribute 'is_valid'"):
        profile.is_valid()
    with pytest.raises(AttributeError, match="no attribute 'shapes' to set"):
        profile.shapes = {}
    assert bool(profile)  # how TensorRT validates a profile (its docstring, and __bool__ in every .so)
    profile.set_shape("x", trt.Dims([4, 3]), trt.Dims([2, 3]), trt.Dims([8, 3]))
    assert not bool(profile)  # min > opt


def test_a_wrong_argument_count_fails(trt):
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.create_network(0, 1)
    profile = builder.create_optimization_profile()
    with pytest.raises(TypeError, match="set_shape"):
        profile.set_shape("x", trt.Dims([1]), trt.Dims([1]))  # min, opt and no max
    with pytest.raises(TypeError, match="missing a required argument: 'logger'"):
        trt.Builder()
    with pytest.raises(TypeError, match="No constructor defined"):
        trt.ICudaEngine()  # TensorRT makes engines, Python cannot


def test_versions_differ_as_their_so_says():
    old, new = D.load("10.9"), None
    try:
        assert {"FP16", "BF16", "INT8", "FP8"} <= set(old.BuilderFlag.__members__)
        assert "EXPLICIT_BATCH" in old.NetworkDefinitionCreationFlag.__members__
        assert hasattr(old, "IInt8EntropyCalibrator2")
        new = D.load("11.4")
        # TensorRT 11: strongly typed networks only, no precision flags, no implicit-batch flag, no calibrators
        assert not {"FP16", "BF16", "INT8", "FP8"} & set(new.BuilderFlag.__members__)
        assert "EXPLICIT_BATCH" not in new.NetworkDefinitionCreationFlag.__members__
        assert not hasattr(new, "IInt8EntropyCalibrator2")
        with pytest.raises(AttributeError):
            new.BuilderFlag.FP16
        assert new.BuilderFlag.TF32.name == "TF32" and new.DataType.HALF == new.float16
        assert new.nptype(new.float16).__name__ == "float16"  # the wheel's own __init__.py ran on the double
    finally:
        D.unload()


def test_behaviour_outside_the_surface_is_refused():
    class Profile(trt_behaviour.IOptimizationProfile):
        def is_valid(self):
            return True

    with pytest.raises(D.SurfaceError, match=r"Profile\.is_valid is not part of TensorRT 10\.9.*IOptimizationProfile"):
        D.generate("10.9", dict(trt_behaviour.BEHAVIOURS, IOptimizationProfile=Profile))


def test_stub_repairs_are_the_known_ones():
    """tensorrt-stubs 10.13.0.35.1 is not valid Python in 5 signatures; nothing else is changed."""
    text = (D.stub_dir() / "tensorrt_bindings" / "tensorrt.pyi").read_text()
    fixed_text, lines = D.repair_stub(text)
    assert len(lines) == 5
    src, dst = text.splitlines(), fixed_text.splitlines()
    assert [i + 1 for i, (a, b) in enumerate(zip(src, dst)) if a != b] == lines
