"""``shelf`` subcommands that use a model: serve, predict, drift."""

from __future__ import annotations

import argparse
import json
import sys

from modelshelf.commands import Add, path, positive_seconds


def cmd_serve(a: argparse.Namespace) -> int:
    import gc
    import os

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
    print(f"serving {cur.name} v{cur.version} ({cur.format}) on http://{host}:{listeners[0].getsockname()[1]}"
          f" following '{a.model}'" + (f", polling every {a.poll:g}s" if a.poll > 0 else "")
          + ("" if token else f"; admin reload disabled (set {a.admin_token_env})"), flush=True)
    run(app, listeners, keep_alive=a.keep_alive)
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from modelshelf.serve.batch import predict_csv

    done = predict_csv(a.model, a.input, a.out, allow_version_mismatch=a.allow_version_mismatch)
    print(f"scored {done.rows} rows with v{done.version} → {done.output}")
    return 0


def cmd_drift(a: argparse.Namespace) -> int:
    from modelshelf.drift import check
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
    rep = check(".", a.data, a.model, predictions=not a.no_predictions)
    if a.plot is not None:
        from modelshelf import plots

        written = plots.drift(rep.result, a.plot, rep.reference.version)
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
    p.add_argument("--model", default="latest", help="vX.Y.Z, latest, a stage (prod) or a directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--poll", type=float, default=10.0, help="seconds between registry checks (0: never)")
    p.add_argument("--admin-token-env", default="SHELF_ADMIN_TOKEN",
                   help="environment variable holding the bearer token for POST /admin/reload")
    p.add_argument("--max-rows", type=int, default=10_000)
    p.add_argument("--max-body", type=int, default=8 << 20, help="bytes")
    p.add_argument("--keep-alive", type=positive_seconds, default=5.0,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    p.add_argument("--allow-version-mismatch", action="store_true")

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
