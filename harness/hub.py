"""Is the Hugging Face hub usable from here? Asked by every place that may load data or weights from it.

`offline()` is the user's switch (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); `reachable()` makes one quick request per
process, so an unreachable hub costs seconds, not the datasets library's half-minute of retries per split.
"""

from __future__ import annotations

import os

_REACHABLE: bool | None = None


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def reachable() -> bool:
    global _REACHABLE
    if _REACHABLE is None:
        import urllib.error
        import urllib.request

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=5)
            _REACHABLE = True
        except urllib.error.HTTPError:
            _REACHABLE = True  # it answered
        except (urllib.error.URLError, OSError, ValueError):
            _REACHABLE = False
    return _REACHABLE


def usable() -> bool:
    """Online and answering."""
    return not offline() and reachable()
