# quantflow: set-up and entry points.
#
#   make venv       create/update .venv (a no-op when nothing changed); TORCH_INDEX_URL=URL takes torch
#                   from that wheel index, e.g. a CPU-only one on a machine without a GPU (README, Set-up);
#                   LLAMA_CUDA=auto|on|off builds llama.cpp with CUDA where a GPU is (README, GPU)
#   make run        run the workflow:  make run CORES=8 SNAKEMAKE_ARGS="-n"
#   make test       run the tests:     make test PYTEST_ARGS="-m 'not slow'"
#   make lint       snakemake --lint, snakefmt --check, ruff check
#   make clean      remove workflow outputs (results/ reports/ .snakemake/)
#   make distclean  clean, and remove .venv
#
# Needs python3 (>= 3.11), cmake and a C++ compiler (llama-cpp-python compiles from source), and the
# package indexes pip is configured with.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INSTALL_LOG := $(VENV)/install.log
CORES ?= $(shell nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?=
# The package index torch alone is installed from; empty: the indexes pip is configured with (on Linux the
# stock index serves the CUDA build, which runs on a machine without a GPU too, only larger).
TORCH_INDEX_URL ?=
# Downloaded llama-cpp-python sdists live outside .venv so that rebuilding it does not download again.
SDIST_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/quantflow/sdist

# llama.cpp is built with CUDA where nvidia-smi reports a GPU and a toolkit is found (auto), always (on:
# an error without them) or never (off); see scripts/build_llama_tools.py. Without a GPU it changes nothing.
LLAMA_CUDA ?= auto
# The GPUs' compute capabilities (empty without nvidia-smi): a GPU machine's install is keyed by them too.
GPU_CAPS := $(strip $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -u | tr '\n' ' '))
# The install is redone when pyproject.toml, constraints.txt or what is taken from the llama.cpp sources
# change (content, not mtime): the stamp's name carries a hash of them. On a machine with a GPU the GPUs,
# LLAMA_CUDA and the build script (the CUDA flavour) count too; on one without, the hash is what it was.
DEPS_HASH := $(shell { cat pyproject.toml constraints.txt scripts/setup_llama_cpp.py; \
  $(if $(GPU_CAPS),echo '$(GPU_CAPS) $(LLAMA_CUDA)'; cat scripts/build_llama_tools.py;) } \
  | { sha256sum 2>/dev/null || shasum -a 256; } | cut -c1-16)
INSTALL_STAMP := $(VENV)/.installed-$(DEPS_HASH)
TORCH_PIN := $(shell grep -E '^torch==' constraints.txt)
PIP_PIN := $(shell grep -E '^pip==' constraints.txt)
GPTQ_PIN := $(shell grep -E '^gptqmodel==' constraints.txt)
LLAMA_CPP_PY_VERSION := $(shell sed -n 's/^[[:space:]]*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
# Builds of llama.cpp's tools are kept per machine outside the repo, so a fresh clone reuses them.
BUILD_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/quantflow/llama.cpp-build

# `$(LOGGED) "what" cmd args...`: run cmd with its output appended to $(INSTALL_LOG), print one line
# for the step, and on failure show the end of the log. pip's `WARNING: Location '...' is ignored` lines
# (noise from this machine's pip config) are left out of the log; pipefail keeps the command's status.
LOGGED = logged() { \
	  local what=$$1 t0=$$SECONDS; shift; \
	  printf '==> %s\n' "$$what"; \
	  printf '\n==> %s: %s\n' "$$what" "$$*" >>"$(INSTALL_LOG)"; \
	  if ! "$$@" 2>&1 | { grep -v '^ *WARNING: Location' || true; } >>"$(INSTALL_LOG)"; then \
	    tail -n 40 "$(INSTALL_LOG)" >&2; \
	    printf 'FAILED: %s (full log: %s)\n' "$$what" "$(INSTALL_LOG)" >&2; \
	    return 1; \
	  fi; \
	  printf '    done in %ss\n' "$$((SECONDS - t0))"; \
	}; logged

.PHONY: help venv run test lint clean distclean

help:
	@sed -n '3,10s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

venv: $(INSTALL_STAMP)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo '$(PYTHON) is older than 3.11 (set PYTHON=...)' >&2; exit 1; }
	@echo '==> creating $(VENV) with $(PYTHON)'
	@$(PYTHON) -m venv $(VENV)

