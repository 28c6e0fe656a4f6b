"""GitLab API calls of .gitlab-ci.yml, made with `curl` (standard library only).

    python -m modelshelf.ci.gitlab note REPORT.md
        Keep ONE merge request note: the notes token's own note whose body starts with the
        marker (every page read), updated in place, else created. A token that cannot write
        prints a notice and exits 0: the job's verdict is the gate's.
    python -m modelshelf.ci.gitlab merge-request BRANCH TITLE BODY.md
        Update the open merge request from BRANCH into the default branch, else open one.

Tokens come from MODELSHELF_NOTES_TOKEN (a Reporter-level project access token: notes only)
and MODELSHELF_RELEASE_TOKEN (protected: pushes and merge requests); docs/setup.md.
The token goes to curl in a header file (mode 0600), never on its command line.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
from urllib.parse import urlencode

MARKER = "<!-- modelshelf-report -->"


class ApiError(Exception):
    """The API (or curl) said no: ``status`` is the HTTP status, 0 when curl failed."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text.strip()[:200]}")
        self.status = status


class Api:
    def __init__(self, token: str) -> None:
        self.base = f"{os.environ['CI_API_V4_URL']}/projects/{os.environ['CI_PROJECT_ID']}"
        fd, self.headers = tempfile.mkstemp(prefix="gitlab-headers-")
        atexit.register(os.unlink, self.headers)
        with os.fdopen(fd, "w") as f:
            f.write(f"PRIVATE-TOKEN: {token}\nContent-Type: application/json\n")

    def call(self, method: str, url: str, body: dict | None = None) -> tuple[dict[str, str], object]:
        cmd = ["curl", "-sS", "-X", method, "-D", "-", "-w", "\n%{http_code}", "-H", f"@{self.headers}"]
        payload = None
        if body is not None:
            fd, payload = tempfile.mkstemp(prefix="gitlab-body-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f)
            cmd += ["--data-binary", f"@{payload}"]
        try:
            # bytes: text mode would turn the header block's CRLFs into newlines
            out = subprocess.run([*cmd, url], capture_output=True, check=False)
        finally:
            if payload:
                os.unlink(payload)
        if out.returncode != 0:
            raise ApiError(0, out.stderr.decode(errors="replace") or f"curl exited {out.returncode}")
        raw, _, status_b = out.stdout.rpartition(b"\n")
        head_b, _, text_b = raw.partition(b"\r\n\r\n")
        head, text, status = (b.decode("utf-8", "replace") for b in (head_b, text_b, status_b))
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in head.splitlines()[1:]) if k}
        if not status.isdigit() or not 200 <= int(status) < 300:
            raise ApiError(int(status) if status.isdigit() else 0, text)
        return headers, json.loads(text) if text.strip() else None

    def pages(self, path: str, **query: str) -> list:
        found, page = [], "1"
        while page:
            headers, items = self.call("GET", f"{self.base}/{path}?{urlencode({**query, 'per_page': '100', 'page': page})}")
            found += items
            page = headers.get("x-next-page", "")
        return found


def note(report: str) -> int:
    token = os.environ.get("MODELSHELF_NOTES_TOKEN", "")
    if not token:
        print("notice: MODELSHELF_NOTES_TOKEN is not set: the report is in the job's artifacts (docs/setup.md)")
        return 0
    api = Api(token)
    body = open(report, encoding="utf-8").read()
    path = f"merge_requests/{os.environ['CI_MERGE_REQUEST_IID']}/notes"
    try:
        _, me = api.call("GET", f"{os.environ['CI_API_V4_URL']}/user")
        ours = [n["id"] for n in api.pages(path, sort="asc")
                if n.get("author", {}).get("id") == me["id"] and n.get("body", "").startswith(MARKER)]
        if ours:
            api.call("PUT", f"{api.base}/{path}/{ours[0]}", {"body": body})
        else:
            api.call("POST", f"{api.base}/{path}", {"body": body})
    except ApiError as exc:
        if exc.status in (401, 403):
            print(f"notice: cannot write the merge request note ({exc}): the report is in the job's artifacts")
            return 0
        raise
    return 0


def merge_request(branch: str, title: str, body_file: str) -> int:
    api = Api(os.environ["MODELSHELF_RELEASE_TOKEN"])
    body = open(body_file, encoding="utf-8").read()
    target = os.environ["CI_DEFAULT_BRANCH"]
    open_mrs = api.pages("merge_requests", state="opened", source_branch=branch, target_branch=target)
    if open_mrs:
        iid = open_mrs[0]["iid"]
        api.call("PUT", f"{api.base}/merge_requests/{iid}", {"description": body})
        print(f"updated merge request !{iid}")
    else:
        _, made = api.call("POST", f"{api.base}/merge_requests",
                           {"source_branch": branch, "target_branch": target, "title": title, "description": body})
        print(f"opened merge request !{made['iid']} from {branch}")
    return 0


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["note"] and len(argv) == 2:
            return note(argv[1])
        if argv[:1] == ["merge-request"] and len(argv) == 4:
            return merge_request(*argv[1:])
    except ApiError as exc:
        print(f"error: the GitLab API said {exc}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
