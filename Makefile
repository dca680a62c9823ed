# Set-up and everyday commands. Every target does the set-up it needs, once:
#   make train   set up, then train the default model (Fashion-MNIST, compact ResNet, SGD)
#   make test    set up, then run the tests
#   make test-fast  the tests without the slow end-to-end ones (marked `slow`): the edit-test loop
PYTHON ?= python3
VENV ?= .venv
# The torch and torchvision releases set-up installs; scripts/check_torch_floor.sh passes the oldest
# ones pyproject.toml allows, into a venv of their own.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data train test test-fast lint format bench clean

setup: $(INSTALLED) data

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Fashion-MNIST: the Debian package when we are root with apt, else a torchvision download.
data: $(INSTALLED)
	@if [ -f $(FASHION_MNIST) ] || [ -f data/fashion_mnist/FashionMNIST/raw/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST is present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	else \
		$(PY) -c "from ssam.data.fashion_mnist import download_fashion_mnist; download_fashion_mnist(None)"; \
	fi

train: setup
	$(PY) train.py

# One pytest worker per core (at most 4), one intra-op thread each: the tests' trainings are
# small, and two-thread workers on shared cores stall on each other. Tests that share an
# expensive module fixture stay on one worker (xdist_group marks, --dist loadgroup).
PYTEST := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup

# The slowest tests are listed at the end, to see what the suite's 10-minute budget goes to.
test: setup
	$(PYTEST) --durations=20

test-fast: setup
	$(PYTEST) -m "not slow"

lint: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(INSTALLED)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: setup
	$(PY) scripts/bench_mask.py --json docs/bench_mask_cpu.json

clean:
	rm -rf $(VENV) outputs .pytest_cache
