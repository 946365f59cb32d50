"""Object detection: exact conversion of a detector, boxes/NMS, the metric on a hand-computed
case, VOC/COCO/MNIST-detection loaders on generated files, training resume, evaluation, CLI."""
from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from snnconv import SnnconvError, convert, create_model, running_average
from snnconv.cli import main
from snnconv.detection import (
    batched_nms,
    box_iou,
    decode,
    load_detection_dataset,
    postprocess,
)
from snnconv.detection.loss import assign_cells, detection_loss
from snnconv.detection.mnist_boxes import scatter_digits

from helpers import randomize_batchnorm, spread_thresholds


def make_detector(activation: str, backbone: str = "vgg", seed: int = 0, size: int = 32, batch: int = 3):
    """A small float64 detector with random BN statistics and data-spread lambdas, and its input."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model("yolo_detector", num_classes=3, in_channels=1, activation=activation, levels=4, backbone=backbone, width=4).eval()
    randomize_batchnorm(model, g)
    model = model.double()
    x = torch.rand(batch, 1, size, size, generator=g, dtype=torch.float64)
    return spread_thresholds(model, x), x


# --- exactness: the SNN's raw head output equals the ANN's -------------------------------

@pytest.mark.parametrize("backbone", ["vgg", "resnet"])
def test_gn_detector_gives_the_ann_head_output_at_T1(backbone):
    model, x = make_detector("qcfs", backbone)
    ann = model(x)
    out = convert(model, "gn", group_size=4)(x, 1)
    assert out.shape == (1, 3, 8, 4, 4) and ann.shape == (3, 8, 4, 4)
    assert torch.allclose(out[0], ann, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backbone", ["vgg", "resnet"])
def test_cif_wake_sleep_detector_reproduces_the_ann_head_output(backbone):
    model, x = make_detector("clipfloor", backbone, seed=1)
    ann = model(x)
    levels, sleep = 4, 16
    readout = running_average(convert(model, "cif")(x, levels, sleep_steps=sleep), wake_steps=levels)
    assert torch.allclose(readout[-1], ann, rtol=0, atol=1e-10)
    assert (readout[levels - 1] - ann).abs().max() > 1e-3  # the sleep phase is what closes the gap


def test_detector_arguments_are_checked():
    with pytest.raises(SnnconvError, match="unknown backbone 'vit': choose one of"):
        create_model("yolo_detector", backbone="vit")
    with pytest.raises(SnnconvError, match="num_classes must be an integer >= 1, got 0"):
        create_model("yolo_detector", num_classes=0)


# --- boxes, decoding, NMS, assignment ------------------------------------------------

def _greedy_nms_reference(boxes, scores, labels, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        if all(labels[i] != labels[k] or float(box_iou(boxes[i : i + 1], boxes[k : k + 1])) <= threshold for k in kept):
            kept.append(i)
    return sorted(kept)


def test_batched_nms_matches_sequential_greedy_nms():
    g = torch.Generator().manual_seed(0)
    batch, n = 5, 40
    xy = torch.rand(batch, n, 2, generator=g) * 40
    wh = torch.rand(batch, n, 2, generator=g) * 20 + 2
    boxes = torch.cat([xy, xy + wh], -1)
    scores = torch.rand(batch, n, generator=g)
    labels = torch.randint(0, 3, (batch, n), generator=g)
    valid = scores > 0.2
    keep = batched_nms(boxes, scores, labels, valid, 0.4)
    for b in range(batch):
        idx = valid[b].nonzero().squeeze(1).tolist()
        expected = _greedy_nms_reference(boxes[b, idx], scores[b, idx], labels[b, idx].tolist(), 0.4)
        assert keep[b].nonzero().squeeze(1).tolist() == [idx[i] for i in expected]


def test_decode_and_postprocess_recover_a_known_box():
    stride, classes = 8, 3
    raw = torch.full((1, 5 + classes, 4, 4), -10.0)
    # One object: centre (1 + 0.5, 2 + 0.5) cells, 16 x 8 pixels, class 2.
    raw[0, 0:2, 2, 1] = 0.0  # sigmoid(0) = 0.5
    raw[0, 2, 2, 1] = float(np.log(2.0))
    raw[0, 3, 2, 1] = 0.0
    raw[0, 4, 2, 1] = 10.0
    raw[0, 7, 2, 1] = 10.0
    boxes, scores, labels = decode(raw, stride)
    cell = 2 * 4 + 1
    assert torch.allclose(boxes[0, cell], torch.tensor([4.0, 16.0, 20.0, 24.0]), atol=1e-5)
    assert labels[0, cell] == 2 and scores[0, cell] > 0.99
    (found,) = postprocess(raw, stride, score_threshold=0.5)
    assert found["boxes"].shape == (1, 4) and found["labels"].tolist() == [2]


def test_assignment_centre_cell_smaller_object_wins_ignored_never_assigned():
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 12.0, 12.0], [16.0, 16.0, 32.0, 32.0], [0.0, 16.0, 16.0, 32.0]]])
    labels = torch.tensor([[0, 1, 2, -1]])
    ignore = torch.tensor([[False, False, True, False]])
    owner = assign_cells(boxes, labels, ignore, (4, 4), 8)
    assert owner[0, 1, 1] == 1  # both centres in cell (1, 1): the smaller box
    assert (owner >= 0).sum() == 1  # the ignored box and the padding are not assigned


def test_detection_loss_is_finite_and_trains_the_head():
    torch.manual_seed(0)
    model = create_model("yolo_detector", num_classes=3, in_channels=1, width=4, activation="relu")
    x = torch.rand(4, 1, 32, 32)
    boxes = torch.tensor([[[2.0, 3.0, 14.0, 17.0]]]).repeat(4, 1, 1)
    labels = torch.tensor([[1]]).repeat(4, 1)
    ignore = torch.zeros(4, 1, dtype=torch.bool)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss, parts = detection_loss(model(x), boxes, labels, ignore, 8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses)) and set(parts) == {"obj", "cls", "giou", "l1"}
    assert losses[-1] < 0.5 * losses[0]


# --- the metric ---------------------------------------------------------------------

def test_map_matches_a_hand_computed_case():
    pytest.importorskip("pycocotools")
    from snnconv.detection.metrics import detection_map

    t = lambda *rows: torch.tensor(rows, dtype=torch.float32)  # noqa: E731
    targets = [{"boxes": t([0, 0, 10, 10]), "labels": torch.tensor([0])},
               {"boxes": t([20, 20, 30, 30]), "labels": torch.tensor([0])}]
    predictions = [
        {"boxes": t([0, 0, 10, 10], [40, 40, 50, 50]), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])},
        {"boxes": t([20, 20, 30, 26.25]), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])},  # IoU 0.625
    ]
    result = detection_map(predictions, targets, num_classes=2)
    # Ranked: TP (0.9), FP (0.8), TP (0.7) -> precision 1 up to recall 0.5, then 2/3 to recall 1.
    # COCO interpolates at 101 recall points: 51 points at precision 1, 50 at 2/3.
    ap_high = (51 + 50 * 2 / 3) / 101
    assert result["map50"] == pytest.approx(ap_high, abs=1e-9)
    # Above IoU 0.625 the 0.7 detection misses (IoU thresholds 0.65..0.95, 7 of 10):
    # precision 1 up to recall 0.5, nothing beyond -> 51 / 101.
    assert result["map"] == pytest.approx((3 * ap_high + 7 * 51 / 101) / 10, abs=1e-9)
    # A detection on an ignored (crowd / difficult) box is neither a hit nor a miss: with
    # the second ground truth ignored, the ranking is TP (0.9), FP (0.8) -> AP 1.
    targets[1]["ignore"] = torch.tensor([True])
    assert detection_map(predictions, targets, num_classes=2) == {"map50": pytest.approx(1.0), "map": pytest.approx(1.0)}
    no_detections = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    assert detection_map(no_detections, targets, 2) == {"map50": 0.0, "map": 0.0}


# --- loaders on generated files in the official formats -------------------------------

VOC_XML = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>{id}.jpg</filename>
\t<source><database>The VOC2007 Database</database><annotation>PASCAL VOC2007</annotation></source>
\t<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
\t<segmented>0</segmented>
{objects}</annotation>
"""
VOC_OBJECT = """\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox>
\t</object>
"""


