"""`selftrain` command line. Every subcommand is a thin shell over a plain function.

selftrain data digits --out data/digits
selftrain teacher train --data data/digits --run-dir runs/demo
selftrain pseudolabel --run-dir runs/demo --iteration 0
selftrain status --run-dir runs/demo
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from selftrain.errors import SelftrainError

if TYPE_CHECKING:
    from selftrain.data.dataset_info import DatasetInfo


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="YAML run config (default: the recipe for the data set: configs/photos.yaml for colour "
        "images, configs/digits.yaml for grayscale)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set teacher.steps=200 (repeatable)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override config `device`")
    p.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable samples with a warning and a count"
    )


def _add_nproc_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="train with N torchrun processes (DDP; gloo on the CPU, one GPU each on CUDA); "
        "sets distributed.nproc_per_node",
    )


def _runtime_overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if getattr(args, "nproc_per_node", None) is not None:
        extra.append(f"distributed.nproc_per_node={args.nproc_per_node}")
    if args.device:
        extra.append(f"device={args.device}")
    if args.skip_corrupt:
        extra.append("data.skip_corrupt=true")
    return extra


def _val_fraction(text: str) -> float | None:
    """`--val-fraction`: a share, or auto (None: `import_imagefolder` decides from the label count)."""
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from selftrain.data.dataset_info import DEFAULT_MAX_SIDE

    parser = argparse.ArgumentParser(prog="selftrain", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build a data set as WebDataset shards").add_subparsers(
        dest="source", required=True
    )
    digits = data.add_parser("digits", help="scikit-learn's bundled digits (1,797 real 8x8 images)")
    digits.add_argument("--out", required=True, type=Path, help="new folder for the shards and dataset.json")
    digits.add_argument(
        "--labels-per-class", type=int, default=5, help="labeled images per class (default 5)"
    )
    digits.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    digits.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of all images held out as val (default 0.1)"
    )
    digits.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of all images held out as test (default 0.2)"
    )
    digits.add_argument("--samples-per-shard", type=int, default=256, help="images per shard (default 256)")

    imp = data.add_parser("import", help="an ImageFolder tree: one subfolder per class")
    imp.add_argument("--labeled", required=True, type=Path, help="one subfolder of images per class")
    imp.add_argument("--unlabeled", required=True, type=Path, help="flat or nested folder of images")
    imp.add_argument(
        "--test", required=True, type=Path, help="one subfolder per class, a subset of --labeled's classes"
    )
    imp.add_argument(
        "--val-fraction",
        type=_val_fraction,
        default=None,
        help="share of --labeled held out as val; 0 = none (every label trains, stages keep their last "
        "weights, no val accuracy); default auto: 0.1 from 1,000 labels (100 val images, enough to "
        "choose checkpoints by), else 0",
    )
    imp.add_argument("--out", required=True, type=Path, help="new folder for the shards and dataset.json")
    imp.add_argument("--seed", type=int, default=0, help="seed of the val carve-out (default 0)")
    imp.add_argument("--samples-per-shard", type=int, default=1000, help="images per shard (default 1000)")
    imp.add_argument("--skip-corrupt", action="store_true", help="skip files PIL cannot read")
    imp.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help="store images with a longer side over this many pixels at this size, aspect kept "
        f"(default {DEFAULT_MAX_SIDE}: twice the largest training size; decoding a full-size camera "
        "photo on every draw would dominate a run); 0 keeps every original",
    )
    imp.add_argument(
        "--unlabeled-truth",
        action="store_true",
        help="--unlabeled is an ImageFolder tree whose class folders are for reports only "
        "(pseudo-label accuracy per iteration); training never reads them",
    )

    teacher = sub.add_parser("teacher", help="supervised teacher").add_subparsers(
        dest="action", required=True
    )
    ttrain = teacher.add_parser("train", help="train the teacher (iteration 0) on the labeled shards")
    ttrain.add_argument("--data", required=True, type=Path, help="data set folder (dataset.json + shards)")
    ttrain.add_argument(
        "--run-dir", required=True, type=Path, help="created when new; a killed run's teacher is resumed"
    )
    _add_config_args(ttrain)
    _add_nproc_arg(ttrain)

    timp = teacher.add_parser(
        "import",
        help="register an existing model as the teacher (iteration 0): evaluated and carded like a trained one",
        description="Bring your own teacher: the weights (.safetensors, or a checkpoint read with "
        "weights_only=True) must be a --model classifier for this data set's classes and channels. "
        "Inputs are resized to data.image_size (--set data.image_size=N).",
    )
    timp.add_argument("--run-dir", required=True, type=Path)
    timp.add_argument("--weights", required=True, type=Path, help="a .safetensors file or a checkpoint")
    timp.add_argument("--model", required=True, help="the timm model name the weights belong to")
    timp.add_argument("--data", type=Path, help="data set folder (required for a new run directory)")
    _add_config_args(timp)

    ev = sub.add_parser("eval", help="re-evaluate a saved iteration")
    ev.add_argument("--run-dir", required=True, type=Path)
    ev.add_argument("--iteration", type=int, required=True)
    ev.add_argument("--split", choices=["test", "val"], default="test")
    ev.add_argument("--data", type=Path, help="data set folder (default: the one the run recorded)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--json", action="store_true")

    pl = sub.add_parser(
        "pseudolabel",
        help="label the unlabeled shards with iteration K's model, then filter and balance",
        description="Writes RUN/iter-K/pseudo/: a label sidecar per unlabeled shard, then selection.json "
        "and confidence.png once every shard is labeled. Settings: the run config's `pseudolabel` section.",
    )
    pl.add_argument("--run-dir", required=True, type=Path)
    pl.add_argument("--iteration", type=int, default=0, help="label with this iteration's model (default 0)")
    pl.add_argument(
        "--shards",
        nargs="+",
        metavar="SHARD",
        help="only these unlabeled shards: indices or names (unlabeled-000003), space or comma separated",
    )
    pl.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override config `device`")
    pl.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable samples with a warning and a count"
    )
    pl.add_argument("--json", action="store_true", help="print exactly one JSON object")

    run = sub.add_parser("run", help="run a training loop in-process (Prefect's local ephemeral API)")
    run.add_argument("loop", choices=["noisy-student", "meta-pseudo-labels"], help="which loop")
    run.add_argument("--data", type=Path, help="data set folder (may be omitted once the run records it)")
    run.add_argument(
        "--run-dir", required=True, type=Path, help="created when new; an existing one is continued"
    )
    run.add_argument(
        "--iterations",
        type=int,
        default=1,
        help="noisy-student: student iterations to add (0: only finish an interrupted one)",
    )
    run.add_argument(
        "--from-iteration", type=int, help="noisy-student: keep iterations <= K, train a new K+1"
    )
    _add_config_args(run)
    _add_nproc_arg(run)

    srv = sub.add_parser(
        "serve", help="serve the Prefect deployments noisy-student/iter and meta-pseudo-labels/train"
    )
    srv.add_argument("--limit", type=int, help="at most this many concurrent flow runs")

    rep = sub.add_parser("report", help="per-iteration table and accuracy plot of a run")
    rep.add_argument("--run-dir", required=True, type=Path)
    rep.add_argument("--json", action="store_true", help="print exactly one JSON object")

    cmp = sub.add_parser("compare", help="supervised vs Noisy Student vs Meta Pseudo Labels on the same data")
    cmp.add_argument(
        "--noisy-student", required=True, type=Path, help="a finished noisy-student run directory"
    )
    cmp.add_argument("--mpl", required=True, type=Path, help="a finished meta-pseudo-labels run directory")
    cmp.add_argument("--json", action="store_true")

    pr = sub.add_parser(
        "predict",
        help="label images with a trained model: top-k classes and probabilities per image",
        description="One row per image (.jsonl or .csv, by the extension of --out), streamed in batches. "
        "Images get the transform evaluation uses, at the model card's input size.",
    )
    pr.add_argument("--run-dir", required=True, type=Path)
    pr.add_argument(
        "--iteration", type=int, help="model of this iteration (default: the run's current teacher)"
    )
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of image files (searched recursively)")
    src.add_argument("--split", help="a split of the data set, e.g. test or unlabeled")
    pr.add_argument("--data", type=Path, help="with --split: data set folder (default: the run's)")
    pr.add_argument("--out", required=True, type=Path, help="FILE.jsonl or FILE.csv")
    pr.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("--workers", type=int, default=0, help="DataLoader worker processes that decode")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"])
    pr.add_argument(
        "--skip-corrupt", action="store_true", help="write a row marked skipped for unreadable images"
    )
    pr.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    ex = sub.add_parser(
        "export",
        help="export a trained model to ONNX or TorchScript, with its model card beside it",
        description="Writes OUT and OUT.json (the model card with the preprocessing "
        "the model expects: input size, mean/std, class names). The batch axis is dynamic.",
    )
    ex.add_argument("--run-dir", required=True, type=Path)
    ex.add_argument(
        "--iteration", type=int, help="model of this iteration (default: the run's current teacher)"
    )
    ex.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    ex.add_argument("--out", required=True, type=Path)
    ex.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    st = sub.add_parser("status", help="one row per iteration of a run")
    st.add_argument("--run-dir", required=True, type=Path)
    st.add_argument("--json", action="store_true", help="print exactly one JSON object")
    return parser


def cmd_data(args: argparse.Namespace) -> None:
    if args.source == "digits":
        from selftrain.data.digits import build_digits

        info = build_digits(
            args.out,
            labels_per_class=args.labels_per_class,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            samples_per_shard=args.samples_per_shard,
        )
    else:
        from selftrain.data.imagefolder import import_imagefolder

        info = import_imagefolder(
            labeled=args.labeled,
            unlabeled=args.unlabeled,
            test=args.test,
            out=args.out,
            val_fraction=args.val_fraction,
            seed=args.seed,
            samples_per_shard=args.samples_per_shard,
            skip_corrupt=args.skip_corrupt,
            unlabeled_truth=args.unlabeled_truth,
            max_side=args.max_side,
        )
    sizes = ", ".join(f"{name} {split.total}" for name, split in info.splits.items())
    print(f"{args.out}: {info.num_classes} classes, {sizes} images")
    print(_recipe_line(info))


def _recipe_line(info: DatasetInfo) -> str:
    """What a run on this data set will start from, so the user sees it before training."""
    from selftrain.config import load_config
    from selftrain.recipes import recipe_for

    recipe = recipe_for(info.channels)
    size = load_config(None, recipe=recipe, stored_size=info.image_size).data.image_size
    height, width = info.image_size
    kind = "colour" if info.channels == 3 else "grayscale"
    return (
        f"images mostly {height}x{width} {kind}: runs use the {recipe} recipe (configs/{recipe}.yaml) "
        f"at {size}x{size} pixels (--set data.image_size=N to change)"
    )


def cmd_teacher(args: argparse.Namespace) -> None:
    (cmd_teacher_import if args.action == "import" else cmd_teacher_train)(args)


def cmd_teacher_import(args: argparse.Namespace) -> None:
    from selftrain.data.dataset_info import load_dataset
    from selftrain.device import resolve_device
    from selftrain.runstore import RunStore
    from teachers.imported import import_teacher

    store = RunStore(args.run_dir)
    data = args.data or (store.data_dir() if store.exists() else None)
    if data is None:
        raise SelftrainError(f"--data: {args.run_dir} is a new run directory; name the data set folder")
    dataset = load_dataset(data)
    cfg = store.open(data, args.config, _runtime_overrides(args))
    import_teacher(store, dataset, cfg, resolve_device(cfg.device), args.weights, args.model)
    print_status(store, as_json=False)


def cmd_teacher_train(args: argparse.Namespace) -> None:
    from selftrain import runlock
    from selftrain.data.dataset_info import load_dataset
    from selftrain.device import resolve_device
    from selftrain.run_inputs import check_inputs, note_input_size
    from selftrain.runstore import RunStore
    from teachers.supervised import train_teacher

    dataset = load_dataset(args.data)
    config = ([str(args.config)] if args.config else []) + _runtime_overrides(args)
    check_inputs(str(args.run_dir), str(args.data), config or None)  # a typo creates nothing
    store = RunStore(args.run_dir)
    with runlock.hold(args.run_dir, by=_command_line()):
        cfg = store.open(args.data, args.config, _runtime_overrides(args))
        if store.stage_state(0, "train") == "done":
            print(f"{store.iter_dir(0)}: teacher already trained; nothing to do")
        else:
            device = resolve_device(cfg.device)
            note_input_size(cfg, dataset, device)
            if cfg.distributed.nproc_per_node > 1:
                from selftrain.launch import launch_training

                launch_training(
                    "teacher", store.root, cfg, on_line=lambda line: print(line, file=sys.stderr, flush=True)
                )
            else:
                train_teacher(store, dataset, cfg, device)
    print_status(store, as_json=False)


def cmd_eval(args: argparse.Namespace) -> None:
    from selftrain.data.dataset_info import load_dataset
    from selftrain.device import prepare_model, resolve_device
    from selftrain.models import build_model
    from selftrain.runstore import RunStore
    from selftrain.stage import evaluate_split

    store = RunStore(args.run_dir)
    cfg = store.config()
    dataset = load_dataset(args.data or store.data_dir())
    dataset.split(args.split)  # an empty split (val imported with --val-fraction 0) is a one-line error
    weights, card = store.load_weights(args.iteration)
    if card["num_classes"] != dataset.info.num_classes:
        raise SelftrainError(
            f"{args.run_dir}: iteration {args.iteration} predicts {card['num_classes']} classes but "
            f"{dataset.index_path} has {dataset.info.num_classes}; evaluate on the data set it was trained on"
        )
    device = resolve_device(args.device or cfg.device)
    model = build_model(card["architecture"], num_classes=card["num_classes"], in_chans=card["in_chans"])
    model.load_state_dict(weights)
    model = prepare_model(model, device)
    result, skipped = evaluate_split(model, dataset, args.split, cfg, device, card["input_size"][-1])
    out = {
        "iteration": args.iteration,
        "split": args.split,
        **result.as_dict(dataset.info.classes),
        "skipped": skipped,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"iteration {args.iteration} {args.split}: top-1 {result.top1:.4f} on {result.count} images")
        for name, acc in out["per_class"].items():
            print(f"  class {name}: {'-' if acc is None else f'{acc:.4f}'}")


def cmd_pseudolabel(args: argparse.Namespace) -> None:
    from pseudolabel.iteration import pseudolabel_iteration
    from pseudolabel.label_shards import resolve_shards
    from selftrain import runlock
    from selftrain.data.dataset_info import load_dataset
    from selftrain.device import resolve_device
    from selftrain.runstore import RunStore

    store = RunStore(args.run_dir)
    store.manifest()  # a clear error when RUN is not a run directory
    cfg = store.config()
    shards = resolve_shards(load_dataset(store.data_dir()), args.shards)
    # Labelers of disjoint --shards may work side by side (pseudolabel/iteration.py); not beside a run.
    with runlock.hold(args.run_dir, by=_command_line(), shared=bool(args.shards)):
        out = pseudolabel_iteration(
            store,
            args.iteration,
            shards=shards,
            device=resolve_device(args.device or cfg.device),
            skip_corrupt=True if args.skip_corrupt else None,
        )
    if args.json:
        print(json.dumps(out))
        return
    lab = out["labeling"]
    print(
        f"{out['pseudo_dir']}: labeled {lab['labeled_shards']} shards ({lab['labeled_images']} images) "
        f"in {lab['seconds']:.1f} s{_phases(lab['phase_seconds'])}, reused {lab['reused_shards']}; "
        f"{lab['mode']} labels, T={lab['temperature']:g}"
        + (f"; {lab['skipped']} corrupt samples skipped" if lab["skipped"] else "")
    )
    sel = out["selection"]
    if sel is None:
        print(f"selection: waiting for {len(out['missing_shards'])} unlabeled shards")
        return
    print(
        f"selection: {sel['confident']} of {sel['images']} images at confidence >= {sel['confidence_threshold']:g}; "
        f"N = {sel['images_per_class']} per class ({sel['images_per_class_from']}) -> "
        f"{sel['selected_copies']} copies of {sel['selected_images']} images"
    )
    if sel["accuracy"]:
        acc = {k: v["accuracy"] if v else None for k, v in sel["accuracy"].items()}
        shown = ", ".join(f"{k.replace('_', ' ')} {'-' if v is None else f'{v:.4f}'}" for k, v in acc.items())
        print(f"pseudo-label accuracy: {shown}")
    counts = sel["per_class"]
    print(f"{'class':<12}{'predicted':>10}{'confident':>10}{'selected':>10}")
    for name in counts["predicted"]:
        print(
            f"{name:<12}{counts['predicted'][name]:>10}{counts['confident'][name]:>10}{counts['selected'][name]:>10}"
        )


STATUS_COLUMNS = [
    ("iteration", "iter"),
    ("role", "role"),
    ("model", "model"),
    ("params", "params"),
    ("flops", "FLOPs"),
    ("unlabeled_ratio", "ratio"),
    ("pseudo_label_accuracy", "pseudo-label acc"),
    ("val_accuracy", "val acc"),
    ("test_accuracy", "test acc"),
    ("state", "state"),
]


def print_status(store, as_json: bool) -> None:
    from selftrain.report import format_table

    rows = store.status_rows()
    if as_json:
        print(json.dumps({"iterations": rows}))
        return
    print(format_table(rows, STATUS_COLUMNS))
    ladder = _ladder_rows(store, rows)
    if ladder:
        print("\nEfficientNet ladder (depth x1.2^phi, width x1.1^phi, resolution x1.15^phi):")
        cols = [("phi", "phi"), ("model", "model"), ("depth", "depth"), ("width", "width")]
        cols += [("resolution", "resolution"), ("params", "params"), ("flops", "FLOPs")]
        print(format_table(ladder, cols))


def _ladder_rows(store, rows: list[dict]) -> list[dict]:
    """The ladder steps this run uses (and the next one), when its students climb the ladder."""
    from selftrain.data.dataset_info import load_dataset
    from selftrain.ladder import ladder_phi, ladder_step
    from selftrain.models import build_model, count_flops, count_parameters
    from students.noisy_student import student_model_name

    cfg = store.config()
    upcoming = student_model_name(cfg.student, max([r["iteration"] for r in rows] + [0]) + 1)
    names = [r["model"] for r in rows if r.get("model")] + [cfg.teacher.model, upcoming]
    phis = sorted({p for p in map(ladder_phi, names) if p is not None})
    if not phis:
        return []
    info = load_dataset(store.data_dir()).info
    out = []
    for phi in phis:
        step = ladder_step(phi)
        model = build_model(step.name, num_classes=info.num_classes, in_chans=info.channels)
        out.append(
            {
                "phi": phi,
                "model": step.name,
                "depth": round(step.depth, 3),
                "width": round(step.width, 3),
                "resolution": step.resolution,
                "params": count_parameters(model),
                "flops": count_flops(model, info.channels, step.resolution),
            }
        )
    return out


def cmd_run(args: argparse.Namespace) -> None:
    from selftrain import runlock
    from selftrain.report import format_table
    from selftrain.run_inputs import check_inputs, check_loop_options, open_run

    # Without PREFECT_API_URL the flow starts Prefect's ephemeral server, whose default 20 s start-up
    # limit fails on a busy machine (seen while training ran beside it); a minute more costs nothing.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

    if args.loop != "noisy-student" and (args.iterations != 1 or args.from_iteration is not None):
        raise SelftrainError("--iterations/--from-iteration: only for noisy-student")
    config = ([str(args.config)] if args.config else []) + _runtime_overrides(args)
    common = {
        "run_dir": str(args.run_dir),
        "data": str(args.data) if args.data else None,
        "config": config or None,
    }
    # Inputs and the lock are checked before Prefect is imported: a typo costs one line, no server.
    check_inputs(**common)
    with runlock.hold(args.run_dir, by=_command_line()):
        ctx = open_run(**common, announce=False)
        if args.loop == "noisy-student":
            check_loop_options(ctx.store, args.iterations, args.from_iteration)
            from flows.noisy_student import noisy_student

            rows = noisy_student(**common, iterations=args.iterations, from_iteration=args.from_iteration)
        else:
            from flows.meta_pseudo_labels import meta_pseudo_labels

            rows = meta_pseudo_labels(**common)
    print(format_table(rows))


def _phases(seconds: dict[str, float]) -> str:
    """` (reading + decoding 0.1 s, model 0.4 s, writing 0.0 s)`: whether the model waited for input."""
    if not any(seconds.values()):
        return ""
    return (
        f" (reading + decoding {seconds['input']:.1f} s, model {seconds['model']:.1f} s, "
        f"writing {seconds['write']:.1f} s)"
    )


def _command_line() -> str:
    """This command as the run directory's lock names it to a refused writer."""
    text = " ".join(["selftrain", *sys.argv[1:]])  # also under `python -m commands.cli`
    return f"`{text if len(text) <= 200 else text[:197] + '...'}`"


