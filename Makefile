# Two entry points: `make demo` (label the embedded demo, train two students, compare) and
# `make test`. Both set up .venv first when needed.
.PHONY: setup demo test
setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/python -m pytest -q
