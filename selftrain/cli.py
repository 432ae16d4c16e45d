"""`selftrain` command line. Every subcommand is a thin shell over a plain function.

selftrain data digits --out data/digits
selftrain teacher train --data data/digits --run-dir runs/demo
selftrain status --run-dir runs/demo
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from selftrain.errors import SelftrainError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="YAML run config (default: built-in digits recipe, see configs/digits.yaml)"
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


def _runtime_overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if args.device:
        extra.append(f"device={args.device}")
    if args.skip_corrupt:
        extra.append("data.skip_corrupt=true")
    return extra


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selftrain", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build a data set as WebDataset shards").add_subparsers(
        dest="source", required=True
    )
    digits = data.add_parser("digits", help="scikit-learn's bundled digits (1,797 real 8x8 images)")
    digits.add_argument("--out", required=True, type=Path)
    digits.add_argument("--labels-per-class", type=int, default=5)
    digits.add_argument("--seed", type=int, default=0)
    digits.add_argument("--val-fraction", type=float, default=0.1)
    digits.add_argument("--test-fraction", type=float, default=0.2)
    digits.add_argument("--samples-per-shard", type=int, default=256)

    imp = data.add_parser("import", help="an ImageFolder tree: one subfolder per class")
    imp.add_argument("--labeled", required=True, type=Path)
    imp.add_argument("--unlabeled", required=True, type=Path, help="flat or nested folder of images")
    imp.add_argument("--test", required=True, type=Path)
    imp.add_argument("--val-fraction", type=float, default=0.1, help="share of --labeled held out as val")
    imp.add_argument("--out", required=True, type=Path)
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--samples-per-shard", type=int, default=1000)
    imp.add_argument("--skip-corrupt", action="store_true", help="skip files PIL cannot read")

    teacher = sub.add_parser("teacher", help="supervised teacher").add_subparsers(
        dest="action", required=True
    )
    ttrain = teacher.add_parser("train", help="train the teacher (iteration 0) on the labeled shards")
    ttrain.add_argument("--data", required=True, type=Path)
    ttrain.add_argument("--run-dir", required=True, type=Path)
    _add_config_args(ttrain)

    ev = sub.add_parser("eval", help="re-evaluate a saved iteration")
    ev.add_argument("--run-dir", required=True, type=Path)
    ev.add_argument("--iteration", type=int, required=True)
    ev.add_argument("--split", choices=["test", "val"], default="test")
    ev.add_argument("--data", type=Path, help="data set folder (default: the one the run recorded)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--json", action="store_true")

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
        )
    sizes = ", ".join(f"{name} {split.total}" for name, split in info.splits.items())
    print(f"{args.out}: {info.num_classes} classes, {sizes} images")


def cmd_teacher_train(args: argparse.Namespace) -> None:
    from selftrain.data.dataset_info import load_dataset
    from selftrain.device import resolve_device
    from selftrain.runstore import RunStore
    from teachers.supervised import train_teacher

    dataset = load_dataset(args.data)
    store = RunStore(args.run_dir)
    cfg = store.open(args.data, args.config, _runtime_overrides(args))
    if store.stage_state(0, "train") == "done":
        print(f"{store.iter_dir(0)}: teacher already trained; nothing to do")
    else:
        train_teacher(store, dataset, cfg, resolve_device(cfg.device))
    print_status(store, as_json=False)


def cmd_eval(args: argparse.Namespace) -> None:
    from selftrain.data.dataset_info import load_dataset
    from selftrain.device import prepare_model, resolve_device
    from selftrain.models import build_model
    from selftrain.runstore import RunStore
    from teachers.supervised import evaluate_split

    store = RunStore(args.run_dir)
    cfg = store.config()
    dataset = load_dataset(args.data or store.data_dir())
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
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": card["input_size"][-1]})})
    result, skipped = evaluate_split(model, dataset, args.split, cfg, device)
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


def print_status(store, as_json: bool) -> None:
    rows = store.status_rows()
    if as_json:
        print(json.dumps({"iterations": rows}))
        return
    cols = ["iteration", "role", "model", "params", "val_accuracy", "test_accuracy", "state"]
    fmt = {
        "params": lambda v: f"{v / 1e6:.2f}M",
        "val_accuracy": "{:.4f}".format,
        "test_accuracy": "{:.4f}".format,
    }
    table = [[("-" if r[c] is None else fmt.get(c, str)(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))


def cmd_status(args: argparse.Namespace) -> None:
    from selftrain.runstore import RunStore

    print_status(RunStore(args.run_dir), as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handlers = {
        "data": cmd_data,
        "teacher": cmd_teacher_train,
        "eval": cmd_eval,
        "status": cmd_status,
    }
    try:
        handlers[args.command](args)
    except SelftrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
