# The two commands the README starts with. Each sets up what it needs itself.
PYTHON ?= python3
VENV   ?= .venv

.PHONY: serve test

# Install chatplane and start it on its embedded defaults:
# a SQLite file in ~/.local/share/chatplane, 127.0.0.1:8000, no network.
serve:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet .
	$(VENV)/bin/chatplane serve

# Install the test dependencies, make sure PostgreSQL runs, run the suite
# (every test on a real SQLite file and on the local PostgreSQL).
test:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	./scripts/ensure-postgres
	$(VENV)/bin/pytest
