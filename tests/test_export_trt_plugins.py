"""TensorRT AOT plugins: everything that does not need TensorRT, on the real AOT-compiled Triton PTX."""
import re
import sys

import pytest

from wmoe.export.onnx_export import ExportError
from wmoe.contract import PLUGIN_MOE_OP as MOE_OP, PLUGIN_WCMA_OP as WCMA_OP
from wmoe.export.trt_build import plan_flavor
from wmoe.export.trt_plugins import (PLUGIN_SMEM_LIMIT, PLUGINS, KernelStore, aligned_dims,
                                     check_plugin_artifact, driver_for_ptx, driver_ptx_limit, launch_plan,
                                     lowest_ptx_isa, ptx_version, register_plugins, set_ptx_version, trt_version_ok)
from wmoe.kernels.aot import PTX_ISAS


@pytest.fixture(scope="module")
def store(plugin_kernels):
    return plugin_kernels


@pytest.mark.parametrize("target", ["sm_80", "sm_86", "sm_87", "sm_89", "sm_90"])
def test_every_plugin_artifact_assembles_at_its_capped_isa_within_48kb(store, target):
    """Every AOT artifact that goes into a plugin: shared memory within PLUGIN_SMEM_LIMIT, PTX lowered to the lowest
    ISA ptxas (Triton's) assembles it at — and one ISA lower it does not assemble, so the cap is the lowest."""
    from wmoe.kernels.aot import ptxas_usage
    for op in PLUGINS:
        for dtype in ("fp16", "fp32"):
            art, ptx = store.kernel(op, dtype, target, driver_limit=(8, 8))
            assert art["shared_bytes"] <= PLUGIN_SMEM_LIMIT, (art["name"], art["shared_bytes"])
            isa = ptx_version(ptx)
            assert isa <= (8, 5) and art["kernel"] in ptx
            arch = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
            path = store.dir / f"{art['name']}_capped.ptx"
            path.write_text(ptx)
            assert ptxas_usage(path, arch)["registers"] > 0
            lower = PTX_ISAS[PTX_ISAS.index(isa) - 1]
            path.write_text(set_ptx_version(ptx, lower))
            with pytest.raises(RuntimeError, match="ptxas failed"):
                ptxas_usage(path, arch)


def test_old_driver_is_refused_with_the_driver_to_install(store):
    # the fp32 main kernel needs ISA 8.3 (used_bytes_mask): a CUDA 12.2 driver (ISA 8.2) cannot JIT it
    isa = lowest_ptx_isa((store.dir / store.by_name["wcma_main_fp32_sm_87"]["ptx"]).read_text())
    assert isa == (8, 3)
    with pytest.raises(ExportError, match=r"needs PTX ISA 8\.3.*up to 8\.2.*CUDA 12\.3 or newer"):
        store.kernel(WCMA_OP, "fp32", "sm_87", driver_limit=driver_ptx_limit(12020))
    assert driver_for_ptx((8, 3)) == (12, 3) and driver_for_ptx((7, 8)) == (11, 8)


def test_fp32_main_kernel_over_48kb_is_refused(store):
    art = store.by_name["wcma_main_fp32_sm_90"]
    ptx = (store.dir / art["ptx"]).read_text()
    problems = check_plugin_artifact(dict(art, shared_bytes=69632), ptx, PLUGINS[WCMA_OP])
    assert any("69632 B of shared memory" in p for p in problems)


def test_artifact_checks_catch_what_tensorrt_cannot_launch(store):
    art = store.by_name["wcma_main_fp16_sm_87"]
    ptx = (store.dir / art["ptx"]).read_text()
    plugin = PLUGINS[WCMA_OP]
    assert check_plugin_artifact(art, ptx, plugin) == []
    swapped = dict(art, signature=[art["signature"][-1]] + art["signature"][:-1])
    assert any("ordered" in p for p in check_plugin_artifact(swapped, ptx, plugin))
    assert any("scratch" in p for p in check_plugin_artifact(dict(art, global_scratch_bytes=256), ptx, plugin))
    assert any("profile scratch" in p for p in check_plugin_artifact(dict(art, profile_scratch_bytes=64), ptx,
                                                                     plugin))
    assert any("TMA" in p for p in check_plugin_artifact(art, ptx + "\n.param .align 64 .b8 desc[128]; "
                                                         "cp.async.bulk.tensor.2d.shared", plugin))
    assert any("newer than the driver" in p for p in check_plugin_artifact(art, ptx, plugin, (8, 0)))
    assert any("inputs/scalars/outputs" in p for p in check_plugin_artifact(art, ptx, PLUGINS[MOE_OP]))


