"""PDPConfig: exact round trip, HfArgumentParser, and every validation error (field, value, what is allowed)."""

import json

import pytest
from transformers import HfArgumentParser

from pdp_hf import PDPConfig, __version__
from pdp_hf.config import PRUNING_CONFIG_NAME


def test_round_trip_is_exact(tmp_path):
    config = PDPConfig(
        target_sparsity=0.875, target_modules=["query", "value"], temperature=1e-5, temperature_mode="absolute",
        pruning_start=10, pruning_end=0.5, harden_at=None, sparsity_distribution="global", sparsity_schedule="cubic",
    )
    path = config.save_pretrained(tmp_path)
    data = json.loads(open(path).read())
    assert data["pdp_hf_version"] == __version__
    assert list(data) == sorted(data)  # sorted keys
    assert PDPConfig.from_pretrained(tmp_path) == config
    assert PDPConfig.from_pretrained(path) == config
    assert PDPConfig.from_dict(config.to_dict()) == config


def test_hf_argument_parser_reads_it():
    parser = HfArgumentParser(PDPConfig)
    (config,) = parser.parse_args_into_dataclasses(
        args=["--target_sparsity", "0.8", "--target_modules", "query", "key", "--harden_at", "0.9"]
    )
    assert config.target_sparsity == 0.8 and config.target_modules == ["query", "key"] and config.harden_at == 0.9
    (from_dict,) = parser.parse_dict({"target_sparsity": 0.5, "method": "pdp"})
    assert from_dict.target_sparsity == 0.5


BAD = [
    ({"target_sparsity": 1.0}, "target_sparsity=1.0", "0 <= target_sparsity < 1"),
    ({"target_sparsity": -0.1}, "target_sparsity=-0.1", "0 <= target_sparsity < 1"),
    ({"target_sparsity": float("nan")}, "target_sparsity=nan", "finite number"),
    ({"target_sparsity": "0.9"}, "target_sparsity='0.9'", "finite number"),
    ({"method": "lottery"}, "method='lottery'", "choose one of \\['pdp', 'magnitude', 'smart', 'movement'\\]"),
    ({"granularity": "2:4"}, "granularity='2:4'", "unstructured.*n:m.*e.g. 'attention=head,ffn=neuron'"),
    ({"granularity": "attention=head,mlp=neuron"}, "granularity=", "'attention=...,ffn=...'"),
    ({"granularity": "attention=head,ffn=channel"}, "granularity=", "'channel' is not one of"),
    ({"granularity": "n:m", "n_m": "4:2"}, "n_m='4:2'", "0 < N < M"),
    ({"granularity": "n:m", "n_m": "2/4"}, "n_m='2/4'", "'N:M'"),
    ({"granularity": "block", "block_size": 0}, "block_size=0", "whole number >= 1"),
    ({"granularity": "n:m", "target_sparsity": 0.9}, "target_sparsity=0.9", "implies target_sparsity 0.5"),
    ({"granularity": "n:m", "sparsity_distribution": "global"}, "sparsity_distribution='global'", "use 'uniform'"),
    ({"sparsity_distribution": "layerwise"}, "sparsity_distribution='layerwise'", "uniform"),
    ({"sparsity_schedule": "exp"}, "sparsity_schedule='exp'", "linear"),
    ({"temperature": 0.0}, "temperature=0.0", "> 0"),
    ({"temperature": -1.0}, "temperature=-1.0", "> 0"),
    ({"temperature_mode": "scaled"}, "temperature_mode='scaled'", "relative"),
    ({"target_modules": []}, "target_modules=\\[\\]", "non-empty list"),
    ({"target_modules": ["query", 3]}, "target_modules=", "non-empty list"),
    ({"threshold_refresh_steps": 0}, "threshold_refresh_steps=0", "whole number >= 1"),
    ({"threshold_refresh_steps": 2.5}, "threshold_refresh_steps=2.5", "whole number >= 1"),
    ({"pruning_start": -1}, "pruning_start=-1", "fraction of training"),
    ({"pruning_end": 10.5}, "pruning_end=10.5", "whole optimizer step"),
    ({"pruning_end": 1.0}, "pruning_end=1.0", "1 is ambiguous"),
    ({"pruning_start": 0.5, "pruning_end": 0.2}, "pruning_end=0.2", "must not come before pruning_start"),
    ({"pruning_start": 100, "pruning_end": 50}, "pruning_end=50", "must not come before pruning_start"),
    ({"pruning_end": 0.6, "harden_at": 0.5}, "harden_at=0.5", "must not come before pruning_end"),
]


@pytest.mark.parametrize("kwargs,field_and_value,allowed", BAD)
def test_validation_errors_name_field_value_and_fix(kwargs, field_and_value, allowed):
    with pytest.raises(ValueError, match=f"PDPConfig.{field_and_value}") as err:
        PDPConfig(**kwargs)
    assert __import__("re").search(allowed, str(err.value))


def test_single_string_target_becomes_list():
    assert PDPConfig(target_modules="encoder\\.layer\\.0\\..*").target_modules == ["encoder\\.layer\\.0\\..*"]


def test_unknown_key_rejected(tmp_path):
    (tmp_path / PRUNING_CONFIG_NAME).write_text(json.dumps({"target_sparsity": 0.5, "sparsity_tpye": "global"}))
    with pytest.raises(ValueError, match="Unknown PDPConfig keys \\['sparsity_tpye'\\]"):
        PDPConfig.from_pretrained(tmp_path)


def test_corrupted_file_rejected(tmp_path):
    (tmp_path / PRUNING_CONFIG_NAME).write_text('{"target_sparsity": 0.5,')
    with pytest.raises(ValueError, match="not valid JSON"):
        PDPConfig.from_pretrained(tmp_path)


def test_newer_version_rejected(tmp_path):
    (tmp_path / PRUNING_CONFIG_NAME).write_text(json.dumps({"target_sparsity": 0.5, "pdp_hf_version": "99.0.0"}))
    with pytest.raises(ValueError, match="newer than the installed"):
        PDPConfig.from_pretrained(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=PRUNING_CONFIG_NAME):
        PDPConfig.from_pretrained(tmp_path)
