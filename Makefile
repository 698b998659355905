# The two set-up commands of the README: `make demo` (main job) and `make test` (test suite).
# Both install into their own virtual environment, .venv, so a system Python that refuses
# `pip install` (PEP 668) works too. The venv is made from the interpreter's real path: a venv
# made through a pyenv shim runs outside itself.
PY ?= python3
TORCH ?= torch==2.13.0
VENV := $(abspath .venv)
BASE_PY := $(shell $(PY) -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
VPY := $(VENV)/bin/python
export PATH := $(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(VENV)

.PHONY: venv install install-test demo test bench clean-venv

$(VPY):
	@test -n "$(BASE_PY)" || { echo "error: $(PY) not found; run make PY=/path/to/python3.11" >&2; exit 1; }
	"$(BASE_PY)" -m venv "$(VENV)"
	@"$(VPY)" -c 'import sys; assert sys.prefix == "$(VENV)", "the venv runs outside itself: " + sys.prefix'

venv: $(VPY)

install: $(VPY)
	"$(VPY)" -m pip install -q "$(TORCH)"
	"$(VPY)" -m pip install -q -e .

install-test: install
	"$(VPY)" -m pip install -q -e ".[dev,onnx,ray]"
	bash scripts/install_browser.sh
	bash scripts/fetch_teachers.sh

demo: install
	bash demo_videos/fetch_vtest.sh
	xnect-process demo_videos/vtest.avi --out-dir demo_videos/out --write-video

test: install-test
	"$(VPY)" -m pytest -q -ra

bench: install
	xnect-bench backbone

clean-venv:
	rm -rf "$(VENV)"
