# The two set-up commands of the README: `make demo` (main job) and `make test` (test suite).
PY ?= python3
PIP := $(PY) -m pip
TORCH ?= torch==2.13.0

.PHONY: install install-test demo test bench

install:
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .

install-test: install
	$(PIP) install -q -e ".[dev,onnx,ray]"
	bash scripts/install_browser.sh
	bash scripts/fetch_teachers.sh

demo: install
	bash demo_videos/fetch_vtest.sh
	xnect-process demo_videos/vtest.avi --out-dir demo_videos/out --video

test: install-test
	$(PY) -m pytest -q -ra

bench: install
	xnect-bench backbone
