"""`densa export DIR --push-to-hub REPO` of an already exported folder: what would be uploaded (the upload
API monkeypatched: no network here), no local paths in the card, clear errors offline / not logged in."""

from __future__ import annotations

import shutil

import pytest

import densa.inference.hub as hub
from densa.errors import DensaError
from densa.inference.hub import card_local_paths
from densa.launch.cli import main


class FakeApi:
    """Records what `push_to_hub` asks of huggingface_hub's HfApi; `fail` is raised by create_repo."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def __call__(self, **kwargs):  # stands in for the HfApi class
        self.calls.append(("HfApi", kwargs))
        return self

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        if self.fail is not None:
            raise self.fail

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture()
def fake_api(monkeypatch) -> FakeApi:
    import huggingface_hub

    api = FakeApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", api)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    return api


def test_push_exported_folder_without_reexport(exported, tmp_path, fake_api, capsys):
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert card_local_paths(folder) == []  # densa's own card names no local path
    assert main(["export", str(folder), "--push-to-hub", "me/tiny"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # nothing re-exported
    names = [name for name, _ in fake_api.calls]
    assert names == ["HfApi", "create_repo", "upload_folder"]
    upload = fake_api.calls[2][1]
    assert upload["folder_path"] == str(folder) and upload["repo_id"] == "me/tiny"
    assert upload["ignore_patterns"] == [".densa-output"] and upload["token"] == "hf_test"
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert capsys.readouterr().out == f"uploaded {len(files)} files from {folder} to me/tiny\n"


def test_push_dry_run_of_exported_folder_lists_files(exported, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["export", str(exported), "--push-to-hub", "me/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"would upload {sum(1 for p in exported.iterdir() if p.name[0] != '.')} files")
    assert "  README.md  " in out and "  model.safetensors  " in out and ".densa-output" not in out


def test_card_with_local_path_is_refused(exported, tmp_path, fake_api):
    folder = tmp_path / "hf"
    shutil.copytree(exported, folder)
    card = folder / "README.md"
    card.write_text(card.read_text() + "\ntrained from /home/me/models/base and https://huggingface.co/a/b\n")
    line = len(card.read_text().splitlines())
    with pytest.raises(DensaError) as err:
        hub.push_to_hub(folder, "me/tiny", dry_run=True)
    assert str(err.value) == (
        f"{folder}: the model card names local paths, which must not be published:\n"
        f"  README.md:{line}: /home/me/models/base\n"
        "re-export with the current densa (its cards name no local paths) or edit README.md"
    )
    assert fake_api.calls == []


def test_not_logged_in_names_hf_cli(exported, monkeypatch, fake_api):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hub, "find_token", lambda: None)
    assert main(["export", str(exported), "--push-to-hub", "me/tiny"]) == 1
    with pytest.raises(DensaError) as err:
        hub.push_to_hub(exported, "me/tiny")
    assert (
        str(err.value)
        == "no Hugging Face token: set HF_TOKEN or log in with `hf auth login` (or use --dry-run)"
    )


def test_offline_and_refused_token(exported, fake_api):
    fake_api.fail = ConnectionError("[Errno -2] Name or service not known")
    with pytest.raises(DensaError) as err:
        hub.push_to_hub(exported, "me/tiny")
    assert str(err.value) == (
        "could not reach the Hugging Face Hub to upload me/tiny (offline?): [Errno -2] Name or service not"
        " known. Nothing was pushed; run the same command again when online (`densa export DIR --push-to-hub"
        " REPO` uploads an already exported DIR without exporting again)"
    )

    class Refused(Exception):
        response = type("R", (), {"status_code": 401})()

    fake_api.fail = Refused("401 Unauthorized")
    with pytest.raises(
        DensaError, match=r"refused the token for me/tiny \(HTTP 401\): log in again with `hf auth"
    ):
        hub.push_to_hub(exported, "me/tiny")


def test_push_needs_an_exported_folder_or_out(run_dir, capsys):
    assert main(["export", str(run_dir), "--push-to-hub", "me/tiny"]) == 1
    assert (
        f"{run_dir}: not an exported HF folder (no config.json); export it first" in capsys.readouterr().err
    )
    assert main(["export", str(run_dir)]) == 1
    assert "--out is required (to upload a folder exported before" in capsys.readouterr().err
