"""The MPL teacher gradient, checked against finite differences of the exact objective.

Problem: a linear student S(x) = W x on 3 classes; one unlabeled image x_u whose pseudo-label the
teacher chooses through logits z (p = softmax(z)); one labeled batch. The teacher's true
objective is f(z) = sum_c p_c(z) * L_l(W'_c), with W'_c the student after one SGD step on label c
(enumerable exactly with 3 classes). Its gradient by central differences is the ground truth.
The implemented estimator, averaged over y_hat ~ p exactly (weights p_c), must equal it; a single
draw must point the right way; h must match the first-order (gradient dot product) value.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from teachers.meta_pseudo_labels import (
    MovingBaseline,
    mpl_teacher_loss,
    student_step_feedback,
    uda_loss,
    uda_weight,
    unnoised_logits,
)

C, D, ETA = 3, 4, 0.5


@pytest.fixture(autouse=True)
def float64():
    """Finite differences need double precision; restored so other tests are unaffected."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    student = torch.nn.Linear(D, C, bias=False)
    with torch.no_grad():
        student.weight.copy_(torch.randn(C, D, generator=g) * 0.5)
    x_l, y_l = torch.randn(6, D, generator=g), torch.randint(0, C, (6,), generator=g)
    x_u = torch.randn(1, D, generator=g)
    z = torch.randn(1, C, generator=g)
    return student, x_l, y_l, x_u, z


def _h(student, x_l, y_l, x_u, c, eta=ETA):
    s = copy.deepcopy(student)
    opt = torch.optim.SGD(s.parameters(), lr=eta)
    h, _ = student_step_feedback(s, opt, x_l, y_l, x_u, torch.tensor([c]))
    return h


def _labeled_loss_after(student, x_l, y_l, x_u, c):
    s = copy.deepcopy(student)
    opt = torch.optim.SGD(s.parameters(), lr=ETA)
    opt.zero_grad()
    F.cross_entropy(s(x_u), torch.tensor([c])).backward()
    opt.step()
    return F.cross_entropy(s(x_l), y_l).item()


def test_teacher_gradient_matches_finite_differences_of_the_true_objective(problem):
    student, x_l, y_l, x_u, z = problem
    after = torch.tensor([_labeled_loss_after(student, x_l, y_l, x_u, c) for c in range(C)])

    def f(logits):
        return (F.softmax(logits, dim=1)[0] * after).sum().item()

    eps = 1e-6
    fd = torch.zeros(C)
    for i in range(C):
        dz = torch.zeros(1, C)
        dz[0, i] = eps
        fd[i] = (f(z + dz) - f(z - dz)) / (2 * eps)

    zt = z.clone().requires_grad_(True)
    p = F.softmax(z, dim=1)[0]
    total = sum(
        p[c] * mpl_teacher_loss(zt, torch.tensor([c]), _h(student, x_l, y_l, x_u, c)) for c in range(C)
    )
    (grad,) = torch.autograd.grad(total, zt)

    assert grad.abs().sum() > 1e-4, "the MPL term must carry a gradient"
    assert torch.allclose(grad[0], fd, rtol=1e-4, atol=1e-7), (grad, fd)


def test_one_draw_pushes_the_teacher_toward_labels_that_helped(problem):
    student, x_l, y_l, x_u, z = problem
    hs = [_h(student, x_l, y_l, x_u, c) for c in range(C)]
    best, worst = max(range(C), key=hs.__getitem__), min(range(C), key=hs.__getitem__)
    assert hs[best] > 0 > hs[worst]
    for c, direction in ((best, 1), (worst, -1)):
        zt = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(mpl_teacher_loss(zt, torch.tensor([c]), hs[c]), zt)
        stepped = z - 0.1 * g
        change = F.softmax(stepped, 1)[0, c] - F.softmax(z, 1)[0, c]
        assert direction * change > 0


def test_h_agrees_with_the_first_order_dot_product(problem):
    student, x_l, y_l, x_u, _ = problem
    eta = 1e-3
    for c in range(C):
        s = copy.deepcopy(student)
        g_l = torch.autograd.grad(F.cross_entropy(s(x_l), y_l), s.weight)[0]
        g_u = torch.autograd.grad(F.cross_entropy(s(x_u), torch.tensor([c])), s.weight)[0]
        first_order = eta * (g_l * g_u).sum().item()
        assert _h(student, x_l, y_l, x_u, c, eta=eta) == pytest.approx(first_order, rel=0.02)


