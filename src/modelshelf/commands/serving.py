"""``shelf`` subcommands that use a model: serve, predict, drift."""

from __future__ import annotations

import argparse
import json
import sys

from modelshelf.commands import Add, path, positive_seconds


def cmd_serve(a: argparse.Namespace) -> int:
    import gc
    import os

    from modelshelf.serve import logs

    # Before loading: the first load is logged (a refusal at start-up is not: it is the one
    # line the CLI prints on stderr, with its exit code).
    logs.configure(a.log_format, access_log=a.access_log, level=a.log_level)
    # Start-up (importing numpy and onnxruntime, loading) allocates much and frees little:
    # collecting meanwhile took ~8 ms of a ~0.13 s start, and found next to nothing.
    gc.disable()
    try:
        from modelshelf.serve.server import build, listen, run

        token = os.environ.get(a.admin_token_env) or None
        listeners = listen(a.host, a.port)  # a port in use is an error before the model loads
        app = build(a.model, admin_token=token, poll=a.poll, max_rows=a.max_rows, max_body=a.max_body,
                    allow_version_mismatch=a.allow_version_mismatch)
    finally:
        gc.enable()
    # What start-up made lives as long as the server: later collections skip it, and the first
    # request does not pay for a young generation holding all of it.  The price: the little
    # garbage start-up left (~500 objects serving a directory) is never freed.
    gc.freeze()
    cur = app.holder.current
    assert cur is not None
    host = f"[{a.host}]" if ":" in a.host else a.host
    # Benchmarks and tests parse this line; the log's start-up record says the same.
    print(f"serving {cur.name} v{cur.version} ({cur.format}) on http://{host}:{listeners[0].getsockname()[1]}"
          f" following '{a.model}'" + (f", polling every {a.poll:g}s" if a.poll > 0 else "")
          + ("" if token else f"; admin reload disabled (set {a.admin_token_env})"), flush=True)
    run(app, listeners, keep_alive=a.keep_alive, max_connections=a.max_connections, access_log=a.access_log)
    return 0


def positive_int(value: str) -> int:
    """An argparse type: a whole number above zero."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def cmd_predict(a: argparse.Namespace) -> int:
    from modelshelf import api

    done = api.predict(a.model, a.input, a.out, allow_version_mismatch=a.allow_version_mismatch)
    print(f"scored {done.rows} rows with v{done.version} → {done.output}")
    return 0


def cmd_drift(a: argparse.Namespace) -> int:
    from modelshelf import api
    from modelshelf.errors import DriftDetected, SchemaBreak

    if a.data is None:  # the newest data: what params.yaml trains on
        from modelshelf.params import load_params
        from modelshelf.project import find_root

        root = find_root()
        source = load_params(root / "params.yaml").data.source
        if source.startswith("builtin:"):
            from modelshelf.errors import ConfigError

            raise ConfigError("params.yaml: data.source", f"{source} is built in: there is no new data",
                              "pass a CSV: `shelf drift NEW.csv`")
        a.data = root / source
    rep = api.drift(".", a.data, a.model, predictions=not a.no_predictions)
    if a.plot is not None:
        from modelshelf.drift import charts

        written = charts.write(rep.result, a.plot, rep.reference.version)
        print(f"wrote {len(written)} charts to {a.plot}", file=sys.stderr)
    if a.json:
        print(json.dumps(rep.to_json(), indent=2))
    else:
        print(rep.markdown(), end="")
    verdict = rep.result.verdict
    if verdict == "schema break":
        raise SchemaBreak(str(a.data), "; ".join(rep.result.schema_problems),
                          "fix the data or retrain on the new schema")
    if verdict == "drift":
        raise DriftDetected(str(a.data), f"drift in {', '.join(rep.result.drifted()) or 'predictions'}",
                            "retrain on the new data: `dvc repro`, then review with `shelf report`")
    return 0


def register(add: Add) -> None:
    """Add these subcommands and their arguments."""
    p = add("serve", cmd_serve, "serve a verified model over HTTP, hot-swapping as the registry moves")
    p.add_argument("--model", default="latest", metavar="SPEC",
                   help="vX.Y.Z, latest, a stage (prod) or a directory (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s); beyond it, put a reverse proxy in front")
    p.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any free one (default: %(default)s)")
    p.add_argument("--poll", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between registry checks, 0 for never (default: %(default)g)")
    p.add_argument("--admin-token-env", default="SHELF_ADMIN_TOKEN", metavar="NAME",
                   help="environment variable holding the bearer token for POST /admin/reload (default: %(default)s)")
    p.add_argument("--max-rows", type=int, default=10_000, metavar="N", help="rows per request at most (default: %(default)s)")
    p.add_argument("--max-body", type=int, default=8 << 20, metavar="BYTES",
                   help="request body bytes at most; larger ones get 413 (default: %(default)s)")
    p.add_argument("--keep-alive", type=positive_seconds, default=5.0, metavar="SECONDS",
                   help="seconds an idle keep-alive connection stays open (default: %(default)g)")
    p.add_argument("--max-connections", type=positive_int, default=1000, metavar="N",
                   help="open connections at most: past it a new one takes the place of an idle or slow one, "
                        "or is answered 503 when every one is busy (default: %(default)s)")
    p.add_argument("--access-log", action="store_true",
                   help="log one line per answer (logger modelshelf.serve.access; default: off)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", metavar="FORMAT",
                   help="text (uvicorn-like lines) or json (one object per line), on stderr (default: %(default)s)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info", metavar="LEVEL",
                   help="least severe record logged: debug, info, warning or error (default: %(default)s)")
    p.add_argument("--allow-version-mismatch", action="store_true",
                   help="serve the joblib copy under a scikit-learn other than the card's (ONNX ignores it)")

    p = add("predict", cmd_predict, "score a CSV with a verified model (the same rules as serve)")
    p.add_argument("input", type=path)
    p.add_argument("--model", default="latest", help="vX.Y.Z, latest, a stage or a directory")
    p.add_argument("-o", "--out", type=path, required=True)
    p.add_argument("--allow-version-mismatch", action="store_true")

    p = add("drift", cmd_drift, "compare new data with the training profile (exit 0 none, 9 drift, 10 schema break)")
    p.add_argument("data", type=path, nargs="?", help="a CSV of new data (default: data.source in params.yaml)")
    p.add_argument("--model", help="vX.Y.Z, latest or a stage (default: the workspace model)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="markdown (the default output)")
    fmt.add_argument("--json", action="store_true")
    p.add_argument("--no-predictions", action="store_true", help="skip prediction drift")
    p.add_argument("--plot", type=path, metavar="DIR", help="also write one PNG per feature and overview.png")
