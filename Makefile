# resty-async: `make` builds build/resty_async_core.so, `make run` starts a
# demo nginx on 127.0.0.1:8080, `make test` runs every test.

CARGO      ?= cargo
NGINX      ?= $(shell command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
# nginx reads $NGINX as a list of inherited sockets, and then stays in the
# foreground: `make ... NGINX=...` must not hand it down.
unexport NGINX
MODULE_DIR ?= /usr/lib/nginx/modules
# Debian's nginx loads the lua module dynamically (ndk first).
LUA_MODULES ?= $(wildcard $(MODULE_DIR)/ndk_http_module.so) \
               $(wildcard $(MODULE_DIR)/ngx_http_lua_module.so)
PROFILE    ?= release
TARGET_DIR := target/$(PROFILE)
CARGO_PROFILE := $(if $(filter release,$(PROFILE)),--release,)
# Base directory of the completion sockets during `make test`.
TEST_BASE  ?= /tmp/resty-async-test

# Debian packages needed to run and test (installed by `make deps` as root).
DEB_PACKAGES := nginx libnginx-mod-http-lua lua-resty-core libluajit2-5.1-dev \
                libtest-base-perl libtext-diff-perl liburi-perl \
                lua-check luarocks curl openssl python3

SO := build/resty_async_core.so
FIXTURES_SO := build/resty_async_fixtures.so
TOKIO_SO := build/resty_async_tokio.so
HTTP_SO := build/resty_async_http.so
RUST_SRC := $(wildcard src/*.rs src/*/*.rs) Cargo.toml build.rs

.PHONY: all build deps run test test-rust test-nginx test-nginx-real test-nginx-compat \
        test-template test-lifecycle clean bench bench-fetch bench-callgrind soak

all: build

build: $(SO) $(FIXTURES_SO) $(TOKIO_SO) $(HTTP_SO)

# Copied with cp + mv, never cp over the old file: a running nginx has it
# mapped, and rewriting it in place crashes the workers.
# Built one at a time: in one cargo invocation the fixtures would get the
# core-module feature (and its luaopen symbol) too.
$(SO): $(RUST_SRC)
	$(CARGO) build $(CARGO_PROFILE) -p resty-async --features core-module
	@mkdir -p build
	cp $(TARGET_DIR)/libresty_async.so $@.tmp && mv -f $@.tmp $@

# The module the suites in t/ call (t/fixtures).
$(FIXTURES_SO): $(RUST_SRC) $(wildcard t/fixtures/src/*.rs) t/fixtures/Cargo.toml
	$(CARGO) build $(CARGO_PROFILE) -p resty-async-fixtures
	@mkdir -p build
	cp $(TARGET_DIR)/libresty_async_fixtures.so $@.tmp && mv -f $@.tmp $@

# The tokio example (resty-async's `tokio` feature, an HTTP client).
$(TOKIO_SO): $(RUST_SRC) $(wildcard examples/tokio/src/*.rs) examples/tokio/Cargo.toml
	$(CARGO) build $(CARGO_PROFILE) -p resty-async-tokio-example
	@mkdir -p build
	cp $(TARGET_DIR)/libresty_async_tokio.so $@.tmp && mv -f $@.tmp $@

# The HTTP client example (hyper over resty_async::net streams).
$(HTTP_SO): $(RUST_SRC) $(wildcard examples/http/src/*.rs) examples/http/Cargo.toml
	$(CARGO) build $(CARGO_PROFILE) -p resty-async-http
	@mkdir -p build
	cp $(TARGET_DIR)/libresty_async_http.so $@.tmp && mv -f $@.tmp $@

# Install what is missing, when we may (root with apt); otherwise say what
# is missing and go on (a later step fails with a clearer message).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" \
	        || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing:$$missing"; \
	        apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	            || exit 1; \
	    else \
	        echo "missing Debian packages:$$missing (run 'make deps' as root)"; \
	    fi; \
	fi

run: deps build
	@mkdir -p build/demo/logs
	@echo "resty-async demo on http://127.0.0.1:8080 (Ctrl-C stops it). Try:"
	@echo "  curl 'http://127.0.0.1:8080/sleep?s=0.5'"
	@echo "  curl --data-binary @README.md http://127.0.0.1:8080/sha256"
	@echo "  curl 'http://127.0.0.1:8080/read?path=/etc/hostname'"
	@echo "  curl http://127.0.0.1:8080/concurrent"
	@echo "  curl http://127.0.0.1:8080/stats"
	sed -e 's|@REPO@|$(CURDIR)|g' -e 's|@LOAD_MODULES@|$(foreach m,$(LUA_MODULES),load_module $(m);)|' \
	    nginx/demo.conf > build/demo/nginx.conf
	$(NGINX) -p $(CURDIR)/build/demo -c $(CURDIR)/build/demo/nginx.conf -g 'daemon off;'

test: deps lint build test-rust test-nginx test-install test-template test-lifecycle fuzz-short

# The Rust tests without nginx: the runtime's parts (src/tests/), the
# doctests, the tokio runtime's tests and the streams' with tokio's and
# hyper's traits (with their features); then, with the
# testing harness, its doctest (and hyper's) and the fixtures
# (t/fixtures/src/tests.rs).
# Those build resty-async with the testing feature, which links LuaJIT: in
# the debug profile, apart from the release builds of the .so files (cargo
# gives resty-async's library one file name whatever its features). The
# roundtrip benchmark is built too: it links the crate without a Lua
# library, so code that the pool's threads reach must not need the Lua C API.
test-rust:
	$(CARGO) test $(CARGO_PROFILE)
	$(CARGO) test $(CARGO_PROFILE) --features tokio --lib tokio
	$(CARGO) test $(CARGO_PROFILE) --features tokio-io,hyper --lib net
	$(CARGO) test -p resty-async --features testing,hyper --doc
	$(CARGO) test -p resty-async-fixtures
	$(CARGO) bench --no-run -q --features internals --bench roundtrip

# The t/ suites, under Test::Nginx: the real one (openresty/test-nginx)
# when TEST_NGINX_LIB names its lib directory (a checkout or an unpacked
# tarball: TEST_NGINX_LIB=/path/to/test-nginx/lib) or when it is
# installed (cpanm Test::Nginx), else the compatible runner in t/compat.
# test-nginx-real insists on the real one, test-nginx-compat on t/compat.
# TEST_BASE holds the runtime's socket directories during the run: it
# must be empty afterwards, and is then removed.
TEST_NGINX_LIB ?=

test-nginx: build
	@if [ -n "$(TEST_NGINX_LIB)" ] || perl -MTest::Nginx::Socket::Lua -e1 2>/dev/null; \
	then $(MAKE) --no-print-directory test-nginx-real; \
	else echo "(Test::Nginx not installed: using t/compat)"; \
	    $(MAKE) --no-print-directory test-nginx-compat; fi

test-nginx-real: build
	@if [ -n "$(TEST_NGINX_LIB)" ]; then \
	    test -f "$(TEST_NGINX_LIB)/Test/Nginx/Socket/Lua.pm" || { \
	        echo "TEST_NGINX_LIB=$(TEST_NGINX_LIB) has no Test/Nginx/Socket/Lua.pm"; exit 1; }; \
	elif ! perl -MTest::Nginx::Socket::Lua -e1 2>/dev/null; then \
	    echo "Test::Nginx is not installed: cpanm Test::Nginx, or set TEST_NGINX_LIB"; exit 1; \
	fi
	$(call prove_t,$(if $(TEST_NGINX_LIB),-I $(TEST_NGINX_LIB)))

test-nginx-compat: build
	$(call prove_t,-I t/compat)

# $(call prove_t,prove's -I options): prove -r t, then TEST_BASE must be
# empty (it is removed) whether or not the tests passed.
define prove_t
	@rm -rf $(TEST_BASE)
	@TEST_NGINX_BINARY=$(NGINX) TEST_NGINX_LOAD_MODULES="$(strip $(LUA_MODULES))" \
	TEST_NGINX_ASYNC_BASE=$(TEST_BASE) prove $(1) -r t; status=$$?; \
	if [ -d $(TEST_BASE) ]; then \
	    left=$$(ls -A $(TEST_BASE)); \
	    if [ -n "$$left" ]; then \
	        echo "FAIL: the runtime left files in $(TEST_BASE): $$left"; exit 1; fi; \
	    rmdir $(TEST_BASE); \
	fi; \
	echo "no socket files or directories left in $(TEST_BASE) (removed)"; \
	exit $$status
endef

# ---------------------------------------------------------------------------
# Installation, the lua-resty-* way: `make install` copies
# lualib/resty/async.lua and lualib/resty/async/ to $(LUA_LIB_DIR)/resty/ and the built-in module to
# $(LUA_CLIB_DIR)/resty_async_core.so, both under $(DESTDIR) (staged
# installs). Defaults: $(PREFIX)/lib/lua/5.1 for both, as lua-resty-core.
# With OPENRESTY_PREFIX set: $(OPENRESTY_PREFIX)/site/lualib for both, on
# OpenResty's default package.path and package.cpath. Any of them can be set
# on the command line. The fixtures module is not installed.
INSTALL      ?= install
LUA_VERSION  := 5.1
PREFIX       ?= /usr/local
ifdef OPENRESTY_PREFIX
LUA_LIB_DIR  ?= $(OPENRESTY_PREFIX)/site/lualib
LUA_CLIB_DIR ?= $(OPENRESTY_PREFIX)/site/lualib
else
LUA_LIB_DIR  ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_CLIB_DIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
endif
LUACHECK     ?= luacheck
LUAROCKS     ?= luarocks
ROCKSPEC     := $(lastword $(sort $(wildcard resty-async-*.rockspec)))

.PHONY: install uninstall lint lint-template test-install package

LUA_FILES := $(sort $(wildcard lualib/resty/async/*.lua))

install: $(SO)
	$(INSTALL) -d "$(DESTDIR)$(LUA_LIB_DIR)/resty/async" "$(DESTDIR)$(LUA_CLIB_DIR)"
	$(INSTALL) -m 0644 lualib/resty/async.lua "$(DESTDIR)$(LUA_LIB_DIR)/resty/async.lua"
	$(INSTALL) -m 0644 $(LUA_FILES) "$(DESTDIR)$(LUA_LIB_DIR)/resty/async/"
	$(INSTALL) -m 0755 $(SO) "$(DESTDIR)$(LUA_CLIB_DIR)/resty_async_core.so"

# Removes our files only: the directories may hold other libraries (the
# resty/async directory goes if it is left empty).
uninstall:
	rm -f "$(DESTDIR)$(LUA_LIB_DIR)/resty/async.lua" \
	      $(patsubst lualib/%,"$(DESTDIR)$(LUA_LIB_DIR)/%",$(LUA_FILES)) \
	      "$(DESTDIR)$(LUA_CLIB_DIR)/resty_async_core.so"
	-rmdir "$(DESTDIR)$(LUA_LIB_DIR)/resty/async" 2>/dev/null

# Formatting, clippy, rustdoc and luacheck, all warnings as errors.
lint: lint-template
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --features core-module,testing,tokio-io -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p resty-async --features core-module,testing,tokio,hyper,tokio-io
	$(LUACHECK) lualib t/lib src/testing

# The template is a workspace of its own (examples/hello/Cargo.toml), with
# a target directory of its own (target/template, which test-template uses
# too) and this one's lock file. The Rust examples of the README and the
# crate docs must be its code.
TEMPLATE := examples/hello
TEMPLATE_TARGET_DIR := $(CURDIR)/target/template
lint-template:
	cp Cargo.lock $(TEMPLATE)/Cargo.lock
	$(CARGO) fmt --manifest-path $(TEMPLATE)/Cargo.toml --check
	CARGO_TARGET_DIR=$(TEMPLATE_TARGET_DIR) $(CARGO) clippy --manifest-path $(TEMPLATE)/Cargo.toml --all-targets -- -D warnings
	t/template-snippets.py

# `make install` into a temporary DESTDIR (default and OpenResty layouts) and
# `luarocks make` into a temporary tree; nginx with only the installed paths
# calls async.sleep and async.sha256; then uninstall / `luarocks remove`.
test-install: $(SO)
	TEST_NGINX_BINARY="$(NGINX)" LUA_MODULES="$(strip $(LUA_MODULES))" \
	LUAROCKS="$(LUAROCKS)" ROCKSPEC="$(ROCKSPEC)" t/install-test.sh

# The template (examples/hello) as an author uses it: copied out of the
# repository with its dependency pointed at this checkout, its `make test`,
# `luarocks make` of its rockspec, and nginx loading the installed module.
test-template: $(SO)
	CARGO="$(CARGO)" TEST_NGINX_BINARY="$(NGINX)" LUA_MODULES="$(strip $(LUA_MODULES))" \
	LUAROCKS="$(LUAROCKS)" TEMPLATE_TARGET_DIR=$(TEMPLATE_TARGET_DIR) t/template-test.sh

# The crate as uploaded to crates.io, built from the package (target/package/).
# In a tree with uncommitted changes: make package PACKAGE_FLAGS=--allow-dirty
package:
	$(CARGO) package -p resty-async $(PACKAGE_FLAGS)

# Reloads under load, SIGKILL of a worker, quit while requests wait; then
# the same with lua_code_cache off (a Lua VM per request).
test-lifecycle: build
	TEST_NGINX_BINARY=$(NGINX) TEST_NGINX_LOAD_MODULES="$(strip $(LUA_MODULES))" t/lifecycle/run.sh
	TEST_NGINX_BINARY=$(NGINX) TEST_NGINX_LOAD_MODULES="$(strip $(LUA_MODULES))" LIFECYCLE_CODE_CACHE=off t/lifecycle/run.sh

clean:
	rm -rf build t/servroot
	$(CARGO) clean

# `make bench` (not part of `make test`): every scenario of bench/run.sh in
# one run (nginx/bench.conf, wrk on loopback), the roundtrip microbenchmark
# (benches/), a Markdown table on stdout and in bench/RESULTS.md. Always
# release builds. Settings (BENCH_ROUNDS, BENCH_DURATION, BENCH_ONLY ...):
# see bench/run.sh and bench/README.md.
BENCH_SO := build/resty_async_bench.so

$(BENCH_SO): $(RUST_SRC) $(wildcard bench/module/src/*.rs) bench/module/Cargo.toml
	$(CARGO) build --release -p resty-async-bench
	@mkdir -p build
	cp target/release/libresty_async_bench.so $@.tmp && mv -f $@.tmp $@

# $(call need_tool,command,package): installs the Debian package of a
# benchmark tool when it is missing and we may (root with apt).
define need_tool
	@if ! command -v $(1) >/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "installing: $(2)"; \
	        apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null \
	            || exit 1; \
	    else \
	        echo "$(1) is missing (run 'make $@' as root, or apt-get install $(2))"; exit 1; \
	    fi; \
	fi
endef

bench: deps build $(BENCH_SO)
	@test "$(PROFILE)" = release || { echo "make bench measures release builds: PROFILE=release"; exit 1; }
	$(call need_tool,wrk,wrk)
	$(CARGO) bench --no-run -q --features internals --bench roundtrip
	CARGO="$(CARGO)" BENCH_NGINX="$(NGINX)" LUA_MODULES="$(strip $(LUA_MODULES))" bench/run.sh

# `make bench-fetch` (not part of `make test`): an HTTP GET from a handler by
# the tokio example module and by a Lua client over ngx.socket.tcp.
bench-fetch: deps build
	$(call need_tool,wrk,wrk)
	BENCH_NGINX="$(NGINX)" LUA_MODULES="$(strip $(LUA_MODULES))" bench/fetch.sh

# `make bench-callgrind` (not part of `make test`): instructions per request
# of the same scenarios, counted by callgrind (repeatable, unlike req/s).
bench-callgrind: deps build $(BENCH_SO)
	@test "$(PROFILE)" = release || { echo "make bench-callgrind measures release builds: PROFILE=release"; exit 1; }
	$(call need_tool,wrk,wrk)
	$(call need_tool,valgrind,valgrind)
	BENCH_NGINX="$(NGINX)" LUA_MODULES="$(strip $(LUA_MODULES))" bench/callgrind.sh

# `make soak` (not part of `make test`): minutes of mixed calls, timeouts,
# network fetches and client aborts under wrk; prints RSS, fd and thread
# counts. SOAK_SECONDS (180).
soak: deps build
	@command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
	NGINX_BIN="$(NGINX)" LUA_MODULES="$(strip $(LUA_MODULES))" bench/soak.sh

# `make fuzz` (not part of `make test`): random calls of every function of
# resty.async and of the fixtures module, with random arguments, in every
# way a handler can make them, under wrk on one worker (t/fuzz/run.sh).
# Fails on a worker crash, an [alert] line or work left in flight.
# FUZZ_SECONDS (60), FUZZ_CONNECTIONS (10), FUZZ_SEED (random),
# FUZZ_CCALL (1: calls inside gsub callbacks and sort comparators too),
# FUZZ_REPLAY ("seed ...": those requests one by one instead of wrk),
# FUZZ_CALLS (20), FUZZ_SKIP (functions not to call: "f,g"), FUZZ_TRACE
# (1: log every call), FUZZ_PORT (2184), FUZZ_KEEP (1: keep logs, cores),
# FUZZ_CODE_CACHE (off: lua_code_cache off, a Lua VM per request).
FUZZ_SECONDS     ?= 60
FUZZ_CONNECTIONS ?= 10
FUZZ_SEED        ?=
FUZZ_CCALL       ?= 1
FUZZ_CALLS       ?= 20
FUZZ_REPLAY      ?=
FUZZ_SKIP        ?=
FUZZ_TRACE       ?= 0
FUZZ_PORT        ?= 2184
FUZZ_KEEP        ?= 0
FUZZ_CODE_CACHE  ?= on

.PHONY: fuzz fuzz-short
# The fuzz `make test` runs: 20 s, every way of calling included; then 15 s
# with a Lua VM per request.
fuzz-short:
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=20 FUZZ_CODE_CACHE=on
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=15 FUZZ_CODE_CACHE=off

fuzz: deps build
	$(call need_tool,wrk,wrk)
	NGINX_BIN="$(NGINX)" LUA_MODULES="$(strip $(LUA_MODULES))" \
	FUZZ_SECONDS="$(FUZZ_SECONDS)" FUZZ_CONNECTIONS="$(FUZZ_CONNECTIONS)" \
	FUZZ_SEED="$(FUZZ_SEED)" FUZZ_CCALL="$(FUZZ_CCALL)" FUZZ_CALLS="$(FUZZ_CALLS)" \
	FUZZ_REPLAY="$(FUZZ_REPLAY)" FUZZ_SKIP="$(FUZZ_SKIP)" FUZZ_TRACE="$(FUZZ_TRACE)" \
	FUZZ_PORT="$(FUZZ_PORT)" FUZZ_KEEP="$(FUZZ_KEEP)" FUZZ_CODE_CACHE="$(FUZZ_CODE_CACHE)" \
	t/fuzz/run.sh
