# mdevfs: `make demo` and `make test` set everything up on a fresh Debian machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What a stock Debian 12 (or Ubuntu 24.04, same names) lacks for the demo: the venv module and
# what pyfuse3's build needs (it has no wheels: gcc, pkg-config, the Python and libfuse3 headers,
# patch for mdevfs's patch of it); fuse3 for fusermount3; mdevctl, which the demo runs. The tests
# also need libvirt (without QEMU) for the oracle tests, golang-go for the Go helper's own tests
# and umockdev for the replay of exports: `make test` installs them.
DEMO_PACKAGES := python3-venv python3-dev gcc pkg-config libfuse3-dev fuse3 patch mdevctl util-linux
TEST_PACKAGES := libvirt-daemon libvirt-clients golang-go umockdev
# pyfuse3, exactly this version, built with mdevfs's patch to its request loop (the file says
# why and what): a FUSE request costs less than half as much. Where it cannot be built, pip's
# stock pyfuse3 serves, slower; pyfuse3.SESSION_LOOP says which one is in use.
PYFUSE3 := 3.5.0
PYFUSE3_PATCH := mdevfs/pyfuse3-single-reader.patch
# Debian packages, installed only when one is missing (a second run does nothing); apt's and
# dpkg's chatter goes to build/apt.log, one line says what is installed
define apt_install
	@mkdir -p build; missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "mdevfs: installing Debian packages:" $$missing "(log: build/apt.log)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing; } >build/apt.log 2>&1 \
	    || { tail -20 build/apt.log; exit 1; }; \
	fi
endef

.PHONY: install system test-system venv test-venv pyfuse3 demo test check bench conformance lint clean

install: system venv
	@# bytecode for mdevfs's own modules, which the editable install leaves to the first import
	@# (never, where PYTHONDONTWRITEBYTECODE is set): every daemon would compile them again
	@$(BIN)/python -m compileall -q mdevfs vendors

system:
	$(call apt_install,$(DEMO_PACKAGES))

# what only the tests need
test-system:
	$(call apt_install,$(TEST_PACKAGES))
	@# libvirt-daemon without its recommends makes none of its state directories, over which
	@# the libvirt tests and the libvirt recipe mount a tmpfs inside their namespace
	@mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PYFUSE3_PATCH) | system
	@echo "mdevfs: a virtualenv in $(VENV), with pyfuse3 $(PYFUSE3) built and patched"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	@$(MAKE) --no-print-directory pyfuse3 || \
	    echo "mdevfs: the patched pyfuse3 did not build; pip's stock pyfuse3 serves (slower)"
	@echo "mdevfs: installing mdevfs into $(VENV)"
	@$(BIN)/pip install -q --disable-pip-version-check -e .
	@touch $@

# the test extras (pytest, hypothesis, NVIDIA's nvidia-ml-py)
test-venv: $(VENV)/.test-installed

$(VENV)/.test-installed: pyproject.toml | venv
	@echo "mdevfs: installing the test dependencies into $(VENV)"
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# pyfuse3 $(PYFUSE3) from its sdist on PyPI, patched, built and installed into the venv. Only
# pyfuse3 is fetched as source: its build tools (setuptools, Cython) come as wheels.
pyfuse3:
	@rm -rf build/pyfuse3 && mkdir -p build/pyfuse3
	@$(BIN)/pip download -q --disable-pip-version-check --no-deps --no-binary pyfuse3 \
	    -d build/pyfuse3 pyfuse3==$(PYFUSE3)
	@tar -xzf build/pyfuse3/pyfuse3-$(PYFUSE3).tar.gz -C build/pyfuse3
	@patch -s -d build/pyfuse3/pyfuse3-$(PYFUSE3) -p1 < $(PYFUSE3_PATCH)
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps --force-reinstall \
	    build/pyfuse3/pyfuse3-$(PYFUSE3)

# make demo DEMO=--full: also dump every type's files
demo: install
	$(BIN)/python examples/demo.py $(DEMO)

test: install test-system test-venv
	$(BIN)/python -m pytest -q

# the edit loop: the fast tiers (the pure core, the adapter without a mount), in seconds;
# pytest -m mount, clients or slow runs one of the others (tests/conftest.py)
check: install test-venv
	$(BIN)/python -m pytest -q -m "unit or adapter"

# Real kernels in QEMU against mdevfs: Debian's 5.10, 6.1, 6.12 and 7.3 with the kernel's mdev
# samples, and 5.10, 6.1 and 7.3 driving QEMU's igb SR-IOV PF (tests/conformance/check says how
# to re-record the dumps in golden/ that make test compares with).
conformance: install
	tests/conformance/check

bench: install
	PYTHONPATH=tests $(BIN)/python -m bench

lint: install
	$(BIN)/pip install -q ruff
	$(BIN)/python -m ruff check mdevfs vendors tests examples

clean:
	rm -rf $(VENV) build *.egg-info
