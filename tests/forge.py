"""A forge simulator: run a workflow job's ``run:`` steps as GitHub Actions runs them.

The job's steps run in order with ``bash -e`` (GitHub's default shell, no pipefail) in a
checkout prepared as ``actions/checkout`` prepares it (see :func:`pr_checkout`), with
``${{ … }}`` expressions evaluated from a context, ``if:`` conditions honoured, and
``GITHUB_OUTPUT``/``GITHUB_STEP_SUMMARY``/``GITHUB_EVENT_PATH`` as files. ``uses:`` steps
are the simulator's own (the checkout is made beforehand, setup-python is this
interpreter), and ``make venv`` links the test's own environment rather than installing it.
The forge's API is the one thing simulated: a recording stub ``gh`` on ``PATH``
(:data:`GH_STUB`) whose comments live in a JSON file and which can answer 403.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent

GH_STUB = r'''#!PYTHON
"""Stub `gh api`: comments in $GH_STATE (JSON), every call appended to $GH_CALLS."""
import json, os, sys
import jq

args = sys.argv[1:]
state_path = os.environ["GH_STATE"]
state = json.load(open(state_path))
with open(os.environ["GH_CALLS"], "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:1] != ["api"]:
    sys.exit("stub gh: only `gh api` is simulated")
args = args[1:]
method, jq_expr, fields, path = "GET", None, {}, None
while args:
    a = args.pop(0)
    if a in ("--method", "-X"):
        method = args.pop(0)
    elif a == "--jq":
        jq_expr = args.pop(0)
    elif a == "--paginate":
        pass
    elif a == "-F":
        k, v = args.pop(0).split("=", 1)
        fields[k] = open(v[1:], encoding="utf-8").read() if v.startswith("@") else v
    elif a == "-f":
        k, v = args.pop(0).split("=", 1)
        fields[k] = v
    else:
        path = a
if state.get("deny") == "all" or (state.get("deny") == "write" and method != "GET"):
    print("gh: Resource not accessible by integration (HTTP 403)", file=sys.stderr)
    sys.exit(1)
parts = path.split("/")


def answer(out):
    if jq_expr:
        for v in jq.compile(jq_expr).input_value(out).all():
            print(v)
    else:
        print(json.dumps(out))


if method == "GET" and parts[-1] == "comments":
    answer(state["comments"])
elif method == "GET" and parts[-1] == "logs" and parts[-3] == "runs":
    sys.stdout.buffer.write(open(state["logs"][parts[-2]], "rb").read())
elif method == "GET" and parts[-1] == "pulls":
    answer([pr for pr in state.get("pulls", []) if pr["state"] == fields.get("state", "open")
            and ("head" not in fields or pr["head"]["label"] == fields["head"])])
elif method == "POST" and parts[-1] == "pulls":
    pulls = state.setdefault("pulls", [])
    pulls.append({"number": 100 + len(pulls), "state": "open", "title": fields["title"], "body": fields["body"],
                  "base": {"ref": fields["base"]}, "head": {"ref": fields["head"], "label": f"{parts[1]}:{fields['head']}"}})
elif method == "PATCH" and parts[-2] == "pulls":
    for pr in state.get("pulls", []):
        if pr["number"] == int(parts[-1]):
            pr.update({k: v for k, v in fields.items() if k in ("body", "title", "state")})
            break
    else:
        print("gh: Not Found (HTTP 404)", file=sys.stderr)
        sys.exit(1)
elif method == "POST" and parts[-1] == "comments":
    new = {"id": 1000 + len(state["comments"]), "user": {"login": "github-actions[bot]"},
           "body": fields["body"]}
    state["comments"].append(new)
elif method == "PATCH":
    cid = int(parts[-1])
    for c in state["comments"]:
        if c["id"] == cid:
            c["body"] = fields["body"]
            break
    else:
        print("gh: Not Found (HTTP 404)", file=sys.stderr)
        sys.exit(1)
else:
    sys.exit(f"stub gh: {method} {path} is not simulated")
json.dump(state, open(state_path, "w"))
'''


@dataclass
class Step:
    name: str
    ran: bool
    code: int | None = None
    stdout: str = ""
    stderr: str = ""
    script: str = ""


@dataclass
class JobRun:
    steps: list[Step] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.code not in (None, 0) for s in self.steps)

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def log(self) -> str:
        return "\n".join(f"--- {s.name} (ran={s.ran}, exit={s.code})\n{s.stdout}{s.stderr}" for s in self.steps)


class Forge:
    """The stub API's state and call log, and a ``bin`` directory holding ``gh``."""

    def __init__(self, directory: Path, comments: list[dict[str, Any]] | None = None,
                 deny: str | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.state = directory / "gh-state.json"
        self.calls_file = directory / "gh-calls.jsonl"
        self.bin = directory / "bin"
        self.bin.mkdir(exist_ok=True)
        gh = self.bin / "gh"
        gh.write_text(GH_STUB.replace("PYTHON", sys.executable, 1))
        gh.chmod(0o755)
        self.state.write_text(json.dumps({"comments": comments or [], "deny": deny, "logs": {}, "pulls": []}))
        self.calls_file.write_text("")

    def update(self, **values: Any) -> None:
        """Change the stub's state: ``deny``, ``pulls`` (GitHub's pull request objects)..."""
        self.state.write_text(json.dumps({**json.loads(self.state.read_text()), **values}))

    def keep_logs(self, run_id: str, job_name: str, job: JobRun) -> None:
        """Keep ``job``'s log as run ``run_id``'s log archive, in GitHub's layout: one file per
        step and one for the whole job, every line stamped, each step's script echoed first."""
        archive = self.directory / f"logs-{run_id}.zip"
        stamp = "2026-12-03T12:00:00.0000000Z "
        whole: list[str] = []
        with zipfile.ZipFile(archive, "w") as z:
            for i, step in enumerate(job.steps, start=1):
                if not step.ran:
                    continue
                lines = [f"##[group]Run {step.script.splitlines()[0] if step.script else step.name}",
                         *step.script.splitlines(), "##[endgroup]", *(step.stdout + step.stderr).splitlines()]
                text = "".join(stamp + line + "\n" for line in lines)
                z.writestr(f"{job_name}/{i}_{step.name}.txt", text)
                whole.append(text)
            z.writestr(f"0_{job_name}.txt", "".join(whole))
        logs = json.loads(self.state.read_text())["logs"]
        self.update(logs={**logs, run_id: str(archive)})

    @property
    def comments(self) -> list[dict[str, Any]]:
        return json.loads(self.state.read_text())["comments"]

    @property
    def pulls(self) -> list[dict[str, Any]]:
        return json.loads(self.state.read_text())["pulls"]

    @property
    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]


_TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(&&|\|\||==|!=|!|\(|\))|([A-Za-z_][\w.\-]*(?:\(\))?))")


def evaluate(expr: str, context: dict[str, Any], failed: bool) -> Any:
    """A GitHub expression (the subset the workflows use): paths, strings, ==, !=, !, &&, ||."""
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ValueError(f"forge simulator: cannot read {expr!r} at {pos}")
        pos = m.end()
        string, op, name = m.groups()
        if string is not None:
            out.append(repr(string[1:-1].replace("''", "'")))
        elif op is not None:
            out.append({"&&": " and ", "||": " or ", "!": " not "}.get(op, op))
        elif name in ("always()", "cancelled()", "success()", "failure()"):
            out.append(repr({"always()": True, "cancelled()": False,
                             "success()": not failed, "failure()": failed}[name]))
        else:
            value: Any = context
            for part in name.split("."):
                value = value.get(part, "") if isinstance(value, dict) else ""
            out.append(repr(value))
    return eval("".join(out), {"__builtins__": {}})  # noqa: S307 -- our own tokens only


def substitute(text: str, context: dict[str, Any], failed: bool = False) -> str:
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(evaluate(m.group(1), context, failed)), text)


def run_job(workflow: str, job: str, checkout: Path, forge: Forge, context: dict[str, Any],
            env: dict[str, str] | None = None) -> JobRun:
    """Run ``job`` of ``.github/workflows/WORKFLOW`` in ``checkout``; each step's outcome."""
    flow = yaml.safe_load((ROOT / ".github/workflows" / workflow).read_text())
    work = checkout.parent / f"{checkout.name}-runner"
    work.mkdir(exist_ok=True)
    summary, event = work / "summary.md", work / "event.json"
    summary.write_text("")
    event.write_text(json.dumps(context["github"].get("event", {})))
    context = {**context, "steps": {}}
    base_env = {**os.environ, **(env or {}), "GITHUB_ACTIONS": "true", "CI": "true",
                "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_EVENT_PATH": str(event),
                "GITHUB_WORKSPACE": str(checkout),
                "PATH": f"{forge.bin}{os.pathsep}{os.environ['PATH']}",
                "GH_STATE": str(forge.state), "GH_CALLS": str(forge.calls_file)}
    if context["github"].get("base_ref"):
        base_env["GITHUB_BASE_REF"] = context["github"]["base_ref"]
    result = JobRun()
    cond = str(flow["jobs"][job].get("if", "success()"))
    if not evaluate(cond[3:-2] if cond.startswith("${{") else cond, context, False):
        return result  # the job is skipped: no steps
    for i, step in enumerate(flow["jobs"][job]["steps"]):
        name = step.get("name", f"step {i}")
        cond = step.get("if", "success()")
        cond = cond[3:-2] if cond.startswith("${{") else cond
        if not evaluate(cond, context, result.failed):
            result.steps.append(Step(name, False))
            context["steps"][step.get("id", f"_{i}")] = {"outcome": "skipped", "outputs": {}}
            continue
        if "uses" in step:  # checkout: made beforehand; setup-python: this interpreter
            result.steps.append(Step(name, True, 0))
            continue
        script = step["run"]
        if script.strip() == "make venv":  # the test's own environment, not a second install
            if not (checkout / ".venv").exists():
                (checkout / ".venv").symlink_to(VENV)
            result.steps.append(Step(name, True, 0))
            continue
        outputs = work / f"output-{i}"
        outputs.write_text("")
        step_env = {**base_env, "GITHUB_OUTPUT": str(outputs)}
        step_env.update({k: str(substitute(str(v), context, result.failed))
                         for k, v in (step.get("env") or {}).items()})
        proc = subprocess.run(["bash", "-e", "-c", substitute(script, context, result.failed)],
                              cwd=checkout, env=step_env, capture_output=True, text=True, check=False)
        values = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
        context["steps"][step.get("id", f"_{i}")] = {
            "outcome": "success" if proc.returncode == 0 else "failure", "outputs": values}
        result.steps.append(Step(name, True, proc.returncode, proc.stdout, proc.stderr, script))
    return result


