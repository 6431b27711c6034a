"""Engine parity on a device without ONNX Runtime GPU (Jetson): reference inputs and outputs saved on the host.

On the host, :func:`save_reference` runs the portable ONNX with ONNX Runtime (CPU) on seeded inputs and writes
``inputs.json`` / ``outputs.json`` in Polygraphy's JSON format, so on the device::

    polygraphy run model.engine --trt --load-inputs inputs.json --load-outputs outputs.json --atol 1e-3 --rtol 1e-3

compares the engine against them (Polygraphy is pure Python: ``pip install polygraphy``). :func:`load_arrays` and
:func:`compare` read the same files without Polygraphy (``np.load(allow_pickle=False)``: nothing is unpickled).
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from wmoe.atomic import atomic_write_text

from wmoe.contract import INPUT_FRAMES, INPUT_IMAGES, ModelMeta, read_onnx_contract

from wmoe.errors import ExportError

RUNNER = "wmoe-onnxruntime-cpu"


def _enc(a: np.ndarray) -> Dict:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), "polygraphy_class": "ndarray"}


def _dec(d: Dict) -> np.ndarray:
    if d.get("polygraphy_class") == "LazyArray":
        return _dec(d["values"])
    return np.load(io.BytesIO(base64.b64decode(d["array"].encode(), validate=True)), allow_pickle=False)


def reference_inputs(meta: ModelMeta, batch: int, seed: int) -> Dict[str, np.ndarray]:
    """Seeded inputs matching the exported input (``images`` normalized float32 or ``frames`` uint8)."""
    rng = np.random.default_rng(seed)
    s = meta.image_size
    if meta.input == INPUT_FRAMES:
        h, w = meta.frame_size
        return {INPUT_FRAMES: rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)}
    return {INPUT_IMAGES: rng.standard_normal((batch, 3, s, s)).astype(np.float32)}


def save_reference(onnx_path: Union[str, Path], out_dir: Union[str, Path], batch: int = 1, seed: int = 0
                   ) -> Tuple[Path, Path]:
    """Run the portable model on the host and write ``inputs.json`` and ``outputs.json`` (atomically)."""
    from wmoe.runtime.session import make_session

    meta = read_onnx_contract(onnx_path)
    if meta.flavor != "portable":
        raise ExportError(f"{onnx_path}: reference outputs come from the portable flavor (this is "
                          f"{meta.flavor}; ONNX Runtime cannot run the plugin nodes)")
    feeds = reference_inputs(meta, batch, seed)
    sess = make_session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, feeds)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs_path, outputs_path = out_dir / "inputs.json", out_dir / "outputs.json"
    atomic_write_text(inputs_path, json.dumps([{k: _enc(v) for k, v in feeds.items()}]))
    it = {"outputs": {k: {"values": _enc(v), "polygraphy_class": "LazyArray"} for k, v in outs.items()},
          "runtime": 0.0, "runner_name": RUNNER, "polygraphy_class": "IterationResult"}
    atomic_write_text(outputs_path, json.dumps({"lst": [[RUNNER, [it]]], "polygraphy_class": "RunResults"}))
    return inputs_path, outputs_path


def load_arrays(path: Union[str, Path]) -> List[Dict[str, np.ndarray]]:
    """Per-iteration ``{name: array}`` from an inputs.json or outputs.json written above (or by Polygraphy)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("polygraphy_class") == "RunResults":
            return [{k: _dec(v) for k, v in it["outputs"].items()} for it in data["lst"][0][1]]
        return [{k: _dec(v) for k, v in feed.items()} for feed in data]
    except FileNotFoundError as e:
        raise ExportError(f"{path}: no such reference file") from e
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise ExportError(f"{path}: not a reference inputs/outputs file ({type(e).__name__}: {e})") from e


def compare(reference: Dict[str, np.ndarray], got: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Max |diff| per output (fp32 arithmetic); a missing output or a shape mismatch is an error."""
    diffs = {}
    for name, ref in reference.items():
        if name not in got:
            raise ExportError(f"output {name!r} missing (got {sorted(got)})")
        if got[name].shape != ref.shape:
            raise ExportError(f"output {name!r}: shape {got[name].shape} != reference {ref.shape}")
        diffs[name] = float(np.abs(got[name].astype(np.float32) - ref.astype(np.float32)).max())
    return diffs
