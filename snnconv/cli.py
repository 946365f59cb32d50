"""Command line: argument parsing only; each command calls one library function."""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .errors import SnnconvError


def _neuron_options(args) -> dict:
    options = {}
    if args.group_size is not None:
        try:
            options["group_size"] = args.group_size if args.group_size == "auto" else int(args.group_size)
        except ValueError:
            raise SnnconvError(f"--group-size takes an integer >= 1 or 'auto', got {args.group_size!r}") from None
    if args.target_steps is not None:
        options["target_steps"] = args.target_steps
    if args.initial_potential is not None:
        options["initial_potential"] = args.initial_potential
    options.update(_key_values(args.option, "--option"))
    return options


def _key_values(pairs: list[str] | None, flag: str) -> dict:
    """KEY=VALUE pairs; VALUE is read as JSON (numbers, true/false, lists) or kept as text."""
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SnnconvError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


def _parse_seeds(text: str) -> list[int]:
    items = [s.strip() for s in text.split(",")]
    try:
        if "" in items:
            raise ValueError
        return [int(s) for s in items]
    except ValueError:
        raise SnnconvError(f"--seeds takes comma-separated integers such as 0,1,2 (no empty entries), got {text!r}") from None


def _calibration(args, meta: dict) -> str:
    """--calibrate for a ReLU source (default 99.9), validated before any work with the other
    calibration flags: --calibrate and --per-channel are refused on a QCFS or clip-floor
    source, whose thresholds are its trained clip values lambda, and so is
    --calibration-images there without --snn-calibration (it would change nothing);
    --calibration-images below 1 is refused everywhere."""
    from .convert.calibrate import parse_threshold

    kind = meta.get("activation", {}).get("kind")
    images = getattr(args, "calibration_images", None)
    if images is not None and images < 1:
        raise SnnconvError(f"--calibration-images must be an integer >= 1, got {images}")
    if kind != "relu":
        if getattr(args, "per_channel", False):
            raise SnnconvError(f"--per-channel applies to ReLU sources only: {args.checkpoint!r} is a {kind} checkpoint whose "
                               "thresholds are its trained clip values lambda; drop --per-channel")
        if images is not None and not getattr(args, "snn_calibration", None):
            raise SnnconvError(f"--calibration-images sets the training images that calibrate a ReLU source or SNN Calibration: "
                               f"{args.checkpoint!r} is a {kind} checkpoint and no --snn-calibration is given; drop --calibration-images")
    if args.calibrate is None:
        return "99.9"
    if kind != "relu":
        raise SnnconvError(f"--calibrate applies to ReLU sources only: {args.checkpoint!r} is a {kind} checkpoint whose "
                           "thresholds are its trained clip values lambda; drop --calibrate")
    parse_threshold(args.calibrate)
    return args.calibrate


