"""The custom ops: opcheck, and torch.export / torch.compile see one node per fused stage."""
import pytest
import torch

from wmoe.kernels.moe_ref import moe_experts_ref
from wmoe.kernels.ops import OPS
from wmoe.kernels.wcma_ref import wcma_frequency_ref


wcma_frequency_op, moe_experts_op = OPS["wcma_frequency"], OPS["moe_experts"]


def _wcma_args(B=2, H=5, W=6, C=16, D=8):
    r = torch.randn
    return (r(B, H, W, C), r(C, C) * 0.2, r(C) * 0.1, r(D, C) * 0.2, r(D) * 0.1, r(C, D) * 0.2, r(C) * 0.1)


def _moe_args(B=3, C=16, N=4, Dh=8):
    r = torch.randn
    return (r(B, C), r(N, C) * 0.2, r(N) * 0.1, r(N, C, Dh) * 0.2, r(N, Dh) * 0.1, r(N, Dh, C) * 0.2, r(N, C) * 0.1)


def test_opcheck():
    torch.library.opcheck(wcma_frequency_op, _wcma_args(), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(moe_experts_op, (*_moe_args(), 2), test_utils=("test_schema", "test_faketensor"))


def test_values_match_references():
    a = _wcma_args()
    assert torch.allclose(wcma_frequency_op(*a), wcma_frequency_ref(*a))
    m = _moe_args()
    assert torch.allclose(moe_experts_op(*m, 2), moe_experts_ref(*m, 2))


class _Stage(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.ParameterList([torch.nn.Parameter(t, requires_grad=False) for t in _wcma_args()[1:]])
        self.m = torch.nn.ParameterList([torch.nn.Parameter(t, requires_grad=False) for t in _moe_args()[1:]])

    def forward(self, x):
        f = wcma_frequency_op(x, *self.w)
        pooled = f.mean(dim=(1, 2))
        return moe_experts_op(pooled, *self.m, 2)


def test_torch_export_keeps_one_node_per_stage():
    mod = _Stage().eval()
    x = torch.randn(3, 7, 7, 16)
    ep = torch.export.export(mod, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("wmoe.wcma_frequency.default") == 1
    assert targets.count("wmoe.moe_experts.default") == 1
    assert torch.allclose(ep.module()(x), mod(x))


def test_torch_compile_fullgraph():
    mod = _Stage().eval()
    x = torch.randn(3, 7, 7, 16)
    compiled = torch.compile(mod, fullgraph=True, backend="eager")  # graph capture only: no C++ build in CI
    assert torch.allclose(compiled(x), mod(x))


def test_kernel_bench_dry_run(capsys):
    from wmoe.bench.bench_kernels import main, moe_floor, wcma_floor
    assert main(["--dry-run", "--batches", "1,32", "--grids", "37"]) == 0
    out = capsys.readouterr().out
    assert "| wcma_frequency | 32 | 37 |" in out and "| wcma_attention | 32 | 37 |" in out
    assert "| moe_experts | 32 |" in out and "not measured" in out
    # each entry is a stage spec's name (the stem of its kernel file and test)
    from wmoe.bench.bench_kernels import STAGES
    from wmoe.kernels.stages import stage_specs
    assert set(STAGES) <= set(stage_specs())
    assert wcma_floor(32, 37)["bytes"] > wcma_floor(1, 37)["bytes"] > 0
    assert moe_floor(1)["bytes"] < moe_floor(32)["bytes"]  # batch 1 touches only 2 experts


def test_every_stage_spec_matches_its_kernel():
    """The stage registry (kernels/stages.py) is data; each KernelSpec names its @triton.jit function, which is
    imported and checked against the spec (arguments in order, then exactly the constexprs) on first use."""
    import dataclasses

    from wmoe.kernels.stages import stage_specs
    stages = stage_specs()
    assert list(stages) == ["wcma_frequency", "wcma_attention", "moe_experts"]
    for stage in stages.values():
        for k in stage.kernels:
            assert k.fn.arg_names[:len(k.args)] == [a.name for a in k.args], k.name
    router = stages["moe_experts"].kernel("moe_router")
    wrong = dataclasses.replace(router, name="router_on_the_combine_kernel", impl="moe_experts_triton:_combine_kernel")
    with pytest.raises(ValueError, match="do not match the parameters"):
        wrong.fn
    with pytest.raises(ValueError, match="is not '<module>:<function>'"):
        dataclasses.replace(router, impl="moe_experts_triton._router_kernel")
