"""One typed config per run.

`RunConfig` is the whole configuration of a run: loaded from YAML (`configs/`), overridden from
the command line with `--set section.key=value`, validated with unknown keys rejected, and written
as `RUN/config.yaml` beside what it produced. Defaults are the digits recipe, so a run with no
config file is the bundled demo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from selftrain.errors import SelftrainError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    image_size: int = Field(
        32,
        ge=8,
        le=1024,
        description="Side in pixels that images are resized to. The photo recipe sets it from the data "
        "set: the photos' shorter side, within 32-128.",
    )
    num_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes; 0 decodes in the training process. auto: none on "
        "the CPU (workers would take the model's cores), on CUDA up to 8 per rank (leaving it a core).",
    )

    @field_validator("num_workers", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        """One message for both arms of the union, instead of pydantic's two."""
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value == "auto" or (type(value) is int and 0 <= value <= 64):
            return value
        raise PydanticCustomError("count_or_auto", "Input should be a count from 0 to 64 or 'auto'")

    shuffle_buffer: int = Field(1000, ge=1, description="Samples held in the streaming shuffle buffer.")
    verify_checksums: bool = Field(
        True, description="Check each shard's sha256 against dataset.json while streaming it."
    )
    skip_corrupt: bool = Field(
        False, description="Skip unreadable samples with a warning and a count instead of failing."
    )
    decode: Literal["auto", "pil", "batched"] = Field(
        "auto",
        description="JPEG decoding for labeling and eval: batched (torchvision, in batches on the "
        "model's device: nvJPEG on a GPU), pil (per image on the CPU), auto (batched on CUDA, else pil).",
    )


class AugmentConfig(_Strict):
    """Standard (weak) augmentation for supervised training; the student's noise is separate."""

    rotate_degrees: float = Field(10.0, ge=0, le=180, description="Random rotation range, +/- degrees.")
    translate: float = Field(0.1, ge=0, le=0.5, description="Random shift as a fraction of the side.")
    scale_min: float = Field(0.9, gt=0, le=1.0, description="Smallest random zoom factor.")
    scale_max: float = Field(1.1, ge=1.0, le=2.0, description="Largest random zoom factor.")
    hflip: bool = Field(
        False, description="Random horizontal flip; off for digits, where it changes meaning."
    )
    pad_crop: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="Pad each side by this fraction of the image side (reflected) and crop back at a "
        "random position (the photo recipe's translation; 0.125 = 4 px at 32 px); 0 = off.",
    )


class TrainConfig(_Strict):
    """How one model is trained; shared by the teacher and the students."""

    batch_size: int = Field(64, ge=1, le=65536, description="Labeled samples per step (global).")
    steps: int = Field(400, ge=1, description="Optimizer steps.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer.")
    lr: float = Field(2e-3, gt=0, le=10, description="Peak learning rate.")
    weight_decay: float = Field(0.05, ge=0, description="Decoupled weight decay.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps before the cosine decay.")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the supervised loss.")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier.")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="Stochastic depth rate.")
    eval_every: int = Field(50, ge=1, description="Steps between evaluations on the val split.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between resumable checkpoints.")
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay for a model that is already trained (a finetune, a "
        "teacher from init_weights): the classifier learns at lr, each layer group below it this factor "
        "slower (timm's BEiT-style groups), so features learned before change least. None = one rate.",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    selection: Literal["auto", "best_val", "last"] = Field(
        "auto",
        description="Which weights the stage keeps: best_val = the evaluation with the best val accuracy, "
        "last = the final weights; auto = best_val when the val split has at least 100 images, else "
        "last (a few dozen val images cannot tell checkpoints apart; see docs/results.md).",
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps})")
        return self


_CUTMIX = (
    "CutMix while training: a box of the reversed batch pasted in, area ~ Beta(alpha, alpha), "
    "targets weighted by the pixels each image shows (0 = off)."
)


