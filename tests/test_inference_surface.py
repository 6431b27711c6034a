"""One inference surface: every backend behind one protocol in one registry, one result type, one verdict rule and
one NaN policy (issue 22, item 1). The torch path and the exported path give the same verdicts and faults."""
from __future__ import annotations

import inspect
import io
import re
import sys
import textwrap
import tokenize
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import wmoe
from wmoe.contract import VERDICTS, Decision, ModelMeta
from wmoe.runtime import Result, Runtime, registry

ROOT = Path(wmoe.__file__).resolve().parent.parent


def test_every_registered_backend_implements_the_protocol():
    """The registry lists each backend once; each module loads here (its library is imported only when a model is
    opened) and its class has the protocol's ``run`` / ``close``, takes the path first and the common options it
    declares, and sets ``meta`` (a ModelMeta) in its constructor."""
    names = [b.name for b in registry.BACKENDS]
    assert len(set(names)) == len(names) and {"onnxruntime", "openvino", "tensorrt", "torch"} <= set(names)
    for spec in registry.BACKENDS:
        cls = spec.load()
        for method in ("run", "close"):
            assert callable(getattr(cls, method, None)), f"{spec.target} lacks {method}()"
        params = inspect.signature(cls.__init__).parameters
        assert list(params)[1] in ("path", "model"), f"{spec.target}: the model file comes first"
        for opt in spec.takes:
            assert opt in params, f"{spec.target} does not take {opt}= (its registry entry says it does)"
        assert "self.meta" in inspect.getsource(cls), f"{spec.target} never sets meta"
        assert set(spec.takes) <= set(registry.COMMON_OPTIONS)


def _sources(*globs: str) -> dict:
    files = [p for g in (globs or ("wmoe/**/*.py", "bench/*.py", "export/*.py")) for p in ROOT.glob(g)]
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in files}


def _code(src: str) -> str:
    """The code of a module without its strings and comments (docs may state the rule), one space between tokens."""
    toks = tokenize.generate_tokens(io.StringIO(src).readline)
    return " ".join(t.string for t in toks if t.type not in (tokenize.STRING, tokenize.COMMENT, tokenize.NL,
                                                            tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT))


#: Modules that wrap a live torch model (not a file) in the torch backend: they name the one backend they use.
TORCH_FRONTS = {"wmoe/detector.py", "wmoe/evaluation/evaluate.py", "bench/backends.py"}


def test_adding_a_backend_touches_two_files():
    """Which backend runs which file is decided in the registry only: no module of the inference path (wmoe/,
    bench/) imports an exported-model backend class or branches on a model file's suffix, so a new backend is its
    module plus one registry line. (The torch backend is also built around live models by the torch fronts.)"""
    mods = {spec.target.split(":")[0] for spec in registry.BACKENDS}
    allowed = {"wmoe/runtime/registry.py"} | {m.replace(".", "/") + ".py" for m in mods}
    suffix = re.compile(r"""(==|\bin|=)\s*\(?\s*["']\.(onnx|engine|plan|safetensors)["']""")
    bad = []
    for name, src in _sources("wmoe/**/*.py", "bench/*.py").items():
        # decision carriers; weights files
        if name in allowed or name in ("wmoe/contract.py", "wmoe/model/backbone.py"):
            continue
        for spec in registry.BACKENDS:
            cls = spec.target.split(":")[1]
            if re.search(rf"import[^\n]*\b{cls}\b", src) and not (spec.name == "torch" and name in TORCH_FRONTS):
                bad.append(f"{name} imports {cls} (open models with wmoe.runtime.registry.open_backend / Runtime.open)")
        bad += [f"{name} branches on the model suffix .{m.group(2)} (ask wmoe.runtime.registry)"
                for m in suffix.finditer(src)]
    assert not bad, "\n".join(bad)