def cmd_compare(args: argparse.Namespace) -> None:
    from selftrain.report import compare_methods, format_table
    from selftrain.runstore import RunStore

    rows = compare_methods(RunStore(args.noisy_student), RunStore(args.mpl))
    if args.json:
        print(json.dumps({"methods": rows}))
        return
    cols = [
        ("method", "method"),
        ("model", "model"),
        ("params", "params"),
        ("val_accuracy", "val acc"),
        ("test_accuracy", "test acc"),
    ]
    print(format_table(rows, cols))
    best = max(rows, key=lambda r: r["test_accuracy"])
    print(f"\nbest on test: {best['method']} ({best['test_accuracy'] * 100:.2f}%)")


def cmd_serve(args: argparse.Namespace) -> None:
    from flows.deployments import serve_deployments

    serve_deployments(limit=args.limit)


def cmd_report(args: argparse.Namespace) -> None:
    from selftrain.report import format_table, run_summary, write_accuracy_plot
    from selftrain.runstore import RunStore

    store = RunStore(args.run_dir)
    summary = run_summary(store)
    plot = write_accuracy_plot(store)
    if args.json:
        print(json.dumps({**summary, "plot": str(plot)}))
        return
    print(format_table(summary["iterations"]))
    if summary["final"] is not None:
        t, f = summary["teacher"], summary["final"]
        print(
            f"\nteacher (iteration 0) test {t['test_accuracy'] * 100:.2f}% -> iteration {f['iteration']} "
            f"test {f['test_accuracy'] * 100:.2f}% ({summary['gain_points']:+.2f} points)"
        )
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"plot: {plot}")


