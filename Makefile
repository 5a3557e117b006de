# The two set-up commands of the README. Both install whatever is missing first.
.PHONY: install serve test

install:
	bash build/install.sh

## make serve: install, then serve the embedded CPU stack until Ctrl-C
serve: install
	.venv/bin/electron-serve

## make test: install, then run the whole test suite
test: install
	.venv/bin/python -m pytest -p no:cacheprovider
