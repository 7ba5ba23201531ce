# The two commands a new user needs (see README): `make book` and `make test`.
# Each creates .venv with the pinned versions first if it is missing or stale.
# `make book PROFILE=smoke` runs the book on synthetic data (no CUB needed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

LOSSES := contrastive triplet triplet_center npair quadruplet lifted_structure binomial_deviance multi_similarity ranked_list

PROFILE ?=

.PHONY: book test venv bench results-cpu results-studies clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e ".[dev,vision,book]"
	touch $@

venv: $(VENV)/.installed

book: $(VENV)/.installed
	$(PY) -m dmlutils book $(if $(PROFILE),--profile $(PROFILE))

test: $(VENV)/.installed
	$(PY) -m pytest -q

# Every benchmark, one thread each: results/benchmarks/<name>.json + .md and README.md (~12 min).
# Some of them: make bench BENCH_ARGS="--only losses,growth"; a tiny check: BENCH_ARGS=--small.
bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The nine cpu-profile run records and the baseline (needs CUB: $$DML_DATA or ./data).
# A loss that already has a record is skipped; an interrupted run resumes from its checkpoint.
results-cpu: $(VENV)/.installed
	@for loss in $(LOSSES); do \
	  test -f results/cpu/$$loss.json || $(PY) -m dmlutils train --profile cpu --loss $$loss --resume || exit 1; \
	done
	test -f results/cpu/baseline.json || $(PY) -m dmlutils baseline --profile cpu

# Chapter 6's setting studies (dmlutils/studies.py): candidates on held-out training
# classes, then the chosen setting on the test classes. Existing records are reused.
STUDIED := contrastive lifted_structure npair triplet_center ranked_list
results-studies: $(VENV)/.installed
	@for loss in $(STUDIED); do $(PY) -m dmlutils study $$loss --profile cpu || exit 1; done

clean:
	rm -rf $(VENV) _build
