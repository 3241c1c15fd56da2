"""Distillation: the loss combines as documented, and the teacher is never touched."""

import pytest
import torch

from pdp_hf import PDPConfig, PrunerTrainer
from pdp_hf.distillation import distillation_loss
from tests.conftest import text_dataset, tiny_bert


def reference_kd(student, teacher, T):
    """Sum over classes of p_t (log p_t - log p_s), averaged over examples, times T^2 (written out)."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_t = torch.softmax(torch.tensor(t_row, dtype=torch.float64) / T, 0)
        log_p_s = torch.log_softmax(torch.tensor(s_row, dtype=torch.float64) / T, 0)
        total += float((p_t * (p_t.log() - log_p_s)).sum())
    return total / len(student) * T * T


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_loss_matches_written_out_formula(T):
    g = torch.Generator().manual_seed(0)
    student, teacher, task = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g), torch.tensor(0.7)
    got = distillation_loss(student, teacher, task, alpha=0.95, temperature=T)
    assert float(got) == pytest.approx(0.95 * reference_kd(student, teacher, T) + 0.05 * 0.7, rel=1e-5)
    assert float(distillation_loss(student, teacher, None, 0.95, T)) == pytest.approx(reference_kd(student, teacher, T), rel=1e-5)


def test_regression_uses_mse():
    s, t = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]])
    assert float(distillation_loss(s, t, torch.tensor(1.0), alpha=0.5, temperature=2.0)) == pytest.approx(0.5 * 2.5 + 0.5)


def test_trainer_combines_losses_and_leaves_teacher_untouched(make_args):
    teacher = tiny_bert(seed=7)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = tiny_bert(seed=0)
    trainer = PrunerTrainer(
        model=student, args=make_args(), train_dataset=text_dataset(), pdp_config=PDPConfig(target_sparsity=0.5),
        teacher_model=teacher, distill_alpha=0.9, distill_temperature=3.0,
    )
    assert trainer.loss_is_scaled_for_ga is False
    batch = {"input_ids": torch.randint(1, 60, (4, 8)), "labels": torch.tensor([0, 1, 1, 0])}
    student.train()
    torch.manual_seed(1)
    loss = trainer.compute_loss(student, batch).detach()
    torch.manual_seed(1)
    out = student(**batch)
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"]).logits
    expected = 0.9 * reference_kd(out.logits.detach(), t_logits, 3.0) + 0.1 * float(out.loss.detach())
    assert float(loss) == pytest.approx(expected, rel=1e-5)

    trainer.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kwargs,match", [({"distill_alpha": 1.5}, "distill_alpha=1.5"), ({"distill_temperature": 0}, "distill_temperature=0")])
def test_bad_distillation_arguments(kwargs, match, make_args):
    with pytest.raises(ValueError, match=match):
        PrunerTrainer(model=tiny_bert(), args=make_args(), pdp_config=PDPConfig(), teacher_model=tiny_bert(seed=3), **kwargs)


def test_a_teacher_with_other_labels_is_refused(make_args):
    def bert(num_labels=2, id2label=None, seed=3):
        model = tiny_bert(seed=seed)
        if num_labels != 2:
            from transformers import BertForSequenceClassification

            model = BertForSequenceClassification(model.config.__class__(**{**model.config.to_dict(),
                                                                              "num_labels": num_labels}))
        if id2label is not None:
            model.config.id2label = id2label
            model.config.label2id = {v: k for k, v in id2label.items()}
        return model

    def trainer(teacher, student):
        return PrunerTrainer(model=student, args=make_args(), pdp_config=PDPConfig(), teacher_model=teacher)

    with pytest.raises(ValueError, match="teacher has 3 outputs and the student 2"):
        trainer(bert(num_labels=3), bert(seed=0))
    with pytest.raises(ValueError, match="not the student's"):
        trainer(bert(id2label={0: "positive", 1: "negative"}), bert(seed=0, id2label={0: "negative", 1: "positive"}))
    trainer(bert(id2label={0: "negative", 1: "positive"}), bert(seed=0, id2label={0: "negative", 1: "positive"}))
    trainer(bert(id2label={0: "negative", 1: "positive"}), bert(seed=0))  # default names: nothing to compare
