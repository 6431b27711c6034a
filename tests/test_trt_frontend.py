"""Conformance of the TensorRT plugins with TensorRT's REAL ``tensorrt.plugin`` frontend (the pure-Python part of
the ``tensorrt-cu12-bindings`` wheel, and its ``__init__.py``); only the compiled core is the test double GENERATED
from tensorrt-stubs and that wheel's ``tensorrt.so`` (``trt_double.py``; behaviour in ``trt_behaviour.py``).

Run against every frontend installed: the dev extra's wheel (10.16, also JetPack 7.2's) and those ``make install``
puts under ``.venv/trt-frontends`` (10.9, the first with ``aot_impl``; 11.4, the newest). It registers both plugins
(the frontend's signature validation), parses the exported plugin ONNX the way the ONNX parser does (creator looked
up by name, version and ``plugin_namespace``; int attributes passed as one-element integer arrays), drives each
plugin through the builder's calls for realistic shapes and compares dtypes, shapes, grid and int32 arguments with
:func:`wmoe.export.trt_plugins.launch_plan` and the AOT manifest.
"""
import sys

import numpy as np
import onnx
import pytest
import torch

import trt_behaviour as TB
import trt_double as D
from wmoe.model.config import ModelConfig
from wmoe.export.onnx_export import ExportError, export_onnx
from wmoe.contract import PLUGIN_DOMAIN as DOMAIN, PLUGIN_MOE_OP as MOE_OP, PLUGIN_WCMA_OP as WCMA_OP
from wmoe.export.trt_plugins import (PLUGINS, check_plugin_nodes, launch_plan, ptx_version,
                                     register_plugins, unregister_plugins)
from wmoe.model.wmoe_clip import WMoECLIP

FRONTENDS = D.bindings_dirs()
DRIVER_LIMIT = (8, 5)  # a CUDA 12.6 driver (JetPack 6.2 / many servers)
TARGET = "sm_87"


def test_dev_extra_installs_the_frontend():
    # the dev extra pins tensorrt-cu12-bindings: the conformance tests below must not silently skip in CI
    assert any(v.startswith("10.16.") for v in FRONTENDS), f"tensorrt-cu12-bindings 10.16 not installed: {FRONTENDS}"


@pytest.fixture(scope="module")
def store(plugin_kernels):
    return plugin_kernels


@pytest.fixture(scope="module")
def plugin_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig.tiny(image_size=56)).eval()
    return onnx.load(str(export_onnx(model, tmp_path_factory.mktemp("onnx") / "plugin.onnx", flavor="plugin")))


@pytest.fixture(params=sorted(FRONTENDS))
def frontend(request):
    trt, trtp = D.frontend(request.param)
    unregister_plugins()
    yield trt, trtp
    unregister_plugins()
    D.unload()


def _set(node: onnx.NodeProto, **values) -> onnx.NodeProto:
    """A copy of an exported node with other int attribute values (realistic sizes)."""
    n = onnx.NodeProto()
    n.CopyFrom(node)
    for a in n.attribute:
        if a.name in values:
            a.i = values[a.name]
    return n


def test_plugin_nodes_carry_what_the_onnx_parser_needs(frontend, store, plugin_onnx):
    trt, _ = frontend
    register_plugins(store, TARGET, DRIVER_LIMIT)
    custom = [n for n in plugin_onnx.graph.node if n.domain == DOMAIN]
    assert {n.op_type for n in custom} == set(PLUGINS)
    for node in custom:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == DOMAIN.encode()  # the parser ignores the ONNX domain
        creator, plugin = TB.import_plugin_node(node)
        assert creator.plugin_namespace == DOMAIN and creator.name == node.op_type
        # every field the creator declares is an attribute of the node (a missing one is only a parser warning)
        declared = {f.name for f in creator.field_names}
        assert declared == set(attrs) - {"plugin_namespace"}, (declared, set(attrs))
        assert plugin is not None
    # a node without the namespace attribute is not found: what failed before (blocker 3)
    bare = onnx.NodeProto()
    bare.CopyFrom(custom[0])
    del bare.attribute[:]
    with pytest.raises(RuntimeError, match="Plugin not found"):
        TB.import_plugin_node(bare)


def test_second_registration_with_other_kernels_is_refused(frontend, store, tmp_path):
    """tensorrt.plugin keeps a process's first plugin definitions: registering again with another kernel store,
    target or PTX limit must fail loudly (it was silently ignored: the engine got the first call's kernels)."""
    register_plugins(store, TARGET, DRIVER_LIMIT)
    register_plugins(store, TARGET, DRIVER_LIMIT)  # the same registration again: nothing to do
    with pytest.raises(ExportError, match=r"already registered .*target sm_87.*target sm_90.*own process"):
        register_plugins(store, "sm_90", DRIVER_LIMIT)
    with pytest.raises(ExportError, match=r"PTX limit \(8, 5\).*PTX limit \(8, 8\)"):
        register_plugins(store, TARGET, (8, 8))
    other = type(store)(store.dir)  # another store object over the same directory is the same registration
    register_plugins(other, TARGET, DRIVER_LIMIT)
    (tmp_path / "k").symlink_to(store.dir)  # ... and so is the same directory under another name
    register_plugins(type(store)(tmp_path / "k"), TARGET, DRIVER_LIMIT)


