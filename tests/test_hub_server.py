"""The test Hub (tests/hub_server.py) against the real clients: huggingface_hub, transformers and peft.

Each client runs in a subprocess pointed at the server by HF_ENDPOINT (this process is offline, see conftest.py),
with a fresh HF_HOME so that every file really comes over HTTP.
"""

import http.client
import json
import subprocess
import sys
import textwrap
from urllib.parse import urlsplit

from conftest import TEXT, tiny_llama_config
from hub_server import HubServer, hub_env
from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM


def run_client(script: str, env: dict[str, str], *args: str) -> dict:
    """Run `script` in a fresh interpreter and return the JSON object it prints last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


UPLOAD = """
import json, sys
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

api = HfApi()
api.create_repo("user/tiny")
try:
    api.create_repo("user/tiny")
    recreate = "created twice"
except HfHubHTTPError as error:
    recreate = error.response.status_code
api.create_repo("user/tiny", exist_ok=True)
commit = api.upload_folder(repo_id="user/tiny", folder_path=sys.argv[1], commit_message="tiny llama")
api.create_repo("user/tiny-lora")
api.upload_folder(repo_id="user/tiny-lora", folder_path=sys.argv[2])
info = api.model_info("user/tiny")
print(json.dumps({"recreate": recreate, "commit": commit.oid, "sha": info.sha, "private": info.private,
                  "siblings": sorted(s.rfilename for s in info.siblings), "files": api.list_repo_files("user/tiny")}))
"""

# Compares what comes from the Hub with what loads from the local folders, in one process (same kernels, same threads).
LOAD = """
import json, sys
from pathlib import Path
import torch
from huggingface_hub import snapshot_download
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

local, local_lora, text = sys.argv[1:]
ids = AutoTokenizer.from_pretrained("user/tiny")(text, return_tensors="pt").input_ids
local_ids = AutoTokenizer.from_pretrained(local)(text, return_tensors="pt").input_ids

def logits(model):
    with torch.no_grad():
        return model.eval()(ids).logits

base = logits(AutoModelForCausalLM.from_pretrained("user/tiny"))
lora = logits(AutoPeftModelForCausalLM.from_pretrained("user/tiny-lora"))
local_base = AutoModelForCausalLM.from_pretrained(local)
local_logits = logits(local_base)
snapshot = Path(snapshot_download("user/tiny"))
print(json.dumps({
    "same_ids": torch.equal(ids, local_ids),
    "same_base": torch.equal(base, local_logits),
    "same_lora": torch.equal(lora, logits(PeftModel.from_pretrained(local_base, local_lora))),
    "lora_applied": not torch.equal(base, lora),
    "same_snapshot": all((snapshot / p.name).read_bytes() == p.read_bytes() for p in Path(local).iterdir()),
}))
"""


def test_upload_then_from_pretrained(hub_server, tmp_path, tokenizer):
    model = LlamaForCausalLM(tiny_llama_config())
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    # A LoRA adapter that changes the logits, on top of the base model as the Hub names it.
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    adapter_config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "user/tiny"
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps(adapter_config))
    folders = str(tmp_path / "tiny"), str(tmp_path / "lora")

    uploaded = run_client(UPLOAD, hub_env(hub_server, tmp_path / "home-upload"), *folders)

    repo = hub_server.repo("user/tiny")
    local_files = {p.name: p.read_bytes() for p in (tmp_path / "tiny").iterdir()}
    assert repo["files"] == local_files
    assert [c["message"] for c in repo["commits"]] == ["initial commit", "tiny llama"]
    head = repo["commits"][-1]["oid"]
    names = sorted(local_files)
    assert uploaded == {
        "recreate": 409,
        "commit": head,
        "sha": head,
        "private": False,
        "siblings": names,
        "files": names,
    }

    # Anonymous, with an empty cache: every file comes from the server.
    loaded = run_client(LOAD, hub_env(hub_server, tmp_path / "home-load", token=None), *folders, TEXT)
    assert loaded == dict.fromkeys(["same_ids", "same_base", "same_lora", "lora_applied", "same_snapshot"], True)


ACCESS = """
import json
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

owner, other = HfApi(token="hf_test_token"), HfApi(token="hf_other_token")
anonymous, wrong = HfApi(token=False), HfApi(token="hf_wrong_token")

def outcome(call):
    try:
        return call()
    except Exception as error:
        return [type(error).__name__, getattr(getattr(error, "response", None), "status_code", None)]

def read(token, revision=None, filename="notes/a.txt"):
    return lambda: open(hf_hub_download("user/secret", filename, revision=revision, token=token)).read()

def commit(api):
    return lambda: api.create_commit("user/secret", [CommitOperationAdd("x.txt", b"x")], commit_message="x").oid

