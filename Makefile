# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ACTIVATE_HINT := @echo "The var command is in $(VENV)/bin: run 'source $(VENV)/bin/activate' to put it on your PATH."

.PHONY: demo test install clean data serve

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,plot,web]"
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from Debian's package, where apt is available (training and evaluation use it).
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1; then apt-get install -y dataset-fashion-mnist || \
	  (apt-get update && apt-get install -y dataset-fashion-mnist); \
	else echo "no apt-get: point --data at a folder with the four Fashion-MNIST IDX files"; fi

demo: $(STAMP)
	$(VENV)/bin/var sample --out samples/demo.png
	$(ACTIVATE_HINT)

# The web demo on http://127.0.0.1:7860 (var serve --help for the options).
serve: $(STAMP)
	$(VENV)/bin/var serve

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests
	$(ACTIVATE_HINT)

clean:
	rm -rf $(VENV) samples
