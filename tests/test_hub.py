"""Hub round trip through huggingface_hub itself, against the loopback fake Hub (tests/hub_server.py).

The client runs in subprocesses so that HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE are read by
huggingface_hub at import, exactly as in real use (the test suite itself runs with
HF_HUB_OFFLINE=1). Nothing is mocked: create_repo, create_branch, upload_folder,
snapshot_download and the cache are the library's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks._common import free_port
from tests.hub_server import DEFAULT_TOKEN, FakeHub
from samdemo.defense import apply_adapter, save_adapter
from samdemo.plots import singular_value_plot
from samdemo.errors import AdapterError
from samdemo.build import CONFIG_DIR, build_architecture
from samdemo.engine import SegmentEngine

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO = "tester/tiny-robust-sam"

# Shared by the client scripts: the same tiny model (seed 0) and fixed probe outputs.
COMMON = textwrap.dedent("""
    import sys, numpy as np, torch
    from samdemo.build import CONFIG_DIR, build_architecture
    from samdemo.engine import SegmentEngine
    from samdemo.prompts import box_prompt, point_prompt

    def engine():
        torch.manual_seed(0)
        model, family = build_architecture(CONFIG_DIR / "sam_tiny_test.yaml")
        return SegmentEngine(model.eval(), family, name="tiny-sam")

    def outputs(e):
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            f = e.embed(x)
            return torch.cat([f.image_embed.flatten(), e.decode(f, [point_prompt(20, 20), box_prompt(4, 4, 40, 50)]).logits.flatten()])
""")

DOWNLOAD = COMMON + textwrap.dedent("""
    from samdemo.errors import AdapterError
    from samdemo.hub import load_adapter_from_hub, push_adapter, resolve_adapter
    reference, commit = torch.load(sys.argv[1]), sys.argv[2]
    for revision in ("v1", commit):
        e = engine()
        adapter = load_adapter_from_hub(e, "tester/tiny-robust-sam", revision=revision, merge=revision == commit)
        assert adapter.merged == (revision == commit)
        assert torch.allclose(outputs(e), reference, atol=1e-6, rtol=0), revision
        assert e.adapter_tag.startswith("svd:")
    for source, revision in (("tester/tiny-robust-sam", "v9"), ("tester/no-such-repo", None)):
        try:
            resolve_adapter(source, revision)
        except AdapterError as error:
            print("ERROR", error)
    try:
        push_adapter(sys.argv[3], "tester/other", token="hf_wrong")
    except OSError as error:  # huggingface_hub's HfHubHTTPError
        print("PUSH", type(error).__name__, getattr(error.response, "status_code", None))
    print("DOWNLOAD OK")
""")

OFFLINE = COMMON + textwrap.dedent("""
    from samdemo.errors import AdapterError
    from samdemo.hub import load_adapter_from_hub
    e = engine()
    load_adapter_from_hub(e, "tester/tiny-robust-sam", revision="v1")
    assert torch.allclose(outputs(e), torch.load(sys.argv[1]), atol=1e-6, rtol=0)  # other thread count than the reference process
    try:
        load_adapter_from_hub(engine(), "tester/never-downloaded")
    except AdapterError as error:
        print("ERROR", error)
    from samdemo.hub import push_adapter
    try:
        push_adapter(sys.argv[2], "tester/tiny-robust-sam")
    except AdapterError as error:
        print("PUSH", error)
    print("OFFLINE OK")
""")

UNREACHABLE = textwrap.dedent("""
    import time
    from samdemo.errors import AdapterError
    from samdemo.hub import resolve_adapter
    start = time.perf_counter()
    try:
        resolve_adapter("tester/tiny-robust-sam")
    except AdapterError as error:
        print("ERROR", error)
    print("SECONDS", time.perf_counter() - start)
""")


def _client_env(endpoint: str, home: Path, offline: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_TOKEN=DEFAULT_TOKEN, HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture
def adapter_folder(tmp_path):
    """A saved tiny-SAM adapter with non-trivial singular values, and the adapted model's probe outputs."""
    namespace: dict = {}
    exec(COMMON, namespace)
    engine = namespace["engine"]()
    adapter = apply_adapter(engine)
    with torch.no_grad():
        for i, layer in enumerate(adapter.layers):
            g = torch.Generator().manual_seed(i)
            layer.delta.copy_(torch.randn(layer.rank, generator=g) * 0.1 * layer.s_base.mean())
    torch.save(namespace["outputs"](engine), tmp_path / "reference.pt")
    save_adapter(adapter, tmp_path / "adapter", training={"steps": 1}, figure=singular_value_plot(adapter))
    adapter.remove()
    return tmp_path / "adapter", tmp_path / "reference.pt"


