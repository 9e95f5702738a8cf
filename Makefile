# The two set-up commands of the README:
#   make app    create .venv, install, build and analyse the demo if missing, open the dashboard on it
#   make test   create .venv, install (and Debian's chromium for the browser test), run the tests
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEMO := data/demo.duckdb
DEMO_ANALYSED := data/.demo-analysed

.PHONY: app test test-all install bench demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# the pinned requirements, then `curation` itself as an editable package (no deps: they are the pins above)
$(STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt $(STAMP)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(STAMP)

$(DEMO): | $(STAMP)
	$(BIN)/python -m curation demo --db $(DEMO)

# the first `make app` analyses the demo once (progress bars here, in the terminal), so the app
# opens on a map; later runs find the stored run (`analyze` returns it in well under a second)
$(DEMO_ANALYSED): $(DEMO)
	$(BIN)/python -m curation analyze $(DEMO)
	touch $@

demo: $(DEMO_ANALYSED)

app: $(STAMP) $(DEMO_ANALYSED)
	$(BIN)/python -m streamlit run app.py

# the real-browser tests run Debian's chromium-headless-shell (the chromium source package's headless
# build: about 30% less CPU per page load than the full browser) or, where only it is present, chromium;
# installed when we are root and it is missing
browser:
	@command -v chromium-headless-shell >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null); } \
	  || command -v chromium >/dev/null 2>&1 || echo "chromium not installed: the browser tests will be skipped"

# two pytest workers (pytest-xdist): the machine's 2 cores; Ray and browser tests stay on one worker each
TEST_WORKERS ?= 2
test: $(DEV_STAMP) browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-all: $(DEV_STAMP) browser
	$(BIN)/python -m pytest -q -m "" -n $(TEST_WORKERS) --dist loadgroup

bench: $(STAMP)
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/bench_analysis.py
	$(BIN)/python bench/bench_selection.py
	$(BIN)/python bench/bench_app.py
	$(BIN)/python bench/bench_embed.py

clean:
	rm -rf $(VENV) .pytest_cache