def _add_method_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-T", "--steps", default="1,2,4,8,16,32", help="comma-separated T values (wake steps for cif)")
    p.add_argument("--sleep-steps", type=int, default=0, help="CIF wake-sleep: sleep steps after T wake steps")
    p.add_argument("--stop-when-quiet", action="store_true", help="CIF: stop reporting once no neuron can change")
    p.add_argument("--permute", choices=["per-neuron", "per-layer"], help="shuffle spike trains in time (temporal misalignment)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds for stochastic runs (mean and spread reported)")
    p.add_argument("--group-size", help="GN: tau (integer) or 'auto' (tau = ceil(L / --target-steps))")
    p.add_argument("--target-steps", type=int, help="GN with --group-size auto: the T to reach")
    p.add_argument("--initial-potential", type=float, help="v(0) as a fraction of theta (IF, GN, TPP)")
    p.add_argument("--option", action="append", help="other neuron option KEY=VALUE (repeatable)")
    p.add_argument("--calibrate", help="ReLU sources only (default 99.9): thresholds from 'max', 'mse' (SNNC's search, per T) or a percentile")
    p.add_argument("--per-channel", action="store_true", help="ReLU sources: one threshold per output channel")
    p.add_argument("--snn-calibration", choices=["light", "advanced", "bias", "potential"],
                   help="SNN Calibration after conversion, per T (light: bias; advanced: weights, then potential)")
    p.add_argument("--calibration-images", type=int,
                   help="training images for thresholds and SNN Calibration (default 512; 1024 with --snn-calibration)")
    p.add_argument("--data-dir", help="folder with the dataset files (not needed for digits)")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", help="write the results JSON here")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snnconv", description="Convert trained ANNs into low-latency spiking networks.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train on scikit-learn digits, convert with IF, print accuracy per T")
    demo.add_argument("--json", help="write the results JSON here")
    demo.add_argument("--epochs", type=int, default=30)

    tr = sub.add_parser("train", help="train a source ANN (QCFS, clip-floor or ReLU)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--model", default="small_cnn", help="architecture (snnconv list shows the registered models)")
    tr.add_argument("--dataset", default="digits", help="training data (snnconv list shows the datasets)")
    tr.add_argument("--data-dir", help="folder with the dataset files (not needed for digits)")
    tr.add_argument("--activation", default="qcfs", choices=["qcfs", "clipfloor", "relu"],
                    help="the source's activation: QCFS (for IF, GN, TPP), clip-floor (for CIF) or ReLU (calibrated at conversion)")
    tr.add_argument("--levels", type=int, default=4, help="quantisation levels L of QCFS / clip-floor")
    tr.add_argument("--epochs", type=int, default=10, help="training epochs (the cosine schedule spans all of them)")
    tr.add_argument("--batch-size", type=int, default=128, help="images per SGD step (over all processes)")
    tr.add_argument("--lr", type=float, default=0.05, help="initial SGD learning rate (cosine-annealed to 0)")
    tr.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    tr.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    tr.add_argument("--decay-thresholds", action=argparse.BooleanOptionalAction, default=True,
                    help="weight decay on the clip values lambda too, as in the QCFS authors' code")
    tr.add_argument("--threshold-percentile", type=float, default=85.0,
                    help="initialise each lambda to this percentile of its layer's positive pre-activations on a "
                         "training batch; 0 keeps the activation's fixed default (QCFS 8, clip-floor 1)")
    tr.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy loss")
    tr.add_argument("--cutout", type=int, default=0, metavar="PIXELS",
                    help="Cutout: zero a PIXELS x PIXELS square of each training image (0: off; the QCFS authors' CIFAR recipe: 16)")
    tr.add_argument("--autoaugment", action="store_true",
                    help="AutoAugment's CIFAR-10 policy after crop and flip (the QCFS authors' CIFAR recipe; RGB data; needs kornia)")
    tr.add_argument("--init-from", metavar="CHECKPOINT",
                    help="fine-tune: start from this checkpoint's weights (file or zoo name; same model and arguments, "
                         "any activation); lambda comes along between QCFS and clip-floor, else is set as without it")
    tr.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the batch order and the augmentation")
    tr.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    tr.add_argument("--model-arg", action="append", help="extra model argument KEY=VALUE (e.g. width=16); repeatable")
    tr.add_argument("--train-limit", type=int, help="train on the first N training images only (None: all)")
    tr.add_argument("--out", required=True, help="output folder (resumes if it holds a checkpoint)")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    tr.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA, or a CPU with native bf16: AVX512-BF16 or AMX)")
    tr.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convolutions on recent GPUs)")
    tr.add_argument("--download", action="store_true", help="fetch the dataset into --data-dir first (md5-checked; mnist, fashion_mnist, cifar10, cifar100)")

    ev = sub.add_parser("evaluate", help="convert a checkpoint and report ANN and SNN accuracy per T")
    ev.add_argument("checkpoint", help="checkpoint file, or a pretrained zoo name (snnconv list)")
    ev.add_argument("--neuron", default="if")
    _add_method_arguments(ev)
    ev.add_argument("--download", action="store_true", help="fetch the checkpoint's dataset into --data-dir first (md5-checked)")

    cmp_ = sub.add_parser("compare", help="run several methods on one checkpoint; write a report folder (JSON, markdown, plots)")
    cmp_.add_argument("checkpoint", help="checkpoint file, or a pretrained zoo name (snnconv list)")
    cmp_.add_argument("--neurons", default="if,gn,tpp,cif", help="comma-separated methods; NEURON+per-neuron adds permutation")
    cmp_.add_argument("--out", required=True, help="report folder")
    cmp_.add_argument("--error-samples", type=int, default=128, help="images for the layer-wise error (0: skip)")
    cmp_.add_argument("--e-ac", type=float, default=0.9, help="picojoules per accumulate (SOP)")
    cmp_.add_argument("--e-mac", type=float, default=4.6, help="picojoules per multiply-accumulate")
    cmp_.add_argument("--redraw", action="store_true", help="only redraw report.md and plots from OUT/results.json")
    _add_method_arguments(cmp_)

    ex = sub.add_parser("export", help="export an IF conversion of a checkpoint (NIR)")
    ex.add_argument("checkpoint", help="checkpoint file, or a pretrained zoo name (snnconv list)")
    ex.add_argument("--format", default="nir", choices=["nir"])
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--neuron", default="if", help="the conversion to export (only if has a NIR form)")
    ex.add_argument("--input-shape", help="one sample's shape C,H,W (default: from the checkpoint's dataset)")
    ex.add_argument("--data-dir", help="dataset folder (input shape; calibration of ReLU sources)")
    ex.add_argument("--calibrate", help="ReLU sources only: 'max' or a percentile in (0, 100] for the thresholds (default 99.9)")

    sub.add_parser("list", help="list registered neurons, models and datasets")

    from .detection.cli import add_detection_commands

    add_detection_commands(sub, _add_method_arguments)
    for command in sub.choices.values():  # --debug also after the subcommand (SUPPRESS: keeps an earlier --debug)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _cmd_demo(args) -> None:
    from .demo import run_demo
    from .files import check_output_file

    check_output_file(args.json)
    run_demo(args.json, epochs=args.epochs)


