"""`PrunerTrainer`: a `transformers.Trainer` that prunes while it fine-tunes, through public hooks only."""

from __future__ import annotations

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .config import PDPConfig
from .distillation import distillation_loss
from .export import export_pruned
from .injection import apply_pruning, finalize_pruning, get_pruner


class PruningCallback(TrainerCallback):
    """Resolves the schedule at the start of training and advances it once per optimizer step.

    `on_step_begin` fires once per optimizer step (before its first micro-batch), with `state.global_step` the
    number of optimizer steps already taken, so gradient accumulation is counted right: the threshold is computed
    once and reused by all micro-batches of the step.
    """

    def __init__(self, model):
        self.model = model

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        pruner = get_pruner(self.model)
        pruner.set_total_steps(state.max_steps)
        # After the checkpoint's weights and optimizer state are loaded: a run resumed after hardening zeroes them
        # as at hardening; otherwise hardening will.
        pruner.set_optimizer(optimizer)

    def on_step_begin(self, args, state, control, **kwargs):
        get_pruner(self.model).step(state.global_step)


class PrunerTrainer(Trainer):
    """`transformers.Trainer` with differentiable pruning: pass `pdp_config=PDPConfig(...)`, the rest is unchanged.

    - masks are applied to the model at construction (`apply_pruning`);
    - the sparsity schedule advances once per optimizer step; `sparsity`, `temperature` and `mask_gap` are added
      to the Trainer's logs;
    - checkpoints keep the weights plus the pruning state (`pruning_state.safetensors`), so resuming with
      `train(resume_from_checkpoint=...)` continues exactly;
    - at `harden_at` the pruned weights are zeroed in place together with their optimizer state (Adam moments)
      and from then on only their gradients are masked: later checkpoints already hold the sparse model, and the
      forward multiplies no mask;
    - at the end of `train()` the masks are hardened and baked in (`finalize_pruning`); `export_pruned(dir)` then
      writes a checkpoint that loads with plain Transformers;
    - with `teacher_model=`, the training loss is `distill_alpha * KD + (1 - distill_alpha) * task loss`
      (`pdp_hf.distillation.distillation_loss`); the teacher is frozen, in eval mode and on the student's device.

    Example:

    ```python
    from pdp_hf import PDPConfig, PrunerTrainer

    trainer = PrunerTrainer(
        model=model, args=TrainingArguments("out", max_steps=1000), train_dataset=train_ds,
        processing_class=tokenizer, pdp_config=PDPConfig(target_sparsity=0.9),
    )
    trainer.train()
    trainer.export_pruned("out/sparse-model")
    ```
    """

    def __init__(
        self,
        model=None,
        args=None,
        *trainer_args,
        pdp_config: PDPConfig | None = None,
        teacher_model: torch.nn.Module | None = None,
        distill_alpha: float = 0.95,
        distill_temperature: float = 2.0,
        **kwargs,
    ):
        if pdp_config is None:
            raise ValueError("PrunerTrainer needs pdp_config=PDPConfig(...); use transformers.Trainer for dense training.")
        if not isinstance(pdp_config, PDPConfig):
            raise TypeError(f"pdp_config must be a PDPConfig, got {type(pdp_config).__name__}.")
        if model is None:
            raise ValueError("PrunerTrainer needs `model`; `model_init` is not supported (masks are applied once).")
        existing = get_pruner(model)
        if existing is None:
            if pdp_config.target_speedup is not None and args is not None and getattr(args, "place_model_on_device", True):
                model.to(args.device)  # heads and neurons are priced on the device that trains (Trainer moves it anyway)
            apply_pruning(model, pdp_config)
        elif existing.config != pdp_config:
            raise ValueError("The model already carries masks from another PDPConfig; finalize_pruning it first.")
        self.pdp_config = pdp_config
        callbacks = list(kwargs.pop("callbacks", None) or []) + [PruningCallback(model)]
        super().__init__(model, args, *trainer_args, callbacks=callbacks, **kwargs)
        if self.args.load_best_model_at_end:
            raise ValueError(
                "PrunerTrainer does not support load_best_model_at_end=True: the best checkpoint is usually from "
                "before the target sparsity, and its weights would get the last step's masks. Evaluate the final "
                "(pruned) model instead, or export a chosen checkpoint with `pdp-hf export CHECKPOINT OUT`."
            )
        self._refuse_sharded_weights()
        self._refuse_data_parallel_for_structured()
        self._setup_teacher(teacher_model, distill_alpha, distill_temperature)

    def _refuse_sharded_weights(self) -> None:
        """FSDP and DeepSpeed ZeRO-3 give each rank a shard of every weight; thresholds computed on a shard would
        prune the wrong weights, so these setups are refused rather than silently mis-pruned."""
        setup = None
        if getattr(self, "is_fsdp_enabled", False):
            setup = "FSDP"
        elif getattr(self, "is_deepspeed_enabled", False):
            plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
            if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
                setup = "DeepSpeed ZeRO stage 3"
        if setup:
            raise NotImplementedError(
                f"PrunerTrainer does not support {setup}: it shards the weights, and pruning thresholds must come "
                "from full matrices. Use DDP (torchrun / accelerate launch without FSDP) or DeepSpeed ZeRO stage 1-2."
            )

    def _refuse_data_parallel_for_structured(self) -> None:
        """Trainer wraps the model in nn.DataParallel when it sees several GPUs in one process. A neuron or head
        spans several modules, and DataParallel's replicas cannot reach each other's weights, so those
        granularities need one process per GPU."""
        from transformers.training_args import ParallelMode

        if self.args.n_gpu > 1 and self.args.parallel_mode == ParallelMode.NOT_DISTRIBUTED:
            if any(len(group.members) > 1 for group in self.pruner.groups):
                raise NotImplementedError(
                    f"PrunerTrainer sees {self.args.n_gpu} GPUs in one process (nn.DataParallel), which granularity "
                    f"{self.pdp_config.granularity!r} does not support: its units span several modules. Launch one "
                    "process per GPU instead: torchrun --nproc_per_node N your_script.py (or accelerate launch)."
                )

    def _setup_teacher(self, teacher, alpha: float, temperature: float) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill_alpha={alpha!r} is invalid: it must be in [0, 1] (the KD loss weight).")
        if not temperature > 0:
            raise ValueError(f"distill_temperature={temperature!r} is invalid: it must be > 0.")
        self.teacher_model, self.distill_alpha, self.distill_temperature = teacher, alpha, temperature
        if teacher is None:
            return
        if get_pruner(teacher) is not None:
            raise ValueError("The teacher carries pruning masks; pass the dense model as teacher_model.")
        _check_same_labels(getattr(teacher, "config", None), getattr(self.model, "config", None))
        teacher.to(self.args.device).eval().requires_grad_(False)
        # Both loss terms are per-micro-batch means, so Trainer must divide by the accumulation steps.
        self.loss_is_scaled_for_ga = False

    @property
    def pruner(self):
        return get_pruner(self.model)

    def create_optimizer(self, model=None):
        """As `Trainer.create_optimizer`, with the learnable unit scores of SMART / movement in their own parameter
        group (`score_learning_rate`, no weight decay) instead of the weights' groups; the LR schedule covers it."""
        pruner = self.pruner
        scores = pruner.score_parameters() if pruner is not None and self.optimizer is None else []
        if not scores:
            return super().create_optimizer(model)
        for p in scores:  # Trainer's groups take every parameter that requires grad
            p.requires_grad_(False)
        try:
            optimizer = super().create_optimizer(model)
        finally:
            for p in scores:
                p.requires_grad_(True)
        for group in pruner.optimizer_param_groups():
            optimizer.add_param_group(group)
        return optimizer

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """As `Trainer.train`, then finalize the masks. Resuming restores the checkpoint's pruning state first."""
        if self.pruner is None:
            raise RuntimeError("This PrunerTrainer's model was already finalized; build a new PrunerTrainer to train again.")
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but no checkpoint found in {self.args.output_dir}.")
        if checkpoint:
            self.pruner.load_state(checkpoint)
        output = super().train(checkpoint or None, *args, **kwargs)
        finalize_pruning(self.model)
        return output

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """As `Trainer.save_model`; while masks are live it also writes the pruning state beside the weights."""
        super().save_model(output_dir, _internal_call)
        pruner = self.pruner
        if pruner is not None and self.args.should_save:
            pruner.save_state(output_dir or self.args.output_dir)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Task loss, or with a teacher during training: distill_alpha * KD + (1 - distill_alpha) * task loss."""
        if self.teacher_model is None or not model.training:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        else:
            outputs = model(**inputs)
            with torch.no_grad():
                teacher_logits = self.teacher_model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            loss = distillation_loss(
                outputs.logits, teacher_logits, outputs.get("loss"), self.distill_alpha, self.distill_temperature
            )
        if model.training and not bool(torch.isfinite(loss.detach()).all()):
            self._raise_non_finite_loss(loss)
        return (loss, outputs) if return_outputs else loss

    def _raise_non_finite_loss(self, loss) -> None:
        pruner = self.pruner
        bad = pruner.non_finite_modules() if pruner is not None else []
        where = f"NaN/Inf weights in {bad}" if bad else "all targeted weights are finite (check the inputs and labels)"
        raise FloatingPointError(
            f"Training loss is {loss.detach().float().item()} at optimizer step {self.state.global_step}; {where}. "
            "Lower the learning rate, enable gradient clipping (max_grad_norm), or use bf16 instead of fp16."
        )

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        pruner = self.pruner
        if pruner is not None and pruner.total_steps is not None:
            logs = {**logs, **pruner.stats()}
        super().log(logs, *args, **kwargs)

    def export_pruned(self, output_dir: str, **kwargs) -> str:
        """`pdp_hf.export_pruned` for this trainer's model, with its tokenizer/processor and PDPConfig.

        Under DDP only the main process writes (every rank holds the same model); the others wait until the export
        is in place, so all ranks return with it on disk."""
        import os

        kwargs.setdefault("pdp_config", self.pdp_config)
        if self.args.should_save:
            output_dir = export_pruned(self.model, output_dir, self.processing_class, **kwargs)
        self.accelerator.wait_for_everyone()
        return os.path.abspath(output_dir)


def _check_same_labels(teacher, student) -> None:
    """Distillation matches output i of the teacher with output i of the student: refuse a teacher with another
    number of outputs, or with other label names in that order (where both configs name their labels)."""
    if teacher is None or student is None:
        return
    if teacher.num_labels != student.num_labels:
        raise ValueError(
            f"The teacher has {teacher.num_labels} outputs and the student {student.num_labels}: distillation compares "
            "them output by output. Use a teacher fine-tuned on the student's task (the same labels).")

    def names(config) -> dict[int, str] | None:
        labels = {int(k): str(v) for k, v in (config.id2label or {}).items()}
        return None if all(v == f"LABEL_{k}" for k, v in labels.items()) else labels  # Transformers' defaults

    teacher_names, student_names = names(teacher), names(student)
    if teacher_names is not None and student_names is not None and teacher_names != student_names:
        raise ValueError(
            f"The teacher's labels {teacher_names} are not the student's {student_names}: distillation would teach each "
            "class from the teacher's class at the same index. Give the student the teacher's id2label/label2id, or "
            "use a teacher trained with the student's label order.")
