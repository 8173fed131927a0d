"""A small Hugging Face Hub-compatible HTTP server for tests, listening on 127.0.0.1 only.

Hand-written because no installable server accepts uploads (olah is a read-only mirror, KohakuHub is not on a
registry). It speaks just enough of the Hub API for huggingface_hub's create_repo, create_commit / upload_folder
/ push_to_hub, model_info, list_repo_tree, hf_hub_download and snapshot_download, and for transformers'
from_pretrained on a repo id:

    POST /api/repos/create                          {"url": ...}; 409 (with the url) if it exists
    POST /api/validate-yaml                         always valid
    GET  /api/models/{repo}[/revision/{rev}]        sha, private, siblings
    GET  /api/models/{repo}/tree/{rev}[/{path}]     files (and folders unless ?recursive=true)
    GET  /api/models/{repo}/commits/{rev}           the history, newest first (id, title, date)
    POST /api/models/{repo}/preupload/{rev}         "regular" for every file (so no LFS / xet), with known oids
    POST /api/models/{repo}/commit/{rev}            NDJSON: header, file (base64), deletedFile, deletedFolder
    HEAD/GET /{repo}/resolve/{rev}/{path}           X-Repo-Commit, ETag (git blob sha1), Content-Length

Repos are "owner/name" model repos, or Space repos: the same endpoints under /api/spaces/ and /spaces/ (for
`tinygpt push --space`); a revision is "main" or any commit sha of the repo.

Behaviour that tests rely on:
- One token. Creating repos and committing need it; a request carrying any OTHER token gets 401 "Invalid
  credentials in Authorization header" (as the Hub answers a bad token). Private repos are invisible (404
  RepoNotFound) without the token.
- A missing repo is 404 with X-Error-Code RepoNotFound, a missing revision RevisionNotFound, a missing file
  EntryNotFound.
- Simulated outage: every request about a repo whose name contains "server-error" gets a 500.

Storage, under the root folder: objects/<git blob sha1> holds file contents; repos/<owner>/<name>.json holds
the repo's visibility, its commits (parent, title, date, path -> object id) and the main branch. Writes are
atomic.

Usage:
    base_url, stop = start_fake_hub(root_dir, token)           # in pytest, on a free port
    python tests/fake_hub.py --port 8123 --token T --root DIR    # as a process (e.g. for a browser test)
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

SERVER_ERROR_MARKER = "server-error"
API_REPO = r"/api/(?P<kind>models|spaces)/(?P<owner>[^/]+)/(?P<name>[^/]+)"
REPO_ROUTES = [  # (method set, pattern over the URL path, handler name)
    ({"GET"}, API_REPO + r"(?:/revision/(?P<rev>[^/]+))?", "model_info"),
    ({"GET"}, API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ({"GET"}, API_REPO + r"/commits/(?P<rev>[^/]+)", "commits"),
    ({"POST"}, API_REPO + r"/preupload/(?P<rev>[^/]+)", "preupload"),
    ({"POST"}, API_REPO + r"/commit/(?P<rev>[^/]+)", "commit"),
    (
        {"GET", "HEAD"},
        r"/(?:(?P<kind>spaces)/)?(?P<owner>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
        "resolve",
    ),
]

TOKEN = "hf_tinygptTestToken_q8Zr2m3Vb9"  # the token start_fake_hub is given in the tests: its one valid token
WRONG_TOKEN = "hf_tinygptWrongToken_x5Kp7w7Qs1"


def closed_port_url() -> str:
    """An endpoint on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def git_blob_sha1(content: bytes) -> str:
    """The id git (and the Hub) gives a file: what huggingface_hub compares to skip unchanged uploads."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code, self.extra = status, message, error_code, extra or {}


class RepoStore:
    """Repos on disk. One lock around every read-modify-write keeps concurrent commits consistent."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def _meta_path(self, owner: str, name: str, kind: str) -> Path:
        return self.root / ("repos" if kind == "models" else kind) / owner / f"{name}.json"

    def load(self, owner: str, name: str, kind: str = "models") -> dict | None:
        path = self._meta_path(owner, name, kind)
        return json.loads(path.read_text()) if path.is_file() else None

    def _save(self, owner: str, name: str, meta: dict, kind: str) -> None:
        path = self._meta_path(owner, name, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(meta, indent=1).encode())

    def create(self, owner: str, name: str, private: bool, kind: str = "models") -> bool:
        """False if the repo already exists. A new repo starts with one empty commit, as on the Hub."""
        with self.lock:
            if self.load(owner, name, kind) is not None:
                return False
            sha, commit = _new_commit(None, {}, "initial commit")
            self._save(owner, name, {"private": private, "main": sha, "commits": {sha: commit}}, kind)
            return True

    def commit(
        self, owner: str, name: str, rev: str, added: dict[str, bytes], deleted: list[str], summary: str, kind: str
    ) -> str:
        with self.lock:
            meta = self.load(owner, name, kind)
            parent = resolve_revision(meta, rev)
            files = {
                path: oid for path, oid in meta["commits"][parent]["files"].items() if not _is_deleted(path, deleted)
            }
            for path, content in added.items():
                oid = git_blob_sha1(content)
                object_path = self.root / "objects" / oid
                if not object_path.exists():
                    _write_atomic(object_path, content)
                files[path] = oid
            sha, meta["commits"][sha] = _new_commit(parent, files, summary)
            meta["main"] = sha
            self._save(owner, name, meta, kind)
            return sha

    def read_object(self, oid: str) -> bytes:
        return (self.root / "objects" / oid).read_bytes()


