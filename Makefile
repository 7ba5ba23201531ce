# The two commands a new user needs (see README): `make book` and `make test`.
# Each creates .venv with the pinned versions first if it is missing or stale.
# `make book` reads the committed cpu records (CUB only adds chapter 1's images);
# `make book PROFILE=smoke` trains every chapter's runs on synthetic data (CI).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

LOSSES := contrastive triplet triplet_center npair quadruplet lifted_structure binomial_deviance multi_similarity ranked_list

PROFILE ?=

.PHONY: book test venv bench results-cpu results-recipe results-studies verify clean

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

# Every record of the run manifest (dmlutils/manifest.py) at the cpu profile, two runs side
# by side (needs CUB: $$DML_DATA or ./data). Valid records are skipped; interrupted runs
# resume from their checkpoints. PROCESSES=1 for one at a time; ONLY="--only group:beta".
PROCESSES ?= 2
results-cpu: $(VENV)/.installed
	$(PY) -m dmlutils runs --profile cpu --processes $(PROCESSES) $(ONLY)

# The recipe study that chose the cpu profile's settings (dmlutils/recipe.py).
results-recipe: $(VENV)/.installed
	$(PY) -m dmlutils recipe --processes $(PROCESSES)

# Re-train committed records from scratch and compare (default: MS, seed 0).
verify: $(VENV)/.installed
	$(PY) -m dmlutils verify --profile cpu $(VERIFY_ARGS)

# Chapter 6's setting studies (dmlutils/studies.py): candidates on held-out training
# classes, then the chosen settings on the test classes, two runs side by side. Existing
# records are reused.
results-studies: $(VENV)/.installed
	$(PY) -m dmlutils study --profile cpu --processes 2

clean:
	rm -rf $(VENV) _build
