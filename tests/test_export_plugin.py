"""The plugin flavor: one custom node per AOT kernel, named and attributed for the TensorRT plugins, checked with
onnx's ReferenceEvaluator (Python implementations of the nodes, mirroring the kernels) against PyTorch."""
import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from wmoe.model.config import ModelConfig
from wmoe.export.onnx_export import export_onnx
from wmoe.onnx_meta import read_onnx_metadata as read_metadata
from wmoe.contract import PLUGIN_DOMAIN as DOMAIN, PLUGIN_MOE_OP as MOE_OP, PLUGIN_WCMA_OP as WCMA_OP
from wmoe.export.plugin_graph import REFERENCE_OPS
from wmoe.kernels import KernelChoice
from wmoe.model.wmoe_clip import WMoECLIP


def test_plugin_flavor_graph_and_reference_parity(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(image_size=56)
    model = WMoECLIP(cfg).eval()
    path = export_onnx(model, tmp_path / "plugin.onnx", flavor="plugin")
    assert all(s.kernels == KernelChoice() for s in model.kernel_stages())  # the export's tracing mode is undone
    proto = onnx.load(str(path))
    custom = [n for n in proto.graph.node if n.domain == DOMAIN]
    wcma = [n for n in custom if n.op_type == WCMA_OP]
    assert len(wcma) == len(cfg.feature_layers or [0] * 4)
    def attrs(n):
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    # plugin_namespace: the ONNX parser finds the TensorRT creator by it (see tests/test_trt_frontend.py)
    assert all(attrs(n) == {"hidden": cfg.freq_hidden, "aot": 1, "plugin_namespace": b"wmoe"} for n in wcma)
    moe = [n for n in custom if n.op_type == MOE_OP]
    assert len(moe) == 1
    assert attrs(moe[0]) == {"top_k": cfg.top_k, "n_experts": cfg.n_experts, "aot": 1, "plugin_namespace": b"wmoe"}
    assert len(custom) == len(wcma) + 1
    # the kernels' fp32 operands are fp32 in the graph: g, b_pw, b_local / router weight and bias
    types = {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.value_info) + list(proto.graph.input)}
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    assert all(types.get(n.input[i]) == onnx.TensorProto.FLOAT for n in wcma for i in (1, 3, 5) if n.input[i] in types)
    assert read_metadata(path)["wmoe.flavor"] == "plugin"
    assert {o.domain: o.version for o in proto.opset_import}[DOMAIN] == 1
    x = torch.randn(3, 3, 56, 56)
    got = ReferenceEvaluator(proto, new_ops=REFERENCE_OPS).run(None, {"images": x.numpy()})
    with torch.no_grad():
        o = model(x)
    for g, r in zip(got, (o.scores, o.maps, o.text_scores)):
        assert g.shape == tuple(r.shape)
        assert np.abs(g - r.numpy()).max() <= 1e-4