def resolve_revision(meta: dict, rev: str) -> str:
    if rev == "main":
        return meta["main"]
    if rev in meta["commits"]:
        return rev
    raise ApiError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


def _is_deleted(path: str, deleted: list[str]) -> bool:
    return any(path == gone or path.startswith(gone.rstrip("/") + "/") for gone in deleted)


def _new_commit(parent: str | None, files: dict[str, str], title: str) -> tuple[str, dict]:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the Hub's format
    sha = hashlib.sha1(
        json.dumps([parent, sorted(files.items()), title, date, os.urandom(8).hex()]).encode()
    ).hexdigest()
    return sha, {"parent": parent, "title": title, "date": date, "files": files}


def _write_atomic(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.replace(tmp, path)


class FakeHubHandler(BaseHTTPRequestHandler):
    """One request: authenticate, route, answer JSON (or file bytes); ApiError becomes the Hub's error reply."""

    store: RepoStore  # set on the per-server subclass made by make_server
    token: str
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def log_message(self, format, *args):  # quiet: the test output is for test failures
        pass

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self.authenticated = self._check_token()
            if url.path == "/api/repos/create" and self.command == "POST":
                return self.create_repo()
            if url.path == "/api/validate-yaml" and self.command == "POST":
                return self._send_json({"errors": [], "warnings": []})
            for methods, pattern, handler in REPO_ROUTES:
                match = re.fullmatch(pattern, url.path)
                if match and self.command in methods:
                    params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                    meta = self._visible_repo(params.pop("owner"), params.pop("name"), params.pop("kind", "models"))
                    return getattr(self, handler)(meta, **params)
            raise ApiError(404, f"no such endpoint: {self.command} {url.path}")
        except ApiError as error:
            headers = {"X-Error-Code": error.error_code} if error.error_code else {}
            if error.status == 401 and self.headers.get("Authorization"):
                headers["X-Error-Message"] = "Invalid credentials in Authorization header"
            self._send_json({"error": error.message, **error.extra}, status=error.status, headers=headers)

    def _check_token(self) -> bool:
        """True with the right token, False with none; any other token is refused outright, as on the Hub."""
        header = self.headers.get("Authorization")
        if header is None:
            return False
        if header != f"Bearer {self.token}":
            raise ApiError(401, "Invalid credentials in Authorization header")
        return True

    def _require_token(self):
        if not self.authenticated:
            raise ApiError(401, "You must be authenticated to write to the Hub: pass a token.")

    def _visible_repo(self, owner: str, name: str, kind: str = "models") -> dict:
        if SERVER_ERROR_MARKER in name:
            raise ApiError(500, "Internal Error - simulated by the fake hub (repo name contains 'server-error')")
        meta = self.store.load(owner, name, kind)
        if meta is None or (meta["private"] and not self.authenticated):
            raise ApiError(404, "Repository not found", "RepoNotFound")
        meta["id"], meta["kind"] = f"{owner}/{name}", kind
        return meta

    def _send_json(self, payload, status: int = 200, headers: dict | None = None):
        self._send(json.dumps(payload).encode(), status, {"Content-Type": "application/json", **(headers or {})})

    def _send(self, content: bytes, status: int = 200, headers: dict | None = None):
        self.send_response(status, HTTPStatus(status).phrase)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    def _repo_url(self, repo_id: str, kind: str = "models") -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{'spaces/' if kind == 'spaces' else ''}{repo_id}"

    # -- endpoints ---------------------------------------------------------------------------------------------

    def create_repo(self):
        self._require_token()
        request = json.loads(self.body or b"{}")
        owner, name = request.get("organization"), request.get("name")
        kind = {"model": "models", "space": "spaces"}.get(request.get("type", "model"))
        if kind is None or not owner or not name:
            raise ApiError(400, "this fake hub only hosts model and Space repos named owner/name")
        if kind == "spaces" and not request.get("sdk"):
            raise ApiError(400, "a Space needs an sdk (gradio, docker or static)")
        if SERVER_ERROR_MARKER in name:
            raise ApiError(500, "Internal Error - simulated by the fake hub (repo name contains 'server-error')")
        private = request.get("visibility") == "private" or bool(request.get("private"))
        url = self._repo_url(f"{owner}/{name}", kind)
        if not self.store.create(owner, name, private, kind):
            raise ApiError(409, "You already created this repo", extra={"url": url})
        self._send_json({"url": url, "name": f"{owner}/{name}"})

    def model_info(self, meta: dict, rev: str = "main"):
        sha = resolve_revision(meta, rev)
        siblings = [{"rfilename": path} for path in sorted(meta["commits"][sha]["files"])]
        self._send_json(
            {"id": meta["id"], "modelId": meta["id"], "sha": sha, "private": meta["private"], "siblings": siblings}
        )

    def tree(self, meta: dict, rev: str, path: str = ""):
        files = meta["commits"][resolve_revision(meta, rev)]["files"]
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for file_path, oid in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix) :]
            if recursive or "/" not in rest:
                entries.append({"type": "file", "path": file_path, "oid": oid, "size": self._object_size(oid)})
            if "/" in rest:  # every folder on the way down (recursive) or just the first level
                parts = rest.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts) if recursive else 1))
        entries += [
            {"type": "directory", "path": folder, "oid": git_blob_sha1(folder.encode())} for folder in sorted(folders)
        ]
        if prefix and not entries:
            raise ApiError(404, f"{path} does not exist at {rev}", "EntryNotFound")
        self._send_json(entries)

    def _object_size(self, oid: str) -> int:
        return (self.store.root / "objects" / oid).stat().st_size

    def commits(self, meta: dict, rev: str):
        history, sha = [], resolve_revision(meta, rev)
        while sha is not None:
            commit = meta["commits"][sha]
            history.append({"id": sha, "title": commit["title"], "message": "", "date": commit["date"], "authors": []})
            sha = commit["parent"]
        self._send_json(history)

    def preupload(self, meta: dict, rev: str):
        self._require_token()
        files = meta["commits"][resolve_revision(meta, rev)]["files"]
        request = json.loads(self.body or b"{}")
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
            for f in request.get("files", [])
        ]
        self._send_json({"files": answer, "commitOid": resolve_revision(meta, rev)})

    def commit(self, meta: dict, rev: str):
        self._require_token()
        if self.query.get("create_pr"):
            raise ApiError(400, "this fake hub does not do pull requests")
        summary, added, deleted = "", {}, []
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:  # lfsFile and copies never come: preupload answers "regular" for every file
                raise ApiError(400, f"this fake hub does not support {key!r} commit operations")
        owner, name = meta["id"].split("/")
        sha = self.store.commit(owner, name, rev, added, deleted, summary, meta["kind"])
        url = self._repo_url(meta["id"], meta["kind"])
        self._send_json({"commitUrl": f"{url}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def resolve(self, meta: dict, rev: str, path: str):
        sha = resolve_revision(meta, rev)
        oid = meta["commits"][sha]["files"].get(path)
        if oid is None:
            raise ApiError(404, f"Entry not found: {path}", "EntryNotFound")
        content = self.store.read_object(oid)
        self._send(
            content, headers={"X-Repo-Commit": sha, "ETag": f'"{oid}"', "Content-Type": "application/octet-stream"}
        )


def make_server(root_dir: str | os.PathLike, token: str, port: int = 0) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (port 0 = a free one); call serve_forever() on it."""
    handler = type("BoundFakeHubHandler", (FakeHubHandler,), {"store": RepoStore(Path(root_dir)), "token": token})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


def start_fake_hub(root_dir: str | os.PathLike, token: str):
    """Serve in a background thread on a free port. Returns (base_url, stop): pass base_url as HF_ENDPOINT."""
    server = make_server(root_dir, token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join()

    host, port = server.server_address[:2]
    return f"http://{host}:{port}", stop


def commit_raw(hub: str, repo_id: str, files: dict[str, bytes]) -> None:
    """A commit of `files` (path -> content) straight to the API of the fake hub at `hub`, with TOKEN: any path at
    all, even those huggingface_hub itself refuses on upload (`..`, absolute)."""
    lines = [{"key": "header", "value": {"summary": "raw", "description": ""}}]
    lines += [
        {"key": "file", "value": {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}}
        for path, content in files.items()
    ]
    request = urllib.request.Request(
        f"{hub}/api/models/{repo_id}/commit/main",
        data="\n".join(json.dumps(line) for line in lines).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        if response.status != 200:
            raise RuntimeError(f"the fake hub answered {response.status} to a raw commit")


def main():
    parser = argparse.ArgumentParser(description="Serve a small Hub-compatible API on 127.0.0.1 (for tests).")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--token", required=True, help="the one token that may write")
    parser.add_argument("--root", required=True, help="folder where repos and file contents are stored")
    args = parser.parse_args()
    server = make_server(args.root, args.token, args.port)
    host, port = server.server_address[:2]
    print(f"fake hub serving http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
