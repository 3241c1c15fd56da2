#!/usr/bin/env python
"""Fine-tune and prune an image classifier (ViT and any AutoModelForImageClassification with a supported encoder).

    python scripts/run_image_classification.py --model_name_or_path google/vit-base-patch16-224-in21k \\
        --dataset_name cifar10 --output_dir out/vit-cifar10 --target_sparsity 0.9 --max_steps 5000
    python scripts/run_image_classification.py --model_name_or_path ./my-vit --train_dir imgs/train \\
        --validation_dir imgs/val --output_dir out/vit-local     # an image folder: one subfolder per class

Data comes from a `datasets` image dataset (Hub or local) or from image folders. Images go through the model's
image processor. The run ends with an export (`<output_dir>/export`) that loads with plain Transformers.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import DatasetDict, load_dataset
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)

from pdp_hf import PDPConfig, PrunerTrainer
from pdp_hf.args import ExportArguments, parse_script_args
from pdp_hf.hub import take_over_push
from pdp_hf.scripting import (
    checkpoint_to_resume,
    detect_last_checkpoint,
    finish_training_run,
    record_train_result,
    setup_logging,
)

logger = logging.getLogger("run_image_classification")


@dataclass
class ModelArguments(ExportArguments):
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder of the image classifier to prune."})
    image_processor_name: str | None = field(default=None, metadata={"help": "Image processor, if not the model's."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialize a classifier head whose size differs from the labels."}
    )
    base_model_id: str | None = field(default=None, metadata={"help": "Hub id of the base model for the card."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` image dataset (Hub id or path)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration, if any."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train in a non-empty output_dir without checkpoints, and never resume from its checkpoints."},
    )
    train_dir: str | None = field(default=None, metadata={"help": "Image folder for training (a subfolder per class)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for evaluation."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: 'image' or 'img')."})
    label_column: str = field(default="label", metadata={"help": "Label column (a ClassLabel)."})
    train_val_split: float = field(default=0.15, metadata={"help": "Held-out fraction when there is no validation split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many evaluation images."})

    def __post_init__(self):
        if self.dataset_name is None and self.train_dir is None:
            raise ValueError("Give --dataset_name or --train_dir (an image folder with one subfolder per class).")


def load_images(args: DataArguments, seed: int) -> DatasetDict:
    if args.dataset_name is not None:
        data = load_dataset(args.dataset_name, args.dataset_config_name)
    else:
        files = {"train": os.path.join(args.train_dir, "**")}
        if args.validation_dir:
            files["validation"] = os.path.join(args.validation_dir, "**")
        data = load_dataset("imagefolder", data_files=files)
    if "validation" not in data:
        split = data["train"].train_test_split(test_size=args.train_val_split, seed=seed, stratify_by_column=args.label_column)
        data = DatasetDict(train=split["train"], validation=split["test"])
    for name, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None:
            data[name] = data[name].shuffle(seed=seed).select(range(min(limit, len(data[name]))))
    return data


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, PDPConfig))
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, training_args, pdp_config = parse_script_args(parser, argv)
    setup_logging(training_args, logger)
    last_checkpoint = detect_last_checkpoint(training_args, data_args.overwrite_output_dir, logger, training=True)
    set_seed(training_args.seed)
    hub_model_id = take_over_push(training_args)  # only the finished export is pushed
    training_args.remove_unused_columns = False  # the image column is turned into pixel_values on the fly

    # 1. Data and labels.
    data = load_images(data_args, training_args.seed)
    image_column = data_args.image_column or next(c for c in ("image", "img") if c in data["train"].column_names)
    labels = data["train"].features[data_args.label_column].names
    id2label = dict(enumerate(labels))

    # 2. Model and image processor.
    model = AutoModelForImageClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(labels),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name or model_args.model_name_or_path)
    mode = "L" if getattr(model.config, "num_channels", 3) == 1 else "RGB"

    def transform(batch):
        images = [img.convert(mode) for img in batch[image_column]]
        out = processor(images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "labels": batch[data_args.label_column]}

    for split in data.values():
        split.set_transform(transform)

    def collate(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples]),
        }

    # 3. Train with pruning (masks finalized at the end of train()), then evaluate the pruned model.
    trainer = PrunerTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=processor,
        data_collator=collate,
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
        pdp_config=pdp_config,
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args, last_checkpoint))
    record_train_result(trainer, train_result, train_samples=len(data["train"]))
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)

    # 4. Export with card (and push the export).
    from huggingface_hub import EvalResult

    dataset_id = data_args.dataset_name or "imagefolder"
    return finish_training_run(
        trainer,
        "run_image_classification",
        {"eval_accuracy": round(metrics["eval_accuracy"], 4)},
        command="python scripts/run_image_classification.py " + shlex.join(argv),
        base_model=model_args.base_model_id or (None if os.path.isdir(model_args.model_name_or_path) else model_args.model_name_or_path),
        dataset=data_args.dataset_name,
        eval_results=[
            EvalResult(
                task_type="image-classification", dataset_type=dataset_id, dataset_name=dataset_id,
                dataset_split="validation", metric_type="accuracy", metric_value=float(metrics["eval_accuracy"]),
            )
        ],
        hub_model_id=hub_model_id,
        hub_token=training_args.hub_token,
        logger=logger,
        shrink=model_args.export_shrink,
        onnx=model_args.export_onnx,
    )


if __name__ == "__main__":
    main()
