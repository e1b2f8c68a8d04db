# All set-up happens here: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test docs lint bench compat compat-ci compat-tl4 clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first: a plain `torch` requirement would pull GBs of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m r1_plugin.demo $(ARGS)

# The feature map's HTML is tested in Debian's headless Chromium (driven by Playwright, never `playwright install`):
# installed here when missing and we are root with apt-get (CI); otherwise that one test says why it skips.
CHROMIUM := /usr/bin/chromium

chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's chromium for the feature-map browser test"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi

test: $(STAMP) chromium
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# TransformerLens's own unit tests with and without `import r1_plugin`: prints every per-test difference and
# exits non-zero on one (docs/compat.md). `make compat` runs the whole unit suite (22-70 min on 2 cores);
# `make compat-ci` the fixed subset CI runs. Pass pytest options with COMPAT_ARGS="-- -k cache".
compat: $(STAMP)
	nice $(PY) scripts/tl_compat.py $(COMPAT_ARGS)

compat-ci: $(STAMP)
	$(PY) scripts/tl_compat.py --subset ci $(COMPAT_ARGS)

# r1_plugin under the newest TransformerLens 4.x, in its own environment: SAELens pins transformer-lens<4 and is not
# installed there. Runs every test marked `bridge` or `tl4` in a file that imports no sae_lens, and fails when
# nothing ran (scripts/compat_tl4.py, docs/compat.md). Pass pytest options with COMPAT_ARGS="-- -x".
VENV_TL4 := .venv-tl4
PY_TL4 := $(VENV_TL4)/bin/python
STAMP_TL4 := $(VENV_TL4)/.installed-stamp

$(STAMP_TL4): pyproject.toml scripts/compat_tl4.py
	test -x $(PY_TL4) || $(PYTHON) -m venv $(VENV_TL4)
	$(PY_TL4) -m pip install -q --upgrade pip
	# The CPU wheel first, as for .venv; then our dependencies without SAELens, with transformer-lens>=4,<5.
	$(PY_TL4) -m pip install -q torch==2.13.0
	$(PY_TL4) scripts/compat_tl4.py --requirements > $(VENV_TL4)/requirements.txt
	$(PY_TL4) -m pip install -q -r $(VENV_TL4)/requirements.txt
	$(PY_TL4) -m pip install -q --no-deps -e .
	touch $(STAMP_TL4)

compat-tl4: $(STAMP_TL4)
	$(PY_TL4) scripts/compat_tl4.py $(COMPAT_ARGS)

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check r1_plugin tests benchmarks scripts

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(VENV_TL4) site build dist wandb
