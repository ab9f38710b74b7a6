# sponsord: `make run` starts the demo, `make test` runs the whole suite.
# Both create .venv on first use; the stamps re-install when setup.cfg changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run test lint bench soak install cloudflare-ips clean

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The daemon alone: what `make run` needs.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

# The daemon plus the test, lint and benchmark tools.
$(TESTSTAMP): setup.cfg pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP) $(TESTSTAMP)

run: $(STAMP)
	$(BIN)/sponsord demo --host $(HOST) --port $(PORT)

test: $(TESTSTAMP)
	$(BIN)/pytest -q

lint: $(TESTSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check sponsord tests
	$(BIN)/mypy --strict sponsord

# The benchmark (docs/benchmark.md): sponsord against a raw-asyncio floor and a
# websockets server at 1,000 and 10,000 clients, long-poll, REST, snapshot build
# and a reconnect storm; about 10 minutes on 2 CPUs. Tables on stdout and in
# bench-results/latest.md, every figure in bench-results/*.json.
# BENCH_ARGS=--quick for a one-minute smoke run.
bench: $(TESTSTAMP)
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

# `sudo make install` puts sponsord on a server (README.md, "Operations"): the code
# in a venv under $(PREFIX), the units in $(UNITDIR), and $(CONFDIR)/config.toml
# unless one exists. Run it again from a newer checkout to upgrade.
PREFIX  ?= /opt/sponsord
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/sponsord

install:
	$(PYTHON) -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install --quiet --upgrade pip
	$(PREFIX)/venv/bin/pip install --quiet --upgrade .
	$(PREFIX)/venv/bin/pip install --quiet --no-deps --force-reinstall .  # same version: new code
	install -d -m 0755 $(UNITDIR) $(CONFDIR)
	install -d -m 0700 $(CONFDIR)/credentials
	sed -e 's|/opt/sponsord|$(PREFIX)|g' -e 's|/etc/sponsord|$(CONFDIR)|g' systemd/sponsord.service \
		> $(UNITDIR)/sponsord.service
	chmod 0644 $(UNITDIR)/sponsord.service
	install -m 0644 systemd/sponsord.socket $(UNITDIR)/sponsord.socket
	test -e $(CONFDIR)/config.toml || install -m 0644 config.toml $(CONFDIR)/config.toml
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "Installed. Next: secrets in $(CONFDIR)/credentials/, edit $(CONFDIR)/config.toml, then"
	@echo "  systemctl enable --now sponsord.socket sponsord.service   (see README.md, Operations)"

# Refresh Cloudflare's published ranges (used by trusted_proxies = "cloudflare").
# Nothing is downloaded at run time: review the diff and commit it.
CF_IPS := sponsord/data/cloudflare-ips.txt
cloudflare-ips:
	tmp=$$(mktemp) && trap 'rm -f "$$tmp"' EXIT && \
	{ grep '^#' $(CF_IPS); \
	  curl -fsS --max-time 30 https://www.cloudflare.com/ips-v4; echo; \
	  curl -fsS --max-time 30 https://www.cloudflare.com/ips-v6; echo; } | grep -v '^$$' > "$$tmp" && \
	$(PYTHON) -c 'import ipaddress, sys; \
	nets = [ipaddress.ip_network(l.strip()) for l in open(sys.argv[1]) if l.strip() and l[0] != "#"]; \
	assert {n.version for n in nets} == {4, 6}, "expected IPv4 and IPv6 ranges"; \
	print(len(nets), "ranges")' "$$tmp" && \
	install -m 0644 "$$tmp" $(CF_IPS)
	git diff --stat -- $(CF_IPS)

# Thousands of WebSocket and long-poll clients on a real daemon for 10 minutes
# while the roster churns (SOAK_SECONDS=120 for a shorter run; tests/soak/).
soak: $(TESTSTAMP)
	$(BIN)/python -m tests.soak

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
