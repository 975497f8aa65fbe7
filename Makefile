# The two set-up-and-go commands are `make run` and `make test`; both install what they need.
PY ?= python3
PIP ?= $(PY) -m pip

.PHONY: setup run test bench lint clean

setup:  ## install dependencies (CPU torch pinned first) and build the native extension in place
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt -r requirements-datagen.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .

run: setup  ## the main job: a quick data-axis scaling sweep on the built-in dataset (plan, train, fit, plot)
	$(PY) -m crysbench sweep --axis data --model cgcnn --preset quick

test: setup  ## the test suite (what CI runs)
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m crysbench bench-kernels --out results/kernels

lint:
	ruff check crysbench tests benchmarks

clean:
	rm -rf build crysbench/_C*.so *.egg-info
