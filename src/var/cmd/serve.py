"""``var serve``: the web demo (Gradio) of a model: generate, edit and vary images in the browser."""
from __future__ import annotations

import argparse
import logging

from .common import add_command, add_model_args, load_pipeline, positive_int

log = logging.getLogger("var")


def register(sub) -> None:
    p = add_command(sub, "serve", "a web demo in the browser (Gradio): generate, edit and vary images")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 makes the demo reachable from other machines")
    p.add_argument("--port", type=port_number, default=7860, help="port to listen on")
    p.add_argument("--concurrency", type=positive_int, default=1,
                   help="requests that run at once on the model; the others wait in the queue")
    p.set_defaults(run=run)


def port_number(text: str) -> int:
    """A TCP port to listen on: an integer in [1, 65535]."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in [1, 65535], got {text!r}")
    return port


def run(args: argparse.Namespace) -> int:
    from .. import serve

    try:
        serve.import_gradio()
    except ImportError:
        log.error('error: var serve needs Gradio, an optional extra: pip install -e ".[web]"')
        return 2
    pipe = load_pipeline(args)
    model_args = ["--official", *args.official] if args.official else ["--model", args.model]
    if args.num_heads is not None:
        model_args += ["--num-heads", str(args.num_heads)]
    app = serve.build_app(pipe, model_args, concurrency=args.concurrency)
    try:
        serve.launch(app, args.host, args.port, block=False)
    except OSError as e:  # the port is taken, or the address is not this machine's
        reason = str(e).split(". ")[0]  # Gradio's first sentence; the rest is advice for calling launch()
        log.error("error: cannot serve on %s port %d: %s; choose another --port", args.host, args.port, reason)
        return 2
    # Said once the server listens: a port another server holds gets the error above alone.
    log.info("serving the demo at http://%s:%d (Ctrl-C stops it)",
             f"[{args.host}]" if ":" in args.host else args.host, args.port)
    app.block_thread()
    return 0
