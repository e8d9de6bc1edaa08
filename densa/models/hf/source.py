"""What an HF folder says about where it comes from: its Hub id, license and datasets.

Recorded on import as `ModelConfig.extra["hf_source"]`, so a model finetuned from the folder carries them
through its checkpoints and its export's model card names them (`base_model`, `license`, `datasets`).

- the Hub id: from the Hub cache layout (`.../models--ORG--NAME/snapshots/REV/`) or a config.json
  `_name_or_path` that looks like `ORG/NAME` (older transformers wrote it); never a local path;
- license (`license`, `license_name`, `license_link`) and `datasets`: the front matter of the folder's
  README.md (its model card), when it has one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LICENSE_KEYS = ("license", "license_name", "license_link")


def repo_id(folder: Path, hf_config: dict[str, Any]) -> str | None:
    """The folder's Hub id (`ORG/NAME`) when its location or config.json tells it, else None."""
    for part in reversed(folder.resolve().parts):
        if part.startswith("models--") and len(part) > len("models--"):
            return part[len("models--") :].replace("--", "/")  # huggingface_hub's cache folder name
    name = hf_config.get("_name_or_path")
    if isinstance(name, str) and REPO_ID.match(name) and not Path(name).expanduser().exists():
        return name
    return None


def card_front_matter(folder: Path) -> dict[str, Any]:
    """The YAML front matter of `folder/README.md` ({} when absent or unreadable)."""
    import yaml

    readme = folder / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    head = text[3:].split("\n---", 1)
    if len(head) != 2:
        return {}
    try:
        meta = yaml.safe_load(head[0])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def source_info(folder: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
    """{"repo_id", "license", "license_name", "license_link", "datasets"}: the keys the folder tells."""
    meta = card_front_matter(folder)
    info: dict[str, Any] = {}
    found = repo_id(folder, hf_config)
    if found:
        info["repo_id"] = found
    for key in LICENSE_KEYS:
        if isinstance(meta.get(key), str) and meta[key]:
            info[key] = meta[key]
    datasets = meta.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    if isinstance(datasets, list):
        names = [d for d in datasets if isinstance(d, str) and d and not Path(d).is_absolute()]
        if names:
            info["datasets"] = names
    return info
