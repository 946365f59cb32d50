"""Detection accuracy: COCO-style AP from pycocotools (the reference COCO evaluator).

``map50`` is AP at IoU 0.5 and ``map`` is AP averaged over IoU 0.50:0.05:0.95, both with
COCO's 101-point interpolated precision, averaged over classes that have ground truth,
over all box sizes, at most 100 detections per image. ``map50`` is therefore the COCO
evaluator's AP50, not the VOC2007 devkit's 11-point AP (the two differ by about a point
on the same detections). Ground truth marked ``ignore`` (VOC difficult, COCO crowd) is
passed as ``iscrowd=1``: detections matching it count neither as hits nor as misses.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ..errors import SnnconvError

INSTALL_HINT = "detection metrics need pycocotools: pip install 'snnconv[detection]' (or pip install pycocotools)"


def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise SnnconvError(INSTALL_HINT) from err
    return COCO, COCOeval


def _xywh(boxes: torch.Tensor) -> np.ndarray:
    b = boxes.detach().double().cpu().numpy().reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def detection_map(predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                  num_classes: int) -> dict[str, float]:
    """mAP of detections against ground truth, computed by pycocotools' ``COCOeval``.

    Args:
        predictions: one dict per image: ``boxes [n, 4]`` (x1, y1, x2, y2), ``scores [n]``,
            ``labels [n]`` (0..num_classes-1).
        targets: one dict per image (same order): ``boxes [m, 4]``, ``labels [m]``,
            optional ``ignore [m]`` (bool).
        num_classes: C; classes without ground truth do not enter the mean.

    Returns:
        ``{"map50": AP@0.5, "map": AP@[.5:.95]}`` as fractions; 0.0 when there is no
        detection at all (COCOeval reports -1 when no class has ground truth, which is
        an error here).

    Raises:
        SnnconvError: pycocotools is not installed (the install command is given), the
            number of prediction sets differs from the number of images, or there are no
            ground-truth boxes.
    """
    COCO, COCOeval = _require_pycocotools()
    if len(predictions) != len(targets):
        raise SnnconvError(f"{len(predictions)} prediction sets for {len(targets)} images: give one per image")
    images, annotations, detections = [], [], []
    for image_id, (pred, target) in enumerate(zip(predictions, targets), start=1):
        images.append({"id": image_id})
        ignore = target.get("ignore")
        ignore = torch.zeros(len(target["labels"]), dtype=torch.bool) if ignore is None else ignore
        for box, label, crowd in zip(_xywh(target["boxes"]), target["labels"].tolist(), ignore.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": int(bool(crowd))})
        for box, score, label in zip(_xywh(pred["boxes"]), pred["scores"].tolist(), pred["labels"].tolist()):
            detections.append({"image_id": image_id, "category_id": int(label) + 1, "bbox": box.tolist(), "score": float(score)})
    if not any(not a["iscrowd"] for a in annotations):
        raise SnnconvError("no ground-truth boxes to evaluate against: check the dataset split")
    if not detections:
        return {"map50": 0.0, "map": 0.0}
    ground_truth = COCO()
    ground_truth.dataset = {"images": images, "annotations": annotations,
                            "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
        ground_truth.createIndex()
        result = ground_truth.loadRes(detections)
        evaluator = COCOeval(ground_truth, result, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50 = float(evaluator.stats[0]), float(evaluator.stats[1])
    return {"map50": max(ap50, 0.0), "map": max(ap, 0.0)}
