# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
PORT ?= 7071
HOST ?= 127.0.0.1

.PHONY: FORCE install serve test clients-venv js-clients fuzz checkov bench bench-smoke tools-venv calibrate reference reproduce clean

# `make serve` installs what serving needs (requirements-serve.txt: ~460 MB, ~25 s here);
# `make test` adds the test toolchain (requirements-dev.txt) to the same virtualenv.
$(VENV)/.serve-installed: requirements.txt requirements.lock requirements-serve.txt
	@bash tools/venv.sh "$(PYTHON)" $(VENV) "$(origin PYTHON)"
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements-serve.txt
	touch $@

# A virtualenv that tools/venv.sh finds broken (its Python removed or upgraded, no pip) or of
# another version than a PYTHON=… the user gave is made anew, stamps or not.
stale = $(if $(wildcard $(1)/pyvenv.cfg),$(shell bash tools/venv.sh --stale "$(PYTHON)" $(1) "$(origin PYTHON)"))
ifeq ($(call stale,$(VENV)),stale)
$(VENV)/.serve-installed: FORCE
endif
FORCE:

$(VENV)/.installed: $(VENV)/.serve-installed requirements-dev.txt
	$(VENV)/bin/python -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# A fixed key for local development only; set your own for anything else. A key set in the
# environment (EMBEDDINGS_API_KEYS='…' make serve) reaches the server unchanged; one given on
# make's command line is read by make first (a '$' in it must be written '$$').
serve: export EMBEDDINGS_API_KEYS ?= local-dev-key-0000
serve: $(VENV)/.serve-installed
	exec $(VENV)/bin/python -m tools.local_host --host $(HOST) --port $(PORT) --hint

# The frameworks people call the service with (tests/clients) live in their own virtualenv, with
# the clients and without the app; the server they call runs in $(VENV).
CLIENTS_VENV := .venv-clients
$(CLIENTS_VENV)/.installed: requirements-clients.txt requirements-clients.lock
	@bash tools/venv.sh "$(PYTHON)" $(CLIENTS_VENV) "$(origin PYTHON)"
	$(CLIENTS_VENV)/bin/python -m pip install -q --upgrade pip
	$(CLIENTS_VENV)/bin/python -m pip install -q -r requirements-clients.txt
	touch $@

ifeq ($(call stale,$(CLIENTS_VENV)),stale)
$(CLIENTS_VENV)/.installed: FORCE
endif

clients-venv: $(CLIENTS_VENV)/.installed

# The JavaScript clients of the README's Node.js snippets (tests/test_snippets.py runs them where
# Node.js 22+ is installed; without npm they are skipped). Pinned by package-lock.json.
JS_CLIENTS := tests/clients/js/node_modules/.installed
$(JS_CLIENTS): tests/clients/js/package.json tests/clients/js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/clients/js --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the JavaScript snippet tests will be skipped"; fi

js-clients: $(JS_CLIENTS)

test: install clients-venv js-clients
	$(VENV)/bin/python -m pytest -q
	EMBEDDINGS_SERVER_PYTHON=$(CURDIR)/$(VENV)/bin/python $(CLIENTS_VENV)/bin/python -m pytest -q tests/clients

# A deeper, randomised run of the schemathesis and fuzz tests (make test runs them bounded and
# derandomised): new requests every run; about 5 minutes here, bounded by its time budgets.
fuzz: install
	EMBEDDINGS_SCHEMATHESIS_EXAMPLES=500 EMBEDDINGS_SCHEMATHESIS_BUDGET_S=60 \
	EMBEDDINGS_FUZZ_EXAMPLES=2000 EMBEDDINGS_FUZZ_BUDGET_S=240 EMBEDDINGS_FUZZ_RANDOM=1 \
	$(VENV)/bin/python -m pytest -q tests/test_schemathesis.py tests/test_fuzz.py

# Infrastructure scan (its own virtualenv: checkov pins an old pycep).
checkov:
	bash tools/checkov.sh

# One-time jobs need torch and sentence-transformers: never runtime deps. torch itself comes
# from PyTorch's CPU-only index (PyPI's Linux torch pulls in CUDA packages, gigabytes), its
# dependencies from pip's own index with the rest. TORCH_INDEX= takes torch from pip's index too
# (e.g. where a local CPU wheel is given to pip and the internet is not reachable).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TOOLS_VENV := .venv-tools
$(TOOLS_VENV)/.installed: requirements-tools.txt requirements-tools.lock
	@bash tools/venv.sh "$(PYTHON)" $(TOOLS_VENV) "$(origin PYTHON)"
	$(TOOLS_VENV)/bin/python -m pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install -q --no-deps torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(TOOLS_VENV)/bin/python -m pip install -q torch==2.13.0 -r requirements-tools.txt
	touch $@

ifeq ($(call stale,$(TOOLS_VENV)),stale)
$(TOOLS_VENV)/.installed: FORCE
endif

tools-venv: $(TOOLS_VENV)/.installed

reference: tools-venv
	$(TOOLS_VENV)/bin/python scripts/make_text_reference.py

# Every committed data file rebuilt from its script in a temporary clone of HEAD and compared
# with the commit (scripts/reproduce.py; about 2 minutes here).
reproduce: install tools-venv
	$(TOOLS_VENV)/bin/python scripts/reproduce.py

calibrate: install
	$(VENV)/bin/python scripts/calibrate.py

bench: install tools-venv
	bash bench/run.sh

bench-smoke: install
	bash bench/run.sh --smoke

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) $(TOOLS_VENV) .venv-checkov .pytest_cache tests/clients/js/node_modules
