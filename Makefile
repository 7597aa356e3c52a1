# The two commands the README starts with. Each sets up what it needs itself.
PYTHON ?= python3
VENV   ?= .venv
# llama-cpp-python compiles llama.cpp for the CPU it is built on. Built
# "native" on a CPU with AMX, it runs AMX tile instructions that virtual
# machines often do not enable (a segfault in ggml_backend_amx_mul_mat on the
# first token); this portable AVX2 build runs on any x86-64 of the last decade.
# Set CMAKE_ARGS yourself to build differently. pip's wheel cache does not
# know which CMAKE_ARGS built a wheel (a native wheel built by hand once was
# taken from it by a later `make test`, and CI crashed on the first token), so
# llama-cpp-python is installed first, without the cache: built here, with
# these flags, whenever the venv does not have it yet.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA  := llama-cpp-python>=0.3.2

.PHONY: serve test

# Install chatplane and start it on its embedded defaults:
# a SQLite file in ~/.local/share/chatplane, 127.0.0.1:8000, no network.
serve:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --no-cache-dir '$(LLAMA)'
	$(VENV)/bin/pip install --quiet .
	$(VENV)/bin/chatplane serve

# Install the test dependencies, make sure PostgreSQL runs, run the suite
# (every test on a real SQLite file and on the local PostgreSQL).
test:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --no-cache-dir '$(LLAMA)'
	$(VENV)/bin/pip install --quiet -e '.[test]'
	./scripts/ensure-postgres
	./scripts/ensure-node
	./scripts/ensure-chromium
	$(VENV)/bin/pytest
