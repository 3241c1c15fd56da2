"""Push an export (never a training checkpoint) to the Hugging Face Hub."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def take_over_push(training_args) -> str | None:
    """Validate `--push_to_hub` before training and turn off Trainer's own pushing (it would upload training
    checkpoints with dense weights); returns the repository to push the finished export to, or None."""
    if not training_args.push_to_hub:
        return None
    if not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (the repository to create or update).")
    training_args.push_to_hub = False
    return training_args.hub_model_id


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
