"""Paper-scale accuracy tables: every method on the ResNet-20 CIFAR-10 (JPEG-q75) zoo sources.

Sources (``zoo/``, trained with ``zoo/train_resnet20.sh``; by default the 300-epoch QCFS source with
the authors' augmentation and the clip-floor and ReLU sources fine-tuned from it, see
``zoo/paper_scale_queue.sh``; ``--source KIND=NAME`` picks another folder):

    qcfs       QCFS L = 4    IF; GN tau = 2 and tau = L; IF + permutation (per-neuron,
                             per-layer; seeds); TPP (seeds)
    relu       plain ReLU    IF with max and 99.9% calibration; SpikingJelly 2.0.0 (99.9%)
    clipfloor  clip-floor 4  CIF + wake-sleep (T = L wake steps, ``--sleep-steps``)

Causal methods (IF, GN, SpikingJelly) read every T off one simulation at the largest T;
window methods (TPP, permutation) are simulated once per T and seed, so they may use
fewer T (``--window-steps``), and the permutation runs (the costliest: a shuffle of
every layer's window) fewer images (``--permute-limit``): every row states its images. Beside them the QCFS paper's ResNet-20 CIFAR-10 row (Bu et al.,
ICLR 2022, Table 1), compared as the gap to each paper's own ANN.

    python bench/paper_scale.py --data-dir ../shared/data/cifar10 --out bench/results/paper_scale

Writes OUT.json (every run, the command, wall times), OUT.md (tables) and OUT.png
(accuracy and gap to the ANN against T). ``--redraw`` rebuilds OUT.md and OUT.png from
OUT.json. ``--methods PATTERNS`` runs only the rows whose labels match (e.g.
``--methods TPP --window-steps 1,2,4,8,16,32,64``) and keeps the source's other rows from
OUT.json; each row records its own command. OUT.json is saved after every row and names
the sha256 of the weights each table ran on; ``--resume`` keeps the rows already there for
the same weights, images, T and seeds, so a run cut short (a session's end) goes on from
the row it was on; rows of methods that draw random numbers (TPP, permutation) run and are
saved one seed at a time (in the source's ``unfinished`` entry until every seed is done), so
such a run goes on from the seed it was on. Numbers are "CIFAR-10 (JPEG-q75)".
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snnconv.activations import clip_limit  # noqa: E402
from snnconv.evaluate import combine_seed_records  # noqa: E402
from snnconv.experiments import RunSpec, load_evaluation, run_method  # noqa: E402
from snnconv.files import write_json, write_text  # noqa: E402
from snnconv.neurons import create_neuron  # noqa: E402
from snnconv.train import accuracy  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "zoo"
SOURCES = {"qcfs": "resnet20_qcfs4_aa_cifar10jpeg", "relu": "resnet20_relu_aa_cifar10jpeg", "clipfloor": "resnet20_clipfloor4_aa_cifar10jpeg"}
QCFS_PAPER = {"citation": "Bu et al., ICLR 2022, Table 1 (ResNet-20, CIFAR-10, QCFS)", "ann": 0.9177,
              "T": [2, 4, 8, 16, 32], "accuracy": [0.7320, 0.8375, 0.8955, 0.9162, 0.9224]}


def method_specs(kind: str, steps: list[int], window_steps: list[int], seeds: list[int], levels: int, sleep_steps: int) -> list[tuple[str, RunSpec]]:
    """(label, spec) of every method run on a source of ``kind``."""
    if kind == "qcfs":
        return [("IF", RunSpec("if", steps)),
                ("GN tau=2", RunSpec("gn", steps, options={"group_size": 2})),
                (f"GN tau=L={levels}", RunSpec("gn", steps, options={"group_size": levels})),
                ("IF + permute per-neuron", RunSpec("if", window_steps, permute="per-neuron", seeds=seeds)),
                ("IF + permute per-layer", RunSpec("if", window_steps, permute="per-layer", seeds=seeds)),
                ("TPP", RunSpec("tpp", window_steps, seeds=seeds))]
    if kind == "relu":
        return [("IF, max calibration", RunSpec("if", steps, calibration="max")),
                ("IF, 99.9% calibration", RunSpec("if", steps, calibration="99.9"))]
    if kind == "clipfloor":
        return [(f"CIF + WSC (T=L={levels}, S={sleep_steps})", RunSpec("cif", [levels], sleep_steps=sleep_steps))]
    raise ValueError(kind)


SPIKINGJELLY_LABEL = "SpikingJelly 2.0.0 (99.9%)"


def source_labels(kind: str, levels: int, spikingjelly: bool) -> list[str]:
    """The labels of the rows a source's table gets (``--methods`` selects among them)."""
    labels = [label for label, _ in method_specs(kind, [1], [1], [0], levels, 1)]
    return labels + ([SPIKINGJELLY_LABEL] if kind == "relu" and spikingjelly else [])


