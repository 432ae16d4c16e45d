"""Session 46's probe: MPL's finetune (iteration 3) re-run on saved runs with other finetune settings.

    python docs/records/mpl-finetune-probe-2026-12-05-s46.py THREADS SCRATCH RUN_DIR... [--set KEY=VALUE ...]

KEY is a field of `mpl.finetune` (e.g. `layer_decay=0.75`, `lr=0.00025`). Each run is copied to
SCRATCH with its iterations 0-2 (supervised teacher, MPL teacher, MPL student), the finetune runs
there with the same seed, and its test accuracy is printed; the saved runs are not touched. With no
--set and the thread count the runs used, it reproduces their finetuned accuracy to the digit.
(Session 46 ran an earlier form of this script, which patched `build_optimizer` for layer decay
before `d7191ef` made it the `layer_decay` field; `--set layer_decay=0.75` gives the same figures.)
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
import yaml

from selftrain.data.dataset_info import load_dataset
from selftrain.runstore import RunStore
from teachers.mpl_training import finetune_student

parser = argparse.ArgumentParser(description="MPL's finetune re-run on copies of saved runs")
parser.add_argument("threads", type=int)
parser.add_argument("scratch", type=Path)
parser.add_argument("runs", nargs="+", type=Path)
parser.add_argument("--set", action="append", default=[], help="a field of mpl.finetune, KEY=VALUE")
args = parser.parse_args()
torch.set_num_threads(args.threads)
update = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
for src in args.runs:
    dst = args.scratch / src.name
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in ("config.yaml", "manifest.json"):
        shutil.copy2(src / name, dst / name)
    for k in (0, 1, 2):
        shutil.copytree(
            src / f"iter-00{k}", dst / f"iter-00{k}", ignore=shutil.ignore_patterns("pseudo", "checkpoints")
        )
    store = RunStore(dst)
    cfg = store.config()
    ft = cfg.mpl.finetune.model_validate({**cfg.mpl.finetune.model_dump(), **update})
    cfg = cfg.model_copy(update={"mpl": cfg.mpl.model_copy(update={"finetune": ft})})
    finetune_student(store, load_dataset(store.data_dir()), cfg, torch.device("cpu"))
    print(
        json.dumps(
            {"run": str(src), "set": update, "test_accuracy": round(100 * store.card(3)["test_accuracy"], 2)}
        )
    )
    shutil.rmtree(dst)
