# kumomta-c: a KumoMTA-compatible mail relay in C.
#
#   make          build every program into bin/
#   make run      build and start the relay in the foreground on 127.0.0.1:2525
#   make check    build, run every test, then again under ASan+UBSan
#   make deps     install missing Debian packages (as root) or print the apt-get line
#   make install  PREFIX=/usr/local DESTDIR=... (see the install section below)
#
# Objects go to $(BUILD); a sanitizer build uses BUILD=build/asan SAN=1.

DEB_PKGS := build-essential pkg-config libssl-dev libluajit-5.1-dev libcjson-dev \
            libevent-dev libc-ares-dev libjemalloc-dev check openssl mandoc clang \
            libclang-rt-14-dev
PKGS     := openssl luajit libcjson libevent_core libevent_extra libevent_openssl \
            libevent_pthreads libcares

BUILD ?= build
BIN   ?= bin
SAN   ?=

CC      ?= cc
OPT     ?= -O2
CFLAGS  := -std=c11 $(OPT) -g -Wall -Wextra -Werror -D_GNU_SOURCE -MMD -MP -I. \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm
# The daemons allocate through jemalloc: the policy protocol's JSON makes
# many short-lived small blocks, which glibc's malloc served at about a
# fifth of the every-hook benchmark's CPU (see bench/RESULTS.md).  Not in a
# sanitizer build, whose runtime brings its own malloc.
MALLOC_LIBS := $(shell pkg-config --libs jemalloc 2>/dev/null)
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
MALLOC_LIBS :=
endif
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