def _write_jpeg(path, width, height, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path, quality=95)


def make_voc(root):
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    images = {"000001": (100, 50, [("dog", 0, (11, 6, 50, 25)), ("person", 1, (60, 10, 90, 40))]),
              "000002": (40, 80, [("tvmonitor", 0, (1, 1, 40, 80))])}
    for i, (image_id, (w, h, objects)) in enumerate(images.items()):
        body = "".join(VOC_OBJECT.format(name=n, difficult=d, box=b) for n, d, b in objects)
        (base / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id, w=w, h=h, objects=body))
        _write_jpeg(base / "JPEGImages" / f"{image_id}.jpg", w, h, i)
    (base / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000002\n")
    return base


def test_voc_loader_reads_the_devkit_layout(tmp_path):
    base = make_voc(tmp_path)
    test = load_detection_dataset("voc2007", "test", tmp_path / "VOCdevkit", size=64)
    assert test.images.shape == (2, 3, 64, 64) and test.num_classes == 20
    # 100 x 50 image -> scale 0.64, 64 x 32, padded 16 rows on top. xmin = 11 (1-based) -> x1 = 10.
    assert torch.allclose(test.boxes[0, 0], torch.tensor([10 * 0.64, 5 * 0.64 + 16, 50 * 0.64, 25 * 0.64 + 16]))
    assert test.labels[0].tolist() == [11, 14] and test.ignore[0].tolist() == [False, True]  # dog; difficult person
    assert test.labels[1].tolist() == [19, -1]  # tvmonitor, padding
    assert torch.allclose(test.boxes[1, 0], torch.tensor([16.0, 0.0, 48.0, 64.0]))  # 40 x 80 -> 32 x 64, 16 px left pad
    assert len(load_detection_dataset("voc2007", "train", tmp_path, size=32)) == 1
    (base / "Annotations" / "000002.xml").write_text("<annotation><object><name>dog</name></object>")
    with pytest.raises(SnnconvError, match=r"cannot parse VOC annotation '.*000002\.xml' \(.*\): the file is missing or corr"):
        load_detection_dataset("voc2007", "test", tmp_path, size=32)
    with pytest.raises(SnnconvError, match="no VOC2007 folder under '.*JPEGImages': pass --data-dir pointing at VOCdevkit"):
        load_detection_dataset("voc2007", "test", tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages")


def test_coco_loader_reads_an_instances_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    _write_jpeg(tmp_path / "val2017" / "000000000139.jpg", 64, 32)
    _write_jpeg(tmp_path / "val2017" / "000000000285.jpg", 32, 32, 1)
    instances = {
        "info": {"description": "COCO 2017 Dataset"}, "licenses": [],
        "images": [{"id": 139, "file_name": "000000000139.jpg", "width": 64, "height": 32},
                   {"id": 285, "file_name": "000000000285.jpg", "width": 32, "height": 32}],
        "annotations": [
            {"id": 1, "image_id": 139, "category_id": 18, "bbox": [4.0, 2.0, 20.0, 10.0], "area": 200.0, "iscrowd": 0, "segmentation": []},
            {"id": 2, "image_id": 139, "category_id": 1, "bbox": [30.0, 0.0, 30.0, 30.0], "area": 900.0, "iscrowd": 1,
             "segmentation": {"counts": [0], "size": [32, 64]}},
        ],
        "categories": [{"id": 18, "name": "dog", "supercategory": "animal"}, {"id": 1, "name": "person", "supercategory": "person"}],
    }
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    data = load_detection_dataset("coco2017", "test", tmp_path, size=64)
    assert data.class_names == ["person", "dog"] and data.info["category_ids"] == [1, 18]
    # 64 x 32 -> scale 1, 16 rows of padding on top.
    assert torch.allclose(data.boxes[0, :2], torch.tensor([[4.0, 18.0, 24.0, 28.0], [30.0, 16.0, 60.0, 46.0]]))
    assert data.labels[0].tolist() == [1, 0] and data.ignore[0].tolist() == [False, True]
    assert data.labels[1].tolist() == [-1, -1]  # an image without objects still counts
    with pytest.raises(SnnconvError, match=r"missing '.*instances_train2017\.json': pass --data-dir pointing at the COCO folder"):
        load_detection_dataset("coco2017", "train", tmp_path)


def write_fake_mnist(folder, count=64, seed=0):
    """Official idx .gz files holding crude 'digits': a bright rectangle whose shape depends on the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.uint8)
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 4 : 8 + 2 * label, 6:22] = 255
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split in (("train", "train"), ("t10k", "test")):
        with gzip.open(raw / f"{split[0]}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
        with gzip.open(raw / f"{split[0]}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, count) + labels.tobytes())
    return folder


def test_mnist_detection_is_deterministic_and_well_formed(tmp_path):
    folder = write_fake_mnist(tmp_path / "MNIST")
    a = load_detection_dataset("mnist_detection", "train", folder, train_count=40, size=64)
    b = load_detection_dataset("mnist_detection", "train", folder, train_count=40, size=64)
    c = load_detection_dataset("mnist_detection", "train", folder, train_count=40, size=64, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    present = a.labels >= 0
    assert present.any(1).all() and (present.sum(1) <= 3).all()
    boxes = a.boxes[present]
    assert (boxes >= 0).all() and (boxes <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    for i in range(len(a)):  # every box holds ink, and no two centres share a grid cell
        cells = set()
        for box in a.boxes[i][a.labels[i] >= 0].long().tolist():
            assert a.images[i, 0, box[1] : box[3], box[0] : box[2]].max() > 64
            cells.add(((box[0] + box[2]) / 2 // 8, (box[1] + box[3]) / 2 // 8))
        assert len(cells) == int(present[i].sum())
    with pytest.raises(SnnconvError, match=r"canvas size must be a multiple of 16 \(the detector pools 4 times\), got 40"):
        load_detection_dataset("mnist_detection", "test", folder, size=40)
    with pytest.raises(SnnconvError, match="dataset 'mnist_detection' needs --data-dir: the folder with the MNIST idx"):
        load_detection_dataset("mnist_detection", "test")


def test_scatter_digits_boxes_follow_the_ink():
    digit = np.zeros((1, 28, 28), dtype=np.uint8)
    digit[0, 10:18, 12:16] = 255
    data = scatter_digits(digit, np.array([7]), count=3, size=32, max_objects=1, min_scale=28, max_scale=28, seed=3)
    for i in range(3):
        x1, y1, x2, y2 = data.boxes[i, 0].tolist()
        assert (x2 - x1, y2 - y1) == (4.0, 8.0) and data.labels[i, 0] == 7


# --- training, resume, evaluation, CLI --------------------------------------------------

TINY = {"train_count": 48, "test_count": 16, "size": 32, "min_scale": 10, "max_scale": 16, "max_objects": 2}


def _config(**changes):
    from snnconv.detection.train import DetectTrainConfig

    base = dict(dataset_args=dict(TINY), activation="qcfs", width=4, epochs=2, batch_size=16, lr=5e-3)
    base.update(changes)
    return DetectTrainConfig(**base)


def test_training_resumes_to_the_same_weights(tmp_path):
    from snnconv.checkpoint import load_checkpoint
    from snnconv.detection.train import train_detector

    data = write_fake_mnist(tmp_path / "MNIST")
    straight, meta = train_detector(_config(), tmp_path / "a", data, progress=False, log=lambda m: None)

    def stop_after_first(message):  # interrupt right after epoch 1's checkpoint
        if message.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(_config(), tmp_path / "b", data, progress=False, log=stop_after_first)
    resumed, resumed_meta = train_detector(_config(), tmp_path / "b", data, progress=False, log=lambda m: None)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert meta["task"] == "detection" and 0 <= meta["ann_map50"] <= 1 and resumed_meta["epochs_done"] == 2
    with pytest.raises(SnnconvError, match=r"different training configuration \(epochs: 2 in the checkpoint, 3 now\)"):
        train_detector(_config(epochs=3), tmp_path / "b", data, progress=False, log=lambda m: None)
    rebuilt, _ = load_checkpoint(tmp_path / "a" / "checkpoint.safetensors")
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(rebuilt(x), straight(x))


def test_run_detection_method_reports_map_per_step(tmp_path):
    pytest.importorskip("pycocotools")
    from snnconv.experiments import RunSpec
    from snnconv.detection.evaluate import run_detection_method

    model, x = make_detector("clipfloor", seed=2, size=32, batch=4)
    model, x = model.float(), x.float()
    with torch.no_grad():
        model.head.obj_out.bias.fill_(4.0)  # confident, so the random detector's boxes pass the score threshold
    with torch.no_grad():
        truth = postprocess(model(x), 8, score_threshold=0.0, max_detections=2)
    targets = [{"boxes": d["boxes"], "labels": d["labels"]} for d in truth]  # the ANN's own boxes: ANN mAP is 1
    run = run_detection_method(model, x, targets, 3, RunSpec("cif", [4], sleep_steps=8))
    assert run["T"] == [4] * 12 and run["latency_steps"] == list(range(1, 13)) and run["total_steps"] == run["latency_steps"]
    assert len(run["map50"]) == len(run["map"]) == 12 and run["accuracy"] == run["map50"]
    assert run["map50"][-1] == pytest.approx(1.0)  # after sleep the SNN's head output is the ANN's
    gn = run_detection_method(model, x, targets, 3, RunSpec("if", [1, 2, 4]))
    assert gn["T"] == [1, 2, 4] and gn["latency_steps"] == [1, 2, 4] and len(gn["map"]) == 3


def test_cli_detect_train_and_evaluate(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    data = write_fake_mnist(tmp_path / "MNIST")
    out = tmp_path / "run"
    args = ["detect-train", "--data-dir", str(data), "--width", "4", "--epochs", "1", "--batch-size", "16",
            "--out", str(out), "--no-progress"] + sum((["--dataset-arg", f"{k}={v}"] for k, v in TINY.items()), [])
    assert main(args + ["--activation", "clipfloor"]) == 0
    ckpt = out / "checkpoint.safetensors"
    results_file = tmp_path / "cif.json"
    assert main(["detect-evaluate", str(ckpt), "--neuron", "cif", "-T", "4", "--sleep-steps", "4", "--data-dir", str(data),
                 "--limit", "8", "--json", str(results_file), "--no-progress"]) == 0
    results = json.loads(results_file.read_text())
    assert {"dataset", "model", "ann_accuracy", "ann_map50", "ann_map", "runs"} <= set(results)
    (run,) = results["runs"]
    assert run["neuron"] == "cif" and len(run["map50"]) == len(run["T"]) == 8 and run["sleep_steps"] == 4
    assert "mAP@0.5" in capsys.readouterr().out


def test_detect_evaluate_refuses_a_classifier_checkpoint(tmp_path, capsys):
    from snnconv.checkpoint import save_checkpoint

    path = tmp_path / "cls.safetensors"
    model = create_model("small_cnn")
    save_checkpoint(path, model, {"model": "small_cnn", "model_args": {}, "dataset": "digits", "activation": {"kind": "qcfs", "levels": 4}})
    assert main(["detect-evaluate", str(path), "--no-progress"]) == 2
    assert "not a detector checkpoint" in capsys.readouterr().err
