"""What a person looks at after a run: the per-iteration table and the accuracy plot.

Plain functions over the run directory; the CLI prints them, the flows publish them as Prefect
artifacts. The plot is drawn with matplotlib's object API on the Agg canvas (no display, no
pyplot global state), so it works in worker threads and on headless machines.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

from selftrain import atomic
from selftrain.errors import SelftrainError
from selftrain.runstore import RunStore

PLOT_NAME = "accuracy.png"
TABLE_COLUMNS = [
    ("iteration", "iter"),
    ("role", "role"),
    ("model", "model"),
    ("params", "params"),
    ("labeled_batch", "labeled B"),
    ("unlabeled_batch", "unlabeled B"),
    ("unlabeled_ratio", "ratio"),
    ("pseudo_label_accuracy", "pseudo-label acc"),
    ("val_accuracy", "val acc"),
    ("test_accuracy_before_finetune", "test acc before finetune"),
    ("test_accuracy", "test acc"),
]


# Shown only when some row has a value (a run whose students are finetuned on labeled data).
OPTIONAL_COLUMNS = {"test_accuracy_before_finetune"}


def _shown(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [c for c in columns if c[0] not in OPTIONAL_COLUMNS or any(r.get(c[0]) is not None for r in rows)]


def format_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "params":
        return f"{value / 1e6:.2f}M"
    if key == "flops":
        return f"{value / 1e6:.1f}M"
    if isinstance(value, float):
        return f"{value * 100:.2f}%" if "accuracy" in key else f"{value:g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = TABLE_COLUMNS) -> str:
    columns = _shown(rows, columns)
    cells = [[format_value(key, r.get(key)) for key, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = TABLE_COLUMNS) -> str:
    columns = _shown(rows, columns)
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(k, r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def accuracy_plot_png(rows: list[dict[str, Any]], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = [r for r in rows if r.get("test_accuracy") is not None]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    its = [r["iteration"] for r in done]
    for key, label, style in (
        ("test_accuracy", "test", "o-"),
        ("val_accuracy", "val", "s--"),
        ("pseudo_label_accuracy", "pseudo-labels used", "^:"),
    ):
        pts = [(r["iteration"], r[key] * 100) for r in done if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    for r in done:
        ax.annotate(
            r.get("model") or "",
            (r["iteration"], r["test_accuracy"] * 100),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=7,
        )
    ax.set_xticks(its or [0])
    ax.set_xlabel("iteration (0 = teacher)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def run_summary(store: RunStore) -> dict[str, Any]:
    """Rows plus the comparison people ask for first: the final model against the teacher."""
    rows = store.status_rows()
    done = [r for r in rows if r["state"] == "done"]
    teacher = next((r for r in done if r["iteration"] == 0), None)
    final = max(done, key=lambda r: r["iteration"]) if len(done) > 1 else None
    gain = None
    if teacher and final:
        gain = round((final["test_accuracy"] - teacher["test_accuracy"]) * 100, 3)
    return {
        "iterations": rows,
        "teacher": teacher,
        "final": final,
        "gain_points": gain,
        "notes": gain_notes(done),
    }


def summary_markdown(rows: list[dict[str, Any]], flow_name: str, root: Path) -> str:
    """The run summary the Prefect UI shows: latest model, the notes `selftrain report` prints (a
    user watching the UI must learn as plainly when the loop did not pay), table, embedded plot."""
    png = base64.b64encode(accuracy_plot_png(rows, f"accuracy per iteration: {root.name}")).decode()
    latest = max(
        (r for r in rows if r.get("test_accuracy") is not None), key=lambda r: r["iteration"], default=None
    )
    lines: list[str] = [f"# {flow_name}: `{root}`", ""]
    if latest is not None:
        lines.append(
            f"Latest model: iteration {latest['iteration']} ({latest['role']}, {latest['model']}), "
            f"val {format_value('val_accuracy', latest['val_accuracy'])}, "
            f"test {format_value('test_accuracy', latest['test_accuracy'])}."
        )
    notes = gain_notes([r for r in rows if r.get("state") == "done"])
    if notes:
        lines += ["", *(f"- **Note:** {note}" for note in notes)]
    lines += ["", markdown_table(rows), "", f"![accuracy per iteration](data:image/png;base64,{png})", ""]
    return "\n".join(lines)


def accuracy_noise_points(accuracy: float, count: int | None) -> float | None:
    """One binomial standard error of an accuracy measured on `count` test images, in points."""
    if not count:
        return None
    return 100 * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / count)


def gain_notes(done: list[dict[str, Any]]) -> list[str]:
    """Say plainly when self-training did not pay: a user reading "+1.4 points" on 800 test images
    should learn that this is within the split's noise, and that a later iteration was worse than
    an earlier one (so the model to keep is not the last)."""
    teacher = next((r for r in done if r["iteration"] == 0), None)
    # Noisy Student's students; for an MPL run, only its finetuned student is the method's result.
    students = sorted((r for r in done if r.get("role") == "student"), key=lambda r: r["iteration"])
    students = students or [r for r in done if r.get("role") == "mpl-finetuned"]
    if teacher is None or not students or teacher.get("test_accuracy") is None:
        return []
    final = students[-1]
    gain = (final["test_accuracy"] - teacher["test_accuracy"]) * 100
    noise = accuracy_noise_points(teacher["test_accuracy"], teacher.get("test_count"))
    notes = []
    if gain <= 0:
        notes.append(
            f"self-training did not pay here: iteration {final['iteration']} is {gain:+.2f} points "
            "against its teacher"
        )
    elif noise is not None and gain < noise:
        notes.append(
            f"the gain ({gain:+.2f} points) is within the test split's noise (one standard error: "
            f"{noise:.2f} points on {teacher['test_count']} images)"
        )
    joint = {  # MPL's joint-stage models
        r["role"]: r
        for r in done
        if r.get("role") in ("mpl-teacher", "mpl-student") and r.get("test_accuracy") is not None
    }
    if "mpl-teacher" in joint:
        row = joint["mpl-teacher"]
        acc, fell = row["test_accuracy"], (teacher["test_accuracy"] - row["test_accuracy"]) * 100
        if noise is not None and fell > noise:  # the student learns from this teacher's labels
            notes.append(
                f"the MPL teacher ended at {acc * 100:.2f}%, {fell:.2f} points below "
                "the supervised teacher: its joint training (UDA on its own confident predictions, the "
                "student's feedback) lost accuracy on this data; compare `selftrain run noisy-student`"
            )
    if "mpl-student" in joint:
        acc = joint["mpl-student"]["test_accuracy"]
        drop = (teacher["test_accuracy"] - acc) * 100
        if drop > 0:  # the joint stage is MPL's own contribution; the finetune is plain supervision
            notes.append(
                f"before its labeled finetune the MPL student read {acc * 100:.2f}%, "
                f"{drop:.2f} points below its teacher: the joint teacher-student training lowered test "
                f"accuracy here and the finetune brought it to {final['test_accuracy'] * 100:.2f}%"
            )
    if "mpl-teacher" in joint and noise is not None:
        # With 100 labels per class MPL's teacher ended 3.1 points above the supervised one in every
        # seed while the finetuned student (the paper's result) gained 0.9 (docs/results.md).
        row = joint["mpl-teacher"]
        ahead = (row["test_accuracy"] - final["test_accuracy"]) * 100
        if ahead > noise and row["test_accuracy"] > teacher["test_accuracy"]:  # else 0 is best
            notes.append(
                f"the MPL teacher (iteration {row['iteration']}) tests {row['test_accuracy'] * 100:.2f}%, "
                f"{ahead:.2f} points above the finetuned student: predict or export with "
                f"--iteration {row['iteration']}"
            )
    best = max(students, key=lambda r: (r["test_accuracy"], -r["iteration"]))
    if best["test_accuracy"] > max(final["test_accuracy"], teacher["test_accuracy"]):
        notes.append(
            f"test accuracy peaked at iteration {best['iteration']} ({best['test_accuracy'] * 100:.2f}%) "
            f"and fell to {final['test_accuracy'] * 100:.2f}% by iteration {final['iteration']}: "
            f"predict or export with --iteration {best['iteration']}, or run fewer iterations"
        )
    return notes


def write_accuracy_plot(store: RunStore) -> Path:
    path = store.root / PLOT_NAME
    atomic.write_bytes(
        path, accuracy_plot_png(store.status_rows(), f"accuracy per iteration: {store.root.name}")
    )
    return path


def compare_methods(noisy_student: RunStore, mpl: RunStore) -> list[dict[str, Any]]:
    """Supervised vs Noisy Student vs Meta Pseudo Labels, from one run of each on the same data."""
    if noisy_student.data_dir() != mpl.data_dir():
        raise SelftrainError(
            f"{noisy_student.root} and {mpl.root} were trained on different data "
            f"({noisy_student.data_dir()} vs {mpl.data_dir()}); compare runs on the same data set"
        )
    ns_rows = [r for r in noisy_student.status_rows() if r["state"] == "done"]
    mpl_rows = {r["role"]: r for r in mpl.status_rows() if r["state"] == "done"}
    if not ns_rows or "mpl-finetuned" not in mpl_rows:
        raise SelftrainError(
            "compare: needs a finished noisy-student run and a finished meta-pseudo-labels run"
        )
    final = max(ns_rows, key=lambda r: r["iteration"])
    picks = [
        ("supervised (labeled only)", ns_rows[0]),
        (f"Noisy Student (iteration {final['iteration']})", final),
        ("Meta Pseudo Labels (finetuned student)", mpl_rows["mpl-finetuned"]),
    ]
    return [
        {
            "method": name,
            "model": r["model"],
            "params": r["params"],
            "val_accuracy": r["val_accuracy"],
            "test_accuracy": r["test_accuracy"],
        }
        for name, r in picks
    ]
