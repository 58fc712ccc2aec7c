"""A loopback fake of the Hugging Face Hub HTTP API, enough for huggingface_hub 2.4's
``create_repo``, ``create_branch``, ``upload_folder`` and ``snapshot_download`` / ``hf_hub_download``.

Endpoints (model repos, in memory, thread-safe):

* ``POST /api/repos/create``                          create a repo (409 + url if it exists)
* ``POST /api/validate-yaml``                         README front matter check (always valid)
* ``GET  /api/whoami-v2``                             the token's user
* ``POST /api/models/{repo}/branch/{branch}``         create a branch (from ``startingPoint`` or main)
* ``POST /api/models/{repo}/preupload/{rev}``         upload mode per file: always ``regular`` (so no
  LFS / Xet transfer is needed: contents travel base64-encoded inside the commit)
* ``POST /api/models/{repo}/commit/{rev}``            ndjson commit (header, file, deletedFile)
* ``GET  /api/models/{repo}[/revision/{rev}]``        repo info (sha, siblings)
* ``GET  /api/models/{repo}/tree/{rev}[/{path}]``     file listing (git blob oids and sizes)
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``           file metadata (X-Repo-Commit, ETag) and content

Errors carry the Hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) so the
client raises its usual exceptions. Writes need ``Authorization: Bearer <token>``.

Run it alone with ``python tests/hub_server.py`` (prints the endpoint; Ctrl-C stops it).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKEN = "hf_loopback_test_token"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        matches = [sha for sha in self.commits if len(revision) >= 7 and sha.startswith(revision)]
        return matches[0] if len(matches) == 1 else None


class FakeHub:
    """The server and its state. ``with FakeHub() as hub: hub.endpoint`` -> 'http://127.0.0.1:PORT'."""

    def __init__(self, token: str = DEFAULT_TOKEN, user: str = "tester", verbose: bool = False):
        self.token, self.user, self.verbose = token, user, verbose
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.lock = threading.Lock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ state
    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], summary: str) -> str:
        seed = f"{repo.repo_id}|{parent}|{summary}|{next(self._counter)}|" + "|".join(
            f"{p}:{git_blob_oid(c)}" for p, c in sorted(files.items()))
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = dict(files)
        return sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    # ------------------------------------------------------------------ plumbing
    def log_message(self, fmt, *args):  # quiet unless asked
        if self.fake.verbose:
            super().log_message(fmt, *args)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None,
              head: bool = False) -> None:
        if body is None:
            body = b"" if payload is None else json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers=headers, head=head)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.fake.token}":
            return True
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, f"Repository not found: {repo_id}", "RepoNotFound", head=head)
        return repo

    def _revision(self, repo: Repo, revision: str, head: bool = False) -> str | None:
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        return sha

    # ------------------------------------------------------------------ routing
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        segments = [unquote(s) for s in url.path.strip("/").split("/")]
        with self.fake.lock:
            self.fake.requests.append((method, url.path))
        body = self._body() if method == "POST" else b""
        try:
            with self.fake.lock:
                self._route(method, segments, query, body)
        except Exception as error:  # a bug in the fake: answer 500 rather than hang the client
            self._error(500, f"fake hub error: {type(error).__name__}: {error}")

    def _route(self, method: str, seg: list[str], query: dict, body: bytes) -> None:
        head = method == "HEAD"
        if method == "POST" and seg == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body or b"{}"))
        if method == "POST" and seg == ["api", "validate-yaml"]:
            return self._send(200, {"errors": [], "warnings": []})
        if method == "GET" and seg == ["api", "whoami-v2"]:
            if self._authorized():
                self._send(200, {"type": "user", "name": self.fake.user, "orgs": [],
                                 "auth": {"accessToken": {"role": "write"}}})
            return
        if len(seg) >= 4 and seg[:2] == ["api", "models"]:
            repo_id, rest = f"{seg[2]}/{seg[3]}", seg[4:]
            if method == "GET" and not rest:
                return self._repo_info(repo_id, "main")
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._repo_info(repo_id, rest[1])
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_id, rest[1], json.loads(body or b"{}"))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo_id, rest[1], body)
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                return self._create_branch(repo_id, rest[1], json.loads(body or b"{}"))
        if method in ("GET", "HEAD") and len(seg) >= 5 and seg[2] == "resolve":
            return self._resolve(f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), head)
        self._error(404, f"fake hub: no route for {method} /{'/'.join(seg)}", head=head)

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self, payload: dict) -> None:
        if not self._authorized():
            return
        if payload.get("type", "model") not in (None, "model"):
            return self._error(400, "the fake hub only hosts model repos")
        name, organization = payload.get("name"), payload.get("organization") or self.fake.user
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            return self._error(400, f"invalid repo name {name!r}")
        repo_id = f"{organization}/{name}"
        url = f"{self.fake.endpoint}/{repo_id}"
        if repo_id in self.fake.repos:
            return self._send(409, {"error": "You already created this model repo", "url": url})
        repo = Repo(repo_id, private=payload.get("visibility") == "private")
        repo.branches["main"] = self.fake.new_commit(repo, None, {".gitattributes": GITATTRIBUTES}, "initial commit")
        self.fake.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _create_branch(self, repo_id: str, branch: str, payload: dict) -> None:
        if not self._authorized() or (repo := self._repo(repo_id)) is None:
            return
        if branch in repo.branches:
            return self._error(409, f"Reference already exists: refs/heads/{branch}")
        start = self._revision(repo, payload.get("startingPoint") or "main")
        if start is not None:
            repo.branches[branch] = start
            self._send(200, {})

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
        if not self._authorized() or (repo := self._repo(repo_id)) is None:
            return
        sha = repo.resolve(revision)
        current = repo.commits.get(sha, {}) if sha else {}
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_oid(current[f["path"]]) if f["path"] in current else None}
                 for f in payload.get("files", [])]
        self._send(200, {"files": files, "commitOid": sha})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        if not self._authorized() or (repo := self._repo(repo_id)) is None:
            return
        if revision not in repo.branches:
            return self._error(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        parent = repo.branches[revision]
        files = dict(repo.commits[parent])
        summary = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                if value.get("parentCommit") and not parent.startswith(value["parentCommit"]):
                    return self._error(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/")
                doomed = [p for p in files if p == prefix or p.startswith(prefix + "/")]
                if not doomed:
                    return self._error(404, f"A file with this name doesn't exist: {prefix}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:  # lfsFile: never requested, preupload answers "regular" for every file
                return self._error(400, f"the fake hub does not store {key!r} operations")
        sha = self.fake.new_commit(repo, parent, files, summary)
        repo.branches[revision] = sha
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.fake.endpoint}/{repo_id}/commit/{sha}",
                         "hookOutput": "", "pullRequestUrl": None})

    def _repo_info(self, repo_id: str, revision: str) -> None:
        if (repo := self._repo(repo_id)) is None or (sha := self._revision(repo, revision)) is None:
            return
        files = repo.commits[sha]
        self._send(200, {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
                         "author": repo_id.split("/")[0], "sha": sha, "private": repo.private, "disabled": False,
                         "gated": False, "tags": [], "siblings": [{"rfilename": p} for p in sorted(files)]})

    def _tree(self, repo_id: str, revision: str, path: str, query: dict) -> None:
        if (repo := self._repo(repo_id)) is None or (sha := self._revision(repo, revision)) is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries, folders = [], set()
        for p, content in sorted(repo.commits[sha].items()):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            if "/" in rel and not recursive:
                folders.add(prefix + rel.split("/")[0])
                continue
            if recursive:
                parts = rel.split("/")[:-1]
                folders.update(prefix + "/".join(parts[:i + 1]) for i in range(len(parts)))
            entries.append({"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": p})
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in sorted(folders)]
        if prefix and not entries:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound")
        self._send(200, entries)

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        if (repo := self._repo(repo_id, head)) is None or (sha := self._revision(repo, revision, head)) is None:
            return
        content = repo.commits[sha].get(path)
        if content is None:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound", head=head)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_oid(content)}"',
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        body, status = content, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "") or "")
        if match and not head:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(content) - 1
            body, status = content[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        if head:  # HEAD: the size of the full content, no body
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            return
        self._send(status, headers=headers, body=body)


if __name__ == "__main__":  # pragma: no cover - manual use
    import time

    with FakeHub(verbose=True) as hub:
        print(f"fake Hub at {hub.endpoint} (token {hub.token}); HF_ENDPOINT={hub.endpoint}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
