"""Meta Pseudo Labels: the teacher learns from how its pseudo-labels change the student.

Pham et al., "Meta Pseudo Labels", CVPR 2021. Notation: teacher T (parameters theta_T), student S
(theta_S), labeled batch (x_l, y), unlabeled batch x_u, student learning rate eta.

Section 2 / equation (2): the student takes one step on the teacher's pseudo-labels,

    theta_S' = theta_S - eta * grad_S CE(y_hat, S(x_u; theta_S)),   y_hat ~ T(x_u; theta_T),

and the teacher is judged by the student's labeled loss after that step, L_l(theta_S').
Minimising E_{y_hat ~ T}[L_l(theta_S'(y_hat))] by the score-function (REINFORCE) estimator gives

    grad_T = E[ L_l(theta_S') * grad_T log p_T(y_hat | x_u) ],

and subtracting the baseline L_l(theta_S) (it does not depend on y_hat, so the expectation is
unchanged) gives one sample's estimate

    grad_T ~= (L_l(theta_S') - L_l(theta_S)) * grad_T log p_T(y_hat)
            = h * grad_T CE(y_hat, T(x_u)),     h = L_l(theta_S) - L_l(theta_S')       (*)

because log p_T(y_hat) = -CE(y_hat, T(x_u)). So the teacher's MPL loss is h * CE(y_hat, T(x_u)):
when the step on y_hat *lowered* the student's labeled loss (h > 0), gradient descent on it raises
p_T(y_hat); when it raised the loss (h < 0), it lowers p_T(y_hat).

Appendix A.1 derives the first-order approximation that the paper's implementation uses,
h ~= eta * grad_S L_l(theta_S')^T grad_S CE(y_hat, S(x_u; theta_S)), a dot product of gradients.
Here h is measured directly as the change of the student's labeled cross-entropy across its real
step (computed before and after), which equals that dot product to first order in eta and needs
no second backward pass. Public implementations disagree on the sign of h (some use
L_l(theta_S') - L_l(theta_S), which pushes the teacher *away* from helpful labels), and in the
official code the term's gradient is stopped; `tests/teachers/test_meta_pseudo_labels.py` checks
sign and size against finite differences of the exact objective.

An optional moving-average baseline b (decay beta) is subtracted from h to lower the variance:
reward = h - b, b <- beta * b + (1 - beta) * h, as in the official implementation's
`moving_dot_product`. The rest of MPL (section 3.2 and appendix C): the teacher also trains on the
labeled data (cross-entropy with label smoothing) and with UDA (Xie et al. 2020b): consistency
between its predictions on weakly and strongly augmented unlabeled images, sharpened by a
temperature, masked by a confidence threshold, weighted with a linear warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target

from selftrain.models import eval_mode


def mpl_teacher_loss(
    teacher_logits_u: torch.Tensor, pseudo_labels: torch.Tensor, reward: float
) -> torch.Tensor:
    """(*) above: reward * CE(y_hat, T(x_u)). Minimising it moves T toward y_hat when reward > 0."""
    return reward * F.cross_entropy(teacher_logits_u, pseudo_labels)


def sample_pseudo_labels(teacher_logits_u: torch.Tensor, sample: bool) -> torch.Tensor:
    """Hard pseudo-labels: drawn from the teacher's distribution (the estimator's y_hat ~ T), or argmax."""
    if sample:
        return torch.multinomial(F.softmax(teacher_logits_u.detach().float(), dim=1), 1).squeeze(1)
    return teacher_logits_u.detach().argmax(dim=1)


def unnoised_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits in eval mode (no dropout, running statistics), without a graph; its mode
    is restored (as `evaluate` does).

    Noisy Student's point is that the teacher labels un-noised; MPL's reference code instead samples
    from the teacher's training forward pass, where dropout and the batch's own statistics (a batch
    that holds RandAugment-ed images too) blur a weak teacher's labels further. The teacher's MPL
    term keeps using the training pass's log-probability of the drawn label, a surrogate: the two
    passes share every weight and differ only by that noise.
    """
    with eval_mode(model), torch.no_grad():
        return model(x).float()


