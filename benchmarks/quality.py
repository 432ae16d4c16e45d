"""Accuracy of the three methods, over seeds, on digits and on real colour photos.

    .venv/bin/python benchmarks/quality.py                       # table; 3 seeds; digits + dev photos
    .venv/bin/python benchmarks/quality.py --json --seeds 3      # one JSON object
    .venv/bin/python benchmarks/quality.py --first-seed 3 --seeds 2 --keep DIR  # seeds 3 and 4 only
    .venv/bin/python benchmarks/quality.py --data ../shared/data/cifar10-dev-2796.npz --only photos
    .venv/bin/python benchmarks/quality.py --data DATASET_DIR    # an imported data set instead
    .venv/bin/python benchmarks/quality.py --merge A.json B.json # one table from earlier --json runs
    .venv/bin/python benchmarks/quality.py --only photos --unlabeled-fraction 0.5  # half the pool
    .venv/bin/python benchmarks/quality.py --only photos --labels-per-class 10     # fewer labels

Each method runs as a user runs it: `selftrain run noisy-student --iterations 3` (its iteration 0
is the supervised teacher, the baseline) and `selftrain run meta-pseudo-labels` (finetuned
student), each a separate process with the default config for the data set (the recipe the CLI
picks) and `--set seed=S`. The data split is fixed (seed 0); the seeds vary the training. Photos
from an .npz are written as an ImageFolder tree (25 labels per class by default, 30% test, the
rest unlabeled with report-only truth) and imported with `selftrain data import`, the path users'
photos take. `minutes` is the wall time of one run (NS: teacher + 3 iterations; MPL: teacher +
joint training + finetune), on whatever machine this runs.

The control ("NS without pseudo-labels", skipped with --no-control) is the same Noisy Student run
with `student.pseudo_loss_weight=0`: the same students, steps, noise and labeled batches, only the
pseudo-label loss switched off. Students see the labels for more steps than the teacher did, so
part of NS's gain over the teacher is that alone; NS minus the control is what the unlabeled
photos add, which is the number a user deciding whether to collect them wants.

The MPL control (`--mpl-control`, off by default: it adds an MPL run per seed) is the same MPL run
with `mpl.feedback_weight=0`: the teacher learns from its labels and UDA only, never from the
student's feedback, and the student, its labels and its finetune are otherwise the same. MPL minus
it ("feedback adds") is what the meta signal itself is worth on the data set.

JSON: {"<data set>": {"<method>": {"test_accuracy_mean", "test_accuracy_std", "minutes",
"test_accuracy": [per seed], ...}, ...}, "config": {...}}; NS also lists `per_iteration_mean`,
`seeds_rising_every_iteration` and, with the control, `pseudo_label_gain_points_mean`; with
`--mpl-control`, `mpl_no_feedback` and `mpl.feedback_gain_points_mean`; each data set also
gives `labeled_images`, `val_images` and `unlabeled_images`, the splits its runs trained on (the
import holds a val split out of the labels only from 1,000 labels up).

`--unlabeled-fraction F` (photos from an .npz) imports only that share of the unlabeled pool,
evenly per class, with labeled and test exactly as at 1: one point of a learning curve over the
pool's size, for telling whether more unlabeled photos would help a method.
`--labels-per-class N` (photos from an .npz) is a point of the curve over the labels: the test
split stays the same images for every N, a smaller N's labels are a subset of a larger N's, and
the images no N labels go to the unlabeled pool.

`--merge` trains nothing: it pools the per-seed runs of earlier `--json` outputs (say seeds 0-2
one day, 3-4 the next, within a CPU's time window) into one summary, as if one invocation had run
every seed. It refuses outputs whose iterations or overrides differ, or that repeat a seed; that
they came from the same code and data is for the caller to know (`--keep` the work folder).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the repository, not benchmarks/, first

from selftrain.data.arrays import load_npz_images, write_imagefolder  # noqa: E402
from selftrain.data.dataset_info import load_dataset  # noqa: E402
from selftrain.errors import SelftrainError  # noqa: E402

DEV_PHOTOS = ROOT.parent / "shared" / "data" / "cifar10-dev-2796.npz"
METHODS = ("supervised", "noisy_student", "no_pseudo_labels", "mpl", "mpl_no_feedback")
CONTROL = "student.pseudo_loss_weight=0"
MPL_CONTROL = "mpl.feedback_weight=0"
DEFAULT_LABELS_PER_CLASS = 25
# per data set in the JSON: key -> the split it counts
SPLIT_COUNTS = {"labeled_images": "labeled", "val_images": "val", "unlabeled_images": "unlabeled"}
MINUTES = {"supervised": "ns_minutes", "noisy_student": "ns_minutes", "no_pseudo_labels": "control_minutes",
           "mpl": "mpl_minutes", "mpl_no_feedback": "mpl_control_minutes"}  # fmt: skip


# The console script of the interpreter running this file (the venv's), as a user would call it.
SELFTRAIN = str(Path(sys.executable).parent / "selftrain")


def _selftrain(*args: str, log: Path) -> None:
    cmd = [SELFTRAIN, *args]
    with log.open("a") as out:
        out.write(f"$ selftrain {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"quality: `selftrain {' '.join(args)}` failed (exit {done.returncode}); see {log}")


def _json(*args: str) -> dict:
    out = subprocess.run([SELFTRAIN, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout)


def build_photos(
    source: Path, work: Path, labels_per_class: int, log: Path, unlabeled_fraction: float = 1.0
) -> Path:
    if (source / "dataset.json").is_file():
        return source
    images, labels, classes = load_npz_images(source)
    # each split its own folder: a kept work folder reused for another point never mixes two trees
    name = "photos" + (f"-labels{labels_per_class}" if labels_per_class != DEFAULT_LABELS_PER_CLASS else "")
    name += f"-unlabeled{unlabeled_fraction:g}" if unlabeled_fraction != 1.0 else ""
    tree = work / f"{name}-tree"
    write_imagefolder(images, labels, classes, tree, labels_per_class=labels_per_class, seed=0,
                      unlabeled_fraction=unlabeled_fraction)  # fmt: skip
    out = work / name
    _selftrain(
        "data", "import", "--labeled", str(tree / "labeled"), "--unlabeled", str(tree / "unlabeled"),
        "--test", str(tree / "test"), "--out", str(out), "--unlabeled-truth", log=log,
    )  # fmt: skip
    return out


def _ns_rows(run: Path) -> list[dict]:
    return [r for r in _json("report", "--run-dir", str(run), "--json")["iterations"] if r["state"] == "done"]


def _rows_by_role(run: Path) -> dict[str, dict]:
    """An MPL run's status rows by role (teacher, mpl-teacher, mpl-student, mpl-finetuned)."""
    return {r["role"]: r for r in _json("status", "--run-dir", str(run), "--json")["iterations"]}


