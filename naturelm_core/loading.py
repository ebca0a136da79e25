"""From a Hub repo id or a local folder to a ready NatureLM, refusing to serve a model that did not fully load.

The public loader uses strict=False and silently ignores missing keys, so a renamed tensor leaves a
random Q-Former or a LoRA of zeros behind and the model still "answers". Here every audio-stack and
LoRA tensor must be found under its published name with its published shape, or loading stops with
a `CheckpointMismatchError` that names the tensors. Unexpected keys are logged and kept in
`model.load_report`. The HF token is read from the argument or HF_TOKEN and never appears in a
message: errors from the Hub are re-raised as our own, with their text redacted and unchained.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, LlamaForCausalLM

from naturelm_core.config import PUBLISHED_REPO_ID, NatureLMConfig
from naturelm_core.encoder import AudioEncoder
from naturelm_core.model import NatureLM

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "model.safetensors"
PAD_TOKEN = "[PAD]"
LLAMA_PREFIX = "llama_model."
EMBEDDING_KEY = "llama_embed_tokens.weight"
SUPPORTED_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LISTED_NAMES = 12
HUB_PROBE_TIMEOUT_S = 3.0


class ModelLoadError(RuntimeError):
    """Base of every "this model cannot be loaded" error; messages are for users and never hold a token."""


class CheckpointNotFoundError(ModelLoadError, FileNotFoundError):
    """The source is neither a folder with config.json + model.safetensors nor a reachable Hub repo."""


class HubAccessError(ModelLoadError):
    """The Hub refused access: a gated or private repo and no (or an insufficient) token."""


class HubUnreachableError(ModelLoadError):
    """No network (or offline mode) and the files are not in the local Hugging Face cache."""


class CheckpointMismatchError(ModelLoadError):
    """Audio-stack or LoRA tensors are missing from the checkpoint or have the wrong shape."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LoadReport:
    """What a checkpoint contributed, by published name; `missing` only counts tensors the checkpoint must hold."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.missing:
            parts.append(f"missing: {_names(self.missing)}")
        if self.mismatched:
            shapes = [f"{name} (checkpoint {list(got)}, model {list(want)})" for name, got, want in self.mismatched]
            parts.append(f"wrong shape: {_names(shapes)}")
        if self.unexpected:
            parts.append(f"unexpected (ignored): {_names(self.unexpected)}")
        return "; ".join(parts)


def load_model(
    source: str | os.PathLike[str] = PUBLISHED_REPO_ID,
    llm: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    token: str | None = None,
    audio_precision: str | None = None,
) -> NatureLM:
    """Load NatureLM-audio (or any checkpoint in its layout, like the tiny one) ready for `generate`.

    `llm` replaces the config's `llama_path` (a Hub id or a folder), e.g. a local copy of
    Llama-3.1-8B-Instruct. `dtype` is the Llama's: bfloat16 on CUDA and float32 on CPU by default.
    The audio stack's weights stay float32 (0.4 GB); it computes under bf16 autocast with a bf16 Llama,
    as upstream does, unless `audio_precision="float32"` (see NatureLM.audio_precision). The LoRA
    adapters are in the Llama's dtype, as the checkpoint stores them (see NatureLM).
    """
    token = token or os.environ.get("HF_TOKEN") or None
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype, device)
    cache_only = functools.cache(lambda: not hub_reachable())  # asked once, and only if a Hub id is used
    config_path, checkpoint_path = _checkpoint_files(str(source), token, cache_only)
    config = NatureLMConfig.from_json_file(config_path)
    llama_source = str(llm) if llm is not None else config.resolved_llama_path()
    tokenizer, llama = _load_llama(llama_source, token, device, dtype, cache_only)
    with torch.device(device):
        audio_encoder = AudioEncoder(config, llama.config.hidden_size)
    model = NatureLM(config, audio_encoder, llama, tokenizer)
    model.audio_precision = audio_precision
    model.source, model.llm_source = str(source), llama_source
    try:
        checkpoint = safe_open(checkpoint_path, framework="pt")
    except SafetensorError as error:
        raise ModelLoadError(f"{checkpoint_path} is not a readable safetensors file ({error})") from None
    with checkpoint:
        shapes = {name: tuple(checkpoint.get_slice(name).get_shape()) for name in checkpoint.keys()}  # noqa: SIM118
        report = load_published_state(model, shapes, checkpoint.get_tensor)
    model.load_report = report
    model.compute_spectral_bases()
    logger.info("loaded %s with %s on %s (%s): %s", source, llama_source, device, dtype, report.summary())
    return model.eval()


def published_targets(model: NatureLM) -> dict[str, torch.Tensor]:
    """Every tensor a published checkpoint may set, by its published name.

    Audio-stack names are the encoder's own; LLM names get upstream's "llama_model." prefix (LoRA,
    and base weights should a checkpoint carry them); `llama_embed_tokens.weight` is the LLM's input
    embedding, which upstream shares with it.
    """
    targets = dict(model.audio_encoder.state_dict(keep_vars=True))
    for name, tensor in model.llama_model.state_dict(keep_vars=True).items():
        targets[LLAMA_PREFIX + name] = tensor
    targets[EMBEDDING_KEY] = model.llm.get_input_embeddings().weight
    return targets


def required_groups(model: NatureLM) -> list[list[str]]:
    """Published names the checkpoint must provide, grouped by tensor: one name of each group suffices.

    Groups exist because one tensor can have several names (BEATs shares layer 0's relative-position
    table with every layer; upstream's file keeps only layer 0's name).
    """
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in model.audio_encoder.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), []).append(name)
    for name, tensor in model.llama_model.state_dict(keep_vars=True).items():
        if ".lora_A." in name or ".lora_B." in name:
            by_tensor.setdefault(id(tensor), []).append(LLAMA_PREFIX + name)
    return list(by_tensor.values())


def load_published_state(
    model: NatureLM, shapes: Mapping[str, tuple[int, ...]], fetch: Callable[[str], torch.Tensor]
) -> LoadReport:
    """Copy checkpoint tensors into `model` by published name (`fetch` reads one at a time); strict report.

    Shapes are checked before anything is read, so a wrong checkpoint fails fast, and tensors are
    fetched one by one so the 1.5 GB file never sits in memory twice.
    """
    targets = published_targets(model)
    report = LoadReport()
    for name, shape in shapes.items():
        target = targets.get(name)
        if target is None:
            report.unexpected.append(name)
        elif tuple(target.shape) != tuple(shape):
            report.mismatched.append((name, tuple(shape), tuple(target.shape)))
    if report.unexpected:
        logger.warning("checkpoint tensors with no place in the model (ignored): %s", _names(report.unexpected))
    provided = set(shapes) - set(report.unexpected) - {name for name, _, _ in report.mismatched}
    report.missing = [group[0] for group in required_groups(model) if not provided.intersection(group)]
    if not report.ok:
        raise CheckpointMismatchError(f"the checkpoint does not fit this model: {report.summary()}", report)
    with torch.no_grad():
        for name in sorted(provided):
            targets[name].copy_(fetch(name))
            report.loaded.append(name)
    return report


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub's host (HF_ENDPOINT's) accepts a connection within `timeout_s`.

    Why: without a network huggingface_hub retries each request for about 30 s before it gives up, so
    an offline start sat silent that long before serving the demo. When the Hub cannot be reached,
    files come from the local cache only: a cached model still loads, an uncached one fails at once.
    Behind a proxy (HTTPS_PROXY / ALL_PROXY) the Hub is assumed reachable: the proxy decides.
    """
    if hub_constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(hub_constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _checkpoint_files(source: str, token: str | None, cache_only: Callable[[], bool]) -> tuple[str, str]:
    """(config.json, model.safetensors) from a local folder, or downloaded (and cached) from the Hub."""
    folder = Path(source).expanduser()
    if folder.exists() or not _REPO_ID.match(source):
        if not folder.is_dir():
            raise CheckpointNotFoundError(
                f"checkpoint folder not found: {source} (give a folder with {CONFIG_FILE} and {CHECKPOINT_FILE}, "
                f"or a Hub repo id such as {PUBLISHED_REPO_ID})"
            )
        absent = [name for name in (CONFIG_FILE, CHECKPOINT_FILE) if not (folder / name).is_file()]
        if absent:
            raise CheckpointNotFoundError(f"checkpoint folder {source} lacks {' and '.join(absent)}")
        return str(folder / CONFIG_FILE), str(folder / CHECKPOINT_FILE)
    with _hub_errors(source, token):
        local_only = cache_only()
        return tuple(
            hf_hub_download(source, name, token=token, local_files_only=local_only)
            for name in (CONFIG_FILE, CHECKPOINT_FILE)
        )


def _load_llama(
    source: str, token: str | None, device: torch.device, dtype: torch.dtype, cache_only: Callable[[], bool]
):
    """Tokenizer with [PAD] and the Llama resized to it, loaded straight to `device` in `dtype`.

    transformers builds the model on the meta device and fills it from the files, so the 16 GB of
    Llama-3.1-8B are allocated once, on the target device.
    """
    folder = Path(source).expanduser()
    if folder.exists() or not _REPO_ID.match(source):
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointNotFoundError(
                f"Llama folder not found or without {CONFIG_FILE}: {source} (pass llm= a transformers Llama folder "
                "or a Hub id such as meta-llama/Llama-3.1-8B-Instruct)"
            )
        source, local_only = str(folder), True
    else:
        local_only = cache_only()
    with _hub_errors(source, token):
        tokenizer = AutoTokenizer.from_pretrained(source, token=token, local_files_only=local_only)
        llama = LlamaForCausalLM.from_pretrained(
            source, token=token, dtype=dtype, device_map={"": device}, local_files_only=local_only
        )
    _add_pad_token(tokenizer, llama)
    return tokenizer, llama


def _add_pad_token(tokenizer, llama: LlamaForCausalLM) -> None:
    """Upstream's `[PAD]` (id 128256 for Llama-3), and embeddings grown to cover it.

    transformers initialises new rows at random, so upstream's lm_head [PAD] row changes at every
    load; we set new rows to the mean of the existing ones, which keeps loads reproducible and the
    [PAD] logit unremarkable. The input row is replaced anyway by `llama_embed_tokens.weight`.
    """
    if PAD_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.pad_token = PAD_TOKEN
    old_rows = llama.get_input_embeddings().num_embeddings
    if old_rows < len(tokenizer):
        llama.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for embedding in (llama.get_input_embeddings(), llama.get_output_embeddings()):
                mean = embedding.weight[:old_rows].mean(dim=0, dtype=torch.float32)  # accumulated in float32
                embedding.weight[old_rows:] = mean.to(embedding.weight.dtype)
    llama.generation_config.pad_token_id = tokenizer.pad_token_id


@contextlib.contextmanager
def _hub_errors(source: str, token: str | None) -> Iterator[None]:
    """Turn any failure to fetch or read `source` into a ModelLoadError, with the token redacted and the chain cut.

    The chain is cut (`from None`) because third-party exceptions may carry request details; the
    original type and a redacted message are all a user needs.
    """
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as error:
        raise _translated(error, source, token) from None


def _translated(error: Exception, source: str, token: str | None) -> ModelLoadError:
    causes = _cause_chain(error)
    if any(isinstance(c, GatedRepoError) for c in causes) or _is_auth_failure(causes):
        hint = "the token given has no access: request it on the repo's page" if token else "set HF_TOKEN"
        return HubAccessError(
            f"{source} is gated or private and needs a Hugging Face token with access ({hint}); "
            "the token is read from the HF_TOKEN environment variable or the token= argument"
        )
    if any(isinstance(c, RepositoryNotFoundError) for c in causes):
        return CheckpointNotFoundError(
            f"{source} is neither a local folder nor a Hub repo this token can see (for a private repo set HF_TOKEN)"
        )
    if any(isinstance(c, LocalEntryNotFoundError | OfflineModeIsEnabled) for c in causes) or _is_network(causes):
        return HubUnreachableError(
            f"cannot reach the Hugging Face Hub to fetch {source} (no network, or HF_HUB_OFFLINE=1), it is not in "
            "the local cache, and it is not a local folder; pass a local folder instead"
        )
    if any(isinstance(c, HFValidationError) for c in causes):
        return CheckpointNotFoundError(f"{source} is neither a local folder nor a valid Hub repo id")
    return ModelLoadError(f"could not load {source}: {_redact(f'{type(error).__name__}: {error}', token)}")


def _cause_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _is_auth_failure(causes: list[BaseException]) -> bool:
    for cause in causes:
        response = getattr(cause, "response", None)
        if getattr(response, "status_code", None) in (401, 403):
            return True
    return False


def _is_network(causes: list[BaseException]) -> bool:
    network_words = ("connection", "connect", "timeout", "timed out", "name resolution", "network")
    return any(
        isinstance(c, ConnectionError | TimeoutError) or any(w in type(c).__name__.lower() for w in network_words)
        for c in causes
    )


def _redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"not a torch device: {device!r} ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use device='cpu'")
    return resolved


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in SUPPORTED_DTYPES.values():
            return dtype
    elif dtype.removeprefix("torch.") in SUPPORTED_DTYPES:
        return SUPPORTED_DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED_NAMES])
    return shown if len(names) <= _LISTED_NAMES else f"{shown} and {len(names) - _LISTED_NAMES} more"