def cmd_status(args: argparse.Namespace) -> None:
    from selftrain.runstore import RunStore

    print_status(RunStore(args.run_dir), as_json=args.json)


def cmd_predict(args: argparse.Namespace) -> None:
    from selftrain.data.dataset_info import load_dataset
    from selftrain.device import resolve_device
    from selftrain.predict import ImageFolderItems, SplitItems, output_format, predict
    from selftrain.runstore import RunStore
    from selftrain.saved_model import load_saved_model

    output_format(args.out)  # refuse a bad --out before loading anything
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        raise SelftrainError("--top-k and --batch-size must be at least 1, --workers at least 0")
    store = RunStore(args.run_dir)
    cfg = store.config()
    device = resolve_device(args.device or cfg.device)
    if args.images is not None:
        if not args.images.is_dir():
            raise SelftrainError(f"--images {args.images}: folder not found")
        if args.data is not None:
            raise SelftrainError("--data goes with --split, not --images")
    saved = load_saved_model(store, args.iteration, device)
    if args.images is not None:
        source = ImageFolderItems(args.images, saved.image_size, saved.in_chans)
        id_field, extra, total = "path", [], None
    else:
        dataset = load_dataset(args.data or store.data_dir())
        if dataset.info.classes != saved.classes or dataset.info.channels != saved.in_chans:
            raise SelftrainError(
                f"{dataset.index_path}: its classes or channels differ from iteration {saved.iteration}'s "
                "model card; predict on the data set the model was trained on, or use --images"
            )
        source = SplitItems(
            dataset,
            args.split,
            saved.image_size,
            verify=cfg.data.verify_checksums,
            skip_corrupt=args.skip_corrupt,
        )
        extra = ["shard", *(["label"] if source.split.labeled else [])]
        id_field, total = "key", source.split.total
    out = predict(
        saved,
        source,
        args.out,
        id_field=id_field,
        extra_fields=extra,
        device=device,
        top_k=args.top_k,
        batch_size=args.batch_size,
        num_workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        total=total,
    )
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['out']}: {out['predicted']} images predicted by iteration {out['iteration']}"
            + (f", {out['skipped']} unreadable (rows marked skipped)" if out["skipped"] else "")
            + f" in {out['seconds']:.1f} s"
        )


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from selftrain.export import export_model
    from selftrain.runstore import RunStore
    from selftrain.saved_model import load_saved_model

    saved = load_saved_model(RunStore(args.run_dir), args.iteration, torch.device("cpu"))
    out = export_model(saved, args.format, args.out)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['out']}: iteration {out['iteration']} as {out['format']}; model card {out['card']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for name in ("selftrain", "pseudolabel"):  # our progress lines; libraries stay at WARNING
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    handlers = {
        "data": cmd_data,
        "teacher": cmd_teacher,
        "eval": cmd_eval,
        "pseudolabel": cmd_pseudolabel,
        "run": cmd_run,
        "report": cmd_report,
        "serve": cmd_serve,
        "compare": cmd_compare,
        "status": cmd_status,
        "predict": cmd_predict,
        "export": cmd_export,
    }
    try:
        handlers[args.command](args)
    except SelftrainError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
