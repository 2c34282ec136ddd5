# The two commands of the README. Both install into $(VENV) on first use (scripts/install.sh).
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.amp-ray-installed

.PHONY: demo test test-slow lint format install clean

demo: $(INSTALLED)  ## run the main job on the embedded synthetic world
	$(BIN)/amp-ray run jobs/demo.yaml $(ARGS)

test: lint  ## lint, then the fast CPU test suite
	$(BIN)/pytest $(ARGS)

test-slow: $(INSTALLED)  ## the slow end-to-end tests
	$(BIN)/pytest -m slow $(ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

install: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt scripts/install.sh
	scripts/install.sh $(VENV)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