def _download_if_asked(args, dataset: str) -> None:
    """``--download``: one process per node fetches (md5-checked) while the others wait."""
    if not args.download:
        return
    from . import distributed
    from .data import download
    from .device import resolve_device

    distributed.setup(resolve_device(args.device))
    error = None
    if distributed.local_rank() == 0:
        try:
            download(dataset, args.data_dir)
        except SnnconvError as err:
            error = str(err)
    # Gathering waits for every node's download and lets every rank stop on the same error.
    errors = [e for e in distributed.gather_objects(error) if e]
    if errors:
        raise SnnconvError(errors[0])


def _cmd_train(args) -> None:
    from .distributed import print_main
    from .files import check_output_folder
    from .train import TrainConfig, train

    check_output_folder(args.out)
    model_args = _key_values(args.model_arg, "--model-arg")
    config = TrainConfig(
        model=args.model, dataset=args.dataset, activation=args.activation, levels=args.levels, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        decay_thresholds=args.decay_thresholds, label_smoothing=args.label_smoothing, seed=args.seed, device=args.device,
        model_args=model_args, train_limit=args.train_limit, amp=args.amp, channels_last=args.channels_last,
        threshold_percentile=args.threshold_percentile or None, cutout=args.cutout,
        autoaugment=args.autoaugment, init_from=args.init_from,
    )
    _download_if_asked(args, config.dataset)
    _, meta = train(config, args.out, args.data_dir, progress=not args.no_progress)
    limit = meta.get("clip_limit_accuracy")
    limit_text = "" if limit is None else f", clip limit {limit:.4f}"
    print_main(f"checkpoint: {args.out}/checkpoint.safetensors (test accuracy {meta['ann_accuracy']:.4f}{limit_text})")


def _cmd_evaluate(args) -> None:
    from .checkpoint import read_checkpoint
    from .distributed import print_main
    from .experiments import RunSpec, evaluate_checkpoint, format_table, parse_steps
    from .files import check_output_file

    check_output_file(args.json)
    meta = read_checkpoint(args.checkpoint)[0]
    spec = RunSpec(args.neuron, parse_steps(args.steps), args.sleep_steps, args.permute, _parse_seeds(args.seeds),
                   _neuron_options(args), _calibration(args, meta), args.stop_when_quiet, args.per_channel, args.snn_calibration)
    if args.download:
        _download_if_asked(args, meta["dataset"])
    results = evaluate_checkpoint(args.checkpoint, [spec], args.data_dir, args.limit, args.batch_size,
                                  calibration_samples=args.calibration_images,
                                  progress=not args.no_progress, json_path=args.json, device=args.device)
    print_main(format_table(results))


def _cmd_compare(args) -> None:
    from .report import compare, parse_methods, redraw_report

    if args.redraw:
        for path in redraw_report(f"{args.out}/results.json"):
            print(path)
        return
    from .checkpoint import read_checkpoint
    from .experiments import parse_steps
    from .files import check_output_folder

    check_output_folder(args.out)
    meta, _, _ = read_checkpoint(args.checkpoint)
    specs = parse_methods(args.neurons, parse_steps(args.steps), seeds=_parse_seeds(args.seeds), sleep_steps=args.sleep_steps,
                          group_size=args.group_size, target_steps=args.target_steps,
                          levels=meta.get("activation", {}).get("levels"), calibration=_calibration(args, meta))
    for spec in specs:
        spec.permute = spec.permute or args.permute
        spec.per_channel, spec.snn_calibration = args.per_channel, args.snn_calibration
    images = args.calibration_images if args.calibration_images is not None else (1024 if args.snn_calibration else 512)
    compare(args.checkpoint, specs, args.out, data_dir=args.data_dir, limit=args.limit, batch_size=args.batch_size,
            calibration_samples=images,
            error_samples=args.error_samples, e_ac=args.e_ac, e_mac=args.e_mac, progress=not args.no_progress,
            device=args.device)
    print((__import__("pathlib").Path(args.out) / "report.md").read_text())