class TeacherConfig(TrainConfig):
    """The supervised teacher: iteration 0 of Noisy Student and the supervised baseline."""

    model: str = Field("resnet10t", description="timm model name (built with pretrained=False).")
    randaugment_magnitude: int = Field(
        5,
        ge=0,
        le=30,
        description="RandAugment magnitude while the teacher trains (0 = weak augmentation only). "
        "Training noise makes a stronger supervised baseline and better pseudo-labels; the teacher "
        "labels un-noised either way.",
    )
    randaugment_ops: int = Field(2, ge=1, le=6, description="RandAugment operations per image.")
    mixup_alpha: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Mixup while the teacher trains: each labeled batch blended with its reverse, weight "
        "~ Beta(alpha, alpha), targets blended alike (0 = off). With cutmix_alpha too, each step does one "
        "of the two with even odds. Off in both recipes: on the dev photos mixing (0.8 with CutMix 1.0) "
        "made a better teacher but a less confident labeler, and its students gained less (docs/results.md).",
    )
    cutmix_alpha: float = Field(0.0, ge=0, le=10, description=_CUTMIX)
    init_weights: str | None = Field(
        None,
        description="Start the backbone from these weights: a .safetensors file or a timm/PyTorch "
        "checkpoint (read with weights_only=True, never unpickled). The classifier is made anew for "
        "the data set's classes; tensors that do not fit are reported in one line. None = from scratch.",
    )


class FinetuneConfig(TrainConfig):
    """Meta Pseudo Labels' last stage: the student finetuned on the labeled data alone."""

    steps: int = Field(150, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, le=65536, description="Labeled samples per step.")
    lr: float = Field(5e-4, gt=0, le=10, description="Peak learning rate (small: the student is trained).")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing.")
    eval_every: int = Field(25, ge=1, description="Steps between evaluations on the val split.")
    checkpoint_every: int = Field(50, ge=1, description="Steps between resumable checkpoints.")


class StudentFinetuneConfig(FinetuneConfig):
    """A Noisy Student student finetuned on the labeled data after its noised training.

    The step Meta Pseudo Labels ends with (Pham et al. 2021), offered to Noisy Student: with
    10-100 labels per class, the last steps on true labels alone correct some of what wrong
    pseudo-labels taught. The finetuned student is the iteration's model and the next teacher.
    """

    steps: int = Field(
        0, ge=0, description="Labeled-only optimizer steps after the noised training; 0 = off."
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> StudentFinetuneConfig:
        if self.steps and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps})")
        return self


class StudentConfig(TrainConfig):
    """The noised Noisy Student student (Xie et al. 2020, section 2): noise is on the student only."""

    # Defaults differ from the teacher's: small labeled batches (the pseudo-labeled batch is r times
    # larger) and model noise on. Declared here, so a partial `student:` section keeps them.
    batch_size: int = Field(16, ge=1, le=65536, description="Labeled samples per step (global).")
    steps: int = Field(300, ge=1, description="Optimizer steps.")
    lr: float = Field(3e-3, gt=0, le=10, description="Peak learning rate.")
    warmup_steps: int = Field(15, ge=0, description="Linear warm-up steps before the cosine decay.")
    drop_rate: float = Field(0.3, ge=0, lt=1, description="Dropout before the classifier (model noise).")
    drop_path_rate: float = Field(0.1, ge=0, lt=1, description="Stochastic depth rate (model noise).")
    eval_every: int = Field(50, ge=1, description="Steps between evaluations on the val split.")
    checkpoint_every: int = Field(50, ge=1, description="Steps between resumable checkpoints.")

    models: list[str] = Field(
        default_factory=lambda: ["resnet10t"],
        description="Student model per iteration (entry i-1 for iteration i, the last repeats): a timm "
        "name or effnet_ladder_<phi>. Empty list: climb the EfficientNet ladder from `ladder_start`.",
    )
    ladder_start: int = Field(
        0, ge=0, le=7, description="Ladder step of iteration 1's student when `models` is empty."
    )
    unlabeled_ratio: list[int] = Field(
        default_factory=lambda: [14, 28],
        description="Pseudo-labeled batch = ratio x labeled batch; entry i-1 for iteration i, the last repeats.",
    )
    randaugment_magnitude: list[int] = Field(
        default_factory=lambda: [9],
        description="RandAugment magnitude (0-30) per iteration, the last repeats.",
    )
    randaugment_ops: int = Field(2, ge=1, le=6, description="RandAugment operations per image.")
    init_from_teacher: bool = Field(
        True,
        description="Start from the teacher's weights where names and shapes match (all of them for an equal-size student).",
    )
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="Weight EMA decay for the evaluated student; 0 = off."
    )
    pseudo_loss_weight: float = Field(
        1.0, ge=0, description="Weight of the soft cross-entropy on pseudo-labels."
    )
    mixup_alpha: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Mixup on the student's batches: the labeled part and the pseudo-labeled part each "
        "blended with its own reverse, targets (smoothed labels, pseudo-labels) alike; with "
        "cutmix_alpha too, one of the two per step with even odds (0 = off). More input noise for the "
        "student; the finetune stage after is never mixed. The photo recipe mixes (0.8 with CutMix 1.0: "
        "+0.52 points after 3 iterations over 5 seeds on the dev photos); digits do not (unmeasured there).",
    )
    cutmix_alpha: float = Field(0.0, ge=0, le=10, description=_CUTMIX)
    finetune: StudentFinetuneConfig = Field(default_factory=StudentFinetuneConfig)
    pseudo_targets: Literal["hard", "soft"] = Field(
        "hard",
        description="What the student learns from the stored teacher labels: hard = one-hot of the "
        "teacher's argmax, soft = the stored distribution. Noisy Student allows both (soft in its main "
        "experiments); on digits hard measured better.",
    )

    @model_validator(mode="after")
    def _schedules_not_empty(self) -> StudentConfig:
        if not self.unlabeled_ratio or min(self.unlabeled_ratio) < 0:
            raise ValueError("unlabeled_ratio must list at least one ratio >= 0")
        if not self.randaugment_magnitude or not all(0 <= m <= 30 for m in self.randaugment_magnitude):
            raise ValueError("randaugment_magnitude must list magnitudes between 0 and 30")
        return self

    def for_iteration(self, values: list, iteration: int):
        return values[min(iteration - 1, len(values) - 1)]