def test_plugin_ptx_entry_declares_exactly_the_launch_arguments(store):
    """TensorRT's AOT launch passes inputs, int32 extra args and outputs, and no Triton scratch pointers
    (docs/kernels.md): every shipped plugin PTX -- every target, dtype and variant -- declares exactly those, and its
    global and profile scratch are 0. Before, the PTX kept Triton's two hidden trailing pointers (16 parameters for
    the WCMA kernel's 14 arguments, 11 for the router's 9) and the profile scratch size was not even recorded."""
    from wmoe.kernels.aot import entry_params, exact_entry
    arts = [a for a in store.manifest["artifacts"] if a["spec"] in {p.kernel for p in PLUGINS.values()}]
    assert {a["target"] for a in arts} == {"sm_80", "sm_86", "sm_87", "sm_89", "sm_90"}
    assert {a["variant"] for a in arts} == {"general", "a16"} and {a["dtype"] for a in arts} == {"fp16", "fp32"}
    for a in arts:
        ptx = (store.dir / a["ptx"]).read_text()
        assert len(entry_params(ptx)) == len(a["signature"]) == a["entry_params"], a["name"]
        assert a["global_scratch_bytes"] == 0 and a["profile_scratch_bytes"] == 0, a["name"]
        assert a["hidden_params_removed"] >= 0 and a["problems"] == [], (a["name"], a["problems"])
    # a Triton PTX with its hidden pointers (the old artifacts) is refused as a plugin kernel ...
    art = store.by_name["moe_router_fp16_sm_87"]
    ptx = (store.dir / art["ptx"]).read_text()
    name = entry_params(ptx)[-1].split()[-1].rsplit("_", 1)[0]
    hidden = ",\n\t.param .u64 .ptr .global .align 1 {0}_9,\n\t.param .u64 .ptr .global .align 1 {0}_10\n)".format(name)
    old = ptx.replace(entry_params(ptx)[-1] + "\n)", entry_params(ptx)[-1] + hidden, 1)
    assert len(entry_params(old)) == 11
    assert any("declares 11 parameters, the plugin launch passes 9" in p
               for p in check_plugin_artifact(art, old, PLUGINS[MOE_OP]))
    assert exact_entry(old, 9) == (ptx, 2)  # ... and made exact again
    # a kernel that reads a hidden pointer needs scratch memory no plugin launch provides: refused, not stripped
    reads = old.replace("ret;", f"ld.param.u64 %rd1, [{name}_10];\n\tret;", 1)
    with pytest.raises(ValueError, match="reads its hidden parameter"):
        exact_entry(reads, 9)


def test_ptx_cap_and_driver_table():
    ptx = "//\n.version 8.8\n.target sm_90a\n"
    assert set_ptx_version(ptx, (8, 5)) == "//\n.version 8.5\n.target sm_90a\n"
    assert set_ptx_version(ptx, (8, 8)) == ptx
    assert driver_ptx_limit(12060) == (8, 5) and driver_ptx_limit((12, 9)) == (8, 8)
    assert driver_ptx_limit(13010) == (9, 0)
    with pytest.raises(ExportError, match="too old"):
        driver_ptx_limit(11040)
    with pytest.raises(ValueError, match="no .version"):
        ptx_version(".target sm_80")


