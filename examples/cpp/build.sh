#!/usr/bin/env bash
# Build examples/cpp/build/mhe_generate on a fresh machine.
#
# ONNX Runtime's C/C++ headers: Debian's libonnxruntime-dev (trixie; API version 21), unpacked into
# build/deps with `dpkg -x` (nothing is installed into the system). The library: the libonnxruntime.so
# inside the pinned `onnxruntime` wheel (ORT 1.32 serves every older API version, 21 included), linked
# through a `libonnxruntime.so.1` link in build/lib (the library's SONAME) and found at run time by rpath.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$here/build"
python="${PYTHON:-$here/../../.venv/bin/python}"
mkdir -p "$build/lib" "$build/deps"

headers="$build/deps/usr/include/onnxruntime"
if [[ ! -f "$headers/onnxruntime_cxx_api.h" ]]; then
  apt_state="$build/deps/apt"
  mkdir -p "$apt_state/lists/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" > "$apt_state/sources.list"
  opts=(-oDir::State::Lists="$apt_state/lists" -oDir::Etc::SourceList="$apt_state/sources.list" -oDir::Etc::SourceParts=/nonexistent -oAPT::Sandbox::User=root -qq)
  apt-get "${opts[@]}" update
  (cd "$build/deps" && apt-get "${opts[@]}" download libonnxruntime-dev)
  dpkg -x "$build"/deps/libonnxruntime-dev_*.deb "$build/deps"
fi

ort_lib="$("$python" -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))[0])')"
ln -sf "$ort_lib" "$build/lib/libonnxruntime.so.1"

cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DORT_INCLUDE_DIR="$headers" -DORT_LIB_DIR="$build/lib" >/dev/null
cmake --build "$build" --parallel 2 >/dev/null
echo "built $build/mhe_generate (headers: Debian libonnxruntime-dev; library: $ort_lib)"