def pr_checkout(origin: Path, dest: Path, number: int) -> str:
    """Check out pull request ``number`` as ``actions/checkout`` does on ``pull_request``:
    ``refs/pull/N/merge`` detached, ``origin/*`` fetched (fetch-depth 0), no local branch.
    Returns the base commit (``origin/main``)."""
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    git = ["git", "-C", str(dest)]
    subprocess.run([*git, "remote", "add", "origin", str(origin)], check=True)
    subprocess.run([*git, "fetch", "-q", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*",
                    f"+refs/pull/{number}/merge:refs/remotes/pull/{number}/merge"], check=True)
    subprocess.run([*git, "checkout", "-q", "--detach", f"refs/remotes/pull/{number}/merge"], check=True)
    return subprocess.run([*git, "rev-parse", "refs/remotes/origin/main"], check=True,
                          capture_output=True, text=True).stdout.strip()


def push_checkout(origin: Path, dest: Path, branch: str = "main") -> None:
    """Check out ``branch`` as ``actions/checkout`` does on ``push`` (fetch-depth 0): all of
    ``origin/*`` and the tags fetched, then ``git checkout -B BRANCH origin/BRANCH``."""
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    git = ["git", "-C", str(dest)]
    subprocess.run([*git, "remote", "add", "origin", str(origin)], check=True)
    subprocess.run([*git, "fetch", "-q", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*"], check=True)
    subprocess.run([*git, "checkout", "-q", "-B", branch, f"refs/remotes/origin/{branch}"], check=True)


# -- GitLab ---------------------------------------------------------------------------------------

CURL_STUB = r'''#!PYTHON
"""Stub `curl` for GitLab's API: state in $GL_STATE (JSON), every call appended to $GL_CALLS."""
import json, os, sys
from urllib.parse import parse_qs, urlsplit

args, method, headers, data, url, dump, fmt = sys.argv[1:], "GET", {}, None, None, False, ""
while args:
    a = args.pop(0)
    if a == "-X":
        method = args.pop(0)
    elif a == "-H":
        h = args.pop(0)
        lines = open(h[1:]).read().splitlines() if h.startswith("@") else [h]
        headers.update(line.split(": ", 1) for line in lines if ": " in line)
    elif a == "--data-binary":
        d = args.pop(0)
        data = json.load(open(d[1:], encoding="utf-8")) if d.startswith("@") else json.loads(d)
    elif a == "-D":
        dump = args.pop(0) == "-"
    elif a == "-w":
        fmt = args.pop(0)
    elif a.startswith("-"):
        pass
    else:
        url = a
state = json.load(open(os.environ["GL_STATE"]))
with open(os.environ["GL_CALLS"], "a") as log:
    log.write(json.dumps({"method": method, "url": url, "data": data,
                          "token": headers.get("PRIVATE-TOKEN")}) + "\n")
parts = urlsplit(url)
path, query = parts.path.split("/api/v4/", 1)[1].split("/"), {k: v[0] for k, v in parse_qs(parts.query).items()}
status, body, extra = 200, None, {}
user = state["users"].get(headers.get("PRIVATE-TOKEN") or "")


def page(items):
    size, n = state.get("page_size", 100), int(query.get("page", "1"))
    if n * size < len(items):
        extra["x-next-page"] = str(n + 1)
    return items[(n - 1) * size:n * size]


if user is None:
    status, body = 401, {"message": "401 Unauthorized"}
elif method != "GET" and user.get("read_only"):
    status, body = 403, {"message": "403 Forbidden"}
elif path == ["user"]:
    body = {"id": user["id"], "username": user["username"]}
elif path[-1] == "notes" and method == "GET":
    body = page(state["notes"])
elif path[-1] == "notes" and method == "POST":
    body = {"id": 500 + len(state["notes"]), "author": {"id": user["id"], "username": user["username"]},
            "body": data["body"]}
    state["notes"].append(body)
    status = 201
elif path[-2] == "notes" and method == "PUT":
    note = next(n for n in state["notes"] if n["id"] == int(path[-1]))
    note["body"] = data["body"]
    body = note
elif path[-1] == "merge_requests" and method == "GET":
    body = page([m for m in state["mrs"] if m["state"] == query.get("state", m["state"])
                 and m["source_branch"] == query.get("source_branch", m["source_branch"])])
elif path[-1] == "merge_requests" and method == "POST":
    body = {**data, "iid": 1 + len(state["mrs"]), "state": "opened"}
    state["mrs"].append(body)
    status = 201
elif path[-2] == "merge_requests" and method == "PUT":
    mr = next(m for m in state["mrs"] if m["iid"] == int(path[-1]))
    mr.update(data)
    body = mr
else:
    status, body = 404, {"message": f"stub: {method} {url} is not simulated"}
json.dump(state, open(os.environ["GL_STATE"], "w"))
out = ""
if dump:
    out += f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items()) + "\r\n"
out += json.dumps(body)
out += fmt.replace("%{http_code}", str(status)).replace("\\n", "\n")
sys.stdout.write(out)
'''

NOTES_TOKEN, RELEASE_TOKEN = "glpat-notes", "glpat-release"


class GitLab:
    """The stub API's state (notes, merge requests, the users behind the two tokens) and calls."""

    def __init__(self, directory: Path, notes: list[dict[str, Any]] | None = None, read_only: bool = False,
                 page_size: int = 100) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.state, self.calls_file = directory / "gl-state.json", directory / "gl-calls.jsonl"
        self.bin = directory / "bin"
        self.bin.mkdir(exist_ok=True)
        curl = self.bin / "curl"
        curl.write_text(CURL_STUB.replace("PYTHON", sys.executable, 1))
        curl.chmod(0o755)
        users = {NOTES_TOKEN: {"id": 31, "username": "project_1_bot_notes", "read_only": read_only},
                 RELEASE_TOKEN: {"id": 32, "username": "project_1_bot_release"}}
        self.state.write_text(json.dumps({"notes": notes or [], "mrs": [], "users": users, "page_size": page_size}))
        self.calls_file.write_text("")

    @property
    def notes(self) -> list[dict[str, Any]]:
        return json.loads(self.state.read_text())["notes"]

    @property
    def mrs(self) -> list[dict[str, Any]]:
        return json.loads(self.state.read_text())["mrs"]

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]


def run_gitlab_job(job: str, checkout: Path, gitlab: GitLab, variables: dict[str, str]) -> Step:
    """Run ``job`` of ``.gitlab-ci.yml`` as a runner's bash would: before_script then script, in
    one shell that stops at the first failing line. ``apt-get`` is skipped (the tools are here)
    and ``make venv`` links the test's environment."""
    ci = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    spec = ci[job]
    lines = [*ci.get("default", {}).get("before_script", []), *spec["script"]]
    script: list[str] = []
    for line in lines:
        if line.startswith("apt-get "):
            continue
        if line.strip() == "make venv":
            line = f"[ -e .venv ] || ln -s {VENV} .venv"
        script.append(line)
    env = {**os.environ, **{k: str(v) for k, v in ci.get("variables", {}).items()}, **variables,
           "GITLAB_CI": "true", "CI": "true", "CI_API_V4_URL": "https://gitlab.example/api/v4",
           "CI_PROJECT_ID": "1", "CI_PROJECT_DIR": str(checkout), "CI_JOB_URL": "https://gitlab.example/acme/models/-/jobs/7",
           "PATH": f"{gitlab.bin}{os.pathsep}{os.environ['PATH']}",
           "GL_STATE": str(gitlab.state), "GL_CALLS": str(gitlab.calls_file)}
    text = "\n".join(script)
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=checkout, env=env,
                          capture_output=True, text=True, check=False)
    return Step(job, True, proc.returncode, proc.stdout, proc.stderr, text)
