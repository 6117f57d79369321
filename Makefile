.PHONY: demo test faults lint ui bootstrap
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	.venv/bin/python -m assets.demo

test: bootstrap
	.venv/bin/python -m pytest -q

faults: bootstrap  # the fault suite alone (docs/reliability.md)
	.venv/bin/python -m pytest -q -m faults

lint: bootstrap
	.venv/bin/ruff check .

ui: bootstrap
	DAGSTER_HOME=$${DAGSTER_HOME:-$$PWD/.dagster_home} .venv/bin/dagster dev -w workspace.yaml
