"""Official checkpoints by name: where the publishers host them, download on first use, sha256 checks.

    path = fetch("sam-med3d-turbo")            # downloads once (progress on stderr), then from the cache
    model = load_model("sam-med3d-turbo")      # the same, through the registry
    rows = official_models()                   # name, dims, description, licence, cached (for servers, plugins)

Sources: the Hugging Face hub through ``huggingface_hub`` (its cache, ``HF_HOME`` / ``HF_HUB_CACHE``,
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, retries that resume an interrupted transfer), Google Drive
through ``gdown`` (resumable), and plain HTTPS (resumable ``.part`` file). Both clients come with the
``fastsam3d[weights]`` extra. A file put by hand at ``weights_dir()/NAME/FILENAME`` is used as is.

Each file's sha256 is recorded on its first download in ``weights_dir()/checksums.json`` (trust on
first use; for hub files it must also equal the hub's ETag, which is the LFS sha256) and checked
again whenever the file's size or modification time differ from the record, and by ``verify``.

Modules: ``catalogue`` (the official checkpoints), ``local`` (where each is on this machine),
``checksums`` (sha256 records, ``verify``), ``download`` (``fetch``).
"""

from .catalogue import CATALOGUE, OfficialWeights, WeightsUnavailable, get, is_downloadable
from .checksums import check, sha256, verify
from .download import fetch, resolve_for_model
from .local import cached_path, manual_path, official_models, weights_dir

__all__ = [
    "CATALOGUE",
    "OfficialWeights",
    "WeightsUnavailable",
    "cached_path",
    "check",
    "fetch",
    "get",
    "is_downloadable",
    "manual_path",
    "official_models",
    "resolve_for_model",
    "sha256",
    "verify",
    "weights_dir",
]
