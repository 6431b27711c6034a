"""The plugin flavor: custom nodes named and attributed for the TensorRT plugins, checked with onnx's
ReferenceEvaluator (Python implementations of the two nodes) against PyTorch."""
import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from wmoe.config import ModelConfig
from wmoe.export.onnx_export import export_onnx, read_metadata
from wmoe.export.plugin_graph import DOMAIN, MOE_OP, REFERENCE_OPS, WCMA_OP
from wmoe.kernels import get_backend
from wmoe.model import WMoECLIP


def test_plugin_flavor_graph_and_reference_parity(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(image_size=56)
    model = WMoECLIP(cfg).eval()
    path = export_onnx(model, tmp_path / "plugin.onnx", flavor="plugin")
    assert get_backend() == "auto"  # the export's backend switch is undone
    proto = onnx.load(str(path))
    custom = [n for n in proto.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in custom].count(WCMA_OP) == len(cfg.feature_layers or [0] * 4)
    moe = [n for n in custom if n.op_type == MOE_OP]
    assert len(moe) == 1 and [(a.name, a.i) for a in moe[0].attribute] == [("top_k", cfg.top_k)]
    assert read_metadata(path)["wmoe.flavor"] == "plugin"
    assert {o.domain: o.version for o in proto.opset_import}[DOMAIN] == 1
    x = torch.randn(2, 3, 56, 56)
    got = ReferenceEvaluator(proto, new_ops=REFERENCE_OPS).run(None, {"images": x.numpy()})
    with torch.no_grad():
        o = model(x)
    for g, r in zip(got, (o.scores, o.maps, o.text_scores)):
        assert np.abs(g - r.numpy()).max() <= 1e-4