def student_step_feedback(
    student: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x_labeled: torch.Tensor,
    y_labeled: torch.Tensor,
    x_unlabeled: torch.Tensor,
    pseudo_labels: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    update: bool = True,
    mix: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    num_classes: int = 0,
) -> tuple[float, float]:
    """One student step on the pseudo-labels; returns (h, the student's pseudo-label loss).

    h = CE(S(x_l), y) before the step minus after it: positive when the step helped on labeled
    data. With `update=False` (the student's delayed start) nothing changes and h = 0. `mix`
    (`selftrain.mixing.mix_soft` bound to the step) mixes the pseudo-labeled batch and its
    (`num_classes`-wide) one-hot labels; the labeled batch, on which h is measured, never is.

    Both losses are measured in eval mode (no dropout, batch-norm running statistics, the same
    before and after), so h is the change the step made and nothing else. Measured in train mode,
    as public implementations do, "before" and "after" see two dropout masks and two batch
    compositions (labeled + unlabeled, then labeled alone): on the dev photos that noise made h's
    spread 3.5 times wider (std 0.12 against 0.035; docs/results.md, session 19), and the teacher
    learned from it. The price is one extra forward pass over the labeled batch.
    """
    target = None
    if mix is not None:
        target = mixup_target(pseudo_labels, num_classes, lam=1.0, smoothing=label_smoothing)
        x_unlabeled, target = mix(x_unlabeled, target, part=1)
    with torch.set_grad_enabled(update):  # no graph (and no DDP gradient sync) while the student waits
        logits = student(torch.cat([x_labeled, x_unlabeled])).float()
    if target is None:
        loss_pseudo = F.cross_entropy(
            logits[len(x_labeled) :], pseudo_labels, label_smoothing=label_smoothing
        )
    else:
        loss_pseudo = -(target * F.log_softmax(logits[len(x_labeled) :], dim=1)).sum(dim=1).mean()
    if not update:
        return 0.0, loss_pseudo.item()
    loss_before = _eval_loss(student, x_labeled, y_labeled)
    optimizer.zero_grad(set_to_none=True)
    loss_pseudo.backward()
    optimizer.step()
    return loss_before - _eval_loss(student, x_labeled, y_labeled), loss_pseudo.item()


def _eval_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """CE of `model` on (x, y) in eval mode."""
    return F.cross_entropy(unnoised_logits(model, x), y).item()


def uda_loss(
    logits_weak: torch.Tensor, logits_strong: torch.Tensor, *, temperature: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """UDA consistency: CE(sharpened softmax(weak) as target, strong), masked by confidence.

    Returns (loss, mask). The target carries no gradient; masked-out images count as zero in the
    mean over the batch, as in the reference implementation.
    """
    probs = F.softmax(logits_weak.detach().float() / temperature, dim=1)
    mask = (F.softmax(logits_weak.detach().float(), dim=1).max(dim=1).values >= threshold).float()
    per_image = -(probs * F.log_softmax(logits_strong.float(), dim=1)).sum(dim=1)
    return (per_image * mask).mean(), mask


def uda_weight(step: int, weight: float, warmup_steps: int) -> float:
    """Linear warm-up of the UDA weight to `weight` over `warmup_steps` (0: full weight at once)."""
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, (step + 1) / warmup_steps)


@dataclass
class MovingBaseline:
    """b <- decay * b + (1 - decay) * h; the reward is h - b (b = 0 before the first update)."""

    decay: float
    value: float = 0.0
    initialised: bool = False

    def reward(self, h: float) -> float:
        if self.decay <= 0:
            return h
        r = h - (self.value if self.initialised else 0.0)
        self.value = h if not self.initialised else self.decay * self.value + (1 - self.decay) * h
        self.initialised = True
        return r
