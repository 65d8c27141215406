#!/usr/bin/env bash
# Build llama.cpp's own C++ llama-server from the llama.cpp source vendored in the
# llama-cpp-python sdist we depend on, so the baseline runs the very same llama.cpp version.
# Cached outside the repo (about 10 minutes on 2 cores the first time).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-$here/../.venv/bin/python}"
version="$("$py" -c 'import llama_cpp; print(llama_cpp.__version__)')"
cache="${LLAMA_SERVER_CACHE:-$HOME/.cache/gemma-local-bench}/llama-cpp-python-$version"
bin="$cache/build/bin/llama-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
if [ ! -d "$cache/src" ]; then
  "$py" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$cache" >&2
  tar xzf "$cache/llama_cpp_python-$version.tar.gz" -C "$cache"
  mv "$cache/llama_cpp_python-$version/vendor/llama.cpp" "$cache/src"
  rm -rf "$cache/llama_cpp_python-$version" "$cache/llama_cpp_python-$version.tar.gz"
fi
cmake -S "$cache/src" -B "$cache/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >&2
cmake --build "$cache/build" --target llama-server -j "$(nproc)" >&2
echo "$bin"
