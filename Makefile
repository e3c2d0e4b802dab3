# Two commands on a fresh machine: `make demo` and `make test`.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PORT ?= 6006
LOGDIR ?= logs
EPOCHS ?=
# `keras`, `torch` or both (`make demo FRAMEWORK="keras torch"`): which runs the demo trains.
FRAMEWORK ?= keras
CHROMIUM := /usr/bin/chromium
FASHION_MNIST_DEB := dataset-fashion-mnist
# The torch the tests run on, pinned so every machine tests the same build.
# pip picks the CPU build (2.13.0+cpu) where a wheel folder or index offering
# it is configured; PyPI alone offers the CUDA build of the same version
# (several GB more).
TORCH_PIN ?= torch==2.13.0
# apt-get needs root; elsewhere go through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install lint test test-fast demo demo-data chromium clean screenshots

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(INSTALLED): $(PY) setup.py Makefile
	$(PY) -m pip install --quiet -e '.[keras,torch,test]' '$(TORCH_PIN)'
	touch $@

install: $(INSTALLED)

# The browser tests drive Debian's Chromium; browser downloads are blocked.
chromium:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# Lint and format checks first: they take a second and fail fast.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(INSTALLED) chromium lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the slow tests, for a quick loop while editing.
test-fast: $(INSTALLED)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# MNIST from the Keras cache or a short download attempt; else Fashion-MNIST,
# installing Debian's package when no copy is found.
demo-data: $(INSTALLED)
	@$(PY) -m demo.data --check --download || \
		{ echo "Installing Debian's $(FASHION_MNIST_DEB) as the offline fallback"; \
		  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(FASHION_MNIST_DEB); }

# demo-data already tried the download, so the demo does not wait for it again.
demo: $(INSTALLED) demo-data
	$(PY) -m demo --no-download --logdir $(LOGDIR) --port $(PORT) $(if $(EPOCHS),--epochs $(EPOCHS)) --framework $(FRAMEWORK)
	@echo "Gradient Health tab: http://127.0.0.1:$(PORT)/#gradient_health  (Ctrl+C stops TensorBoard)"
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# Rewrites the README's screenshots in docs/ from the browser tests.
screenshots: $(INSTALLED) chromium
	UPDATE_SCREENSHOTS=1 $(PY) -m pytest tests/test_frontend_browser.py -k "screenshot or path_prefix" -q