def test_a_new_backend_is_one_module_plus_one_registry_line(tmp_path, monkeypatch):
    """The claim, executed: a backend module written here plus one BackendSpec is enough for Runtime.open, the
    providers the CLIs offer, and the one verdict rule with its NaN policy."""
    (tmp_path / "echo_backend.py").write_text(textwrap.dedent('''
        import numpy as np
        from wmoe.contract import Decision, ModelMeta

        class EchoBackend:
            def __init__(self, path, provider="echo", threads=0):
                self.meta = ModelMeta(image_size=8, decision=Decision(threshold=0.5))
            def run(self, x):
                s = x.reshape(len(x), -1).mean(1).astype(np.float32)
                s = np.where(s < 0, np.float32("nan"), s)  # a broken output for a negative input
                return {"scores": s, "maps": np.repeat(s, 64).reshape(-1, 8, 8), "text_scores": s}
            def close(self):
                pass
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = registry.BackendSpec("echo", "echo_backend:EchoBackend", (".echo",), ("echo",), ("provider", "threads"))
    monkeypatch.setattr(registry, "BACKENDS", (*registry.BACKENDS, spec))
    model = tmp_path / "m.echo"
    model.write_bytes(b"")
    assert ".echo" in registry.suffixes() and registry.providers(".echo") == ("echo",)
    with Runtime.open(model, provider="echo") as rt:
        assert isinstance(rt.backend, registry.Backend) and registry.backend_name(rt.backend) == "echo"
        x = np.stack([np.full((3, 8, 8), v, np.float32) for v in (0.2, 0.9, -1.0)])
        res = rt.score_preprocessed(x)
        assert isinstance(res, Result) and res.verdicts == ["normal", "anomalous", "undecided"]
        assert res.faults[:2] == ["", ""] and res.faults[2].startswith("non-finite score and text score and map")
    # the bench measures a registry backend that serves ONNX files without a line of its own
    from wmoe.bench.backend_names import runtime_backends
    monkeypatch.setattr(registry, "BACKENDS", (*registry.BACKENDS, replace(spec, suffixes=(".onnx",))))
    assert runtime_backends() == ("runtime-echo",)


def test_one_verdict_rule_one_vocabulary():
    d = Decision(threshold=1.0, class_thresholds={"pcb": 2.0})
    assert [d.verdict(s) for s in (0.5, 1.0, float("nan"), float("inf"))] == \
        ["normal", "anomalous", "undecided", "undecided"]
    assert d.verdicts([1.5, 1.5], ["pcb", None]) == ["normal", "anomalous"]
    assert Decision().verdict(5.0) == "undecided"  # no threshold: never a guess
    verdicts, faults = d.judge(np.array([3.0, 0.0], np.float32), [np.zeros((2, 2)), np.full((2, 2), np.nan)])
    assert verdicts == ["anomalous", "undecided"] and faults == ["", faults[1]] and "non-finite map" in faults[1]
    from wmoe.contract import count_verdicts, verdict_label
    assert count_verdicts(verdicts) == {"anomalous": 1, "normal": 0, "undecided": 1}
    assert [verdict_label(v) for v in VERDICTS] == ["ANOMALOUS", "NORMAL", "UNDECIDED"]
    from wmoe.overlay import decision_text
    assert [decision_text(s, 1.0)[0].split()[0] for s in (2.0, 0.5, float("nan"))] == \
        ["ANOMALOUS", "NORMAL", "UNDECIDED"]
    # no module writes the rule again: score >= threshold is compared in the contract only
    rule = re.compile(r"\b(score|scores|s|v) >= (thr|threshold|t)\b")
    bad = [n for n, src in _sources().items() if n != "wmoe/contract.py" and rule.search(_code(src))]
    assert not bad, f"the verdict rule written again in {bad}"


def test_torch_and_exported_paths_agree_on_verdicts_and_faults(tiny_onnx):
    """A checkpoint opened by the runtime (torch backend), the Detector and the exported ONNX give the same
    result type, the same scores and the same verdicts at the same decision; a NaN output is the same fault,
    undecided, in both."""
    ckpt, onnx_path = tiny_onnx
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for _ in range(4)]
    with Runtime.open(onnx_path) as ort_rt, Runtime.open(ckpt, provider="cpu") as torch_rt:
        assert registry.backend_name(torch_rt.backend) == "torch" and "torch" not in type(ort_rt.backend).__module__
        a = ort_rt.score(frames)
        thr = float(np.median(a.scores))  # a threshold in the middle: both verdicts occur
        a = Runtime(ort_rt.backend, threshold=thr).score(frames)
        b = Runtime(torch_rt.backend, threshold=thr).score(frames)
    from wmoe.detector import DetectionResult, Detector
    c = Detector.from_checkpoint(ckpt, device="cpu", threshold=thr)(frames)
    assert isinstance(b, Result) and isinstance(c, Result) and isinstance(c, DetectionResult)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    np.testing.assert_allclose(b.scores, c.scores, atol=1e-4)
    assert a.verdicts == b.verdicts == c.verdicts and set(a.verdicts) == {"normal", "anomalous"}
    assert a.faults == b.faults == c.faults == [""] * 4
    # the NaN policy: the same outputs with one NaN map are judged alike on every path
    out = {"scores": a.scores.copy(), "maps": a.maps.copy(), "text_scores": a.text_scores.copy()}
    out["maps"][1, 0, 0] = np.nan

    class Canned:
        meta = ModelMeta(image_size=a.maps.shape[-1], decision=Decision(threshold=thr))

        def run(self, x):
            return out

        def close(self):
            pass

    r = Runtime(Canned()).score_preprocessed(np.zeros((4, 3, 2, 2), np.float32))
    d = DetectionResult(out["scores"], out["text_scores"], list(out["maps"]), decision=Decision(threshold=thr))
    assert r.verdicts == d.verdicts and r.verdicts[1] == "undecided" and r.faults == d.faults and r.faults[1]


def test_runtime_still_imports_no_torch():
    import subprocess
    code = ("import sys\nimport wmoe.runtime, wmoe.runtime.registry, wmoe.runtime.camera\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_eval_counts_undecided_images_and_measures_the_rest(tmp_path):
    """wmoe eval under the one NaN policy: an image whose output is NaN is undecided — counted, listed in
    scores.csv with its verdict, left out of the metrics — and the evaluation goes on (it raised before)."""
    import torch

    from wmoe.model.config import ModelConfig
    from wmoe.data import make_demo_dataset
    from wmoe.evaluation.evaluate import evaluate
    from wmoe.model.wmoe_clip import WMoECLIP

    class FirstOfBatchOverflows(WMoECLIP):  # the real model; the first image of every batch overflows
        def forward(self, x):
            out = super().forward(x)
            out.scores[0] = float("nan")
            return out

    torch.manual_seed(0)
    model = FirstOfBatchOverflows(ModelConfig.tiny(image_size=112))
    data = make_demo_dataset(tmp_path / "data", image_size=32, n_test_good=3, n_test_defect=3, categories=["brick"])
    with pytest.warns(RuntimeWarning, match=r"2 image\(s\) undecided \(NaN/inf model output\), left out"):
        table = evaluate(model, data, batch_size=3, out_dir=tmp_path / "eval", progress=False, pro=False)
    assert table.extra["undecided"] == 2 and table.extra["n_images"] == 4
    rows = (tmp_path / "eval" / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and sum(r.endswith(",undecided") for r in rows) == 2
