"""The stage registry (kernels/stages.py) is the one record of a fused stage, and docs/kernels.md's claim holds: a
new stage touches 4 files, because every module that serves the stages (entry points, custom ops, AOT compiler,
TensorRT plugins, the plugin ONNX flavor) loops over the records instead of naming a stage."""
import ast
import re
from pathlib import Path

import pytest

from wmoe.kernels.spec import load
from wmoe.kernels.stages import plugin_stages, stage_specs

ROOT = Path(__file__).resolve().parents[1]
# the modules that serve every stage: none may name one
GENERIC = ["kernels/ops.py", "kernels/aot.py", "export/trt_plugins.py", "export/plugin_graph.py"]


def _names(stage):
    names = {stage.name, *(k.name for k in stage.kernels), *(k.impl.split(":")[1] for k in stage.kernels)}
    if stage.plugin is not None:
        names.add(stage.plugin.op)
    return names


def _code_strings(path: Path):
    """Every string constant and identifier of a module's code (docstrings and comments excluded)."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.value
        elif isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.asname or node.name


def test_the_registry():
    """What the registry holds today (update with a new stage): the record names every part of its stage."""
    stages = stage_specs()
    assert list(stages) == ["wcma_frequency", "wcma_attention", "moe_experts"]
    assert sorted(plugin_stages()) == ["WmoeMoeRouter", "WmoeWcmaFrequency"]
    for name, s in stages.items():
        assert s.launcher == f"{name}_triton:{name}_triton", name  # the file stem = the stage = the launcher
        assert (ROOT / "kernels" / f"{name}_triton.py").is_file()
        assert (ROOT / "tests" / f"test_kernels_{name}.py").is_file()
        assert s.reference and (ROOT / "kernels" / f"{s.reference.split(':')[0]}.py").is_file()
        for k in s.kernels:
            assert k.impl.split(":")[0] == f"{name}_triton" or any(k in o.kernels for o in stages.values()
                                                                    if o is not s)
        if s.op is not None:
            assert callable(load(s.op.fake))
        if s.plugin is not None:
            assert s.plugin.kernel in {k.name for k in s.kernels}
            assert callable(load(s.plugin.translation)) and callable(load(s.plugin.reference))


@pytest.mark.parametrize("module", GENERIC)
def test_generic_modules_name_no_stage(module):
    """The op and plugin modules loop over the records: no stage, kernel or plugin name in their code."""
    names = set().union(*(_names(s) for s in stage_specs().values()))
    hits = {s for s in _code_strings(ROOT / module) for n in names if n in s}
    assert hits == set(), f"{module} names stages: {sorted(hits)}"


def test_every_stage_is_an_entry_point_op_and_plugin():
    import torch

    from wmoe import kernels
    from wmoe.export.plugin_graph import REFERENCE_OPS, translation_table
    from wmoe.export.trt_plugins import PLUGINS
    from wmoe.kernels import dispatch, ops
    for name, s in stage_specs().items():
        assert name in dispatch.__all__ and callable(getattr(kernels, name))
        assert (name in ops.OPS) == (s.op is not None)
        if s.op is not None:
            assert hasattr(torch.ops.wmoe, name)
    assert set(PLUGINS) == set(plugin_stages()) == {op.__name__ for op in REFERENCE_OPS}
    assert {f"wmoe.{s.name}" for s in plugin_stages().values()} == {
        str(k).removesuffix(".default") for k in translation_table()}


def test_run_stage_follows_the_record():
    """``run_stage`` (any stage, no written-out entry point needed): the reference on the CPU, the trace reference
    while tracing, the custom op with the caller's choice (the fp32 setting is passed, not dropped)."""
    import torch

    from wmoe.kernels import KernelChoice, run_stage
    from wmoe.kernels.moe_ref import moe_experts_ref
    r = torch.randn
    args = (r(3, 16), r(4, 16), r(4), r(4, 16, 8), r(4, 8), r(4, 8, 16), r(4, 16), 2)
    ref = moe_experts_ref(*args)
    assert torch.allclose(run_stage("moe_experts", *args, kernels="reference"), ref)
    assert torch.allclose(run_stage("moe_experts", *args, kernels=KernelChoice("reference", as_ops=True)), ref)
    with pytest.raises(ValueError, match="no fused stage 'nope'"):
        run_stage("nope", *args)
    seen = []
    mod = torch.nn.Module()
    mod.forward = lambda x: run_stage("moe_experts", x, *args[1:], kernels=KernelChoice("triton", fp32="tf32",
                                                                                      as_ops=True))
    gm = torch.export.export(mod, (args[0],))
    for n in gm.graph.nodes:
        if n.op == "call_function" and str(n.target) == "wmoe.moe_experts.default":
            seen.append(n.args[-2:])
    assert seen == [("triton", "tf32")]


def test_docs_list_the_four_files():
    """docs/kernels.md "How to add a kernel": the numbered files are the four a record names (its Triton file, the
    registry, its reference, its test), and every stage of the registry is in the docs' stage table."""
    text = (ROOT / "docs" / "kernels.md").read_text()
    section = text.split("## How to add a kernel", 1)[1].split("\n## ", 1)[0]
    steps = re.findall(r"^\d+\. `([^`]+)`", section, flags=re.M)
    assert steps == ["kernels/<stage>_triton.py", "kernels/stages.py", "kernels/<stage>_ref.py",
                     "tests/test_kernels_<stage>.py"], steps
    assert re.search(r"\bfour files\b", section, flags=re.I)
    table = text.split("\n\n", 2)[1]
    for name in stage_specs():
        assert f"`{name}`" in table, name
