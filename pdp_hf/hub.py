"""Push an export (never a training checkpoint) to the Hugging Face Hub."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def push_export(export_dir: str, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Create `repo_id` if needed and upload the finished export folder; returns the commit URL.

    The export is complete on disk before this is called, so a failed upload (offline, no token) loses nothing:
    the error says so and how to retry.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        info = api.upload_folder(repo_id=repo_id, folder_path=export_dir, commit_message="Upload pruned model (pdp_hf)")
    except Exception as err:  # network, auth and offline-mode errors all end here
        raise RuntimeError(
            f"Pushing {export_dir} to the Hub as {repo_id!r} failed ({type(err).__name__}: {err}). The local export "
            f"is complete and intact; retry later with `huggingface-cli upload {repo_id} {export_dir}`."
        ) from err
    return str(getattr(info, "commit_url", info))
