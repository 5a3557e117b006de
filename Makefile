# The two set-up commands of the README. Both install whatever is missing first.
.PHONY: install install-clients serve test

install:
	bash build/install.sh

# the real Pipecat and LiveKit clients, for the compatibility tests only
install-clients:
	bash build/install_clients.sh

## make serve: install, then serve the embedded CPU stack until Ctrl-C
serve: install
	.venv/bin/electron-serve

## make test: install, then run the whole test suite
test: install install-clients
	.venv/bin/python -m pytest -p no:cacheprovider