owner.create_repo("user/secret", private=True)
first = owner.upload_file(path_or_fileobj=b"v1", path_in_repo="notes/a.txt", repo_id="user/secret")
owner.upload_file(path_or_fileobj=b"v2", path_in_repo="notes/a.txt", repo_id="user/secret")
print(json.dumps({
    # Reads that must fail come first: hf_hub_download falls back to the local cache when the Hub says 404,
    # so once the owner has downloaded a private file, anyone sharing that HF_HOME can read it.
    "anonymous read": outcome(read(False)),
    "wrong token read": outcome(read("hf_wrong_token")),
    "owner info": owner.model_info("user/secret").private,
    "owner files": owner.list_repo_files("user/secret"),
    "owner tree": [(f.path, type(f).__name__) for f in owner.list_repo_tree("user/secret")],
    "owner whoami": owner.whoami()["name"],
    "owner read": outcome(read("hf_test_token")),
    "owner read first commit": outcome(read("hf_test_token", revision=first.oid)),
    "owner read missing file": outcome(read("hf_test_token", filename="nope.txt")),
    "anonymous info": outcome(lambda: anonymous.model_info("user/secret")),
    "wrong token info": outcome(lambda: wrong.model_info("user/secret")),
    "other user info": outcome(lambda: other.model_info("user/secret")),
    "wrong token whoami": outcome(wrong.whoami),
    "anonymous create": outcome(lambda: anonymous.create_repo("user/new")),
    "wrong token create": outcome(lambda: wrong.create_repo("user/new")),
    "other user create": outcome(lambda: other.create_repo("user/new")),
    "anonymous commit": outcome(commit(anonymous)),
    "wrong token commit": outcome(commit(wrong)),
    "other user commit": outcome(commit(other)),
    "invalid repo id": outcome(lambda: owner.create_repo("user/bad--name")),
}))
"""


def test_private_repos_and_write_access(tmp_path):
    with HubServer(tokens={"hf_test_token": "user", "hf_other_token": "other"}) as server:
        seen = run_client(ACCESS, hub_env(server, tmp_path / "home", token=None))
        repo = server.repo("user/secret")
        assert server.repo("user/new") is None
    assert seen == {
        "owner info": True,
        "owner files": ["notes/a.txt"],
        "owner tree": [["notes", "RepoFolder"]],
        "owner whoami": "user",
        "owner read": "v2",
        "owner read first commit": "v1",  # every commit stays readable by its sha
        "owner read missing file": ["RemoteEntryNotFoundError", 404],
        "anonymous info": ["RepositoryNotFoundError", 404],
        "wrong token info": ["RepositoryNotFoundError", 404],
        "other user info": ["RepositoryNotFoundError", 404],
        "anonymous read": ["RepositoryNotFoundError", 404],
        "wrong token read": ["RepositoryNotFoundError", 404],
        "wrong token whoami": ["HfHubHTTPError", 401],
        "anonymous create": ["HfHubHTTPError", 401],
        "wrong token create": ["HfHubHTTPError", 401],
        "other user create": ["HfHubHTTPError", 403],
        "anonymous commit": ["HfHubHTTPError", 401],
        "wrong token commit": ["HfHubHTTPError", 401],
        "other user commit": ["HfHubHTTPError", 403],
        "invalid repo id": ["HFValidationError", None],  # the client refuses it before any request
    }
    assert issubclass(RemoteEntryNotFoundError, EntryNotFoundError)
    assert (repo["private"], repo["files"], len(repo["commits"])) == (True, {"notes/a.txt": b"v2"}, 3)


def test_protocol_details(hub_server):
    """What no client shows directly: a 401 keeps the connection usable, and the server validates repo ids too."""
    connection = http.client.HTTPConnection(urlsplit(hub_server.url).netloc)

    def request(method: str, path: str, payload: dict | None = None, token: str | None = None):
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        connection.request(method, path, body=json.dumps(payload) if payload else None, headers=headers)
        response = connection.getresponse()
        data = response.read()  # empty for HEAD
        return response.status, response.headers.get("X-Error-Code"), json.loads(data) if data else None

    assert request("POST", "/api/repos/create", {"name": "tiny"})[0] == 401
    socket = connection.sock
    assert request("GET", "/api/agent-harnesses")[0] == 200
    assert socket is not None and connection.sock is socket  # the same connection, still in step after the 401
    token = "hf_test_token"
    assert request("POST", "/api/repos/create", {"name": "bad--name"}, token)[0] == 400
    assert request("POST", "/api/repos/create", {"name": "tiny", "organization": "x"}, token)[0] == 403
    url = f"{hub_server.url}/user/tiny"
    created = request("POST", "/api/repos/create", {"name": "tiny"}, token)
    assert created == (200, None, {"url": url, "name": "user/tiny"})
    status, _, answer = request("POST", "/api/repos/create", {"name": "tiny"}, token)
    assert (status, answer["url"]) == (409, url)  # create_repo(exist_ok=True) reads the url from the 409's body
    assert request("HEAD", "/user/tiny/resolve/main/config.json")[:2] == (404, "EntryNotFound")
    assert request("GET", f"/user/tiny/resolve/{'0' * 40}/config.json")[:2] == (404, "RevisionNotFound")
    assert request("GET", "/api/models/user/nothing")[:2] == (404, "RepoNotFound")
    assert request("GET", "/api/unknown")[0] == 404
    connection.close()
