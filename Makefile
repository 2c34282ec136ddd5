# The two commands of the README. Both install into $(VENV) on first use (scripts/install.sh).
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.amp-ray-installed

VLLM_VENV ?= .venv-vllm
VLLM_INSTALLED := $(VLLM_VENV)/.amp-ray-vllm-installed

.PHONY: demo ablation test test-slow lint format install vllm-env clean

demo: $(INSTALLED)  ## run the main job on the embedded synthetic world
	$(BIN)/amp-ray run jobs/demo.yaml $(ARGS)

ablation: $(INSTALLED)  ## the dialogue-recipe ablation on worlds 0 and 1 (jobs/ablation_dialogue.yaml)
	$(BIN)/amp-ray run jobs/ablation_dialogue.yaml $(ARGS)
	$(BIN)/amp-ray run jobs/ablation_dialogue.yaml data.world.seed=1 \
	  storage.run_dir=runs/ablation-world1 $(ARGS)

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

vllm-env: $(VLLM_INSTALLED)  ## the environment vLLM answers from (generation.engine: vllm)

$(VLLM_INSTALLED): scripts/vllm_env.sh constraints.txt
	scripts/vllm_env.sh $(VLLM_VENV)

$(INSTALLED): pyproject.toml constraints.txt scripts/install.sh
	scripts/install.sh $(VENV)

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache
