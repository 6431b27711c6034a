"""The main job (``wmoe demo``): demo data -> training -> calibration -> evaluation -> predictions -> normal-reference
mode -> report.md.

Trains on the demo set's auxiliary categories (their test split, as the peers train on an auxiliary set) and
evaluates on categories the model never saw. With ``--pretrained`` the real ViT-L-14-336 backbone is used; without
it, the tiny random-init backbone, so the job runs anywhere in about a minute on a CPU. The numbers of the tiny
backbone say the pipeline works end to end, not how good WMoE-CLIP is.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .atomic import atomic_write_text
from .model.config import ModelConfig


@dataclass
class DemoConfig:
    out: str = "demo_out"
    pretrained: Optional[str] = None
    epochs: int = 60        # 60 epochs at lr 1e-3: the tiny head learns the training categories (issue 20, ~40 s)
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    data_size: int = 256
    image_size: int = 224  # tiny backbone; the full backbone uses 336 (multiple of 14)
    n_test_good: int = 8
    n_test_defect: int = 12
    n_predict: int = 6
    n_train_good: int = 32  # good images per category: the normal-reference section uses k = 1, 4, 16 and all
    device: Optional[str] = None
    max_steps: Optional[int] = None
    false_reject_rate: float = 0.05  # the calibration target: 5 % of good parts rejected at most
    n_calib_good: int = 39           # good images per class to calibrate on (>= 1/rate - 1 = 19)
    n_holdout_good: int = 40         # other good images per class, to measure the false-reject rate reached


def run_demo(cfg: DemoConfig) -> Dict[str, object]:
    """Data -> training -> calibration on good images -> zero-shot evaluation, learning check on fresh images
    of the training categories (trained vs untrained head), false-reject rate on held-out good images ->
    predictions -> ``report.md`` with the decision plots."""
    from .evaluation.calibrate import calibrate, calibration_images, score_images
    from .evaluation.calibration import CalibrationConfig
    from .model.checkpoint import save_checkpoint
    from .data import DEMO_TEST_CLASSES, DEMO_TRAIN_CLASSES, make_demo_dataset
    from .evaluation.evaluate import evaluate
    from .model.wmoe_clip import WMoECLIP
    from .predict import predict
    from .evaluation.report import write_report
    from .training.train import TrainConfig, _seed_all, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    times: Dict[str, float] = {}
    t = time.time()
    print(f"[1/7] demo data -> {out / 'data'}, fresh images (seed {cfg.seed + 1}) -> {out / 'fresh'}, "
          f"good parts to calibrate on (seed {cfg.seed + 2}) -> {out / 'good'}")
    root = make_demo_dataset(out / "data", seed=cfg.seed, image_size=cfg.data_size, n_test_good=cfg.n_test_good,
                             n_test_defect=cfg.n_test_defect, n_train_good=cfg.n_train_good)
    # the training categories again, other images: does the head learn what it was trained on?
    fresh = make_demo_dataset(out / "fresh", seed=cfg.seed + 1, image_size=cfg.data_size, n_train_good=0,
                              n_test_good=cfg.n_test_good, n_test_defect=cfg.n_test_defect,
                              categories=DEMO_TRAIN_CLASSES)
    # the line's good parts: train/good to calibrate on, test/good held out to check the false-reject rate
    good = make_demo_dataset(out / "good", seed=cfg.seed + 2, image_size=cfg.data_size,
                             n_train_good=cfg.n_calib_good, n_test_good=cfg.n_holdout_good, n_test_defect=0,
                             categories=DEMO_TEST_CLASSES)
    times["data"] = time.time() - t
    if cfg.pretrained:
        model_cfg = ModelConfig(image_size=336)
    else:
        model_cfg = ModelConfig.tiny(image_size=cfg.image_size)
    t = time.time()
    print(f"[2/7] training {model_cfg.backbone} on {', '.join(DEMO_TRAIN_CLASSES)} ({cfg.epochs} epochs, "
          f"lr {cfg.lr:g})")
    ckpt = train(model_cfg, TrainConfig(str(root), out_dir=str(out / "run"), classes=list(DEMO_TRAIN_CLASSES),
                                        epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                                        device=cfg.device, max_steps=cfg.max_steps,
                                        overwrite=True),  # the demo regenerates everything it owns
                 pretrained=cfg.pretrained)
    # the same model before training (the seed the training started from): the untrained head
    _seed_all(cfg.seed)
    untrained = save_checkpoint(WMoECLIP(model_cfg, pretrained=cfg.pretrained).eval(),
                                out / "untrained.safetensors")
    times["train"] = time.time() - t
    t = time.time()
    print(f"[3/7] calibration on {cfg.n_calib_good} good images per class of {', '.join(DEMO_TEST_CLASSES)} "
          f"(target false-reject rate {cfg.false_reject_rate:g})")
    decision, _ = calibrate(ckpt, good, CalibrationConfig(false_reject_rate=cfg.false_reject_rate), split="train",
                            device=cfg.device, pretrained=cfg.pretrained, progress=False)
    # the false-reject rate those thresholds give on good images they never saw
    held, _ = score_images(ckpt, calibration_images(good, split="test"), device=cfg.device,
                           pretrained=cfg.pretrained, progress=False)
    verdicts = decision.verdicts(held.scores, held.classes)
    holdout = {"n": len(verdicts), "rejected": verdicts.count("anomalous"), "per_class": {
        c: {"n": sum(1 for x in held.classes if x == c),
            "rejected": sum(1 for x, v in zip(held.classes, verdicts) if x == c and v == "anomalous")}
        for c in sorted(set(held.classes))}}
    print(f"      held-out good images rejected: {holdout['rejected']} of {holdout['n']} "
          f"({100 * holdout['rejected'] / holdout['n']:.1f}%, target {100 * cfg.false_reject_rate:g}%)")
    times["calibrate"] = time.time() - t
    t = time.time()
    print(f"[4/7] zero-shot evaluation on {', '.join(DEMO_TEST_CLASSES)}; trained vs untrained head on fresh "
          f"images of {', '.join(DEMO_TRAIN_CLASSES)}")
    table = evaluate(ckpt, root, classes=list(DEMO_TEST_CLASSES), out_dir=out / "eval", pretrained=cfg.pretrained,
                     device=cfg.device, progress=False)
    learning = {
        "zero_shot_trained": table,
        "fresh_trained": evaluate(ckpt, fresh, out_dir=out / "eval_fresh", pro=False, pretrained=cfg.pretrained,
                                  device=cfg.device, progress=False),
        "fresh_untrained": evaluate(untrained, fresh, pro=False, pretrained=cfg.pretrained, device=cfg.device,
                                    progress=False),
        "zero_shot_untrained": evaluate(untrained, root, classes=list(DEMO_TEST_CLASSES), pro=False,
                                        pretrained=cfg.pretrained, device=cfg.device, progress=False),
    }
    times["eval"] = time.time() - t
    t = time.time()
    print("[5/7] predictions")
    pred: Dict[str, list] = {"results": [], "errors": []}
    for cls in DEMO_TEST_CLASSES:  # each class judged by its own calibrated thresholds
        test = root / cls / "test"
        defects = sorted(p for d in sorted(test.iterdir()) if d.name != "good" for p in sorted(d.glob("*.png")))
        goods = sorted((test / "good").glob("*.png"))
        picks = defects[: max(1, cfg.n_predict // (2 * len(DEMO_TEST_CLASSES)))] + goods[:1]
        # MVTec layout: the ground truth of test/<defect>/<name>.png is ground_truth/<defect>/<name>_mask.png
        gt = {str(p): p.parents[2] / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
              for p in picks if p.parent.name != "good"}
        doc = predict(ckpt, picks, out / "predictions" / cls, pretrained=cfg.pretrained, device=cfg.device,
                      progress=False, masks=gt, class_name=cls)
        for r in doc["results"]:
            r["overlay"] = f"{cls}/{r['overlay']}"
            r["threshold"] = doc["threshold"]
        pred["results"] += doc["results"]
        pred["errors"] += doc["errors"]
    times["predict"] = time.time() - t
    from .model.expert_health import USAGE_FILE
    usage_log = out / "run" / USAGE_FILE
    train_usage = json.loads(usage_log.read_text())["epochs"] if usage_log.is_file() else []
    t = time.time()
    print("[6/7] normal-reference mode on the held-out categories (k = 1, 4, 16, all good images)")
    from .model.checkpoint import load_model
    from .reference.report import reference_section
    ref_lines = reference_section(out, load_model(ckpt, pretrained=cfg.pretrained).eval(), root,
                                  list(DEMO_TEST_CLASSES))
    times["reference"] = time.time() - t
    print("[7/7] report")
    report = write_report(out, table, pred, times, model_cfg, cfg, train_usage=train_usage,
                          extra_sections=ref_lines, decision=decision, holdout=holdout, learning=learning)
    print(table.to_markdown())
    print(f"report: {report}")
    return {"report": str(report), "checkpoint": str(ckpt), "data": str(root), "times": times,
            "mean": json.loads(table.to_json())["mean"], "decision": decision.to_dict(), "holdout": holdout,
            "learning": {k: json.loads(v.to_json())["mean"] for k, v in learning.items()}}
