# Two entry points: `make demo` (label the embedded demo, train two students, compare) and
# `make test`. Both set up .venv first when needed.
.PHONY: setup demo test study study-quick
setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest -q

# The distillation study (docs/STUDY.md): full (rewrites docs/study/) and a quick end-to-end check.
study: setup
	bash study/run.sh

study-quick: setup
	QUICK=1 bash study/run.sh