class MPLConfig(_Strict):
    """Meta Pseudo Labels (Pham et al. 2021): teacher and student trained together."""

    teacher_model: str = Field("resnet10t", description="timm model for the MPL teacher.")
    student_model: str = Field(
        "resnet10t", description="timm model (or effnet_ladder_<phi>) for the student."
    )
    init_teacher_from_supervised: bool = Field(
        True,
        description="Start the MPL teacher from the supervised teacher (iteration 0) when architectures match.",
    )
    init_student_from_supervised: bool = Field(
        False,
        description="Start the MPL student from the supervised teacher's weights (every tensor whose name and "
        "shape match) instead of a random init.",
    )
    steps: int = Field(600, ge=1, description="Joint teacher/student steps.")
    batch_size: int = Field(16, ge=1, description="Labeled images per step.")
    unlabeled_ratio: int = Field(7, ge=1, description="Unlabeled images per step = ratio x batch_size (mu).")
    teacher_lr: float = Field(1e-3, gt=0, description="Teacher peak learning rate (AdamW).")
    student_lr: float = Field(2e-3, gt=0, description="Student peak learning rate (AdamW).")
    weight_decay: float = Field(0.05, ge=0, description="Decoupled weight decay of both optimizers.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up of both learning rates.")
    student_wait_steps: int = Field(
        50,
        ge=0,
        description="Steps before the student starts learning (its update is delayed; no feedback then).",
    )
    label_smoothing: float = Field(
        0.1, ge=0, lt=1, description="Label smoothing of the teacher's supervised loss."
    )
    sample_pseudo_labels: bool = Field(
        True,
        description="Draw the hard pseudo-label from the teacher's distribution (the estimator's y ~ T); false = argmax.",
    )
    pseudo_label_view: Literal["strong", "weak"] = Field(
        "strong",
        description="Which view of an unlabeled image the teacher labels (its softmax there is the "
        "estimator's distribution); the student always learns on the strong view.",
    )
    noised_pseudo_labels: bool = Field(
        True,
        description="Draw the student's pseudo-labels from the teacher's training forward pass (dropout on, "
        "batch statistics), as the paper's code does; false = from the un-noised teacher (eval mode), as "
        "Noisy Student labels, for one more forward pass over the unlabeled batch. The teacher's MPL term "
        "still raises or lowers its training forward's probability of the drawn label. The photo recipe "
        "labels un-noised.",
    )
    baseline_decay: float = Field(
        0.9, ge=0, lt=1, description="Moving-average baseline of the reward; 0 = none."
    )
    feedback_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the teacher's MPL term (learning from the student's feedback). 0 is a control: "
        "the teacher learns from its labels and UDA only, everything else unchanged, so the run shows "
        "what the meta signal adds.",
    )
    uda_weight: float = Field(
        1.0, ge=0, description="Weight of the teacher's UDA consistency loss after warm-up."
    )
    uda_warmup_steps: int = Field(100, ge=0, description="Steps of linear warm-up of the UDA weight.")
    uda_temperature: float = Field(0.7, gt=0, description="Sharpening temperature of UDA targets.")
    uda_threshold: float = Field(
        0.8, ge=0, le=1, description="UDA mask: teacher confidence on the weak view."
    )
    randaugment_magnitude: int = Field(
        9, ge=0, le=30, description="RandAugment magnitude of the strong view."
    )
    randaugment_ops: int = Field(2, ge=1, le=6, description="RandAugment operations per image.")
    drop_rate: float = Field(0.2, ge=0, lt=1, description="Dropout of both models.")
    student_mixup_alpha: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Mixup on the student's pseudo-labeled batch (strong views blended with their reverse, "
        "the teacher's one-hot labels alike); with student_cutmix_alpha too, one of the two per step with "
        "even odds (0 = off). The feedback h is still measured on the unmixed labeled batch and the "
        "teacher's MPL term on its own unmixed labels. The photo recipe mixes (0.8 with CutMix 1.0: "
        "+0.69 points finetuned over 5 seeds on the dev photos); digits do not (unmeasured there).",
    )
    student_cutmix_alpha: float = Field(0.0, ge=0, le=10, description=_CUTMIX)
    ema_decay: float = Field(
        0.99, ge=0, lt=1, description="Weight EMA of the student (evaluated copy); 0 = off."
    )
    eval_every: int = Field(100, ge=1, description="Steps between val evaluations of the student.")
    checkpoint_every: int = Field(
        100, ge=1, description="Steps between checkpoints (both models, optimizers, baseline)."
    )
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    selection: Literal["auto", "best_val", "last"] = Field(
        "auto",
        description="Which student weights the joint stage keeps: best_val = the evaluation with the best val accuracy, "
        "last = the final weights; auto = best_val when the val split has at least 100 images, else "
        "last (a few dozen val images cannot tell checkpoints apart; see docs/results.md).",
    )


