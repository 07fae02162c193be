"""A local Hugging Face Hub for the tests: the real `huggingface_hub` and `transformers` clients talk to it over HTTP.

Clients find it through `HF_ENDPOINT`, which `huggingface_hub` reads once, at import time: run them in a subprocess
with `env=hub_env(server, home)`. State lives in memory. Every file is stored inline: the preupload endpoint always
answers "regular", so no LFS or Xet transfer ever happens. Branches can be created and committed to, and every commit
stays readable by its sha (transformers resolves files by commit hash once it knows it).
"""

import base64
import hashlib
import json
import os
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

# What the Hub accepts as "namespace/name": ASCII word characters, '.' and '-', no "--" or "..", no ".git" ending.
REPO_ID = re.compile(r"(?!.*(?:--|\.\.))[A-Za-z0-9][\w.-]*/[\w.-]+(?<!\.git)", re.ASCII)
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# Left out of a client's environment: offline switches would stop it, the caller's token and cache would leak in.
CALLER_SETTINGS = {
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
}

_TYPE = r"(?P<repo_type>model|dataset|space)"
_ID = r"(?P<repo_id>[^/]+/[^/]+)"
# (methods, raw URL path, HubServer endpoint). The groups are URL-decoded: the client quotes revisions and tree paths.
ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/{_TYPE}s/{_ID}/preupload/(?P<revision>[^/]+)", "preupload"),
    ("POST", rf"/api/{_TYPE}s/{_ID}/commit/(?P<revision>[^/]+)", "commit"),
    ("POST", rf"/api/{_TYPE}s/{_ID}/branch/(?P<branch>[^/]+)", "create_branch"),
    ("GET", rf"/api/{_TYPE}s/{_ID}(?:/revision/(?P<revision>[^/]+))?", "repo_info"),
    ("GET", rf"/api/{_TYPE}s/{_ID}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", "tree"),
    ("GET|HEAD", rf"/(?:(?P<repo_type>dataset|space)s/)?{_ID}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
]


