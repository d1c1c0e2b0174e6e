# Two commands on a fresh machine: `make run` and `make test`. Each sets up .venv first.
PYTHON ?= python3
PROFILE ?= quick
DEVICE ?= auto
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lab clean-notebooks bench example-report book clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	# test-only reference for PGD; --no-deps because its requests~=2.25.1 pin breaks jupyterlab's resolution
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "torchattacks==3.5.1"
	touch $(STAMP)

run: $(STAMP)  ## the notebook sequence on the offline default data (make run PROFILE=fashion)
	$(PY) -m robustlib run --profile $(PROFILE) --device $(DEVICE)

test: $(STAMP)  ## unit tests + nbval over every notebook in the smoke setting
	@# tests/ on one worker per core (conftest.py), then the notebooks in order in one process; both always run
	st=0; ROBUSTLIB_SMOKE=1 TQDM_DISABLE=1 $(PY) -m pytest -q -n logical --dist loadgroup tests || st=1; \
	ROBUSTLIB_SMOKE=1 TQDM_DISABLE=1 $(PY) -m pytest -q notebooks || st=1; exit $$st

lab: $(STAMP)  ## JupyterLab on notebooks/ with this environment as the kernel (git sees the notebooks stripped)
	@git rev-parse --git-dir >/dev/null 2>&1 && $(VENV)/bin/nbstripout --install \
	  || echo "not a git checkout: nbstripout's filter not installed (make clean-notebooks strips by hand)"
	$(VENV)/bin/jupyter lab notebooks/

clean-notebooks: $(STAMP)  ## strip the outputs that running notebooks/ in JupyterLab saved into them
	$(VENV)/bin/nbstripout notebooks/*.ipynb

bench: $(STAMP)  ## speed ratios (attacks, each method's epoch vs its floor), appended to runs/bench/*.json
	$(PY) bench/attacks.py
	$(PY) bench/train.py --profile $(PROFILE)

book: $(STAMP)  ## runs/$(PROFILE)'s executed notebooks and report as a static site in runs/$(PROFILE)/book (OUT=dir)
	$(PY) -m robustlib book --profile $(PROFILE) $(if $(OUT),--out "$(OUT)")

EXAMPLE := docs/example-report/$(PROFILE)
example-report:  ## copy runs/$(PROFILE)'s report, its tables and PNG figures to docs/example-report/$(PROFILE)
	test -f runs/$(PROFILE)/report.md || { echo "no runs/$(PROFILE)/report.md: run make run PROFILE=$(PROFILE) first"; exit 1; }
	rm -rf $(EXAMPLE) && mkdir -p $(EXAMPLE)/figures
	cp -r runs/$(PROFILE)/report.md runs/$(PROFILE)/report.html runs/$(PROFILE)/timings.json runs/$(PROFILE)/tables $(EXAMPLE)/
	cp runs/$(PROFILE)/figures/*.png $(EXAMPLE)/figures/

clean:  ## remove run outputs (keeps .venv and data)
	rm -rf runs .pytest_cache
