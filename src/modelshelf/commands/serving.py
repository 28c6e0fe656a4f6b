"""``shelf`` subcommands that use a model: serve, predict, drift."""

from __future__ import annotations

import argparse
import sys

from modelshelf.commands import Add, console, path, positive_seconds


def cmd_serve(a: argparse.Namespace) -> int:
    import gc
    import os

    from modelshelf.serve import logs

    # Before loading: the first load is logged (a refusal at start-up is not: it is the one
    # line the CLI prints on stderr, with its exit code).
    logs.configure(a.log_format, access_log=a.access_log, level=a.log_level)
    candidate = a.canary or a.shadow
    if candidate is not None:
        _check_split(a)
    # Start-up (importing numpy and onnxruntime, loading) allocates much and frees little:
    # collecting meanwhile took ~8 ms of a ~0.13 s start, and found next to nothing.
    gc.disable()
    try:
        from modelshelf.serve.app import App
        from modelshelf.serve.server import build, listen, run

        token = os.environ.get(a.admin_token_env) or None
        listeners = listen(a.host, a.port)  # a port in use is an error before the model loads
        predictions = None
        if a.log_predictions is not None:
            from modelshelf.serve.predlog import PredictionLog

            predictions = PredictionLog(a.log_predictions, sample=a.log_sample, max_bytes=a.log_max_bytes,
                                        keep=a.log_keep)
        app_class: type[App] = App
        if a.workers > 1:  # the supervisor follows the registry, and /health shows every worker
            from modelshelf.serve.workers import WorkerApp

            app_class = WorkerApp
        split = None
        if candidate is not None:
            from modelshelf.serve.canary import Split
            from modelshelf.serve.holder import Holder

            cand = Holder(candidate, allow_version_mismatch=a.allow_version_mismatch, max_rows=a.max_rows, poll=a.poll)
            cand.reload("start-up")  # a candidate that cannot be served is refused before the stable one loads
            split = Split(cand, share=a.canary_share, shadow=a.shadow is not None, key_header=a.canary_key_header)
        app = build(a.model, admin_token=token, poll=a.poll, max_rows=a.max_rows, max_body=a.max_body,
                    allow_version_mismatch=a.allow_version_mismatch, predictions=predictions,
                    follow=a.workers == 1, app_class=app_class, split=split)
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
    console.result(f"serving {cur.name} v{cur.version} ({cur.format}) on http://{host}:{listeners[0].getsockname()[1]}"
                   f" following '{a.model}'" + (f", polling every {a.poll:g}s" if a.poll > 0 else "")
                   + (f", {a.workers} workers" if a.workers > 1 else "")
                   + (_split_line(app.split) if app.split is not None else "")
                   + ("" if token else f"; admin reload disabled (set {a.admin_token_env})"))
    sys.stdout.flush()
    if a.workers > 1:
        from modelshelf.serve.workers import supervise

        return supervise(app, listeners, a.workers, keep_alive=a.keep_alive, max_connections=a.max_connections,
                         access_log=a.access_log)
    run(app, listeners, keep_alive=a.keep_alive, max_connections=a.max_connections, access_log=a.access_log)
    return 0


def _check_split(a: argparse.Namespace) -> None:
    """The flags a canary or a shadow cannot go without, or with."""
    from modelshelf.errors import ConfigError

    flag = "--canary" if a.canary is not None else "--shadow"
    if a.shadow is not None and a.log_predictions is None:
        raise ConfigError("shelf serve --shadow", "the shadow's answers go only to the prediction log",
                          "add --log-predictions DIR (then `shelf canary report DIR`)")
    if (a.canary or a.shadow) == a.model:
        raise ConfigError(f"shelf serve {flag}", f"the candidate is the stable model ({a.model})",
                          "name another version or stage")


def _split_line(split: object) -> str:
    from modelshelf.serve.canary import Split

    assert isinstance(split, Split)
    cur = split.candidate.current
    assert cur is not None
    if split.shadow:
        return f", shadow v{cur.version}"
    return f", canary v{cur.version} for {split.share:.0%} of keys"


