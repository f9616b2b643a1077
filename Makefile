# Every target installs into .venv first (created when missing), with the tested versions of constraints.txt.
# torch comes first and pinned, so requirements.txt cannot pull a multi-GB CUDA build (a CUDA torch already in
# .venv is kept: the lock leaves torch and what it alone needs to the user's build).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install --quiet -c constraints.txt

.PHONY: install demo studio browser test bench lock clean

$(STAMP): requirements.txt constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PIP) -r requirements.txt
	# triton: CUDA builds of torch bring their own; on a CPU box its interpreter runs the fused kernels' tests
	# (3.6.0, the version of the lent H100 machine's torch 2.11)
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install --quiet triton==3.6.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo

# The local studio in the browser: http://127.0.0.1:7860 (python -m studio --help for its options)
studio: $(STAMP)
	$(PY) -m studio

# The studio's browser test drives Debian's chromium (no browser is downloaded); installed here when missing and
# this is a Debian machine where we may (root); elsewhere that one test is skipped, and this says so.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium: the studio's browser test will be skipped"; \
	  else echo "note: no chromium (apt-get install chromium): the studio's browser test will be skipped"; fi; }

# The whole suite (CI's: under 12 minutes on 2 cores), spread over worker processes (one thread each);
# TEST_WORKERS=1 runs it in one process. The quick loop while editing: .venv/bin/python -m pytest -q -m "not slow" tests
TEST_WORKERS ?= 2
test: $(STAMP) browser
	$(PY) -m ruff check --quiet .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations 12 tests

bench: $(STAMP)
	$(PY) scripts/bench_prepare.py
	$(PY) scripts/bench.py

# Regenerate constraints.txt from a clean install of requirements.txt (then make test, and commit both)
lock:
	python3 scripts/lock.py

clean:
	rm -rf demo runs studio_workspace .pytest_cache