@torch.no_grad()
def spikingjelly_run(model, x, y, calibration, steps: list[int], batch_size: int) -> dict | None:
    """SpikingJelly 2.0.0's ANN2SNN (99.9% calibration, its IF neuron, v(0) = 0) on the ReLU source."""
    import sj_bridge

    if not sj_bridge.available():
        return None
    sj_net = sj_bridge.convert(model, calibration, mode="99.9%")
    correct = torch.zeros(max(steps))
    for start in range(0, len(y), batch_size):
        out = sj_bridge.simulate(sj_net, x[start : start + batch_size], max(steps))
        average = out.cumsum(0) / torch.arange(1, len(out) + 1).view(-1, 1, 1)
        correct += (average.argmax(2) == y[start : start + batch_size]).sum(1).float()
    acc = (correct / len(y)).tolist()
    return {"label": SPIKINGJELLY_LABEL, "T": steps, "accuracy": [acc[t - 1] for t in steps], "accuracy_std": [0.0] * len(steps),
            "latency_steps": steps, "samples": len(y)}


def subset_if_run(model, x, y, n: int, steps: list[int], batch_size: int) -> dict:
    """IF on the first ``n`` images only (the permutation runs' images), with the ANN there."""
    started = time.perf_counter()
    run = run_method(model, x[:n], y[:n], RunSpec("if", steps), None, batch_size)
    run.update(label=f"IF (the {n} images of the permutation rows)", samples=n, ann_accuracy_on_samples=accuracy(model, x[:n], y[:n]),
               wall_seconds=round(time.perf_counter() - started, 1))
    return run