def positive_int(value: str) -> int:
    """An argparse type: a whole number above zero."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def worker_count(value: str) -> int:
    """An argparse type: a whole number above zero, or ``auto`` (the CPU count)."""
    if value == "auto":
        import os

        return os.cpu_count() or 1
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'auto')") from None


def share(value: str) -> float:
    """An argparse type: a fraction in (0, 1]."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {value}")
    return number


def cmd_predict(a: argparse.Namespace) -> int:
    from modelshelf import api

    to_stdout = str(a.out) == "-"
    if to_stdout and a.json:
        from modelshelf.errors import ConfigError

        raise ConfigError("shelf predict", "-o - and --json both write to standard output",
                          "write the predictions to a file (`-o predictions.csv`) or drop --json")
    done = api.predict(a.model, a.input, sys.stdout if to_stdout else a.out,
                       allow_version_mismatch=a.allow_version_mismatch)
    if a.json:
        console.emit_json(done.to_json())
    else:
        console.say(f"scored {done.rows} rows with v{done.version} → {done.output or 'standard output'}",
                    err=to_stdout)
    return 0


def cmd_drift(a: argparse.Namespace) -> int:
    from modelshelf import api
    from modelshelf.errors import DriftDetected, SchemaBreak

    if a.from_log is not None:
        if a.data is not None:
            from modelshelf.errors import ConfigError

            raise ConfigError("shelf drift", "give new data or --from-log, not both",
                              "e.g. `shelf drift --from-log served/`")
        rep = api.drift_log(".", a.from_log, a.model, predictions=not a.no_predictions)
        a.data = a.from_log
    elif a.data is None:  # the newest data: what params.yaml trains on
        from modelshelf.params import load_params
        from modelshelf.project import find_root

        root = find_root()
        source = load_params(root / "params.yaml").data.source
        if source.startswith("builtin:"):
            from modelshelf.errors import ConfigError

            raise ConfigError("params.yaml: data.source", f"{source} is built in: there is no new data",
                              "pass a CSV: `shelf drift NEW.csv`")
        a.data = root / source
    if a.from_log is None:
        rep = api.drift(".", a.data, a.model, predictions=not a.no_predictions)
    if a.plot is not None:
        from modelshelf.drift import charts

        written = charts.write(rep.result, a.plot, rep.reference.version)
        console.say(f"wrote {len(written)} charts to {a.plot}", err=True)
    if a.json:
        console.emit_json(rep.to_json())
    else:
        sys.stdout.write(rep.markdown())
    verdict = rep.result.verdict
    if verdict == "schema break":
        raise SchemaBreak(str(a.data), "; ".join(rep.result.schema_problems),
                          "fix the data or retrain on the new schema")
    if verdict == "drift":
        raise DriftDetected(str(a.data), f"drift in {', '.join(rep.result.drifted()) or 'predictions'}",
                            "retrain on the new data: `dvc repro`, then review with `shelf report`")
    return 0