def run_seed(
    data: Path,
    work: Path,
    seed: int,
    iterations: int,
    extra: list[str],
    log: Path,
    control: bool = True,
    mpl_control: bool = False,
) -> dict:
    sets = [a for s in [f"seed={seed}", *extra] for a in ("--set", s)]
    ns, mpl = work / f"ns-seed{seed}", work / f"mpl-seed{seed}"
    started = time.perf_counter()
    _selftrain("run", "noisy-student", "--data", str(data), "--run-dir", str(ns),
               "--iterations", str(iterations), *sets, log=log)  # fmt: skip
    ns_minutes = (time.perf_counter() - started) / 60
    out: dict = {}
    if control:
        nopl = work / f"ns-no-pseudo-labels-seed{seed}"
        started = time.perf_counter()
        _selftrain("run", "noisy-student", "--data", str(data), "--run-dir", str(nopl),
                   "--iterations", str(iterations), *sets, "--set", CONTROL, log=log)  # fmt: skip
        control_rows = _ns_rows(nopl)
        out = {"no_pseudo_labels": control_rows[-1]["test_accuracy"],
               "no_pseudo_labels_per_iteration": [r["test_accuracy"] for r in control_rows],
               "control_minutes": (time.perf_counter() - started) / 60}  # fmt: skip
    started = time.perf_counter()
    _selftrain("run", "meta-pseudo-labels", "--data", str(data), "--run-dir", str(mpl), *sets, log=log)
    mpl_minutes = (time.perf_counter() - started) / 60
    if mpl_control:
        nofb = work / f"mpl-no-feedback-seed{seed}"
        started = time.perf_counter()
        _selftrain("run", "meta-pseudo-labels", "--data", str(data), "--run-dir", str(nofb), *sets,
                   "--set", MPL_CONTROL, log=log)  # fmt: skip
        nofb_rows = _rows_by_role(nofb)
        out |= {"mpl_no_feedback": nofb_rows["mpl-finetuned"]["test_accuracy"],
                "mpl_no_feedback_teacher": nofb_rows["mpl-teacher"]["test_accuracy"],
                "mpl_control_minutes": (time.perf_counter() - started) / 60}  # fmt: skip
    rows = _ns_rows(ns)
    mpl_rows = _rows_by_role(mpl)
    return {
        "seed": seed,
        "supervised": rows[0]["test_accuracy"],
        "noisy_student": rows[-1]["test_accuracy"],
        "per_iteration": [r["test_accuracy"] for r in rows],
        "pseudo_label_accuracy": [r.get("pseudo_label_accuracy") for r in rows[1:]],
        "params": [r["params"] for r in rows],
        "mpl": mpl_rows["mpl-finetuned"]["test_accuracy"],
        "mpl_student": mpl_rows["mpl-student"]["test_accuracy"],
        "mpl_teacher": mpl_rows["mpl-teacher"]["test_accuracy"],
        "mpl_teacher_supervised": mpl_rows.get("teacher", {}).get("test_accuracy"),
        "ns_minutes": ns_minutes,
        "mpl_minutes": mpl_minutes,
        **out,
    }