def append_subset_if(args) -> dict:
    """``--append-subset-if``: add the IF row on the permutation runs' images to an existing OUT.json."""
    results = json.loads(args.out.with_suffix(".json").read_text())
    for source in results["sources"]:
        subset = min(r["samples"] for r in source["runs"])
        if subset < source["samples"] and not any(r["label"].startswith("IF (the") for r in source["runs"]):
            model, _, x, y, _ = load_evaluation(args.zoo.parent / source["checkpoint"], args.data_dir, subset,
                                                torch.device("cpu"))
            steps = next(r["T"] for r in source["runs"] if r.get("permute"))
            source["runs"].append(subset_if_run(model, x, y, subset, steps, args.batch_size))
    results["appended"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    return results


def checkpoint_digest(path: Path) -> str:
    """sha256 of a checkpoint file: a table's rows name the exact weights they ran on (a
    training run resumed in place keeps its path and changes its weights)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_checkpoint(kind: str, args) -> Path:
    """The checkpoint of source ``kind``: ``--source KIND=NAME`` or the default in SOURCES."""
    return args.zoo / args.source_names.get(kind, SOURCES[kind]) / "checkpoint.safetensors"


def parse_source_names(text: str | None) -> dict[str, str]:
    """``--source qcfs=NAME,relu=NAME`` -> {kind: zoo folder name}; refuses unknown kinds."""
    names = {}
    for item in filter(None, (text or "").split(",")):
        kind, _, name = item.partition("=")
        if kind not in SOURCES or not name:
            raise SystemExit(f"--source takes KIND=ZOO_FOLDER with KIND one of {', '.join(SOURCES)}, got {item!r}")
        names[kind] = name
    return names


def selected(label: str, patterns: list[str] | None) -> bool:
    """Whether ``--methods`` (fnmatch patterns on the row labels; None: all) selects ``label``."""
    return patterns is None or any(fnmatch.fnmatchcase(label, p) for p in patterns)


def check_methods(args) -> None:
    """Refuse, before any work, a ``--methods`` pattern that matches no row of any source in
    ``--sources`` (a typo would otherwise redo nothing and rewrite OUT silently)."""
    from snnconv.checkpoint import read_checkpoint

    labels = {}
    for kind in args.sources.split(","):
        checkpoint = source_checkpoint(kind, args)
        if checkpoint.exists():
            labels[kind] = source_labels(kind, read_checkpoint(checkpoint)[0]["activation"]["levels"], not args.no_spikingjelly)
    for pattern in args.methods:
        if labels and not any(selected(label, [pattern]) for names in labels.values() for label in names):
            rows = "; ".join(f"{kind}: " + ", ".join(map(repr, names)) for kind, names in labels.items())
            raise SystemExit(f"--methods {pattern!r} matches no row (the rows: {rows}); patterns are split at commas, "
                             "so match a label with a comma by a wildcard, e.g. '*max calibration'")


def same_weights_and_images(previous: dict | None, record: dict) -> bool:
    """``previous`` (a source's table in OUT.json) ran on this record's exact weights and images."""
    return previous is not None and \
        (previous.get("checkpoint_sha256"), previous["samples"]) == (record["checkpoint_sha256"], record["samples"])


def finished_rows(previous: dict | None, record: dict) -> dict[str, dict]:
    """``--resume``: the rows of ``previous`` made on this record's exact weights and images,
    by label (a row is kept when its T, seeds and images are also the ones asked for)."""
    if not same_weights_and_images(previous, record):
        return {}
    return {run["label"]: run for run in previous["runs"] if "requested_T" in run}


def merge_runs(previous: list[dict], fresh: list[dict]) -> list[dict]:
    """``previous`` with each row of ``fresh`` in place of the row of the same label (new
    labels at the end); the subset-IF rows are dropped, to be redone for the merged rows."""
    by_label = {run["label"]: run for run in fresh}
    merged = [by_label.pop(run["label"], run) for run in previous]
    return [run for run in merged + list(by_label.values()) if not run["label"].startswith("IF (the")]


def draws_random(spec: RunSpec) -> bool:
    """The method's network draws random numbers (permutation, a stochastic neuron): its
    seeds give different numbers, so its row runs (and is saved) one seed at a time."""
    return spec.permute is not None or create_neuron(spec.neuron, 1.0).stochastic


def run_row(model, x: torch.Tensor, y: torch.Tensor, label: str, spec: RunSpec, calibration, args, record: dict) -> dict:
    """One row: ``run_method`` once, or for a method that draws random numbers once per
    seed, saving OUT.json after each seed in ``record["unfinished"][label]`` (a row of
    TPP or permutation at T = 1-64 takes an hour or more here: a session's end then loses
    one seed, not the row). The seeds' records combine into exactly the all-seeds record
    (:func:`snnconv.evaluate.combine_seed_records`); ``wall_seconds`` is their sum."""
    if len(spec.seeds) == 1 or not draws_random(spec):
        started = time.perf_counter()
        run = run_method(model, x, y, spec, calibration, args.batch_size, progress=not args.no_progress)
        return {**run, "wall_seconds": round(time.perf_counter() - started, 1)}
    unfinished = record.setdefault("unfinished", {})
    done = {seed_run["seeds"][0]: seed_run for seed_run in unfinished.get(label, [])
            if seed_run["requested_T"] == list(spec.steps) and seed_run["samples"] == len(y) and seed_run["seeds"][0] in spec.seeds}
    for seed in spec.seeds:
        if seed in done:
            print(f"{record['source']} / {label}: seed {seed} kept from {args.out.with_suffix('.json')} (--resume)", flush=True)
            continue
        started = time.perf_counter()
        seed_run = run_method(model, x, y, replace(spec, seeds=[seed]), calibration, args.batch_size, progress=not args.no_progress)
        done[seed] = {**seed_run, "requested_T": list(spec.steps), "samples": len(y),
                      "wall_seconds": round(time.perf_counter() - started, 1)}
        unfinished[label] = [done[s] for s in spec.seeds if s in done]
        print(f"{record['source']} / {label}: seed {seed} done ({done[seed]['wall_seconds']} s)", flush=True)
        args.save_partial(record, args.previous_of(record["source"]))
    per_seed = [done[s] for s in spec.seeds]
    run = combine_seed_records([{k: v for k, v in r.items() if k not in ("requested_T", "samples", "wall_seconds")} for r in per_seed])
    del unfinished[label]
    if not unfinished:
        del record["unfinished"]
    return {**run, "wall_seconds": round(sum(r["wall_seconds"] for r in per_seed), 1)}


def run_source(kind: str, args, previous: dict | None = None) -> dict | None:
    """Every method on one zoo source (with ``--methods``, the selected ones, the other rows
    kept from ``previous``); None when its checkpoint is not there yet."""
    checkpoint = source_checkpoint(kind, args)
    if not checkpoint.exists():
        print(f"skip {kind}: {checkpoint} not found", flush=True)
        return None
    digest = checkpoint_digest(checkpoint)
    if args.methods is not None:  # a source none of whose rows is selected keeps its table as it is
        from snnconv.checkpoint import read_checkpoint

        levels = read_checkpoint(checkpoint)[0]["activation"]["levels"]
        if not any(selected(label, args.methods) for label in source_labels(kind, levels, not args.no_spikingjelly)):
            print(f"skip {kind}: --methods selects none of its rows", flush=True)
            return None
    model, meta, x, y, calibration = load_evaluation(checkpoint, args.data_dir, args.limit, torch.device("cpu"))
    levels = meta["activation"]["levels"]
    specs = [(label, spec) for label, spec in method_specs(kind, args.steps, args.window_steps, args.seeds, levels, args.sleep_steps)
             if selected(label, args.methods)]
    if previous is not None and args.methods is not None:  # checked before any work: the kept rows must compare like with like
        made_from = (previous.get("checkpoint"), previous.get("checkpoint_sha256"))
        if made_from != (str(checkpoint.relative_to(args.zoo.parent)), digest):
            raise SystemExit(f"--methods adds rows to {kind}'s table, whose rows ran on {made_from[0]} "
                             f"(sha256 {str(made_from[1])[:12]}); this run's checkpoint is {checkpoint} (sha256 {digest[:12]}): "
                             "pass another --out, or drop --methods to redo the whole table")
        if previous["samples"] != len(y):
            raise SystemExit(f"--methods adds rows to {kind}'s {previous['samples']}-image table; this run has {len(y)} images: "
                             f"pass --limit {previous['samples']}, or drop --methods to redo the whole table")
        kept_permuted = {r["samples"] for r in previous["runs"] if r.get("permute") is not None and not selected(r["label"], args.methods)}
        wanted = min(len(y), args.permute_limit)
        if any(spec.permute is not None for _, spec in specs) and kept_permuted - {wanted}:
            used = min(kept_permuted - {wanted})
            raise SystemExit(f"{kind}'s permutation rows ran on {used} images; this run's would use {wanted}: pass --permute-limit {used}, "
                             "or select all the permutation rows with --methods")
    limit_model = clip_limit(model)
    record = {"source": kind, "checkpoint": str(checkpoint.relative_to(args.zoo.parent)), "checkpoint_sha256": digest,
              "epochs_done": meta.get("epochs_done"), "samples": len(y),
              "ann_accuracy": accuracy(model, x, y),
              "clip_limit_accuracy": None if limit_model is None else accuracy(limit_model, x, y), "runs": [],
              "command": args.command, "torch": torch.__version__, "threads": torch.get_num_threads()}
    finished = finished_rows(previous, record) if args.resume else {}
    if args.resume and same_weights_and_images(previous, record) and previous.get("unfinished"):
        record["unfinished"] = {label: list(seed_runs) for label, seed_runs in previous["unfinished"].items()}  # seeds done
    for label, spec in specs:
        n = min(len(y), args.permute_limit) if spec.permute is not None else len(y)
        prior = finished.get(label)
        if prior is not None and prior["requested_T"] == list(spec.steps) and prior["seeds"] == list(spec.seeds) and prior["samples"] == n:
            record["runs"].append(prior)
            print(f"{kind} / {label}: kept from {args.out.with_suffix('.json')} (--resume)", flush=True)
            continue
        run = run_row(model, x[:n], y[:n], label, spec, calibration, args, record)
        run.update(label=label, samples=n, requested_T=list(spec.steps), command=args.command)
        if n < len(y):
            run["ann_accuracy_on_samples"] = accuracy(model, x[:n], y[:n])
        record["runs"].append(run)
        print(f"{kind} / {label}: " + ", ".join(f"T={t} {100 * a:.2f}" for t, a in zip(run.get("total_steps") or run["T"], run["accuracy"]))
              + f" ({run['wall_seconds']} s)", flush=True)
        args.save_partial(record, previous)
    if previous is not None and args.methods is not None:
        kept = [{"command": previous.get("command"), **run} for run in previous["runs"]]  # older rows name their own command
        record["runs"] = merge_runs(kept, record["runs"])
    subset = min((r["samples"] for r in record["runs"]), default=len(y))
    if subset < len(y):  # IF on the images the permutation runs used, so their rows compare like with like
        steps = sorted({t for r in record["runs"] if r["samples"] == subset for t in r["T"]})
        record["runs"].append(subset_if_run(model, x, y, subset, steps, args.batch_size))
    if kind == "relu" and not args.no_spikingjelly and selected(SPIKINGJELLY_LABEL, args.methods):
        started = time.perf_counter()
        sj = spikingjelly_run(model, x, y, calibration, args.steps, args.batch_size)
        if sj is not None:
            sj.update(wall_seconds=round(time.perf_counter() - started, 1), command=args.command)
            record["runs"] = [r for r in record["runs"] if r["label"] != sj["label"]] + [sj]
    return record


def made_by(source: dict) -> list[str]:
    """The commands that made a source's rows (rows added with ``--methods`` name their own)."""
    commands = list(dict.fromkeys(c for c in (run.get("command") or source.get("command") for run in source["runs"]) if c))
    if not commands:
        return []
    return [f"Made by (torch {source['torch']}, {source['threads']} threads): " + "; then ".join(f"`{c}`" for c in commands), ""]


def markdown(results: dict) -> str:
    """One table per source (accuracy %, ANN and clip limit above), then the QCFS paper comparison."""
    lines = []
    for source in results["sources"]:
        limit = source["clip_limit_accuracy"]
        lines += [f"### {source['source']} source (`{source['checkpoint']}`), {source['samples']} test images, CIFAR-10 (JPEG-q75)", "",
                  f"ANN {100 * source['ann_accuracy']:.2f}%" + ("" if limit is None else f"; clip limit (IF's large-T limit) {100 * limit:.2f}%"), ""]
        steps = sorted({t for run in source["runs"] for t in (run.get("total_steps") or run["T"])})
        if source["source"] == "clipfloor":
            run = source["runs"][0]
            shown = [s for s in run["total_steps"] if s in {1, 2, run["wake_steps"], run["wake_steps"] + 1, run["wake_steps"] + 2,
                                                            run["wake_steps"] + 4, run["wake_steps"] + 8, run["wake_steps"] + 16, run["total_steps"][-1]}]
            lines += ["| method | images | " + " | ".join(f"step {s}" for s in shown) + " |", "|---" * (len(shown) + 2) + "|",
                      f"| {run['label']} | {run['samples']} | " + " | ".join(f"{100 * run['accuracy'][s - 1]:.2f}" for s in shown) + " |", ""]
            lines += made_by(source)
            continue
        lines += ["| method | images | " + " | ".join(f"T={t}" for t in steps) + " |", "|---" * (len(steps) + 2) + "|"]
        for run in source["runs"]:
            by_t = {t: (a, s) for t, a, s in zip(run["T"], run["accuracy"], run["accuracy_std"])}
            cells = [("" if t not in by_t else f"{100 * by_t[t][0]:.2f}" + (f" ± {100 * by_t[t][1]:.2f}" if by_t[t][1] else "")) for t in steps]
            latency = "" if run["latency_steps"] == run["T"] else f" (latency {run['spiking_layers'] + 1}·T)"
            lines.append(f"| {run['label']}{latency} | {run['samples']} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += made_by(source)
    qcfs = next((s for s in results["sources"] if s["source"] == "qcfs"), None)
    ours = None if qcfs is None else next((r for r in qcfs["runs"] if r["label"] == "IF"), None)
    if ours is not None:
        paper = results["qcfs_paper"]
        lines += ["### IF on the QCFS source against the QCFS paper, as the gap to each one's ANN (points)", "",
                  "| | ANN | " + " | ".join(f"T={t}" for t in paper["T"]) + " |", "|---" * (len(paper["T"]) + 2) + "|",
                  f"| {paper['citation']} | {100 * paper['ann']:.2f} | " + " | ".join(f"{100 * (a - paper['ann']):+.2f}" for a in paper["accuracy"]) + " |",
                  f"| snnconv IF, CIFAR-10 (JPEG-q75) | {100 * qcfs['ann_accuracy']:.2f} | "
                  + " | ".join(f"{100 * (ours['accuracy'][ours['T'].index(t)] - qcfs['ann_accuracy']):+.2f}" if t in ours["T"] else "" for t in paper["T"]) + " |", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Accuracy against T (left) and gap to the source's ANN (right), every method, ANN lines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colours = iter(plt.cm.tab20.colors)  # more runs than the default cycle's 10 colours
    markers, dashes = {"qcfs": "o", "relu": "s", "clipfloor": "^"}, {"qcfs": (4, 2), "relu": (1, 1), "clipfloor": (6, 2, 1, 2)}
    for source in results["sources"]:
        ann, kind = source["ann_accuracy"], source["source"]
        left.axhline(100 * ann, dashes=dashes.get(kind, (2, 2)), linewidth=1, color="grey", label=f"{kind} ANN ({100 * ann:.2f})")
        for run in source["runs"]:
            xs = run.get("total_steps") or run["T"]
            style = {"marker": markers.get(kind, "o"), "markersize": 3, "color": next(colours), "label": f"{kind}: {run['label']}"}
            left.plot(xs, [100 * a for a in run["accuracy"]], **style)
            reference = run.get("ann_accuracy_on_samples", ann)  # a row on fewer images: the ANN on those images
            right.plot(xs, [100 * (a - reference) for a in run["accuracy"]], **style)
    paper = results["qcfs_paper"]
    right.plot(paper["T"], [100 * (a - paper["ann"]) for a in paper["accuracy"]], "k--", marker="s", label="QCFS paper (IF), CIFAR-10")
    for ax, ylabel in ((left, "accuracy (%)"), (right, "accuracy - ANN (points)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("T (time steps; CIF: wake + sleep steps)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.set_ylim(0, 100)
    left.legend(handles=[h for h in left.get_lines() if "ANN" in h.get_label()], fontsize=7, loc="lower right")
    right.set_ylim(-30, 2)
    right.legend(fontsize=6, loc="lower right")
    fig.suptitle("ResNet-20, CIFAR-10 (JPEG-q75): snnconv conversion methods")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="folder with cifar10_jpeg_q75_fullorder.npz")
    p.add_argument("--zoo", type=Path, default=ZOO)
    p.add_argument("--sources", default="qcfs,relu,clipfloor")
    p.add_argument("--source", dest="source_names", metavar="KIND=NAME,...",
                   help="zoo folders other than the defaults, e.g. qcfs=resnet20_qcfs4_aa_cifar10jpeg")
    p.add_argument("--steps", default="1,2,4,8,16,32,64")
    p.add_argument("--window-steps", help="T for TPP and permutation (default: --steps)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--sleep-steps", type=int, default=28)
    p.add_argument("--limit", type=int, help="first N test images (default all 10,000)")
    p.add_argument("--permute-limit", type=int, default=10_000, help="first N test images for the permutation runs")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--methods", help="comma-separated fnmatch patterns on row labels (e.g. 'TPP,IF + permute*'): run only "
                   "those and keep the source's other rows from OUT.json")
    p.add_argument("--resume", action="store_true", help="keep the rows OUT.json already has for the same weights, images, "
                   "T and seeds (OUT.json is saved after every row, so an interrupted run resumes at the row it was on)")
    p.add_argument("--no-spikingjelly", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, type=Path, help="output path without extension")
    p.add_argument("--redraw", action="store_true", help="only rebuild OUT.md and OUT.png from OUT.json")
    p.add_argument("--append-subset-if", action="store_true",
                   help="add to OUT.json the IF row on the permutation runs' images (runs made before this row existed)")
    args = p.parse_args(argv)
    args.source_names = parse_source_names(args.source_names)
    json_path = args.out.with_suffix(".json")
    if args.redraw:
        results = json.loads(json_path.read_text())
    elif args.append_subset_if:
        results = append_subset_if(args)
        write_json(json_path, results)
    else:
        args.steps = [int(t) for t in args.steps.split(",")]
        args.window_steps = [int(t) for t in args.window_steps.split(",")] if args.window_steps else args.steps
        args.seeds = [int(s) for s in args.seeds.split(",")]
        args.command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
        previous = json.loads(json_path.read_text()) if json_path.exists() else {"sources": []}
        started = time.perf_counter()
        args.methods = args.methods.split(",") if args.methods else None
        if args.methods is not None:
            check_methods(args)
        before = {s["source"]: s for s in previous["sources"]}
        written: dict[str, dict] = {}  # this run's records so far, by source (saved after every row)

        def compose() -> dict:
            kept = [s for s in previous["sources"] if s["source"] not in written]  # other sources' earlier runs stay
            return {"title": "ResNet-20, CIFAR-10 (JPEG-q75)",
                    "sources": sorted(kept + list(written.values()), key=lambda s: list(SOURCES).index(s["source"])),
                    "qcfs_paper": QCFS_PAPER, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "command": args.command, "wall_seconds": round(time.perf_counter() - started, 1)}

        def save_partial(record: dict, prior: dict | None) -> None:
            """After every row: OUT.json holds what is done, so an interrupted run loses one row (--resume)."""
            partial = dict(record)
            if prior is not None and args.methods is not None:
                partial["runs"] = merge_runs([{"command": prior.get("command"), **run} for run in prior["runs"]], record["runs"])
            written[record["source"]] = partial
            write_json(json_path, compose())

        args.save_partial = save_partial
        args.previous_of = before.get
        for kind in args.sources.split(","):
            record = run_source(kind, args, before.get(kind))
            if record is not None:
                written[kind] = record
        results = compose()
        write_json(json_path, results)
    write_text(args.out.with_suffix(".md"), markdown(results))
    plot(results, args.out.with_suffix(".png"))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
