# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zest-installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test bench clean wheelhouse

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt setup.py pyproject.toml $(wildcard cpp_ext/*)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zest-edge demo --out demo_out --force

test: $(STAMP)
	$(PY) -m pytest -q tests

# Wheels tools/gpu_check.sh installs on a GPU machine without a package registry (for its Python: GPU_PY).
GPU_PY ?= 3.12
wheelhouse: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    -d tools/wheelhouse -r tools/gpu_requirements.txt

clean:
	rm -rf build *.egg-info zest_edge/*.so
