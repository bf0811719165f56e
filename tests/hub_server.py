"""A loopback stand-in for the Hugging Face Hub's write API, for tests without the internet.

It implements the endpoints the real ``huggingface_hub`` client (2.x) calls to create a repo, a
branch and a commit, and to read back what it needs on the way:

=========================================================  ===========================================
``POST /api/repos/create``                                  create (409 if it exists, as the Hub does)
``POST /api/{type}s/{repo}/branch/{branch}``                create a branch from ``main`` (409 if any)
``GET  /api/{type}s/{repo}[/revision/{rev}]``               repo info: ``id``, ``sha``, ``private``, files
``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``            file listing (``list_repo_files``)
``POST /api/validate-yaml``                                 README metadata check (YAML must parse)
``POST /api/{type}s/{repo}/preupload/{rev}``                every file is ``"regular"`` (no LFS/Xet), with
                                                            the remote git oid so unchanged files are skipped
``POST /api/{type}s/{repo}/commit/{rev}``                   NDJSON commit, base64 contents, deletions
=========================================================  ===========================================

Anything else is answered 404 and recorded in :attr:`HubServer.unknown`, so a test can assert that
the client did nothing the server does not understand.

Every request must carry ``Authorization: Bearer <HubServer.token>``; anything else gets the 401 the
Hub sends for a rejected token. ``fail_commits = N`` answers the next N commit calls with
``fail_status`` (503) to exercise retries. The server keeps every revision's files in memory
(:meth:`HubServer.files`) and a log of commits (:attr:`HubServer.commits`).

Usage (the ``hub`` fixture in ``test_hub.py`` does this and also points the client at it)::

    with HubServer() as server:
        print(server.url)  # http://127.0.0.1:<free port>

The server thread is a daemon, every connection has a socket timeout, and a timer shuts the server
down after ``lifetime`` seconds even if a test forgets to: it cannot outlive or hang the test run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from loopback import LoopbackServer

TOKEN = "hf_test_token_1234567890abcdefghijklmnop"

_REPO_API = re.compile(
    r"^/api/(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<action>revision|tree|preupload|commit|branch)/(?P<rest>.*))?$"
)


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's ``oid``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    """One repository: its visibility, branches (name → commit sha) and commits (sha → files)."""

    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)


class HubServer(LoopbackServer):
    """The loopback Hub: ``start()``/``stop()`` or use as a context manager."""

    handler_attribute = "hub"

    def __init__(self, token: str = TOKEN, lifetime: float = 120.0):
        super().__init__(lifetime)
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.commits: list[dict[str, Any]] = []  # one entry per commit that landed
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.unknown: list[tuple[str, str]] = []
        self.fail_commits = 0
        self.fail_status = 503
        self._lock = threading.Lock()
        self._commit_counter = 0

    @property
    def url(self) -> str:
        return self.address

    # -- what tests read ---------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> dict[str, bytes]:
        """The files at the head of ``revision``: path → bytes."""
        repo = self.repo(repo_id, repo_type)
        return dict(repo.snapshots[repo.branches[revision]])

    # -- the Hub's behaviour -------------------------------------------------------------------------
    def _new_sha(self, seed: str) -> str:
        self._commit_counter += 1
        return hashlib.sha1(f"{seed}:{self._commit_counter}".encode()).hexdigest()

    def create_repo(self, body: dict[str, Any]) -> tuple[int, Any]:
        name, org = body["name"], body.get("organization") or "tester"
        repo_type = body.get("type") or "model"
        key = (repo_type, f"{org}/{name}")
        url = self._repo_url(*key)
        if key in self.repos:
            return 409, {"error": "You already created this repo", "url": url}
        repo = Repo(repo_type, key[1], private=body.get("visibility") == "private")
        sha = self._new_sha(key[1])
        # A new Hub repo starts with one commit holding a .gitattributes file.
        repo.snapshots[sha] = {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}
        repo.branches["main"] = sha
        self.repos[key] = repo
        return 200, {"url": url, "name": key[1]}

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.url}/{prefix}{repo_id}"

    def commit(self, repo: Repo, revision: str, ndjson: bytes, params: dict[str, list[str]]) -> tuple[int, Any]:
        if self.fail_commits > 0:
            self.fail_commits -= 1
            return self.fail_status, {"error": "Service temporarily unavailable (injected fault)"}
        if revision not in repo.branches:
            return 404, {"error": f"Revision {revision} not found"}
        lines = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = dict(repo.snapshots[repo.branches[revision]])
        added, deleted = [], []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return 400, {"error": "only base64 file contents are supported by this test server"}
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return 404, {"error": "A file with this name doesn't exist"}
                deleted.append(value["path"])
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                gone = [path for path in files if path.startswith(prefix)]
                for path in gone:
                    del files[path]
                deleted.extend(gone)
            elif key != "header":  # lfsFile/copies: never requested, since preupload says "regular"
                return 400, {"error": f"unsupported commit operation {key!r}"}
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.branches[revision]:
            return 412, {"error": "parent commit is not the head of the branch"}
        sha = self._new_sha(repo.repo_id)
        repo.snapshots[sha] = files
        repo.branches[revision] = sha
        self.commits.append(
            {
                "repo_type": repo.repo_type,
                "repo_id": repo.repo_id,
                "revision": revision,
                "summary": header["summary"],
                "description": header.get("description", ""),
                "added": added,
                "deleted": deleted,
                "create_pr": "create_pr" in params,
                "sha": sha,
            }
        )
        url = f"{self._repo_url(repo.repo_type, repo.repo_id)}/commit/{sha}"
        return 200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None}


def _tree(files: dict[str, bytes], path: str) -> list[dict[str, Any]]:
    """Every file under ``path`` and the folders that hold them (the Hub's recursive listing)."""
    prefix = path.strip("/") + "/" if path else ""
    entries: dict[str, dict[str, Any]] = {}
    for name, content in files.items():
        if not name.startswith(prefix):
            continue
        parts = name.split("/")
        for depth in range(prefix.count("/") + 1, len(parts)):
            folder = "/".join(parts[:depth])
            entries[folder] = {"type": "directory", "path": folder, "oid": git_blob_oid(folder.encode())}
        entries[name] = {"type": "file", "path": name, "size": len(content), "oid": git_blob_oid(content)}
    return [entries[key] for key in sorted(entries)]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a Content-Length
    timeout = 10  # seconds of socket inactivity before a connection is dropped

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines would add noise to the captured output the tests scan."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, params = unquote(url.path), parse_qs(url.query)
        body = self._body() if method == "POST" else b""
        hub = self.hub
        with hub._lock:
            hub.requests.append((method, path))
            if self.headers.get("Authorization") != f"Bearer {hub.token}":
                # What the Hub answers for a token it does not accept.
                message = "Invalid credentials in Authorization header"
                return self._reply(401, {"error": message}, {"X-Error-Message": message})
            status, answer = self._route(method, path, url.path, params, body)
            self._reply(status, answer, {"X-Error-Code": "RepoNotFound"} if answer == _NO_REPO else None)

    def _route(self, method: str, path: str, raw_path: str, params: dict, body: bytes) -> tuple[int, Any]:
        hub = self.hub
        if (method, path) == ("POST", "/api/repos/create"):
            return hub.create_repo(json.loads(body))
        if (method, path) == ("POST", "/api/validate-yaml"):
            content = json.loads(body)["content"]
            match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---", content)
            try:
                yaml.safe_load(match.group(1) if match else "")
            except yaml.YAMLError as err:
                return 400, {"errors": [{"message": str(err)}]}
            return 200, {"errors": [], "warnings": []}
        match = _REPO_API.match(path)
        if match is None:
            return self._unknown(method, path)
        repo = hub.repos.get((match["type"], match["repo"]))
        if repo is None:
            return 404, _NO_REPO
        action = match["action"]
        # Revisions arrive URL-quoted ("refs%2Fpr%2F1"): split the raw path before unquoting.
        raw_rest = raw_path.split(f"/{action}/", 1)[1] if action else ""
        revision, _, sub_path = raw_rest.partition("/")
        revision, sub_path = unquote(revision), unquote(sub_path)
        if action == "branch" and method == "POST":
            if revision in repo.branches:
                return 409, {"error": "Reference already exists"}
            start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
            repo.branches[revision] = repo.branches[start]
            return 200, {}
        if action not in (None, "branch") and revision not in repo.branches:
            return 404, {"error": f"Invalid rev id: {revision}"}
        if method == "GET" and action in (None, "revision"):
            head = repo.branches[revision or "main"]
            files = repo.snapshots[head]
            return 200, {
                "id": repo.repo_id,
                "sha": head,
                "private": repo.private,
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
        if method == "GET" and action == "tree":
            files = repo.snapshots[repo.branches[revision]]
            if params.get("recursive", ["False"])[0].lower() != "true":
                return self._unknown(method, path)  # only the recursive listing is implemented
            return 200, _tree(files, sub_path)
        if method == "POST" and action == "preupload":
            files = repo.snapshots[repo.branches[revision]]
            return 200, {
                "files": [
                    {
                        "path": item["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_oid(files[item["path"]]) if item["path"] in files else None,
                    }
                    for item in json.loads(body)["files"]
                ]
            }
        if method == "POST" and action == "commit":
            return hub.commit(repo, revision, body, params)
        return self._unknown(method, path)

    def _unknown(self, method: str, path: str) -> tuple[int, Any]:
        self.hub.unknown.append((method, path))
        return 404, {"error": f"test hub server: {method} {path} is not implemented"}


_NO_REPO = {"error": "Repository not found"}


HubServer.handler = _Handler