def test_launch_plan_matches_the_launchers():
    grid, threads, args = launch_plan(WCMA_OP, dict(B=4, H=37, W=37, C=768, D=192),
                                      {"BLOCK_M": 32, "BLOCK_D": 256}, 8)
    assert grid == (-(-4 * 19 * 19 // 32), 1, 1) and threads == 256 and args == [4, 37, 37, 19, 19, 768, 192]
    grid, threads, args = launch_plan(MOE_OP, dict(B=33, C=768, NE=8, TOPK=2), {"BLOCK_B": 16, "BLOCK_E": 8}, 4)
    assert grid == (3, 1, 1) and threads == 128 and args == [33, 768, 8, 2]
    with pytest.raises(ExportError, match="BLOCK_D"):
        launch_plan(WCMA_OP, dict(B=1, H=2, W=2, C=8, D=512), {"BLOCK_M": 32, "BLOCK_D": 256}, 8)
    # the plan is the spec's: the launcher's grid for the same tiles
    from wmoe.kernels.wcma_frequency_triton import MAIN, SPEC
    dims = SPEC.dims(B=4, H=37, W=37, C=768, D=192)
    for target in ("sm_80", "sm_87", "sm_90"):
        c = MAIN.constexprs(target, "fp16", dims)
        grid, _, _ = launch_plan(WCMA_OP, dict(B=4, H=37, W=37, C=768, D=192), c, 8)
        assert grid == MAIN.grid(dims, c) + (1, 1)
    # the aligned variant only when the aligned dims are build-time multiples of 16
    assert aligned_dims(WCMA_OP, dict(B=1, H=2, W=2, C=768, D=192))
    assert not aligned_dims(WCMA_OP, dict(B=1, H=2, W=2, C=40, D=20))
    assert aligned_dims(MOE_OP, dict(B=3, C=768, NE=8, TOPK=2))
    assert not aligned_dims(MOE_OP, dict(B=3, C=33, NE=8, TOPK=2))


def test_store_errors(tmp_path, store):
    with pytest.raises(ExportError, match="manifest"):
        KernelStore(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ExportError, match="damaged"):
        KernelStore(tmp_path)
    with pytest.raises(ExportError, match="wcma_main_bf16_sm_90"):
        store.kernel(WCMA_OP, "bf16", "sm_90")


def test_store_takes_the_lowest_isa_from_the_manifest(tmp_path, store, monkeypatch):
    """The lowest PTX ISA is found once, when compiling, and recorded: a build from the store runs no ptxas (it
    needs no Triton). A manifest without the field (an older wmoe's) falls back to Triton's ptxas, and where Triton
    is not installed says in one line to recompile."""
    import json
    import shutil

    import wmoe.kernels.aot as aot
    name = "wcma_main_fp32_sm_87"
    assert store.by_name[name]["lowest_ptx_isa"] == "8.3"  # the used_bytes_mask kernel, see the driver test
    calls = []
    monkeypatch.setattr(aot, "_assembles", lambda *a: calls.append(a) or True)  # ptxas would say "any ISA"
    fresh = KernelStore(store.dir)
    _, ptx = fresh.kernel(WCMA_OP, "fp32", "sm_87")
    assert ptx_version(ptx) == (8, 3) and calls == []
    old = tmp_path / "old"
    shutil.copytree(store.dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        del a["lowest_ptx_isa"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.undo()
    _, ptx = KernelStore(old).kernel(WCMA_OP, "fp32", "sm_87")  # Triton's ptxas finds it again
    assert ptx_version(ptx) == (8, 3)
    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(ExportError, match=r"does not record the lowest PTX ISA of wcma_main_fp16_sm_87 .*recompile"):
        KernelStore(old).kernel(WCMA_OP, "fp16", "sm_87")


def test_flavor_fallback_on_old_tensorrt(tmp_path):
    assert trt_version_ok("10.9.0.34") and trt_version_ok("11.0.0") and not trt_version_ok("10.3.0")
    from wmoe.contract import ModelMeta
    plugin, portable = ModelMeta(224, flavor="plugin"), ModelMeta(224, flavor="portable")
    assert plan_flavor(plugin, "10.13.0") == ("plugin", None)
    assert plan_flavor(portable, "10.3.0") == ("portable", None)
    flavor, note = plan_flavor(plugin, "10.3.0", checkpoint="m.safetensors")
    assert flavor == "portable" and "10.3.0 < 10.9" in note and "portable" in note
    with pytest.raises(ExportError, match="--checkpoint"):
        plan_flavor(plugin, "10.3.0")


def test_register_plugins_needs_tensorrt(store):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("TensorRT is not installed (pip install tensorrt, x86-64 + CUDA 12/13; JetPack's "
                    "python3-libnvinfer on Jetson): plugin registration not exercised")
    if not trt_version_ok(tensorrt.__version__):
        with pytest.raises(ExportError, match="10.9"):
            register_plugins(store, "sm_87")
    else:
        register_plugins(store, "sm_87", (8, 5))