def cmd_canary(a: argparse.Namespace) -> int:
    from modelshelf import api
    from modelshelf.errors import GateFailed

    done = api.canary_report(a.dir, min_agreement=a.min_agreement, max_shift=a.max_shift,
                             max_latency_ratio=a.max_latency_ratio, min_requests=a.min_requests)
    if a.json:
        console.emit_json(done.to_json())
    else:
        console.result(done.text().rstrip("\n"))
    if not done.promote:
        raise GateFailed(str(a.dir), f"hold v{done.candidate.version}: " + "; ".join(done.reasons),
                         "keep the canary running for more traffic, or end it with `shelf rollback --stage` "
                         "or a restart without --canary")
    if not a.json:
        console.say(f"next: `shelf promote v{done.candidate.version} --to STAGE` ends the canary")
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
    p.add_argument("--log-predictions", metavar="DIR",
                   help="write a sample of answered /predict requests, with the answer, version and latency, "
                        "as rotating JSON Lines files in DIR (read by `shelf drift --from-log DIR`)")
    p.add_argument("--log-sample", type=share, default=1.0, metavar="FRACTION",
                   help="the share of requests --log-predictions records (default: %(default)s)")
    p.add_argument("--log-max-bytes", type=positive_int, default=64 << 20, metavar="BYTES",
                   help="start a new log file past this size (default: %(default)s)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--canary", metavar="SPEC",
                       help="a candidate (vX.Y.Z, a stage or a directory) answering --canary-share of requests, "
                            "chosen by a hash of --canary-key-header (or of the body): sticky per key")
    split.add_argument("--shadow", metavar="SPEC",
                       help="a candidate scoring every request off the answer path; answers stay --model's and "
                            "both go to --log-predictions (required)")
    p.add_argument("--canary-share", type=share, default=0.1, metavar="FRACTION",
                   help="the share of keys the canary answers (default: %(default)s)")
    p.add_argument("--canary-key-header", default="X-Canary-Key", metavar="NAME",
                   help="the request header whose value routes a canary (default: %(default)s)")
    p.add_argument("--log-keep", type=positive_int, default=10, metavar="N",
                   help="log files kept; older ones are deleted (default: %(default)s)")
    p.add_argument("--workers", type=worker_count, default=1, metavar="N",
                   help="processes serving the one port, all on one version, restarted when they die; "
                        "'auto': one per CPU (default: %(default)s)")
    p.add_argument("--allow-version-mismatch", action="store_true",
                   help="serve the joblib copy under a scikit-learn other than the card's (ONNX ignores it)")

    p = add("predict", cmd_predict, "score a CSV with a verified model (the same rules as serve)")
    p.add_argument("input", type=path)
    p.add_argument("--model", default="latest", help="vX.Y.Z, latest, a stage or a directory")
    p.add_argument("-o", "--out", type=path, required=True, metavar="FILE",
                   help="where to write the predictions CSV (atomically); '-' for standard output")
    p.add_argument("--allow-version-mismatch", action="store_true")
    p.add_argument("--json", action="store_true", help="print what was scored as JSON (not with -o -)")

    p = add("drift", cmd_drift, "compare new data with the training profile (exit 0 none, 9 drift, 10 schema break)")
    p.add_argument("data", type=path, nargs="?", help="a CSV of new data (default: data.source in params.yaml)")
    p.add_argument("--model", help="vX.Y.Z, latest or a stage (default: the workspace model)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="markdown (the default output)")
    fmt.add_argument("--json", action="store_true")
    p.add_argument("--from-log", type=path, metavar="DIR",
                   help="the served traffic `shelf serve --log-predictions DIR` recorded, instead of a CSV "
                        "(default model: the version that served the newest record)")
    p.add_argument("--no-predictions", action="store_true", help="skip prediction drift")
    p.add_argument("--plot", type=path, metavar="DIR", help="also write one PNG per feature and overview.png")

    p = add("canary", cmd_canary, "compare a canary or shadow with the stable model from the prediction log "
                                  "(exit 0 promote, 3 hold)")
    p.add_argument("action", choices=("report",), help="report: compare and say whether to promote")
    p.add_argument("dir", type=path, metavar="DIR", help="the --log-predictions directory of `shelf serve`")
    p.add_argument("--min-agreement", type=share, default=0.95, metavar="FRACTION",
                   help="shadow: the least share of rows both answer alike (default: %(default)s)")
    p.add_argument("--max-shift", type=share, default=0.05, metavar="FRACTION",
                   help="the largest change of a class's share (default: %(default)s)")
    p.add_argument("--max-latency-ratio", type=float, default=1.5, metavar="X",
                   help="the candidate's p99 at most X times the stable one's (default: %(default)s)")
    p.add_argument("--min-requests", type=positive_int, default=100, metavar="N",
                   help="requests each side needs for a verdict (default: %(default)s)")
    p.add_argument("--json", action="store_true")
