"""Target resolution: per-architecture defaults on the installed Transformers, user patterns, loud failures."""

import pytest
import torch
from torch import nn

from pdp_hf import PDPConfig, apply_pruning, get_pruner
from pdp_hf.targets import find_targets, role_of
from tests.conftest import tiny_bert, tiny_distilbert, tiny_roberta, tiny_vit

ROLES = ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]


@pytest.mark.parametrize("factory", [tiny_bert, tiny_roberta, tiny_distilbert, tiny_vit])
def test_defaults_cover_every_role_in_every_layer(factory):
    model = factory()
    names = find_targets(model, None)
    model_type = model.config.model_type
    assert len(names) == 6 * 2  # six roles, two layers
    assert sorted(role_of(model_type, n) for n in names) == sorted(ROLES * 2)
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in names)
    # the task head and the pooler are never defaults
    assert not any("classifier" in n or "pooler" in n for n in names)


def test_user_patterns_exact_suffix_and_regex():
    model = tiny_bert()
    exact = find_targets(model, ["bert.encoder.layer.0.attention.self.query"])
    assert exact == ["bert.encoder.layer.0.attention.self.query"]
    suffix = find_targets(model, ["attention.self.query", "attention.self.key"])
    assert len(suffix) == 4
    regex = find_targets(model, [r"layer\.1\..*(query|intermediate\.dense)$"])
    assert regex == ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.intermediate.dense"]


def test_pattern_matching_nothing_lists_linear_layers():
    with pytest.raises(ValueError, match="matched no module.*bert.encoder.layer.0.attention.self.query"):
        find_targets(tiny_bert(), ["q_proj"])


def test_pattern_matching_non_linear_refused():
    with pytest.raises(ValueError, match="not plain nn.Linear.*LayerNorm"):
        find_targets(tiny_bert(), ["attention.output.LayerNorm"])


def test_architecture_without_defaults():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="no default target modules for model_type=None.*fc"):
        find_targets(Toy(), None)
    model = apply_pruning(Toy(), PDPConfig(target_modules=["fc"], target_sparsity=0.5))
    assert list(get_pruner(model).modules) == ["fc"]


def test_defaults_that_match_nothing_fail_loudly():
    model = tiny_bert()
    model.bert.encoder.layer = nn.ModuleList()  # as if the module names had changed
    with pytest.raises(ValueError, match="matched no Linear layer"):
        find_targets(model, None)


def test_apply_twice_refused():
    model = apply_pruning(tiny_bert(), PDPConfig())
    with pytest.raises(ValueError, match="already applied"):
        apply_pruning(model, PDPConfig())


def test_state_dict_keys_unchanged_by_apply():
    plain = tiny_bert().eval()
    pruned = apply_pruning(tiny_bert(), PDPConfig()).eval()
    assert list(pruned.state_dict()) == list(plain.state_dict())
    x = torch.randint(1, 60, (2, 8))
    torch.testing.assert_close(pruned(input_ids=x).logits, plain(input_ids=x).logits)  # dense before the ramp