def test_build_checks_nodes_against_registered_creators(frontend, store, plugin_onnx, tmp_path, monkeypatch):
    trt, _ = frontend
    register_plugins(store, TARGET, DRIVER_LIMIT)
    path = tmp_path / "plugin.onnx"
    model = onnx.ModelProto()
    model.CopyFrom(plugin_onnx)
    onnx.save(model, str(path))
    with monkeypatch.context() as m:  # the device that builds the engine has no onnx package: the check needs none
        m.setitem(sys.modules, "onnx", None)
        check_plugin_nodes(path, trt.get_plugin_registry())  # what wmoe export trt runs before parsing
    for node in model.graph.node:
        if node.domain == DOMAIN:
            for a in node.attribute:
                if a.name == "plugin_namespace":
                    a.s = b""
    onnx.save(model, str(path))
    with pytest.raises(ExportError, match=r"plugin.onnx.*plugin_namespace ''"):
        check_plugin_nodes(path, trt.get_plugin_registry())


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_builder_calls_match_launch_plan(frontend, store, plugin_onnx, dtype):
    trt, _ = frontend
    register_plugins(store, TARGET, DRIVER_LIMIT)
    T = trt.float16 if dtype == "fp16" else trt.float32
    f32 = trt.float32
    nodes = {n.op_type: n for n in plugin_onnx.graph.node if n.domain == DOMAIN}
    cfg = ModelConfig()  # the real model's sizes: C = 768, D = 192, 8 experts, top-2
    C, D, NE, K = 768, cfg.freq_hidden, cfg.n_experts, cfg.top_k
    wcma = _set(nodes[WCMA_OP], hidden=D)
    router = _set(nodes[MOE_OP], top_k=K, n_experts=NE)
    for B, side in ((1, 24), (8, 37), (33, 37)):
        creator, plugin = TB.import_plugin_node(wcma)
        ins = [((B, side, side, C), T), ((B, C), f32), ((D, C), T), ((D,), f32), ((C, D), T), ((C,), f32)]
        got = TB.drive_plugin(plugin, ins)
        # C = 768 and D = 192 are build-time multiples of 16: the 16-byte-aligned variant (vectorized loads)
        art = store.by_name[f"wcma_main_{dtype}_{TARGET}_a16"]
        assert art["variant"] == "a16" and art["vector_loads"] + art["cp_async_16"] > 0
        assert got["ptx"] == store.kernel(WCMA_OP, dtype, TARGET, DRIVER_LIMIT, aligned=True)[1]
        grid, threads, scalars = launch_plan(WCMA_OP, dict(B=B, H=side, W=side, C=C, D=D), art["constexprs"],
                                             art["num_warps"])
        h = -(-side // 2)
        assert got["out_types"] == [T] and got["out_shapes"] == [(B, h, h, C)]
        assert got["grid"] == grid and got["block"] == threads and got["extra"] == scalars
        assert got["block_yz"] == (1, 1) and got["n_extra"] == PLUGINS[WCMA_OP].n_scalars
        assert got["shared_mem"] == art["shared_bytes"] and got["kernel"] == art["kernel"]
        assert set(got["extra_dtypes"]) == {trt.PluginArgDataType.INT32}
        assert ptx_version(got["ptx"]) <= DRIVER_LIMIT
        # the builder clones plugins; an AOT engine stores the kernel, not Python, so no field serialization here
        again = plugin.clone()
        assert again.get_output_data_types([t for _, t in ins], [len(s) for s, _ in ins]) == [T]

        creator, plugin = TB.import_plugin_node(router)
        got = TB.drive_plugin(plugin, [((B, C), T), ((NE, C), f32), ((NE,), f32)])
        art = store.by_name[f"moe_router_{dtype}_{TARGET}_a16"]
        assert got["ptx"] == store.kernel(MOE_OP, dtype, TARGET, DRIVER_LIMIT, aligned=True)[1]
        grid, threads, scalars = launch_plan(MOE_OP, dict(B=B, C=C, NE=NE, TOPK=K), art["constexprs"],
                                             art["num_warps"])
        assert got["out_types"] == [f32, trt.int32] and got["out_shapes"] == [(B, K), (B, K)]
        assert got["grid"] == grid and got["block"] == threads and got["extra"] == scalars
        assert got["shared_mem"] == art["shared_bytes"] and got["kernel"] == art["kernel"]


def test_core_double_is_not_lenient(frontend):
    """The generated core rejects what the real core would: non-int constants, unknown creators, names and
    argument counts outside TensorRT's API."""
    trt, _ = frontend
    b = trt.IExprBuilder()
    with pytest.raises(TypeError):
        b.constant(1.5)
    assert trt.get_plugin_registry().get_creator(WCMA_OP, "1", DOMAIN) is None
    f = trt.PluginField("hidden", np.array([192]), trt.PluginFieldType.INT32)
    assert f.data.dtype == np.int32 and f.data.shape == (1,)  # how the parser hands an ONNX INT to the creator
    with pytest.raises(TypeError, match="incompatible function arguments"):
        trt.PluginTensorDesc((1, 2), trt.float32)  # the old stand-in's constructor: TensorRT's takes no arguments
    with pytest.raises(AttributeError, match="no attribute 'dim'"):
        b.dim(3)  # a helper the old stand-in added to IExprBuilder