LIB_SRC     := $(wildcard lib/*.c)
SPOOL_SRC   := $(wildcard spool/*.c)
KUMOD_SRC   := $(filter-out master/kumoctl.c,$(wildcard master/*.c))
KUMOCTL_SRC := master/kumoctl.c
SMTPD_SRC   := $(wildcard smtpd/*.c)
POLICYD_SRC := $(wildcard policyd/*.c)
QMGR_SRC    := $(wildcard qmgr/*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
LIBKUMO  := $(BUILD)/libkumo.a
LIBSPOOL := $(BUILD)/libspool.a

PROGS := $(BIN)/kumod $(BIN)/kumoctl $(BIN)/kumo-smtpd $(BIN)/kumo-policyd $(BIN)/kumo-qmgr

UNIT_SRC   := $(wildcard t/unit/test_*.c)
UNIT_BINS  := $(patsubst t/unit/%.c,$(BUILD)/t/%,$(UNIT_SRC))
E2E_SRC    := $(wildcard t/e2e/test_*.c)
E2E_BINS   := $(patsubst t/e2e/%.c,$(BUILD)/t/%,$(E2E_SRC))
TLIB_SRC   := $(filter-out $(E2E_SRC),$(wildcard t/e2e/*.c))
# Test programs the e2e suites start: t/tools/<name>.c -> $(BUILD)/t/<name>
# (a sink SMTP server, a DNS server), each one file plus libkumo.
TOOL_SRC   := $(wildcard t/tools/*.c)
TOOL_BINS  := $(patsubst t/tools/%.c,$(BUILD)/t/%,$(TOOL_SRC))

.PHONY: all deps run check test-run unit e2e clean asan
.DEFAULT_GOAL := all

all: deps
	@$(MAKE) --no-print-directory build

build: $(PROGS)

deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make deps: installing$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing || exit 1; \
	  else \
	    echo "make deps: missing packages; run as root:"; \
	    echo "  apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIBKUMO): $(call obj,$(LIB_SRC))
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(LIBSPOOL): $(call obj,$(SPOOL_SRC))
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(BIN)/kumod: $(call obj,$(KUMOD_SRC)) $(LIBSPOOL) $(LIBKUMO)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(MALLOC_LIBS)

$(BIN)/kumoctl: $(call obj,$(KUMOCTL_SRC)) $(LIBKUMO)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BIN)/kumo-smtpd: $(call obj,$(SMTPD_SRC)) $(LIBSPOOL) $(LIBKUMO)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(MALLOC_LIBS)

$(BIN)/kumo-policyd: $(call obj,$(POLICYD_SRC)) $(LIBKUMO)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(MALLOC_LIBS)

$(BIN)/kumo-qmgr: $(call obj,$(QMGR_SRC)) $(LIBSPOOL) $(LIBKUMO)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(MALLOC_LIBS)

# Unit tests: t/unit/test_<unit>_*.c links libkumo plus the objects of the
# program named by its prefix (lib, spool, smtpd, policyd), minus main files.
SMTPD_OBJS   := $(call obj,$(filter-out smtpd/smtpd.c,$(SMTPD_SRC)))
POLICYD_OBJS := $(call obj,$(filter-out policyd/policyd.c,$(POLICYD_SRC)))
MASTER_OBJS  := $(call obj,$(filter-out master/kumod.c,$(KUMOD_SRC)))
QMGR_OBJS    := $(call obj,$(filter-out qmgr/qmgr.c,$(QMGR_SRC)))

$(BUILD)/t/test_%.o: t/unit/test_%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) -c -o $@ $<

$(BUILD)/t/e2e_%.o: t/e2e/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CHECK_CFLAGS) -c -o $@ $<

$(BUILD)/t/test_lib_%: $(BUILD)/t/test_lib_%.o $(LIBKUMO)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)
$(BUILD)/t/test_spool_%: $(BUILD)/t/test_spool_%.o $(LIBSPOOL) $(LIBKUMO)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)
$(BUILD)/t/test_smtpd_%: $(BUILD)/t/test_smtpd_%.o $(SMTPD_OBJS) $(LIBSPOOL) $(LIBKUMO)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)
$(BUILD)/t/test_policyd_%: $(BUILD)/t/test_policyd_%.o $(POLICYD_OBJS) $(LIBKUMO)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)
$(BUILD)/t/test_master_%: $(BUILD)/t/test_master_%.o $(MASTER_OBJS) $(LIBSPOOL) $(LIBKUMO)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)
$(BUILD)/t/test_qmgr_%: $(BUILD)/t/test_qmgr_%.o $(QMGR_OBJS) $(LIBSPOOL) $(LIBKUMO) | $(TOOL_BINS)
	$(CC) $(LDFLAGS) -o $@ $(filter-out |,$^) $(CHECK_LIBS) $(LDLIBS)

$(BUILD)/t/tool_%.o: t/tools/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<
$(TOOL_BINS): $(BUILD)/t/%: $(BUILD)/t/tool_%.o $(LIBKUMO)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(E2E_BINS): $(BUILD)/t/%: $(BUILD)/t/e2e_%.o $(patsubst t/e2e/%.c,$(BUILD)/t/e2e_%.o,$(TLIB_SRC)) $(LIBSPOOL) $(LIBKUMO)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LDLIBS)

unit: $(UNIT_BINS)
e2e: $(E2E_BINS) $(PROGS) $(TOOL_BINS)

# Runs every test binary of this build; each prints Check's own summary line.
test-run: $(PROGS) $(UNIT_BINS) $(E2E_BINS) $(TOOL_BINS)
	@KUMO_BIN=$(abspath $(BIN)) KUMO_TOOLS=$(abspath $(BUILD)/t) KUMO_SRC=$(CURDIR) ./t/run-tests $(UNIT_BINS) $(E2E_BINS)

check: deps
	@$(MAKE) --no-print-directory test-run
	@$(MAKE) --no-print-directory SAN=1 BUILD=build/asan BIN=build/asan/bin test-run
	@./t/lint-man
	@./t/test_install.sh > build/test_install.log 2>&1 || { cat build/test_install.log; exit 1; }
	@tail -n 1 build/test_install.log
	@$(MAKE) --no-print-directory fuzz-smoke

asan:
	@$(MAKE) --no-print-directory SAN=1 BUILD=build/asan BIN=build/asan/bin build

run: all
	@mkdir -p var
	exec $(BIN)/kumod --policy conf/policy/init.lua --user $$(id -un)

# ---- fuzzing (issue 8) ------------------------------------------------------
#   make fuzz         libFuzzer targets in build/fuzz/ (clang, ASan, UBSan)
#   make fuzz-smoke   each target for FUZZ_SECS seconds on a copy of its seed
#                     corpus in fuzz/corpus/<name>/ (part of make check)
FUZZ_NAMES := cmd data addr frame jsonr toml proxy
FUZZ_BINS  := $(patsubst %,build/fuzz/fuzz_%,$(FUZZ_NAMES))
FUZZ_SECS  ?= 5
FUZZ_CFLAGS := -std=c11 -g -O1 -Wall -Wextra -Werror -D_GNU_SOURCE -I. \
               -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
               $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_SRC_cmd   := smtpd/smtpd_parse.c lib/addr.c lib/xalloc.c
FUZZ_SRC_data  := smtpd/smtpd_data.c lib/xalloc.c
FUZZ_SRC_addr  := lib/addr.c lib/xalloc.c
FUZZ_SRC_frame := lib/frame.c lib/jsonr.c lib/jsonw.c lib/xalloc.c
FUZZ_SRC_jsonr := lib/jsonr.c lib/jsonw.c lib/xalloc.c
FUZZ_SRC_toml  := lib/toml.c lib/xalloc.c
FUZZ_SRC_proxy := $(filter-out smtpd/smtpd.c,$(SMTPD_SRC)) $(SPOOL_SRC) $(LIB_SRC)

.PHONY: fuzz fuzz-smoke
fuzz: deps $(FUZZ_BINS)

build/fuzz/fuzz_%: fuzz/fuzz_%.c $(LIB_SRC) $(SMTPD_SRC) $(SPOOL_SRC)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_SRC_$*) $(LDLIBS)

fuzz-smoke: fuzz
	@./t/fuzz-smoke $(FUZZ_SECS) $(FUZZ_NAMES)

# ---- install ----------------------------------------------------------------
#   make install [PREFIX=/usr/local] [DESTDIR=...]   kumod and kumoctl in sbin/,
#   the helpers in libexec/kumomta/, man pages, and under etc/: the default
#   policy (not overwritten), the init script and the systemd unit.
PREFIX     ?= /usr/local
SBINDIR    := $(PREFIX)/sbin
LIBEXECDIR := $(PREFIX)/libexec/kumomta
MANDIR     := $(PREFIX)/share/man
SYSCONFDIR := $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
SUBST      := sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'

.PHONY: install uninstall
install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSCONFDIR)/kumomta/policy \
		$(DESTDIR)$(SYSCONFDIR)/init.d $(DESTDIR)$(SYSCONFDIR)/systemd/system
	install -m 0755 $(BIN)/kumod $(BIN)/kumoctl $(DESTDIR)$(SBINDIR)/
	install -m 0755 $(BIN)/kumo-smtpd $(BIN)/kumo-policyd $(BIN)/kumo-qmgr $(DESTDIR)$(LIBEXECDIR)/
	install -m 0644 man/kumo-policy.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 man/kumomta.7 $(DESTDIR)$(MANDIR)/man7/
	install -m 0644 man/kumod.8 man/kumoctl.8 $(DESTDIR)$(MANDIR)/man8/
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/kumomta/policy/init.lua ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/kumomta/policy/init.lua"; \
	else \
		sed -e 's|\./var/spool/|/var/spool/kumomta/|' -e 's|\./var/log|/var/log/kumomta|' \
			conf/policy/init.lua > $(DESTDIR)$(SYSCONFDIR)/kumomta/policy/init.lua; \
		chmod 0644 $(DESTDIR)$(SYSCONFDIR)/kumomta/policy/init.lua; \
	fi
	$(SUBST) conf/init.d/kumomta > $(DESTDIR)$(SYSCONFDIR)/init.d/kumomta
	chmod 0755 $(DESTDIR)$(SYSCONFDIR)/init.d/kumomta
	$(SUBST) conf/kumomta.service > $(DESTDIR)$(SYSCONFDIR)/systemd/system/kumomta.service
	chmod 0644 $(DESTDIR)$(SYSCONFDIR)/systemd/system/kumomta.service

# The policy is configuration: uninstall leaves it.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/kumod $(DESTDIR)$(SBINDIR)/kumoctl
	rm -f $(DESTDIR)$(LIBEXECDIR)/kumo-smtpd $(DESTDIR)$(LIBEXECDIR)/kumo-policyd $(DESTDIR)$(LIBEXECDIR)/kumo-qmgr
	-rmdir $(DESTDIR)$(LIBEXECDIR) 2>/dev/null
	rm -f $(DESTDIR)$(MANDIR)/man5/kumo-policy.5 $(DESTDIR)$(MANDIR)/man7/kumomta.7
	rm -f $(DESTDIR)$(MANDIR)/man8/kumod.8 $(DESTDIR)$(MANDIR)/man8/kumoctl.8
	rm -f $(DESTDIR)$(SYSCONFDIR)/init.d/kumomta $(DESTDIR)$(SYSCONFDIR)/systemd/system/kumomta.service

clean:
	rm -rf build bin

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- benchmarks (issue 7) ----------------------------------------------------
#   make bench        build, then bench/run: kumod against Postfix's smtp-sink
#   make bench-cg     build, then bench/cg-count for the no-hook and the
#                     every-hook policy: user-space instructions per message
#   make bench-deps   install postfix (for smtp-sink) as root, never started as a
#                     service; otherwise print the commands to run
#   make bench-cg-deps  install valgrind (for bench-cg) as root; likewise
# Results are written up by hand in bench/RESULTS.md; never timed assertions.
BENCH_BINS := $(BUILD)/bench/smtp-load $(BUILD)/bench/fsync-lat
BENCH_DEBCONF := postfix postfix/main_mailer_type select No configuration

.PHONY: bench bench-cg bench-cg-deps bench-deps bench-progs

bench-progs: $(PROGS) $(BENCH_BINS)

$(BUILD)/bench/smtp-load: $(BUILD)/bench/smtp-load.o
	$(CC) $(LDFLAGS) -o $@ $^ $(shell pkg-config --libs libevent 2>/dev/null) -lm

$(BUILD)/bench/fsync-lat: $(BUILD)/bench/fsync-lat.o
	$(CC) $(LDFLAGS) -o $@ $^ -lm

# policy-rc.d answering 101 keeps the package's maintainer scripts from
# starting postfix; a policy-rc.d already present is put back afterwards.
bench-deps:
	@if [ -x /usr/sbin/smtp-sink ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make bench-deps: /usr/sbin/smtp-sink missing; run as root:"; \
	  echo "  echo '$(BENCH_DEBCONF)' | debconf-set-selections"; \
	  echo "  printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d"; \
	  echo "  DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"; \
	  echo "  rm /usr/sbin/policy-rc.d   # unless you had one"; exit 1; \
	fi; \
	prc=/usr/sbin/policy-rc.d; saved=$$(mktemp); had=0; \
	if [ -e $$prc ]; then cp -p $$prc $$saved; had=1; fi; \
	trap 'if [ $$had = 1 ]; then cp -p $$saved $$prc; else rm -f $$prc; fi; rm -f $$saved' EXIT; \
	printf '#!/bin/sh\nexit 101\n' > $$prc; chmod 755 $$prc; \
	echo '$(BENCH_DEBCONF)' | debconf-set-selections; \
	echo "make bench-deps: installing postfix (service not started)"; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix; } || exit 1; \
	if [ -d /run/systemd/system ]; then systemctl disable --now postfix >/dev/null 2>&1; fi; \
	update-rc.d postfix disable >/dev/null 2>&1; true

bench: all bench-deps
	@MAKE="$(MAKE)" BUILD="$(BUILD)" BIN="$(BIN)" ./bench/run

bench-cg-deps:
	@if command -v valgrind >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "make bench-cg-deps: valgrind missing; run as root: apt-get install -y valgrind"; exit 1; \
	fi; \
	echo "make bench-cg-deps: installing valgrind"; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind; }

bench-cg: bench-progs bench-cg-deps
	@for p in bench/policy-durable.lua bench/policy-hooks.lua; do \
	  BUILD="$(BUILD)" BIN="$(BIN)" ./bench/cg-count --policy $$p || exit 1; \
	done
