"""Serve the page with a transformers.js package and check it in headless Chromium.

    python examples/web/check.py PACKAGE --node-dir DIR [--text "The "] [--new-tokens 16] [--dtype fp32]
        [--chromium /usr/bin/chromium] [--serve]

DIR holds node_modules with @huggingface/transformers (whose onnxruntime-web the page uses) and
playwright-core: `ONNXRUNTIME_NODE_INSTALL=skip npm install @huggingface/transformers playwright-core`
(benchmarks/clients.py --install does it). The site is assembled in a temporary folder: the page, the
browser builds of transformers.js and ONNX Runtime Web (its WebAssembly files included), and the package
under models/model. Prints window.mheResult as one JSON line: the prompt's ids, the new ids, the text
and ms per token. `--serve` keeps serving it for a browser of your own instead.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
PAGE_FILES = ("index.html", "main.js", "ort-common.mjs")


def build_site(site: Path, package: Path, node_modules: Path) -> None:
    for name in PAGE_FILES:
        shutil.copyfile(HERE / name, site / name)
    vendor = site / "vendor"
    vendor.mkdir()
    shutil.copyfile(
        node_modules / "@huggingface" / "transformers" / "dist" / "transformers.web.js",
        vendor / "transformers.web.js",
    )
    ort_dist = node_modules / "onnxruntime-web" / "dist"
    for path in ort_dist.iterdir():
        if path.name == "ort.webgpu.bundle.min.mjs" or path.name.startswith(
            "ort-wasm-simd-threaded"
        ):
            shutil.copyfile(path, vendor / path.name)
    shutil.copytree(package, site / "models" / "model")


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
    }

    def log_message(self, *args) -> None:  # quiet: the check prints one JSON line
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--node-dir", type=Path, required=True)
    parser.add_argument("--text", default="The ")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mhe-edge-web-") as folder:
        site = Path(folder)
        build_site(site, args.package, args.node_dir / "node_modules")
        handler = functools.partial(Handler, directory=str(site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        query = urlencode(
            {"text": args.text, "new_tokens": args.new_tokens, "dtype": args.dtype, "autorun": 1}
        )
        url = f"http://127.0.0.1:{server.server_port}/index.html?{query}"
        if args.serve:
            print(f"serving {url}", flush=True)
            server.serve_forever()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            shutil.copyfile(HERE / "check.mjs", args.node_dir / "web_check.mjs")
            run = subprocess.run(
                ["node", str(args.node_dir / "web_check.mjs"), url, args.chromium],
                capture_output=True,
                text=True,
                timeout=300,
            )
        finally:
            server.shutdown()
    sys.stderr.write(run.stderr[-4000:])
    print(run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
