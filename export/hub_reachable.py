"""Exit 0 if the Hugging Face hub answers for a model id, 1 otherwise (used by `make models`).

Only asks the hub's API whether the model exists (3 s timeout); downloads nothing. HF_HUB_OFFLINE=1
counts as unreachable.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def reachable(model_id: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/{model_id}", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


if __name__ == "__main__":
    raise SystemExit(0 if reachable(sys.argv[1]) else 1)