def _methods(runs: list[dict]) -> list[str]:
    return [m for m in METHODS if all(m in r for r in runs)]


def summarize(runs: list[dict]) -> dict:
    def stats(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    out: dict = {}
    means: dict[str, float] = {}  # unrounded, so gains are not differences of rounded means
    for method in _methods(runs):
        mean, std = stats([r[method] for r in runs])
        means[method] = mean
        minutes = statistics.fmean(r[MINUTES[method]] for r in runs)
        out[method] = {
            "test_accuracy_mean": round(mean, 4),
            "test_accuracy_std": round(std, 4),
            "minutes": round(minutes, 2),
            "test_accuracy": [round(r[method], 4) for r in runs],
        }
    out["supervised"]["minutes"] = None  # part of the Noisy Student run (its iteration 0)
    per_iter = list(zip(*[r["per_iteration"] for r in runs], strict=True))
    out["noisy_student"]["per_iteration_mean"] = [round(statistics.fmean(v), 4) for v in per_iter]
    # The bar is a student better than its teacher at every iteration, in every seed.
    out["noisy_student"]["seeds_rising_every_iteration"] = sum(
        all(b > a for a, b in itertools.pairwise(r["per_iteration"])) for r in runs
    )

    def points_over(method: str, base: str) -> float:
        return round((means[method] - means[base]) * 100, 2)

    for method in ("noisy_student", "no_pseudo_labels", "mpl", "mpl_no_feedback"):
        if method in out:
            out[method]["gain_points_mean"] = points_over(method, "supervised")
    if "no_pseudo_labels" in out:
        # What the unlabeled images add beyond the students' extra training on the labels.
        out["noisy_student"]["pseudo_label_gain_points_mean"] = points_over(
            "noisy_student", "no_pseudo_labels"
        )
    if "mpl_no_feedback" in out:  # what the teacher's learning from the student's feedback adds
        out["mpl"]["feedback_gain_points_mean"] = points_over("mpl", "mpl_no_feedback")
    out["runs"] = runs
    return out


def merge_results(outputs: list[dict]) -> dict:
    """Pool earlier invocations' per-seed runs, data set by data set, and summarize them afresh.

    Raises ValueError, naming the field, when the outputs cannot be pooled.
    """
    if not outputs:
        raise ValueError("nothing to merge")
    config = dict(outputs[0]["config"])
    # outputs from before these keys were recorded used the whole pool and 25 labels per class
    unset = {"unlabeled_fraction": 1.0, "labels_per_class": DEFAULT_LABELS_PER_CLASS}
    for other in outputs[1:]:
        for key in ("iterations", "overrides", "unlabeled_fraction", "labels_per_class"):
            mine, theirs = config.get(key, unset.get(key)), other["config"].get(key, unset.get(key))
            if theirs != mine:
                raise ValueError(
                    f"config.{key} differs ({mine!r} vs {theirs!r}): runs of different settings cannot be pooled"
                )
    seeds = [s for o in outputs for s in o["config"]["seeds"]]
    repeated = sorted(s for s, n in collections.Counter(seeds).items() if n > 1)
    if repeated:
        raise ValueError(
            f"config.seeds: seed(s) {repeated} appear in more than one output; merge each seed once"
        )
    # A control counts only if every output ran it: a summary's methods are those all runs have.
    for key in ("control", "mpl_control"):
        config[key] = config.get(key) if all(o["config"].get(key) for o in outputs) else None
    config["seeds"] = sorted(seeds)
    merged: dict = {"config": config}
    names = list(dict.fromkeys(n for o in outputs for n in o if n != "config"))  # in order, each once
    for name in names:
        if not all(name in o for o in outputs):
            raise ValueError(
                f"data set {name!r} is missing from some outputs: merge outputs of the same --only"
            )
        runs = sorted((r for o in outputs for r in o[name]["runs"]), key=lambda r: r["seed"])
        merged[name] = summarize(runs)
        for split in SPLIT_COUNTS:  # kept where every output recorded the same count
            counts = {o[name].get(split) for o in outputs}
            if len(counts) == 1 and None not in counts:
                merged[name][split] = counts.pop()
    return merged


def print_table(results: dict) -> None:
    print(f"{'data set':<10} {'method':<24} {'test accuracy':>18} {'minutes/run':>12}")
    names = {"supervised": "supervised (teacher)", "no_pseudo_labels": "NS without pseudo-labels",
             "mpl": "Meta Pseudo Labels", "mpl_no_feedback": "MPL without feedback"}  # fmt: skip
    for data, methods in results.items():
        if data == "config":
            continue
        names["noisy_student"] = (
            f"Noisy Student (iter {len(methods['noisy_student']['per_iteration_mean']) - 1})"
        )
        for m in (m for m in METHODS if m in methods):
            r = methods[m]
            acc = f"{r['test_accuracy_mean'] * 100:.2f} ± {r['test_accuracy_std'] * 100:.2f}%"
            minutes = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
            gain = f"  ({r['gain_points_mean']:+.2f})" if "gain_points_mean" in r else ""
            print(f"{data:<10} {names[m]:<24} {acc:>18} {minutes:>12}{gain}")
        per_iter = " -> ".join(f"{a * 100:.2f}" for a in methods["noisy_student"]["per_iteration_mean"])
        rising = methods["noisy_student"]["seeds_rising_every_iteration"]
        print(f"{data:<10} {'NS per iteration (mean)':<24} {per_iter}  (rising every iteration in "
              f"{rising} of {len(methods['runs'])} seeds)")  # fmt: skip
        if "labeled_images" in methods:
            print(
                f"{data:<10} {'labels (val)':<24} {methods['labeled_images']} ({methods['val_images']}) images"
            )
        if "unlabeled_images" in methods:
            print(f"{data:<10} {'unlabeled pool':<24} {methods['unlabeled_images']} images")
        if "pseudo_label_gain_points_mean" in methods["noisy_student"]:
            print(f"{data:<10} {'pseudo-labels add':<24} "
                  f"{methods['noisy_student']['pseudo_label_gain_points_mean']:+.2f} points (NS minus the control)")  # fmt: skip
        if "feedback_gain_points_mean" in methods["mpl"]:
            print(f"{data:<10} {'MPL feedback adds':<24} "
                  f"{methods['mpl']['feedback_gain_points_mean']:+.2f} points (MPL minus its control)")  # fmt: skip


def _emit(results: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=1))
    else:
        print_table(results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seeds", type=int, default=3, help="how many training seeds (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from here (default 0: seeds 0..N-1)")
    p.add_argument("--data", type=Path, default=DEV_PHOTOS, help="photos: an .npz or an imported data set")
    p.add_argument("--only", choices=["digits", "photos"], help="run one data set only")
    p.add_argument("--labels-per-class", type=int, default=None,
                   help="photos from an .npz: labels per class (default 25); the test split stays the same")  # fmt: skip
    p.add_argument("--unlabeled-fraction", type=float, default=1.0,
                   help="photos from an .npz: keep this share of the unlabeled pool, evenly per class; "
                   "labeled and test unchanged (default 1: a learning curve over the pool's size)")  # fmt: skip
    p.add_argument("--iterations", type=int, default=3, help="Noisy Student iterations (default 3)")
    p.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    p.add_argument("--no-control", action="store_true",
                   help="skip the run without pseudo-labels (a third less time; no 'what pseudo-labels add')")  # fmt: skip
    p.add_argument("--mpl-control", action="store_true",
                   help="also run MPL with mpl.feedback_weight=0 (one more MPL run a seed): what the meta signal adds")  # fmt: skip
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="train nothing: pool the seeds of earlier --json outputs into one table")  # fmt: skip
    args = p.parse_args()
    if args.merge:
        outputs = []
        for path in args.merge:
            try:
                outputs.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                p.error(f"--merge: cannot read {path}: {exc} (give benchmarks/quality.py --json outputs)")
        try:
            results = merge_results(outputs)
        except ValueError as exc:
            p.error(f"--merge: {exc}")
        except (KeyError, TypeError) as exc:
            p.error(f"--merge: not a benchmarks/quality.py --json output ({exc!r}); give those files only")
        _emit(results, args.json)
        return 0
    if args.seeds < 1 or args.first_seed < 0:
        p.error("--seeds must be at least 1 and --first-seed at least 0")
    if not 0 < args.unlabeled_fraction <= 1:
        p.error(f"--unlabeled-fraction must be in (0, 1] (got {args.unlabeled_fraction})")
    if args.labels_per_class is not None and args.labels_per_class < 1:
        p.error(f"--labels-per-class must be at least 1 (got {args.labels_per_class})")
    from_npz = args.only != "digits" and not (args.data / "dataset.json").is_file()
    for flag, given in (("--unlabeled-fraction", args.unlabeled_fraction != 1),
                        ("--labels-per-class", args.labels_per_class is not None)):  # fmt: skip
        if given and not from_npz:
            p.error(f"{flag} splits photos from an .npz before the import; "
                    "give --data an .npz (not an imported data set) and do not pass --only digits")  # fmt: skip
    labels_per_class = args.labels_per_class or DEFAULT_LABELS_PER_CLASS

    os.environ.setdefault("TQDM_DISABLE", "1")
    work = args.keep or Path(tempfile.mkdtemp(prefix="selftrain-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "quality.log"
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    results: dict = {"config": {"seeds": list(seeds), "iterations": args.iterations, "overrides": args.extra,
                                "control": None if args.no_control else CONTROL,
                                "mpl_control": MPL_CONTROL if args.mpl_control else None,
                                "unlabeled_fraction": args.unlabeled_fraction,
                                "labels_per_class": labels_per_class}}  # fmt: skip
    sets: list[tuple[str, Path]] = []
    if args.only in (None, "digits"):
        digits = work / "digits"
        if not (digits / "dataset.json").is_file():
            _selftrain("data", "digits", "--out", str(digits), log=log)
        sets.append(("digits", digits))
    if args.only in (None, "photos"):
        if args.data.exists():
            try:  # a bad .npz or more labels per class than it holds: one line, before any training
                photos = build_photos(args.data, work, labels_per_class, log, args.unlabeled_fraction)
            except SelftrainError as exc:
                p.error(str(exc))
            sets.append(("photos", photos))
        else:
            print(f"quality: {args.data} not found; photos skipped", file=sys.stderr)
    control = not args.no_control
    for name, data in sets:
        runs = []
        for seed in seeds:
            runs.append(
                run_seed(data, work / name, seed, args.iterations, args.extra, log, control, args.mpl_control)
            )
            print(f"quality: {name} seed {seed}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
        # the splits the runs trained on: what a learning curve over either size is plotted against
        dataset = load_dataset(data)
        results[name] = summarize(runs) | {key: dataset.count(split) for key, split in SPLIT_COUNTS.items()}
    _emit(results, args.json)
    print(f"quality: runs and log in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
