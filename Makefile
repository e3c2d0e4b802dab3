# Two commands on a fresh machine: `make demo` and `make test`.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PORT ?= 6006
LOGDIR ?= logs
EPOCHS ?=
CHROMIUM := /usr/bin/chromium
# apt-get needs root; elsewhere go through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test test-fast demo demo-data chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(INSTALLED): $(PY) setup.py
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)

# The browser tests drive Debian's Chromium; browser downloads are blocked.
chromium:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

test: $(INSTALLED) chromium
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the slow tests, for a quick loop while editing.
test-fast: $(INSTALLED)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Fashion-MNIST from Debian is the offline fallback when MNIST is not cached.
demo-data:
	@$(PY) -m demo.data --check >/dev/null 2>&1 || test -d /usr/share/datasets/fashion-mnist || \
		{ echo "No MNIST in the Keras cache: installing Debian's dataset-fashion-mnist as the offline fallback"; \
		  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

demo: $(INSTALLED) demo-data
	$(PY) -m demo --logdir $(LOGDIR) $(if $(EPOCHS),--epochs $(EPOCHS))
	@echo "Gradient Health tab: http://127.0.0.1:$(PORT)/#gradient_health"
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
