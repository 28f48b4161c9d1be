# Two commands on a fresh machine: `make demo` and `make test` (each bootstraps first).
VENV := .venv
STAMP := $(VENV)/.bootstrap-done
# A glibc malloc that keeps freed memory instead of returning it to the OS on every step: measured
# 1.3-1.5x faster CNN steps here (ASSETS.md); it must be set before Python starts.
export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184

.PHONY: bootstrap demo test test-fast bench-setup clean
bootstrap: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/headstart demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not real"

bench-setup: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e ".[bench]"

clean:
	rm -rf $(VENV) runs .pytest_cache
