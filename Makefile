# Every target installs into .venv first (created when missing).
# torch comes first and pinned, so requirements.txt cannot pull a multi-GB CUDA build.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	# triton: CUDA builds of torch bring their own; on a CPU box its interpreter runs the fused kernels' tests
	# (3.6.0, the version of the lent H100 machine's torch 2.11)
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install --quiet triton==3.6.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo

test: $(STAMP)
	$(PY) -m ruff check --quiet .
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) scripts/bench_prepare.py
	$(PY) scripts/bench.py

clean:
	rm -rf demo runs .pytest_cache
