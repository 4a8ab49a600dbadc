"""Run llama.cpp's own C++ HTTP server (`llama-server`) in this process through the prebuilt `xllamacpp` wheel,
bound to loopback, until SIGTERM/SIGINT. No compiler and no download: the CPU wheel carries the server.

    python tests/tools/llama_server.py --model tiny.gguf --port 18081 [--alias tiny] [--api-key KEY]

Prints `READY <url>` once the server object exists. The listener opens before the model is ready, so for a
moment every route answers 503 `Loading model`; poll `/health` until it answers 200.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import xllamacpp as xlc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--alias", default=None, help="model id reported by /v1/models")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--metrics", action="store_true", help="enable GET /metrics")
    parser.add_argument("--slots", action="store_true", help="enable GET /slots")
    return parser


def main() -> int:
    args = _parser().parse_args()
    params = xlc.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.n_ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.endpoint_metrics = args.metrics
    params.endpoint_slots = args.slots
    params.warmup = False
    if args.alias:
        params.model_alias = {args.alias}
    if args.api_key:
        params.api_keys = [args.api_key]

    server = xlc.Server(params)  # loads the model and starts the HTTP listener threads
    print("READY", server.listening_address, flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    del server  # the destructor stops the HTTP server and frees the model
    return 0


if __name__ == "__main__":
    sys.exit(main())
