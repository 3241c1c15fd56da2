"""pdp_hf: differentiable pruning for Hugging Face Transformers.

Two lines change in a Transformers fine-tuning script::

    from pdp_hf import PDPConfig, PrunerTrainer

    trainer = PrunerTrainer(model=model, args=training_args, train_dataset=train, pdp_config=PDPConfig(target_sparsity=0.9))
    trainer.train()                      # masks learned, hardened and baked in
    trainer.export_pruned("my-sparse-model")   # loads with plain AutoModelFor*.from_pretrained
"""

from .compressed import load_pruned
from .config import PDPConfig
from .export import export_pruned
from .inference import optimize_for_inference
from .injection import apply_pruning, finalize_pruning, get_pruner
from .report import sparsity_report
from .targets import register_architecture
from .trainer import PrunerTrainer, PruningCallback
from .version import __version__

__all__ = [
    "PDPConfig",
    "PrunerTrainer",
    "PruningCallback",
    "apply_pruning",
    "finalize_pruning",
    "get_pruner",
    "sparsity_report",
    "export_pruned",
    "load_pruned",
    "optimize_for_inference",
    "register_architecture",
    "__version__",
]
