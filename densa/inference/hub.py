"""Push an exported folder to the Hugging Face Hub (`HfApi().create_repo` + `upload_folder`), or describe the
upload without doing it (dry run). Nothing here runs at import time or in tests against the real hub."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from densa.errors import DensaError
from densa.inference.model_card import LOCAL_PATH
from densa.outputs import MARKER


@dataclass
class UploadPlan:
    repo_id: str
    folder: Path
    files: list[tuple[str, int]]
    """(path relative to the folder, size in bytes), sorted."""
    private: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        lines = [f"would upload {len(self.files)} files ({_human(self.total_bytes)}) to {self.repo_id}:"]
        lines += [f"  {name}  {_human(size)} ({size} bytes)" for name, size in self.files]
        return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def plan_upload(folder: str | os.PathLike, repo_id: str, private: bool = False) -> UploadPlan:
    folder = Path(folder)
    if not folder.is_dir():
        raise DensaError(f"{folder}: no such folder to upload")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise DensaError(f"--push-to-hub expects a repo id like 'user/name', got {repo_id!r}")
    files = sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return UploadPlan(repo_id, folder, files, private)


def find_token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` stored (read locally, no network)."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def card_local_paths(folder: str | os.PathLike) -> list[str]:
    """`README.md:LINE: PATH` for every absolute local path in the model card (none may go to the Hub:
    they mean nothing there and tell the world how this machine is laid out)."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return []
    found = []
    for n, line in enumerate(card.read_text(encoding="utf-8").splitlines(), 1):
        found += [f"README.md:{n}: {m.group(0)}" for m in LOCAL_PATH.finditer(line)]
    return found


def _hub_error(err: Exception, repo_id: str) -> DensaError | None:
    """A DensaError for what the Hub said (or that it could not be reached); None for anything else."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return DensaError(
            f"the Hugging Face Hub refused the token for {repo_id} (HTTP {status}): log in again with"
            " `hf auth login` (or set HF_TOKEN to a token with write access)"
        )
    network = type(err).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")
    if network or isinstance(err, (OSError, ConnectionError)):
        return DensaError(
            f"could not reach the Hugging Face Hub to upload {repo_id} (offline?): {err}. Nothing was"
            " pushed; run the same command again when online (`densa export DIR --push-to-hub REPO`"
            " uploads an already exported DIR without exporting again)"
        )
    return None


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    commit_message: str = "Upload model exported with densa",
    api: Any | None = None,
) -> UploadPlan:
    """Create the repo (if missing) and upload every file of `folder`; with `dry_run`, only plan."""
    plan = plan_upload(folder, repo_id, private)
    local = card_local_paths(plan.folder)
    if local:
        raise DensaError(
            f"{plan.folder}: the model card names local paths, which must not be published:\n  "
            + "\n  ".join(local)
            + "\nre-export with the current densa (its cards name no local paths) or edit README.md"
        )
    if dry_run:
        return plan
    token = token or find_token()
    if not token:
        raise DensaError(
            "no Hugging Face token: set HF_TOKEN or log in with `hf auth login` (or use --dry-run)"
        )
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True, token=token)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(plan.folder),
            commit_message=commit_message,
            token=token,
            ignore_patterns=[MARKER],  # densa's own bookkeeping (densa.outputs), not part of the model
        )
    except Exception as err:
        hub_err = _hub_error(err, repo_id)
        if hub_err is None:
            raise
        raise hub_err from err
    return plan