def test_no_student_update_means_no_feedback(problem):
    student, x_l, y_l, x_u, _ = problem
    before = student.weight.clone()
    h, _ = student_step_feedback(
        student, torch.optim.SGD(student.parameters(), lr=ETA), x_l, y_l, x_u, torch.tensor([0]), update=False
    )
    assert h == 0.0 and torch.equal(before, student.weight)


def test_uda_mask_and_warmup():
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0]])  # confident, unsure
    strong = torch.zeros(2, 3, requires_grad=True)
    loss, mask = uda_loss(weak, strong, temperature=0.5, threshold=0.8)
    assert mask.tolist() == [1.0, 0.0]
    target = F.softmax(weak[0] / 0.5, 0)
    assert loss.item() == pytest.approx(-(target * F.log_softmax(strong[0].detach(), 0)).sum().item() / 2)
    loss.backward()
    assert strong.grad[1].abs().sum() == 0 and strong.grad[0].abs().sum() > 0
    assert [uda_weight(s, 8.0, 4) for s in (0, 1, 3, 10)] == [2.0, 4.0, 8.0, 8.0]


def test_moving_baseline():
    b = MovingBaseline(decay=0.5)
    assert b.reward(1.0) == 1.0  # nothing to subtract yet
    assert b.reward(3.0) == 2.0  # 3 - 1
    assert b.value == 2.0


def test_feedback_measures_the_step_not_dropout_or_batch_statistics():
    """A step that changes nothing (lr 0) must give h = 0 exactly, with dropout and batch norm on.

    Measured in train mode, "before" (on labeled + unlabeled) and "after" (labeled alone) would
    differ by two dropout masks and two sets of batch statistics, and the teacher would learn
    from that noise as if it were the pseudo-labels' effect.
    """
    torch.manual_seed(0)
    student = torch.nn.Sequential(
        torch.nn.Linear(D, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(16, C),
    )
    x_l, y_l = torch.randn(8, D), torch.randint(0, C, (8,))
    x_u = torch.randn(24, D) * 3 + 1  # batch statistics unlike the labeled batch's alone
    student.train()
    for _ in range(3):
        h, _ = student_step_feedback(
            student, torch.optim.SGD(student.parameters(), lr=0.0), x_l, y_l, x_u, torch.randint(0, C, (24,))
        )
        assert h == 0.0
    assert student.training, "MPL keeps training the student: it must be left in train mode"
    h, _ = student_step_feedback(
        student, torch.optim.SGD(student.parameters(), lr=0.5), x_l, y_l, x_u, torch.randint(0, C, (24,))
    )
    assert h != 0.0, "a real step must still show in h"


def test_unnoised_labels_come_without_dropout_or_batch_statistics_and_leave_the_teacher_training():
    """`mpl.noised_pseudo_labels=false`: the logits the labels are drawn from are the eval-mode
    forward (the same twice, dropout off, running statistics), carry no graph, and the teacher, which
    trains on, is left in train mode."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(
        torch.nn.Linear(D, 16), torch.nn.BatchNorm1d(16), torch.nn.Dropout(0.5), torch.nn.Linear(16, C)
    )
    x = torch.randn(12, D) * 3 + 1  # batch statistics far from the running ones
    teacher.train()
    first, second = unnoised_logits(teacher, x), unnoised_logits(teacher, x)
    assert teacher.training
    assert torch.equal(first, second) and not first.requires_grad
    assert torch.allclose(first, teacher.eval()(x).detach().float())
    assert not torch.allclose(first, teacher.train()(x).detach().float()), "the training pass is noised"


def test_mixing_hook_sees_only_the_pseudo_labeled_batch_and_one_hot_labels(problem):
    """Mixing nothing gives the unmixed step exactly: same h, same loss; h's labeled batch is never mixed."""
    student, x_l, y_l, x_u, _ = problem
    x_u = torch.cat([x_u, -x_u])
    seen = {}

    def unmixed(x, target, *, part):
        seen.update(n=len(x), part=part, target=target.clone())
        return x, target

    def step(mix):
        s = copy.deepcopy(student)
        opt = torch.optim.SGD(s.parameters(), lr=ETA)
        return student_step_feedback(s, opt, x_l, y_l, x_u, torch.tensor([2, 0]), mix=mix, num_classes=C)

    assert step(unmixed) == pytest.approx(step(None), rel=1e-9)
    assert (seen["n"], seen["part"]) == (2, 1)
    assert torch.equal(seen["target"], torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
