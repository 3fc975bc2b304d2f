"""Where an open_clip backbone's weights come from, checked before open_clip is asked for them.

open_clip resolves a pretrained tag to a Hugging Face Hub file or a URL and downloads it;
without internet that path retries for about a minute before failing with an error that does
not say what to do. :func:`check_weights` answers first, in one line each: a mistyped model or
tag (with close matches, ``difflib`` over open_clip's lists), a local checkpoint that does not
exist, or a tag whose weights are not cached while the host is unreachable or
``HF_HUB_OFFLINE`` is set (with the local-file spec to use instead). It makes at most one
connection attempt, bounded by :data:`PROBE_SECONDS`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from pyro_clip.errors import BackboneError
from pyro_clip.utils.names import close_matches

#: the reachability probe's bound: one TCP connection attempt, DNS included
PROBE_SECONDS = 2.0
#: file suffixes that make a pretrained value a local path rather than a tag
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_HF_WEIGHTS = "open_clip_pytorch_model.bin"


def looks_like_path(pretrained: str) -> bool:
    """A pretrained value names a file when it has a directory part or a checkpoint suffix."""
    return (os.sep in pretrained or "/" in pretrained or pretrained.startswith(("~", "."))
            or pretrained.lower().endswith(CHECKPOINT_SUFFIXES))


def model_tags(model_name: str) -> list[str]:
    """open_clip's pretrained tags of ``model_name`` and of its ``-quickgelu`` twin."""
    from open_clip.pretrained import list_pretrained_tags_by_model

    base = model_name.removesuffix("-quickgelu")
    return sorted({t for m in (base, base + "-quickgelu") for t in
                   list_pretrained_tags_by_model(m)})


def _tag_cfg(model_name: str, tag: str) -> dict:
    from open_clip.pretrained import get_pretrained_cfg

    base = model_name.removesuffix("-quickgelu")
    return get_pretrained_cfg(model_name, tag) or get_pretrained_cfg(base, tag) or \
        get_pretrained_cfg(base + "-quickgelu", tag) or {}


def cached_file(cfg: dict) -> str | None:
    """The local copy open_clip would load for a tag's ``cfg``, or None when not cached."""
    local_file = cfg.get("file", "")  # a tag registered with a local file (open_clip loads it)
    if local_file and os.path.isfile(local_file):
        return str(local_file)
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", _HF_WEIGHTS]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        return None  # open_clip prefers the Hub: a URL copy would not be used
    url = cfg.get("url", "")
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def weights_host(cfg: dict) -> str:
    """The host open_clip downloads a tag's weights from (the Hub, or the tag's URL)."""
    if cfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return urlparse(endpoint).hostname or "huggingface.co"
    return urlparse(cfg.get("url", "")).hostname or "huggingface.co"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set: the Hub must not be contacted."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((f or "").strip().lower() in ("1", "true", "yes", "on") for f in flags)


def reachable(host: str, timeout: float = PROBE_SECONDS) -> bool:
    """One TCP connection to ``host:443`` within ``timeout`` seconds (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)  # a resolver that ignores the socket timeout is left behind
    return bool(result and result[0])


def local_file_spec(model_name: str, quick_gelu: bool) -> str:
    """The ``--backbone`` form for a downloaded checkpoint of ``model_name``."""
    return (f"open_clip:{model_name.removesuffix('-quickgelu')}:"
            f"/path/to/open_clip_model.safetensors?quick_gelu={int(quick_gelu)}")


def check_weights(model_name: str, pretrained: str | None) -> str | None:
    """Raise one :class:`BackboneError` line if ``model_name`` / ``pretrained`` cannot load;
    return the cached file of a tag's weights (None: a path, random weights, or to download).

    Checks, in order: the model name is open_clip's; a path exists; a tag is one of the
    model's; a tag's weights are cached or their host answers (not when ``HF_HUB_OFFLINE``).
    """
    import open_clip

    models = open_clip.list_models()
    if model_name not in models:
        raise BackboneError(
            f"unknown open_clip model {model_name!r}{close_matches(model_name, models)} "
            "(all models: pyro-clip list backbones)")
    if pretrained is None:
        return None
    if os.path.exists(pretrained):
        if not os.path.isfile(pretrained):
            raise BackboneError(f"checkpoint {pretrained} is a folder, not a file; pass the "
                                "weights file inside it")
        return None
    if looks_like_path(pretrained):
        raise BackboneError(
            f"checkpoint file {pretrained} does not exist; check the path (the spec is "
            f"open_clip:{model_name}:/path/to/weights.safetensors[?quick_gelu=0|1])")
    tags = model_tags(model_name)
    if pretrained not in tags:
        others = sorted({t for _, t in open_clip.list_pretrained()} - {pretrained})
        hint = close_matches(pretrained, tags) or close_matches(pretrained, others)
        listed = ", ".join(tags[:8]) + (f", ... ({len(tags)} tags)" if len(tags) > 8 else "")
        raise BackboneError(
            f"unknown open_clip tag {pretrained!r} for {model_name}{hint} "
            f"{'(its tags: ' + listed + ')' if tags else '(it has no pretrained tags)'}, "
            "and no file of that name exists; for weights on disk pass --backbone "
            f"{local_file_spec(model_name, model_name.endswith('-quickgelu'))}")
    cfg = _tag_cfg(model_name, pretrained)
    cached = cached_file(cfg)
    if cached is not None:
        return cached
    host = weights_host(cfg)
    if hub_offline() or not reachable(host):
        why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{host} cannot be reached"
        raise BackboneError(
            f"open_clip weights {model_name}:{pretrained} are not cached here and {why}; "
            f"download them where there is internet and pass the file: --backbone "
            f"{local_file_spec(model_name, bool(cfg.get('quick_gelu', False)))}")
    return None


@contextlib.contextmanager
def hub_offline_mode() -> Iterator[None]:
    """Hugging Face Hub calls inside read only the local cache (no requests, no retries)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
