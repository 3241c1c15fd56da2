"""What the example scripts share, following Transformers' own examples (examples/pytorch/*/run_*.py): logging
set-up, the phase check, last-checkpoint detection, train metrics, and the closing steps of a training run (export
with its model card, the summary, the push of the export).

```python
logger = logging.getLogger("my_script")
setup_logging(training_args, logger)
require_phase(training_args)
last_checkpoint = detect_last_checkpoint(training_args, overwrite_output_dir, logger)
...
train_result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args, last_checkpoint))
record_train_result(trainer, train_result, train_samples=len(train_dataset))
summary = finish_training_run(trainer, "my_script", summary, command=..., hub_model_id=..., logger=logger)
```
"""

from __future__ import annotations

import json
import logging
import os
import sys

PHASES = ("do_train", "do_eval", "do_predict")


def setup_logging(training_args, logger: logging.Logger) -> int:
    """Logging as Transformers' examples set it up: records to stdout, INFO on the main process (or `--log_level`),
    `--log_level_replica` on the others, the same level for `datasets` and `transformers`. Returns the level."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        # TrainingArguments' default log_level is "passive" (keep Transformers' level): INFO is the examples' default.
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, n_gpu: {training_args.n_gpu}, "
        f"distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"16-bits training: {training_args.fp16 or training_args.bf16}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")
    return log_level


def require_phase(training_args, phases: tuple[str, ...] = PHASES) -> None:
    """Refuse a run that would do nothing: at least one of --do_train, --do_eval, --do_predict must be given."""
    if not any(getattr(training_args, phase, False) for phase in phases):
        flags = ", ".join(f"--{phase}" for phase in phases)
        raise ValueError(f"Nothing to do: pass at least one of {flags} (e.g. --do_train --do_eval).")


def detect_last_checkpoint(
    training_args, overwrite_output_dir: bool = False, logger: logging.Logger | None = None, training: bool | None = None
):
    """Transformers' last-checkpoint detection for a training run (None unless it trains: `training`, by default
    --do_train).

    An output_dir with `checkpoint-*` folders gives the last one, to resume from (unless --resume_from_checkpoint
    names one); a non-empty output_dir without checkpoints is refused unless `overwrite_output_dir`.
    """
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = training_args.output_dir
    training = training_args.do_train if training is None else training
    if not training or overwrite_output_dir or not os.path.isdir(output_dir):
        return None
    last_checkpoint = get_last_checkpoint(output_dir)
    if last_checkpoint is None and len(os.listdir(output_dir)) > 0:
        raise ValueError(
            f"Output directory ({output_dir}) already exists and is not empty, without a checkpoint to resume from. "
            "Use --overwrite_output_dir to train there anyway, or choose another --output_dir."
        )
    if last_checkpoint is not None and training_args.resume_from_checkpoint is None and logger is not None:
        logger.info(
            f"Checkpoint detected, resuming training at {last_checkpoint}. To avoid this behavior, change "
            "the `--output_dir` or add `--overwrite_output_dir` to train from scratch."
        )
    return last_checkpoint


def checkpoint_to_resume(training_args, last_checkpoint: str | None):
    """--resume_from_checkpoint if given, else the detected last checkpoint (or None: start from scratch)."""
    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    return last_checkpoint


def record_train_result(trainer, train_result, train_samples: int | None = None) -> dict:
    """Log and save the train metrics (`train_results.json`, `all_results.json`) and the trainer state."""
    metrics = dict(train_result.metrics)
    if train_samples is not None:
        metrics["train_samples"] = train_samples
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


def ensure_output_dir(trainer) -> str:
    """Create output_dir (main process) before writing results there; returns it."""
    output_dir = trainer.args.output_dir
    if trainer.is_world_process_zero():
        os.makedirs(output_dir, exist_ok=True)
    return output_dir


def log_summary(logger: logging.Logger, script: str, summary: dict) -> dict:
    """One line `<script>: {json}` with the run's headline numbers; returns the summary."""
    logger.info(f"{script}: {json.dumps(summary)}")
    return summary


def finish_training_run(
    trainer,
    script: str,
    summary: dict,
    *,
    command: str,
    base_model: str | None = None,
    dataset: str | None = None,
    eval_results: list | None = None,
    hub_model_id: str | None = None,
    hub_token: str | None = None,
    logger: logging.Logger | None = None,
    shrink: bool = False,
    onnx: bool = False,
) -> dict:
    """After training: export the pruned model with its card to `<output_dir>/export`, add the measured sparsity
    and the export's path to `summary`, log it, and push the export (only the export) when `hub_model_id` is set.
    `shrink` and `onnx` go to `export_pruned`: pruned heads and neurons cut out, and `model.onnx` beside the weights.

    Returns the summary. A failed push raises after the export is complete on disk.
    """
    from .hub import push_export
    from .report import sparsity_report

    logger = logger or logging.getLogger(script)
    export_dir = os.path.join(trainer.args.output_dir, "export")
    trainer.export_pruned(
        export_dir,
        overwrite=True,
        base_model=base_model,
        dataset=dataset,
        eval_results=eval_results,
        command=command,
        shrink=shrink,
        onnx=onnx,
    )
    report = sparsity_report(trainer.model, config=trainer.pdp_config)
    summary = {**summary, "sparsity": round(report["total"]["sparsity"], 4), "export": export_dir}
    log_summary(logger, script, summary)
    if hub_model_id and trainer.is_world_process_zero():  # one upload, from the main process
        logger.info(f"{script}: pushed {push_export(export_dir, hub_model_id, hub_token)}")
    return summary