def git_blob_id(content: bytes) -> str:
    """The git blob sha1: what the Hub reports as a regular file's oid and ETag, and what the client compares to."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An error answer. The client picks its exception class from `X-Error-Code` (RepoNotFound, EntryNotFound...)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **fields):
        super().__init__(message)
        self.status, self.answer = status, {"error": message, **fields}
        self.headers = {**(headers or {}), "X-Error-Message": message}
        if code:
            self.headers["X-Error-Code"] = code


class HubServer:
    """A local Hub-protocol server on 127.0.0.1 on a free port; state lives in memory (per instance)."""

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = tokens if tokens is not None else {"hf_test_token": "user"}  # token -> user name
        self._repos: dict[tuple[str, str], dict] = {}  # (repo_type, repo_id) -> {"private", "commits", "branches"}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def repo(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> dict | None:
        """The repo as the tests see it: its visibility, the files at the head of `branch`, and all its commits."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return None
            commits = [{"oid": c["oid"], "message": c["message"]} for c in repo["commits"]]
            files = dict(self._commit_at(repo, branch)["files"])
            return {
                "private": repo["private"],
                "files": files,
                "commits": commits,
                "branches": sorted(repo["branches"]),
            }

    # Access rules: reads see public repos and the caller's own private ones (others get 404, as on the Hub);
    # writes need a valid token of the namespace's user. A wrong token reads like no token at all.

    def _readable(self, request, repo_type: str, repo_id: str) -> dict:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo["private"] and request.user != repo_id.split("/")[0]):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _require_user(self, request) -> str:
        if request.user is None:
            # The Hub's wording: the client reads a 401 with this message as a bad token, not as a hidden repo.
            message = "Invalid credentials in Authorization header" if request.token else "You must be authenticated"
            raise HubError(401, message)
        return request.user

    def _writable(self, request, repo_type: str, repo_id: str, revision: str) -> dict:
        if self._require_user(request) != repo_id.split("/")[0]:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        repo = self._readable(request, repo_type, repo_id)
        if revision not in repo["branches"]:
            raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        return repo

    def _commit_at(self, repo: dict, revision: str | None) -> dict:
        """The head of a branch (default "main"), or the commit with that sha."""
        revision = repo["branches"].get(revision or "main", revision)
        for commit in repo["commits"]:
            if commit["oid"] == revision:
                return commit
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # Endpoints: each takes the request (user, token, query, body) and the decoded URL groups, and returns its
    # JSON answer; `resolve` returns a file's bytes and headers instead.

    def whoami(self, request):
        name = self._require_user(request)
        auth = {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}}
        return {"type": "user", "id": name, "name": name, "fullname": name, "orgs": [], "auth": auth}

    def agent_harnesses(self, request):
        return {"standardEnvVars": [], "harnesses": {}}  # no agent detection

    def validate_yaml(self, request):
        return {"errors": [], "warnings": []}  # every README.md metadata block is fine here

    def create_repo(self, request):
        user = self._require_user(request)
        payload = json.loads(request.body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        if not REPO_ID.fullmatch(repo_id) or repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo name or type: {repo_type} {repo_id}")
        if repo_id.split("/")[0] != user:
            raise HubError(403, f"You don't have the rights to create a repo under {repo_id.split('/')[0]}")
        url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"
        with self._lock:
            # `create_repo(exist_ok=True)` relies on this 409, and reads the repo's url from its body.
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", url=url)
            initial = {"oid": secrets.token_hex(20), "message": "initial commit", "files": {}}
            private = payload.get("visibility") == "private"
            self._repos[repo_type, repo_id] = {
                "private": private,
                "commits": [initial],
                "branches": {"main": initial["oid"]},
            }
        return {"url": url, "name": repo_id}

    def create_branch(self, request, repo_type, repo_id, branch):
        with self._lock:
            repo = self._writable(request, repo_type, repo_id, "main")
            if branch in repo["branches"]:  # `create_branch(exist_ok=True)` relies on this 409
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = json.loads(request.body or b"{}").get("startingPoint")
            repo["branches"][branch] = self._commit_at(repo, start)["oid"]
        return {}

    def preupload(self, request, repo_type, repo_id, revision):
        with self._lock:
            repo = self._writable(request, repo_type, repo_id, revision)
            files = self._commit_at(repo, revision)["files"]
        modes = []
        for file in json.loads(request.body)["files"]:
            oid = git_blob_id(files[file["path"]]) if file["path"] in files else None  # lets unchanged files skip
            modes.append({"path": file["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return {"files": modes}

    def commit(self, request, repo_type, repo_id, revision):
        with self._lock:
            repo = self._writable(request, repo_type, repo_id, revision)
            head = self._commit_at(repo, revision)
            files = dict(head["files"])
            for line in request.body.splitlines():
                operation = json.loads(line)
                key, value = operation["key"], operation["value"]
                if key == "header":
                    message = value["summary"]
                    if value.get("parentCommit", head["oid"]) != head["oid"]:
                        raise HubError(412, "A commit has happened since the parent commit")
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {path: data for path, data in files.items() if not path.startswith(folder)}
                else:  # "lfsFile" would need an LFS store, and preupload never asks for one
                    raise HubError(400, f"Unsupported commit operation: {key}")
            oid = secrets.token_hex(20)
            repo["commits"].append({"oid": oid, "message": message, "files": files})
            repo["branches"][revision] = oid
        commit_url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{oid}"
        return {"success": True, "commitOid": oid, "commitUrl": commit_url, "hookOutput": ""}

    def repo_info(self, request, repo_type, repo_id, revision=None):
        with self._lock:
            repo = self._readable(request, repo_type, repo_id)
            commit = self._commit_at(repo, revision)
        files = sorted(commit["files"].items())
        siblings = [{"rfilename": path, "size": len(data), "blobId": git_blob_id(data)} for path, data in files]
        info = {"id": repo_id, "author": repo_id.split("/")[0], "sha": commit["oid"], "private": repo["private"]}
        return {**info, "gated": False, "disabled": False, "tags": [], "siblings": siblings}

    def tree(self, request, repo_type, repo_id, revision, path=None):
        with self._lock:
            files = self._commit_at(self._readable(request, repo_type, repo_id), revision)["files"]
        recursive = request.query.get("recursive") == ["true"]
        prefix = f"{path.strip('/')}/" if path else ""
        entries = {}
        for file_path, data in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            # Folders on the way to the file: all of them when recursive, else only the first level.
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:depth])
                folder_id = hashlib.sha1(folder.encode()).hexdigest()
                entries[folder] = {"type": "directory", "path": folder, "size": 0, "oid": folder_id}
            if recursive or len(parts) == 1:
                entries[file_path] = {"type": "file", "path": file_path, "size": len(data), "oid": git_blob_id(data)}
        if path and not entries:
            raise HubError(404, f"{path} does not exist at {revision}", "EntryNotFound")
        return list(entries.values())

    def resolve(self, request, repo_id, revision, path, repo_type="model"):
        with self._lock:
            commit = self._commit_at(self._readable(request, repo_type, repo_id), revision)
        # The 404 carries the commit too: the client caches the file's absence under it.
        headers = {"X-Repo-Commit": commit["oid"]}
        if path not in commit["files"]:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
        data = commit["files"][path]
        return data, {**headers, "ETag": f'"{git_blob_id(data)}"'}


class _Handler(BaseHTTPRequestHandler):
    """HTTP plumbing only: routes each request to a `HubServer` endpoint, then writes its answer or its `HubError`."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_GET

    def log_message(self, format, *args):
        pass  # keep the test output quiet

    def _dispatch(self):
        # Always read the body first: answering (even 401) with it unread breaks the kept-alive connection.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        hub = self.server.hub
        token = self.headers.get("Authorization", "").removeprefix("Bearer ") or None
        request = SimpleNamespace(user=hub.tokens.get(token), token=token, query=parse_qs(url.query), body=body)
        try:
            status, answer, headers = 200, self._route(hub, request, url.path), {}
        except HubError as error:
            status, answer, headers = error.status, error.answer, error.headers
        if isinstance(answer, tuple):  # a file, from `resolve`
            data, headers = answer
            headers["Content-Type"] = "application/octet-stream"
        else:
            data = json.dumps(answer).encode()
            headers["Content-Type"] = "application/json"
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self, hub: HubServer, request, path: str):
        for methods, pattern, name in ROUTES:
            match = re.fullmatch(pattern, path)
            if match and re.fullmatch(methods, self.command):
                groups = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                return getattr(hub, name)(request, **groups)
        raise HubError(404, f"The test Hub has no endpoint {self.command} {path}")


@pytest.fixture
def hub_server():
    with HubServer() as server:
        yield server


def hub_env(server: HubServer, home: Path, token: str | None = "hf_test_token") -> dict[str, str]:
    """The environment for a client subprocess: talks to `server`, caches under `home`, authenticates with `token`."""
    env = {name: value for name, value in os.environ.items() if name not in CALLER_SETTINGS}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    env["NO_PROXY"] = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1"]))  # a proxy could not reach it
    if token is not None:
        env["HF_TOKEN"] = token
    return env