# Not dependent on pyproject.toml's mtime: the hash in the stamp's name is what decides.
# Order: torch first (from TORCH_INDEX_URL when set); llama.cpp's converter from the pinned llama-cpp-python sdist; then that sdist
# compiled once into the binding's wheel plus llama.cpp's tools (scripts/build_llama_tools.py; ~6 min the
# first time on a machine, cached after); then the project, taking that wheel through --find-links.
$(INSTALL_STAMP): | $(PY)
	@test -n '$(TORCH_PIN)' || { echo 'constraints.txt pins no torch==' >&2; exit 1; }
	@test -n '$(GPTQ_PIN)' || { echo 'constraints.txt pins no gptqmodel==' >&2; exit 1; }
	@test -n '$(LLAMA_CPP_PY_VERSION)' || { echo 'pyproject.toml pins no llama-cpp-python==' >&2; exit 1; }
	@rm -f $(VENV)/.installed-*
	@$(LOGGED) "upgrading pip ($(PIP_PIN))" $(PIP) install --upgrade -c constraints.txt pip
	@$(LOGGED) "installing $(TORCH_PIN)$(if $(TORCH_INDEX_URL), from $(TORCH_INDEX_URL))" \
	  $(PIP) install -c constraints.txt $(if $(TORCH_INDEX_URL),--index-url '$(TORCH_INDEX_URL)') '$(TORCH_PIN)'
	@echo '==> llama.cpp converter from llama-cpp-python $(LLAMA_CPP_PY_VERSION) into $(VENV)/llama.cpp'
	@$(PY) scripts/setup_llama_cpp.py --version '$(LLAMA_CPP_PY_VERSION)' --dest $(VENV)/llama.cpp --cache '$(SDIST_CACHE)'
	@echo '==> llama-cpp-python $(LLAMA_CPP_PY_VERSION) and llama.cpp tools (compiled once per machine)'
	@$(PY) scripts/build_llama_tools.py --version '$(LLAMA_CPP_PY_VERSION)' --dest $(VENV)/llama.cpp/bin \
	  --cache '$(SDIST_CACHE)' --build-cache '$(BUILD_CACHE)' --cuda '$(LLAMA_CUDA)' \
	  --flavour-file $(VENV)/.llama-flavour --print-wheel-dir > $(VENV)/.llama-wheel-dir
	@$(LOGGED) "installing quantflow and its pinned dependencies" \
	  $(PIP) install -c constraints.txt --find-links "$$(cat $(VENV)/.llama-wheel-dir)" -e '.[test,gptq]'
	@# The same version is already installed where this venv had the CPU build: replace it with this one.
	@if [ "$$(cat $(VENV)/.llama-flavour)" != cpu ]; then \
	  $(LOGGED) "installing the $$(cat $(VENV)/.llama-flavour) build of llama-cpp-python" \
	    $(PIP) install --no-deps --force-reinstall --no-index --find-links "$$(cat $(VENV)/.llama-wheel-dir)" \
	    'llama-cpp-python==$(LLAMA_CPP_PY_VERSION)'; fi
	@# --no-deps: gptqmodel's metadata pins numpy==2.2.6; its real dependencies come with the gptq extra above.
	@$(LOGGED) "installing $(GPTQ_PIN) (pure Python, CPU or GPU)" $(PIP) install --no-deps -c constraints.txt '$(GPTQ_PIN)'
	@# A warning, never a failure: a CUDA build runs on a CPU-only machine too; a GPU machine keeps it.
	@$(PY) -W ignore scripts/check_torch.py
	@touch $@
	@echo "==> $(VENV) is up to date (install log: $(INSTALL_LOG))"

run: venv
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	@rc=0; \
	echo '==> snakemake --lint'; $(VENV)/bin/snakemake --lint || rc=1; \
	echo '==> snakefmt --check .'; $(VENV)/bin/snakefmt --check . || rc=1; \
	echo '==> ruff check .'; $(VENV)/bin/ruff check . || rc=1; \
	exit $$rc

clean:
	rm -rf results/ reports/ .snakemake/

distclean: clean
	rm -rf $(VENV)