class PseudoLabelConfig(_Strict):
    """Teacher inference over the unlabeled shards and the Noisy Student filter/balance step."""

    temperature: float = Field(1.0, gt=0, le=100, description="Soft label = softmax(logits / temperature).")
    hflip_average: bool = Field(
        False,
        description="Average the teacher's probabilities over each image and its mirror image; for data whose "
        "mirror image is the same class (photos), not for symbols.",
    )
    mode: Literal["auto", "soft", "hard", "topk"] = Field(
        "auto",
        description="Stored label: full soft, one-hot hard, or top-k sparse; auto = topk above 100 classes.",
    )
    top_k: int = Field(10, ge=1, description="Entries kept per image in topk mode.")
    batch_size: int = Field(256, ge=1, description="Images per teacher forward pass.")
    confidence_threshold: float = Field(
        0.3, ge=0, le=1, description="Images whose top probability is below this are dropped."
    )
    keep_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Keep at most this share of the unlabeled images, the most confident (the threshold rises "
        "to the confidence that keeps it); null = the confidence threshold alone.",
    )
    shards_per_task: int = Field(
        2, ge=1, description="Unlabeled shards per parallel labeling task in the flows (the fan-out unit)."
    )
    images_per_class: int | None = Field(
        None, ge=1, description="N kept per class after balancing; default: the median filtered class count."
    )
    task_runner: Literal["threads", "dask"] = Field(
        "threads",
        description="Where the flows run the labeling tasks: threads of the flow process, or a Dask "
        "cluster (a local one started for the stage, or dask_address).",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of an existing Dask cluster (e.g. tcp://10.0.0.5:8786) for task_runner "
        "dask; None starts a local cluster for the labeling stage and stops it after.",
    )
    dask_workers: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Worker processes of the local Dask cluster (at most one per shard group); None = "
        "one per GPU where CUDA is used, else one per CPU core.",
    )

    @model_validator(mode="after")
    def _dask_settings_need_dask(self) -> PseudoLabelConfig:
        if self.task_runner != "dask":
            for name in ("dask_address", "dask_workers"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is used only with task_runner dask")
        elif self.dask_address is not None and self.dask_workers is not None:
            raise ValueError("dask_workers sizes a local cluster; an existing one (dask_address) has its own")
        return self


class DistributedConfig(_Strict):
    """Data-parallel training through torchrun (`selftrain/distributed.py`, `selftrain/launch.py`)."""

    nproc_per_node: int = Field(
        1,
        ge=1,
        le=64,
        description="Training processes (torchrun ranks; one per GPU on CUDA, gloo on the CPU) for the "
        "teacher, the students and MPL. 1 trains in-process. Batch sizes stay global (each rank takes "
        "batch / nproc_per_node, which must divide them); may change when a run is resumed.",
    )


class TensorBoardConfig(_Strict):
    """Scalars of every training stage under RUN/tb/iter-K-ROLE/ (`selftrain/tblog.py`)."""

    enabled: bool = Field(
        True,
        description="Write losses, learning rates, val accuracy and throughput for TensorBoard "
        "(`tensorboard --logdir RUN/tb`); may change when a run is resumed.",
    )


class RunConfig(_Strict):
    recipe: Literal["digits", "photos"] = Field(
        "digits",
        description="The defaults this config was built on (selftrain/recipes.py): chosen from the data "
        "set (colour images: photos, grayscale: digits) unless a config file or --set names one.",
    )
    seed: int = Field(0, ge=0, description="Seeds Python, NumPy and torch; a CPU run is repeatable.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when present (bf16 autocast, channels_last), else CPU."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    pseudolabel: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)
    mpl: MPLConfig = Field(default_factory=MPLConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    tensorboard: TensorBoardConfig = Field(default_factory=TensorBoardConfig)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key; check the spelling against configs/digits.yaml"
    if error["type"] == "missing":
        return f"{where}: required field is missing"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{where}: {error['msg']}{shown}"


def validation_message(exc: ValidationError, source: str) -> str:
    """Squeeze pydantic's multi-line report into one line naming each bad field."""
    return f"{source}: " + "; ".join(_describe(e) for e in exc.errors())


def parse_override(text: str) -> tuple[list[str], Any]:
    """`teacher.lr=0.01` -> (["teacher", "lr"], 0.01); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SelftrainError(f"--set {text!r}: expected key=value, e.g. --set teacher.steps=200")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SelftrainError(f"--set {text!r}: {part} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SelftrainError(
            f"{path}: config file not found; pass an existing file, e.g. configs/digits.yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SelftrainError(f"{path}:{where} is not valid YAML; fix the syntax") from None
    if not isinstance(raw, dict):
        raise SelftrainError(f"{path}: expected a mapping of sections (seed, data, teacher, ...)")
    return raw


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    recipe: str | None = None,
    stored_size: tuple[int, int] | list[int] | None = None,
) -> RunConfig:
    """File values over the recipe's defaults (the one the file or --set names, else `recipe`);
    `stored_size`, the data set's typical image size, sets the photo recipe's input size."""
    from selftrain.recipes import with_recipe

    raw = read_yaml(path) if path else {}
    raw = with_recipe(apply_overrides(raw, overrides or []), recipe, stored_size)
    return _validated(raw, str(path) if path else "config")


def load_run_config(path: str | Path) -> RunConfig:
    """A run's own config.yaml, complete when it was written, over the schema's defaults alone.

    A key the file lacks was added to the schema after the run started; its schema default keeps
    the behaviour the run started with. Today's recipe is not applied beneath it: a recipe that
    changed since (a new default for new runs) must not change a run when it is resumed.
    """
    return _validated(read_yaml(path), str(path))


def _validated(raw: dict[str, Any], where: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise SelftrainError(validation_message(exc, where)) from None


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys whose values differ, for a clear refusal to resume with another config."""

    def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flatten(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    fa, fb = flatten(a.model_dump(mode="json")), flatten(b.model_dump(mode="json"))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
