"""Push an adapter folder to the Hugging Face Hub (``python -m samdemo push-adapter DIR --repo owner/name``).

Any method (svd, lora, full: ``samdemo.defense``); the folder says which.

Loading: :func:`load_adapter_from_hub` takes a local folder or a Hub repo id ``owner/name`` (with an
optional revision: branch, tag or commit hash). Hub downloads go through
``huggingface_hub.snapshot_download`` and its cache (``HF_HOME`` / ``HF_HUB_CACHE``); with
``HF_HUB_OFFLINE=1`` only the cache is used and a missing adapter gives a clear error.
``HF_ENDPOINT`` selects another Hub (the tests use a loopback server). Before downloading, one
HEAD request with a short timeout (``samdemo.build.hub_file_size``, ``SAMDEMO_HUB_TIMEOUT``)
checks that the Hub answers and that ``adapter.safetensors`` is at most ``SAMDEMO_MAX_ADAPTER_MB``;
a Hub that does not answer falls back to the cache.

Pushing: :func:`push_adapter` validates the folder first (a malformed adapter is never
uploaded), creates the repo if needed (``create_repo(exist_ok=True)``), creates the branch
if a non-main revision is given, then ``upload_folder`` with only the adapter's files.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from samdemo.defense import ADAPTER_FILES, WEIGHTS_FILE, Adapter, load_adapter_folder, read_adapter_folder
from samdemo.errors import AdapterError

log = logging.getLogger(__name__)
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def is_repo_id(source: str) -> bool:
    return bool(REPO_ID.match(str(source))) and ".." not in str(source)


def resolve_adapter(source: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Local folder of an adapter: ``source`` itself if it is a folder, else a Hub download (cached)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise AdapterError(f"{source} is a local folder; a revision ({revision!r}) only applies to Hub repos.")
        return path
    if not is_repo_id(str(source)):
        raise AdapterError(f"{source!r} is neither an existing adapter folder nor a Hub repo id (owner/name).")
    return _download(str(source), revision, cache_dir)


def _download(repo_id: str, revision: str | None, cache_dir) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    from samdemo import limits
    from samdemo.build import hub_file_size
    from samdemo.errors import HubUnreachableError

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    # huggingface_hub alone retries a refused connection for ~25 s and waits minutes on a silent Hub.
    try:
        size, unreachable = hub_file_size(repo_id, WEIGHTS_FILE, revision), None
    except HubUnreachableError as error:
        size, unreachable = None, str(error)
    if size is not None and size > limits.MAX_ADAPTER_MB * 2**20:  # refused before anything is downloaded
        raise AdapterError(f"Adapter {where}: its {WEIGHTS_FILE} is {size / 2**20:.1f} MB, more than the "
                           f"{limits.MAX_ADAPTER_MB:g} MB allowed here (SAMDEMO_MAX_ADAPTER_MB); an SVD adapter "
                           "holds a few thousand numbers. Not downloaded.")
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(ADAPTER_FILES),
                                   local_files_only=unreachable is not None)
    except RevisionNotFoundError:
        raise AdapterError(f"The Hub repo {repo_id} has no revision {revision!r} (branch, tag or commit).") from None
    except GatedRepoError:
        raise AdapterError(f"The Hub repo {repo_id} is gated: accept its terms on the Hub and log in "
                           "(`hf auth login` or HF_TOKEN).") from None
    except RepositoryNotFoundError:
        raise AdapterError(f"No Hub repo {repo_id} (or it is private: log in with `hf auth login` or set "
                           "HF_TOKEN).") from None
    except LocalEntryNotFoundError as error:
        cache = cache_dir or constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE:
            raise AdapterError(f"Adapter {where} is not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 "
                               "forbids downloading it. Unset HF_HUB_OFFLINE and connect once, or give a local "
                               "adapter folder.") from None
        reason = unreachable or f"{constants.ENDPOINT}: {str(error).splitlines()[0]}"
        raise AdapterError(f"Adapter {where} cannot be downloaded now: {reason}, and it is not in the local Hugging "
                           f"Face cache ({cache}). Check the connection.") from None
    except HfHubHTTPError as error:
        raise AdapterError(f"Hub error while downloading adapter {where}: {str(error).splitlines()[0]}") from None
    except OSError as error:
        raise AdapterError(f"Could not download adapter {where}: {type(error).__name__}: {error}") from None
    if unreachable:
        log.warning("%s; using the cached copy of adapter %s", unreachable, where)
    return Path(folder)


def load_adapter_from_hub(target, source: str | Path, revision: str | None = None, *, cache_dir=None,
                          freeze_base: bool = True, merge: bool = False) -> Adapter:
    """Apply the adapter from a local folder or a Hub repo (``owner/name`` at ``revision``) to a model/engine.

    Everything is validated first (``samdemo.defense.load_adapter_folder``, which dispatches on the folder's
    ``method``: svd, lora or full); ``merge=True`` merges it at once.
    """
    return load_adapter_folder(target, resolve_adapter(source, revision, cache_dir), freeze_base=freeze_base,
                               merge=merge)


def push_adapter(folder: str | Path, repo_id: str, revision: str | None = None, token: str | bool | None = None,
                 *, private: bool | None = None, commit_message: str | None = None):
    """Upload an adapter folder to ``repo_id`` (created if missing) on branch ``revision`` (default main).

    Returns huggingface_hub's ``CommitInfo`` (``.oid`` is the commit hash to pin downloads to).
    """
    from huggingface_hub import HfApi, constants

    if not is_repo_id(repo_id):
        raise AdapterError(f"{repo_id!r} is not a Hub repo id (owner/name).")
    files = read_adapter_folder(folder)  # never push a malformed adapter
    if constants.HF_HUB_OFFLINE:
        raise AdapterError("HF_HUB_OFFLINE=1 is set: pushing needs the Hub. Unset it (HF_HUB_OFFLINE=0) to push.")
    present = [name for name in ADAPTER_FILES if (Path(folder) / name).is_file()]
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    branch = revision or "main"
    if branch != "main":
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    message = commit_message or (f"Upload {files.config.method} adapter for {files.config.base_model} "
                                 f"({files.config.num_trainable} trainable values)")
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=branch, allow_patterns=present,
                             commit_message=message)


def configure_parser(parser) -> None:
    parser.add_argument("folder", type=Path, help="adapter folder (adapter_config.json, adapter.safetensors, README.md)")
    parser.add_argument("--repo", required=True, help="Hub repo id, owner/name (created if missing)")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main if missing)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--message", default=None, help="commit message")


def run(args) -> int:
    info = push_adapter(args.folder, args.repo, revision=args.revision, token=args.token,
                        private=True if args.private else None, commit_message=args.message)
    print(f"pushed {args.folder} to {args.repo}@{args.revision or 'main'}: commit {info.oid}")
    print(f"load it with: samdemo.hub.load_adapter_from_hub(engine, {args.repo!r}, revision={info.oid!r})")
    if os.environ.get("HF_ENDPOINT"):
        print(f"(Hub endpoint {os.environ['HF_ENDPOINT']})", file=sys.stderr)
    return 0
