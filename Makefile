# The two set-up commands of the README. Both install whatever is missing first.
.PHONY: install install-test install-clients install-guide-backends install-services serve test test-fast

# the server: build/requirements.txt (+ the engine's two packages, the model)
install:
	bash build/install.sh

# the server plus the tests' and benchmarks' packages (build/requirements-test.txt)
install-test:
	bash build/install.sh --test

# the real Pipecat and LiveKit clients, for the compatibility tests only
install-clients:
	bash build/install_clients.sh

# xgrammar and llguidance at TensorRT-LLM 1.2.1's pins, for the GPU guide tests only
install-guide-backends:
	bash build/install_guide_backends.sh

# redis-server and PostgreSQL for the accounts tests (Debian's packages, when missing)
install-services:
	bash build/install_services.sh

## make serve: install, then serve the embedded CPU stack until Ctrl-C
serve: install
	.venv/bin/electron-serve

## make test: install, then lint and run the whole test suite
test: install-test install-clients install-guide-backends install-services
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -p no:cacheprovider

## make test-fast: lint and the pure unit tests, in seconds, once make test (or make install-test) has run
test-fast:
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit -m "not heavy"
