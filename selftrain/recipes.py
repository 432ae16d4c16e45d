"""Recipes: the defaults a run starts from, chosen from the data set unless the user names one.

A recipe is a set of config values tuned for a kind of image. Digits-like grayscale symbols must
not be flipped (a mirrored 2 is no digit) and need rotation and zoom; colour photos want the
opposite: horizontal flips, reflect-padded random crops and colour RandAugment; their students are
equal-size copies of the teacher trained longer on Mixup/CutMix-mixed batches (Noisy Student's
student is equal or larger, Xie et al. 2020, section 2; on a CPU budget, larger did not pay
there), while the MPL student is a
deeper copy of its teacher (that paid). Choosing the recipe from
the data set means a user who imports photos gets the photo recipe without writing a config.

Precedence: recipe defaults < the `--config` file < `--set` overrides. The recipe's name is saved
in `RUN/config.yaml` with every value it set; `configs/<recipe>.yaml` is each recipe written out
in full (a test keeps them equal).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

Recipe = Literal["digits", "photos"]

# The class defaults in selftrain/config.py are the digits recipe.
_DIGITS: dict[str, Any] = {}

_PHOTO_AUGMENT = {
    "rotate_degrees": 0.0,
    "translate": 0.0,
    "scale_min": 1.0,
    "scale_max": 1.0,
    "hflip": True,
    "pad_crop": 0.125,
}

_PHOTOS: dict[str, Any] = {
    # 1,200 steps, not the digits recipe's 400: at 400 the photo teacher is short of what its
    # 250 labels give (the loss still falling; 41.48 -> 43.19% over 3 seeds at 1,200), and the
    # students' gain was then mostly more training on the labels (a control without the
    # pseudo-label loss reached 45.09%, Noisy Student 46.92%; session 28, docs/results.md).
    "teacher": {"steps": 1200, "augment": _PHOTO_AUGMENT},
    "student": {
        "augment": _PHOTO_AUGMENT,
        # Equal-size students, started as their teacher. Measured on the dev photos (3 seeds,
        # docs/results.md): the growing ladder (resnet18t -> resnet26t_basic -> resnet34t, deeper
        # copies of the teacher, selftrain/resnet_ladder.py) did not beat equal-size students:
        # 45.29 vs 45.77% at 250 steps, 46.09 vs 46.80% with this recipe's 500 steps and EMA,
        # for 2.3 times the time, which a 15-minute run on the slower 2-core CPUs cannot spare.
        # On a GPU, grow them:
        # --set "student.models=[resnet18t,resnet26t_basic,resnet34t]".
        "models": ["resnet10t"],
        # Started from the teacher: a fine-tuning rate (3e-3 undid the teacher's features).
        "lr": 1e-3,
        # The labeled batch keeps the 14x / 28x pseudo-labeled batches within a CPU run's budget.
        "batch_size": 8,
        # 500 noised steps with averaged (EMA) weights: 46.56 +/- 2.22% after 3 iterations against
        # 45.29 +/- 2.23% at 250 (3 seeds); EMA alone changed nothing, the steps lifted every iteration.
        "steps": 500,
        "ema_decay": 0.99,
        # Each step's labeled and pseudo-labeled parts mixed with their own reverse (Mixup 0.8 or
        # CutMix 1.0, even odds): more input noise on the student. Over 5 seeds Noisy Student
        # ended 49.49 -> 50.01% (+5.79 -> +6.31 over the teacher, 4 seeds of 5 higher), the mean
        # rising every iteration, though single seeds dip more often (session 34, docs/results.md).
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        # Then 100 steps on the labeled photos alone (3 seeds, docs/results.md): the mean after 3
        # iterations 44.58 -> 45.29%, after 2 43.58 -> 45.81%; per seed mixed (within the spread).
        "finetune": {"steps": 100, "augment": _PHOTO_AUGMENT},
    },
    # A weak teacher's pseudo-labels are mostly wrong below 50% confidence (41% right overall,
    # 54% of those above 0.5 on the dev photos): keep the confident half. A mirrored photo is the
    # same class, so the teacher labels each image and its mirror image and averages.
    "pseudolabel": {"confidence_threshold": 0.5, "hflip_average": True},
    # 600 joint steps on a CPU budget are too few for a student from scratch to catch up with a
    # 41%-right teacher (it ended 5-6 points below it); started from the supervised teacher, the
    # joint training refines instead of restarting (seed 0: finetuned 41.00% -> 44.10%).
    # The teacher labels the weak view (the student still learns on the strong one): drawn on the
    # RandAugment view a 41%-right teacher's labels are 27% right, on the weak view 30% (40% by
    # argmax). Finetuned MPL student over 3 seeds 43.66 -> 44.46% in the benchmark, 43.42 ->
    # 44.93% in hand runs on one thread (better in every seed both times; sessions 13-14).
    # A larger student (resnet18t, a deeper resnet10t copy that starts as the supervised teacher's
    # function): finetuned 43.70 -> 44.58% over 3 seeds, better in every seed, for 1.5 times the
    # joint stage's time (session 21, docs/results.md).
    "mpl": {
        "student_model": "resnet18t",
        "init_student_from_supervised": True,
        "pseudo_label_view": "weak",
        # The student's pseudo-labeled batch mixed (Mixup 0.8 or CutMix 1.0, even odds), as the
        # Noisy Student students are: finetuned 47.60 -> 48.30% over 5 seeds (+3.91 -> +4.61 over
        # the teacher; 3 seeds of 5 higher, spread 1.94 -> 0.92; session 34, docs/results.md).
        "student_mixup_alpha": 0.8,
        "student_cutmix_alpha": 1.0,
        # Labels drawn from the un-noised teacher (eval mode), as Noisy Student labels: finetuned
        # 48.30 -> 48.68% over 5 seeds (+4.60 -> +4.98; 4 seeds of 5 higher, within a seed's
        # spread; session 42, docs/results.md), for one no-grad forward pass a step.
        "noised_pseudo_labels": False,
        # 1,000 joint steps and the teacher's most likely class instead of a draw: each alone was
        # +0.36 and +0.33 over 5 seeds (sessions 42-43), picked on the benchmark's test split, so
        # the pair was first checked on a second split with other test photos: +2.15 on all 3
        # seeds there (the rule set before the runs: +0.5 and 2 of 3); on the benchmark's split
        # +0.21 over 5 seeds, 48.68 -> 48.89% (session 45, docs/results.md). 1.5 times the joint
        # stage's time: 12-13 minutes a run on a 2-core CPU.
        "steps": 1000,
        "sample_pseudo_labels": False,
        # The finetune changes the layers the joint stage trained on unlabeled photos least: each
        # layer group 0.75 times the rate of the one above, the classifier at lr. The best of nine
        # finetune variants (decays, rates, length, smoothing) on a second split's 3 seeds (+0.88),
        # then checked on the benchmark's split against a rule set first (+0.3, 3 of 5): 48.89 ->
        # 49.92%, +1.03, every seed higher (+5.20 -> +6.22 over the teacher; session 46,
        # docs/results.md). The finetune's time is unchanged.
        "finetune": {"augment": _PHOTO_AUGMENT, "layer_decay": 0.75},
    },
}

RECIPES: dict[str, dict[str, Any]] = {"digits": _DIGITS, "photos": _PHOTOS}

# The photo recipe trains at the photos' own size (their shorter side), within these bounds.
# Smaller photos are enlarged to 32, as the 8x8 digits are: the models were tuned there, and below
# it a stride-32 ResNet ends on a single cell. Above 128 a step costs about 16 times one at 32 on
# the same model: a user with larger photos and a GPU sets data.image_size (224 for timm's
# ImageNet sizes). The tuned figures (docs/results.md) are all at 32, the dev photos' size.
MIN_PHOTO_SIZE, MAX_PHOTO_SIZE = 32, 128


def photo_image_size(stored: tuple[int, int] | list[int] | None) -> int:
    """`data.image_size` for photos stored at `stored` ([height, width]; 0 or None: unknown)."""
    short = min(stored) if stored else 0
    if short <= 0:
        return MIN_PHOTO_SIZE
    return min(max(short, MIN_PHOTO_SIZE), MAX_PHOTO_SIZE)


def recipe_for(channels: int) -> Recipe:
    """Colour images get the photo recipe; grayscale ones (symbols, scans) the digits recipe."""
    return "photos" if channels == 3 else "digits"


def with_recipe(
    raw: dict[str, Any], default: str | None, stored_size: tuple[int, int] | list[int] | None = None
) -> dict[str, Any]:
    """`raw` (file + overrides) laid over the recipe it names, else `default`, else digits.

    `stored_size` is the data set's typical image size: the photo recipe's input size follows it.
    """
    name = raw.get("recipe") or default or "digits"
    if name not in RECIPES:
        return raw  # validation names the field and the allowed values
    base = copy.deepcopy(RECIPES[name])
    if name == "photos" and stored_size is not None:
        base["data"] = {**base.get("data", {}), "image_size": photo_image_size(stored_size)}
    merged = _deep_merge(base, raw)
    merged["recipe"] = name
    return merged


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _deep_merge(base[key], value)
        else:
            base[key] = value
    return base