def _input_shape(text: str, model, meta: dict) -> tuple[int, ...]:
    """--input-shape C,H,W: positive integers, C the checkpoint's input channels, and a size the model accepts."""
    import torch

    items = [v.strip() for v in text.split(",")]
    try:
        shape = tuple(int(v) for v in items)
    except ValueError:
        raise SnnconvError(f"--input-shape takes comma-separated integers C,H,W such as 1,28,28, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise SnnconvError(f"--input-shape takes one sample's shape C,H,W (three integers >= 1) such as 1,28,28, got {text!r}")
    channels = meta.get("model_args", {}).get("in_channels")
    if channels is not None and shape[0] != channels:
        raise SnnconvError(f"--input-shape {text}: model {meta['model']!r} takes {channels} input channel(s), not {shape[0]}; "
                           f"give {channels},H,W")
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    except RuntimeError as err:
        raise SnnconvError(f"--input-shape {text} does not fit model {meta['model']!r} ({str(err).splitlines()[0]}): "
                           f"give the shape of one {meta['dataset']} image") from None
    return shape


def _cmd_export(args) -> None:
    from .checkpoint import load_checkpoint
    from .convert import convert
    from .data import load_dataset
    from .export.nir import export_nir
    from .files import check_output_file

    check_output_file(args.out, "--out")
    model, meta = load_checkpoint(args.checkpoint)
    relu = meta["activation"]["kind"] == "relu"
    calibration_method = _calibration(args, meta)

    def dataset(split: str):
        try:
            return load_dataset(meta["dataset"], split, args.data_dir)
        except SnnconvError as err:
            if relu:
                raise SnnconvError(f"{err} (a ReLU source needs the training images to calibrate its thresholds)") from None
            raise SnnconvError(f"{err}; or pass --input-shape C,H,W (one sample's shape) to export without the dataset") from None

    if args.input_shape:
        shape = _input_shape(args.input_shape, model, meta)
    else:
        shape = tuple(dataset("test").normalized(slice(0, 1)).shape[1:])
    calibration = dataset("train").normalized(slice(0, 512)) if relu else None
    snn = convert(model, args.neuron, calibration=calibration, threshold=calibration_method)
    path = export_nir(snn, args.out, shape)
    print(f"wrote {path} (NIR; reset by subtraction recorded in node metadata)")


def _method_spec(args):
    from .checkpoint import read_checkpoint
    from .experiments import RunSpec, parse_steps

    calibration = _calibration(args, read_checkpoint(args.checkpoint)[0]) if args.calibrate is not None else "99.9"
    if args.per_channel or args.snn_calibration or args.calibrate == "mse" or args.calibration_images:
        raise SnnconvError("detect-evaluate takes --calibrate max or a percentile only: --per-channel, --snn-calibration, "
                           "--calibration-images and --calibrate mse are for evaluate and compare")
    return RunSpec(args.neuron, parse_steps(args.steps), args.sleep_steps, args.permute, _parse_seeds(args.seeds),
                   _neuron_options(args), calibration, args.stop_when_quiet)


def _cmd_detect_train(args) -> None:
    from .detection.cli import cmd_detect_train
    from .files import check_output_folder

    check_output_folder(args.out)
    cmd_detect_train(args, _key_values(args.dataset_arg, "--dataset-arg"))


def _cmd_detect_evaluate(args) -> None:
    from .detection.cli import cmd_detect_evaluate
    from .files import check_output_file

    check_output_file(args.json)
    cmd_detect_evaluate(args, _method_spec(args))


def _cmd_list(args) -> None:
    from . import list_models, list_neurons
    from .data import list_datasets
    from .zoo import list_pretrained

    print("neurons: " + ", ".join(list_neurons()))
    print("models: " + ", ".join(list_models()))
    print("datasets: " + ", ".join(list_datasets()))
    print("pretrained sources (snnconv/zoo): " + (", ".join(list_pretrained()) or "none"))


COMMANDS = {"demo": _cmd_demo, "train": _cmd_train, "evaluate": _cmd_evaluate, "compare": _cmd_compare, "export": _cmd_export,
            "list": _cmd_list, "detect-train": _cmd_detect_train, "detect-evaluate": _cmd_detect_evaluate}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``snnconv: warning: MESSAGE`` on one line, like the CLI's errors (``--debug``: Python's
    own form with the file, line and source line)."""
    return "snnconv: warning: " + " ".join(str(message).split()) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 2 user error, 130 interrupted).

    Raises:
        SnnconvError: only with ``--debug`` (otherwise printed as one line, exit status 2).
        SystemExit: argparse's, for ``--help`` and unparsable arguments.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    format_warning = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = _one_line_warning  # recorded warnings (pytest, catch_warnings) are unaffected
    try:
        COMMANDS[args.command](args)
    except SnnconvError as err:
        if args.debug:
            raise
        print("snnconv: error: " + " ".join(str(err).split()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("snnconv: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = format_warning
        from .distributed import shutdown

        shutdown()  # leave a torchrun process group, if this command joined one
    return 0


if __name__ == "__main__":
    sys.exit(main())
