"""Worker for tests/test_distributed.py: PrunerTrainer under torchrun (gloo, CPU) or in a single process.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT_DIR PER_DEVICE_BATCH [METHOD[-learned|-emptied] [checkpointing]]
    python tests/ddp_worker.py OUT_DIR GLOBAL_BATCH [METHOD]   # the single-process reference

`-emptied`: heads, global budgets at 50%, with layer 0's attention scaled down so that it loses every head.
Writes OUT_DIR/rank{R}.safetensors: the final (finalized) weights, the hard masks seen at hardening and, for
methods with learnable scores, the scores then.
"""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, TrainingArguments

from pdp_hf import PDPConfig, PrunerTrainer, get_pruner

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.conftest import text_dataset  # noqa: E402


def main(out_dir: str, batch: int, method: str = "pdp", checkpointing: str = "") -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", 0))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    emptied = method.endswith("-emptied")
    if emptied:
        with torch.no_grad():
            for name, param in model.bert.encoder.layer[0].attention.named_parameters():
                param.mul_(0.01 if "LayerNorm" not in name else 1.0)
    masks = {}

    class GrabMasks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            pruner = get_pruner(model)
            if pruner.hardened and not masks:
                masks.update({f"hard_mask.{g.name}": g.hard_mask.clone() for g in pruner.groups})
                masks.update({f"score.{g.name}": g.score.detach().clone() for g in pruner.groups if g.score is not None})

    args = TrainingArguments(
        output_dir=os.path.join(out_dir, "run"), max_steps=16, per_device_train_batch_size=batch, learning_rate=1e-3,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        dataloader_num_workers=0, logging_steps=100,
        # Trainer then builds DDP without find_unused_parameters: every parameter needs a gradient at every step
        activation_checkpointing=checkpointing == "checkpointing",
    )
    trainer = PrunerTrainer(
        model=model, args=args, train_dataset=text_dataset(128), callbacks=[GrabMasks()],
        pdp_config=PDPConfig(method=method.split("-")[0], target_sparsity=0.5 if emptied else 0.8, pruning_start=0.1,
                             pruning_end=0.5, harden_at=0.75, granularity="head" if emptied else "unstructured",
                             sparsity_distribution={"learned": "learned", "emptied": "global"}.get(
                                 method.partition("-")[2], "uniform")),
    )
    trainer.train()
    tensors = {f"final.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file({**tensors, **masks}, os.path.join(out_dir, f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