def test_push_download_load_round_trip_through_a_loopback_hub(adapter_folder, tmp_path):
    folder, reference = adapter_folder
    with FakeHub() as hub:
        env = _client_env(hub.endpoint, tmp_path / "hf_home", offline=False)
        push = _run(["-m", "samdemo", "push-adapter", str(folder), "--repo", REPO, "--revision", "v1"], env, tmp_path)
        commit = hub.repos[REPO].branches["v1"]
        assert f"commit {commit}" in push.stdout
        pushed = hub.files(REPO, "v1")
        for name in ("adapter_config.json", "adapter.safetensors", "README.md", "singular_values.png"):
            assert pushed[name] == (folder / name).read_bytes()
        assert set(hub.files(REPO, "main")) == {".gitattributes"}  # the branch was created from main
        calls = {(method, path.replace(REPO, "R").replace(commit, "C")) for method, path in hub.requests}
        assert {("POST", "/api/repos/create"), ("POST", "/api/models/R/branch/v1"), ("POST", "/api/validate-yaml"),
                ("POST", "/api/models/R/preupload/v1"), ("POST", "/api/models/R/commit/v1")} <= calls

        download = _run(["-c", DOWNLOAD, str(reference), commit, str(folder)], env, tmp_path)
        assert "DOWNLOAD OK" in download.stdout
        assert f"ERROR The Hub repo {REPO} has no revision 'v9'" in download.stdout
        assert "ERROR No Hub repo tester/no-such-repo" in download.stdout
        assert "PUSH HfHubHTTPError 401" in download.stdout
        calls = {(method, path.replace(REPO, "R").replace(commit, "C")) for method, path in hub.requests}
        assert {("GET", "/api/models/R/revision/v1"), ("GET", "/api/models/R/tree/C"),
                ("HEAD", "/R/resolve/C/adapter.safetensors"), ("GET", "/R/resolve/C/adapter.safetensors")} <= calls

        # Offline: the cached revision still loads, with no request at all; an uncached repo fails clearly.
        seen = len(hub.requests)
        offline_env = _client_env(hub.endpoint, tmp_path / "hf_home", offline=True)
        offline = _run(["-c", OFFLINE, str(reference), str(folder)], offline_env, tmp_path)
        assert "OFFLINE OK" in offline.stdout
        assert "ERROR Adapter tester/never-downloaded is not in the local Hugging Face cache" in offline.stdout
        assert "HF_HUB_OFFLINE=1 forbids downloading it" in offline.stdout
        assert "PUSH HF_HUB_OFFLINE=1 is set: pushing needs the Hub" in offline.stdout
        assert len(hub.requests) == seen


def test_unreachable_hub_fails_at_once_with_a_clear_error(tmp_path):
    """HF_ENDPOINT on a closed loopback port: one AdapterError at once, not huggingface_hub's ~25 s of retries."""
    env = _client_env(f"http://127.0.0.1:{free_port()}", tmp_path / "hf_home", offline=False)
    result = _run(["-c", UNREACHABLE], dict(env, SAMDEMO_HUB_TIMEOUT="10"), tmp_path)
    assert "ERROR Adapter tester/tiny-robust-sam cannot be downloaded now: the Hugging Face Hub at" in result.stdout
    assert "is unreachable" in result.stdout and "not in the local Hugging Face cache" in result.stdout
    assert float(result.stdout.split("SECONDS")[1]) < 3  # refused at once: far within the 10 s timeout


def test_push_refuses_a_malformed_adapter_before_any_request(adapter_folder):
    from samdemo.hub import push_adapter

    folder, _ = adapter_folder
    (folder / "adapter.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="cannot be read as safetensors"):
        push_adapter(folder, REPO, token="unused")
    with pytest.raises(AdapterError, match="not a Hub repo id"):
        push_adapter(folder, "not a repo", token="unused")


def test_local_sources_and_bad_ids(adapter_folder):
    from samdemo.hub import is_repo_id, load_adapter_from_hub, resolve_adapter

    folder, reference = adapter_folder
    assert resolve_adapter(folder) == folder
    with pytest.raises(AdapterError, match="local folder"):
        resolve_adapter(folder, revision="v1")
    with pytest.raises(AdapterError, match="neither an existing adapter folder nor a Hub repo id"):
        resolve_adapter("no/such/folder")
    assert is_repo_id("facebook/sam2-hiera-small") and not is_repo_id("../x") and not is_repo_id("a/b/c")
    torch.manual_seed(0)
    model, family = build_architecture(CONFIG_DIR / "sam_tiny_test.yaml")
    engine = SegmentEngine(model.eval(), family, name="tiny-sam")
    load_adapter_from_hub(engine, folder)
    namespace: dict = {}
    exec(COMMON, namespace)
    assert torch.equal(namespace["outputs"](engine), torch.load(reference))
