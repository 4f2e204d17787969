"""Tiny, randomly initialised diffusers pipelines of the real architectures, built offline.

``make_tiny("flux", out_dir)`` writes a pipeline folder that loads back through
``DiffusionPipeline.from_pretrained(out_dir)`` exactly like a downloaded checkpoint: the same
pipeline classes, component classes and geometry (latent channels, VAE scale factors, patching),
but a few hundred thousand random parameters. Tokenizers are trained here, on a handful of
sentences, by small deterministic trainers, so nothing is downloaded.

The weights are random, so the outputs are noise. Each folder holds ``MARKER_FILE`` so that apps
can say so (``is_tiny_random``). torch, diffusers and transformers are imported only when a
pipeline is built: this module imports without them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

TINY_KINDS: tuple[str, ...] = ("flux", "flux-kontext", "hidream", "kandinsky5", "sd", "wan",
                                "wan-i2v")
MARKER_FILE = "OPENFAL_TINY_RANDOM_WEIGHTS.txt"

TOKENIZER_SENTENCES: tuple[str, ...] = (
    "a photo of a cat sitting on a red chair",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of mountains at sunset",
    "a tiny robot walking through a forest, cinematic lighting",
    "close-up portrait of an old man with a beard, 35mm film",
    "a bowl of ramen with eggs and green onions",
    "The quick brown fox jumps over the lazy dog 0123456789!?.,;:'\"()[]{}",
)

# CLIP's pre-tokenisation for the (lower-cased, ASCII) training sentences.
CLIP_WORD_PATTERN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
CLIP_END_OF_WORD = "</w>"
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
CLIP_MAX_MERGES = 200
CLIP_MAX_LENGTH = 77

# Llama 3's byte-level BPE (GPT-2 style: a word carries its leading space, no end marker).
LLAMA_WORD_PATTERN = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+")
LLAMA_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>")
LLAMA_MAX_MERGES = 200
LLAMA_MAX_LENGTH = 128

# Qwen2's byte-level BPE: the end of text (also the padding) and the chat turns' markers.
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_MAX_MERGES = 1000
# Kandinsky 5 feeds Qwen up to 128 tokens of its prompt template and 512 of the prompt.
QWEN_MAX_LENGTH = 1024

T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1 and 2, as T5 expects
T5_WORD_BOUNDARY = "\u2581"
T5_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()[]{}-"
T5_EXTRA_IDS = 100

CLIP_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "projection_dim": 32,
    "hidden_act": "gelu",
    "max_position_embeddings": CLIP_MAX_LENGTH,
}
T5_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 1000,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 37,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "is_encoder_decoder": False,
}

LLAMA_CONFIG: dict[str, Any] = {
    "vocab_size": 1000,
    "hidden_size": 16,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": LLAMA_MAX_LENGTH,
}

# A tiny 8x VAE (four blocks), shared by the image pipelines below.
VAE_8X_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 16, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}

# FLUX.1 geometry: an 8x VAE with 16 latent channels, 2x2 latent patches packed into 64 channels.
FLUX_VAE_CONFIG: dict[str, Any] = {
    **VAE_8X_CONFIG,
    "sample_size": 64,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.1159,
    "scaling_factor": 0.3611,
}
FLUX_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_ENCODER_CONFIG["d_model"],
    "pooled_projection_dim": CLIP_TEXT_CONFIG["hidden_size"],
    "axes_dims_rope": [4, 4, 8],
}
# FLUX.1 Kontext [dev] and FLUX.1 [dev]-based checkpoints embed the guidance scale.
FLUX_KONTEXT_TRANSFORMER_CONFIG: dict[str, Any] = {**FLUX_TRANSFORMER_CONFIG,
                                                   "guidance_embeds": True}
FLUX_SCHEDULER_CONFIG: dict[str, Any] = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

# HiDream-I1 geometry: FLUX's VAE, 2x2 latent patches, a mixture-of-experts transformer fed by
# two CLIPs (pooled), T5 and chosen Llama 3 layers.
HIDREAM_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": FLUX_VAE_CONFIG["latent_channels"],
    "out_channels": FLUX_VAE_CONFIG["latent_channels"],
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "caption_channels": [T5_ENCODER_CONFIG["d_model"], LLAMA_CONFIG["hidden_size"]],
    "text_emb_dim": 2 * CLIP_TEXT_CONFIG["projection_dim"],
    "num_routed_experts": 4,
    "num_activated_experts": 2,
    "axes_dims_rope": [4, 2, 2],
    "max_resolution": [128, 128],
    "llama_layers": [0, 1],
}
HIDREAM_SCHEDULER_CONFIG: dict[str, Any] = {"shift": 3.0}
# HiDream's CLIPs are Long-CLIP (248 positions); the pipeline feeds them up to 128 tokens.
HIDREAM_CLIP_POSITIONS = 248

# Stable Diffusion 1.x geometry: an 8x VAE with 4 latent channels.
SD_VAE_CONFIG: dict[str, Any] = {
    **VAE_8X_CONFIG,
    "sample_size": 256,
    "latent_channels": 4,
    "scaling_factor": 0.18215,
}
SD_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": CLIP_TEXT_CONFIG["hidden_size"],
    "attention_head_dim": 4,
    "norm_num_groups": 4,
}
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

# Wan 2.1 text-to-video geometry: a causal 3D VAE, 8x in space and 4x in time, 16 channels.
WAN_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 3,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}
WAN_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": T5_ENCODER_CONFIG["d_model"],
    "freq_dim": 256,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}
WAN_SCHEDULER_CONFIG: dict[str, Any] = {"shift": 5.0}
# Wan 2.1 image-to-video: the transformer also takes the image's latents (16 channels) and a
# 4-channel first-frame mask. Built without the CLIP image encoder (image_dim=None), as
# diffusers allows for Wan I2V: the image conditions the video through its latents only.
WAN_I2V_TRANSFORMER_CONFIG: dict[str, Any] = {
    **WAN_TRANSFORMER_CONFIG,
    "in_channels": 2 * WAN_VAE_CONFIG["z_dim"] + 4,
    "image_dim": None,
}

# Kandinsky 5.0 T2V geometry: HunyuanVideo's causal 3D VAE (8x in space, 4x in time, 16 channels),
# a transformer on 1x2x2 patches fed by Qwen2.5-VL's last hidden states and CLIP's pooled output.
QWEN2_5_VL_CONFIG: dict[str, Any] = {
    "text_config": {
        "vocab_size": 1000,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        # Multimodal RoPE over (time, height, width): half the head dimension, split.
        "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
    },
    "vision_config": {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_heads": 4,
        "out_hidden_size": 32,
        "fullatt_block_indexes": [0],
    },
}
# One channel a block and no mid-block attention (which attends over every latent pixel of
# several frames at once): decoding 121 frames is most of a tiny request's time on a CPU.
KANDINSKY5_VAE_CONFIG: dict[str, Any] = {
    "latent_channels": 16,
    "block_out_channels": [1, 1, 1, 1],
    "layers_per_block": 0,
    "norm_num_groups": 1,
    "mid_block_add_attention": False,
}
KANDINSKY5_TRANSFORMER_CONFIG: dict[str, Any] = {
    "in_visual_dim": KANDINSKY5_VAE_CONFIG["latent_channels"],
    "out_visual_dim": KANDINSKY5_VAE_CONFIG["latent_channels"],
    "in_text_dim": QWEN2_5_VL_CONFIG["text_config"]["hidden_size"],
    "in_text_dim2": CLIP_TEXT_CONFIG["hidden_size"],
    "time_dim": 32,
    "patch_size": [1, 2, 2],
    "model_dim": 8,
    "ff_dim": 16,
    "num_text_blocks": 1,
    "num_visual_blocks": 1,
    "axes_dims": [2, 2, 4],  # their sum is the head dimension: one head
}
KANDINSKY5_SCHEDULER_CONFIG: dict[str, Any] = {"shift": 5.0}


def make_tiny(kind: str, out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random pipeline of ``kind`` (one of ``TINY_KINDS``) and save it in ``out_dir``.

    The same ``seed`` always gives the same weights and tokenizers. Returns ``out_dir``.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; choose one of {TINY_KINDS}")
    import torch

    out_dir = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipeline = _BUILDERS[kind]()
    pipeline.save_pretrained(out_dir)
    (out_dir / MARKER_FILE).write_text(
        f"This {kind!r} pipeline has random weights (openfal.models.tiny, seed={seed}).\n"
        "Its outputs are noise. It exists for tests and demos of the serving machinery.\n"
    )
    return out_dir


def is_tiny_random(path: Path) -> bool:
    """Whether ``path`` is a pipeline folder written by ``make_tiny`` (random weights)."""
    return (Path(path) / MARKER_FILE).is_file()


# Pipelines


def _flux_pipeline(pipeline_class: str = "FluxPipeline",
                   transformer_config: dict[str, Any] = FLUX_TRANSFORMER_CONFIG) -> Any:
    import diffusers

    clip_tokenizer = _clip_tokenizer()
    return getattr(diffusers, pipeline_class)(
        scheduler=_flow_match_scheduler(FLUX_SCHEDULER_CONFIG),
        vae=_autoencoder_kl(FLUX_VAE_CONFIG),
        text_encoder=_clip_text_encoder(clip_tokenizer),
        tokenizer=clip_tokenizer,
        text_encoder_2=_t5_encoder(),
        tokenizer_2=_t5_tokenizer(),
        transformer=_flux_transformer(transformer_config),
    )


def _hidream_pipeline() -> Any:
    from diffusers import HiDreamImagePipeline

    clip_tokenizer = _clip_tokenizer()
    return HiDreamImagePipeline(
        scheduler=_flow_match_scheduler(HIDREAM_SCHEDULER_CONFIG),
        vae=_autoencoder_kl(FLUX_VAE_CONFIG),
        text_encoder=_clip_text_encoder(clip_tokenizer, HIDREAM_CLIP_POSITIONS,
                                        with_projection=True),
        tokenizer=clip_tokenizer,
        text_encoder_2=_clip_text_encoder(clip_tokenizer, HIDREAM_CLIP_POSITIONS,
                                          with_projection=True),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(),
        tokenizer_3=_t5_tokenizer(),
        text_encoder_4=_llama(),
        tokenizer_4=_llama_tokenizer(),
        transformer=_hidream_transformer(),
    )


def _sd_pipeline() -> Any:
    from diffusers import StableDiffusionPipeline

    clip_tokenizer = _clip_tokenizer()
    return StableDiffusionPipeline(
        vae=_autoencoder_kl(SD_VAE_CONFIG),
        text_encoder=_clip_text_encoder(clip_tokenizer),
        tokenizer=clip_tokenizer,
        unet=_sd_unet(),
        scheduler=_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _wan_pipeline(pipeline_class: str = "WanPipeline",
                  transformer_config: dict[str, Any] = WAN_TRANSFORMER_CONFIG,
                  **components: Any) -> Any:
    import diffusers

    return getattr(diffusers, pipeline_class)(
        tokenizer=_t5_tokenizer(),
        text_encoder=_umt5_encoder(),
        vae=_wan_vae(),
        scheduler=_flow_match_scheduler(WAN_SCHEDULER_CONFIG),
        transformer=_wan_transformer(transformer_config),
        **components,
    )


def _kandinsky5_pipeline() -> Any:
    from diffusers import Kandinsky5T2VPipeline

    clip_tokenizer = _clip_tokenizer()
    pipeline = Kandinsky5T2VPipeline(
        transformer=_kandinsky5_transformer(),
        vae=_hunyuan_video_vae(),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=_clip_text_encoder(clip_tokenizer),
        tokenizer_2=clip_tokenizer,
        scheduler=_flow_match_scheduler(KANDINSKY5_SCHEDULER_CONFIG),
    )
    # The pipeline keeps the embeddings from the 128th token of its prompt template on: the
    # tokenizer learns the template's words, so that the template is about that long.
    tokenizer = _qwen2_tokenizer(pipeline.prompt_template)
    pipeline.register_modules(tokenizer=tokenizer, text_encoder=_qwen2_5_vl(tokenizer))
    return pipeline


_BUILDERS: dict[str, Callable[[], Any]] = {
    "flux": _flux_pipeline,
    "flux-kontext": partial(_flux_pipeline, "FluxKontextPipeline",
                            FLUX_KONTEXT_TRANSFORMER_CONFIG),
    "hidream": _hidream_pipeline,
    "kandinsky5": _kandinsky5_pipeline,
    "sd": _sd_pipeline,
    "wan": _wan_pipeline,
    "wan-i2v": partial(_wan_pipeline, "WanImageToVideoPipeline", WAN_I2V_TRANSFORMER_CONFIG,
                       image_encoder=None, image_processor=None),
}


# Models and schedulers


def _clip_text_encoder(tokenizer: Any, max_positions: int = CLIP_MAX_LENGTH,
                       with_projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        **{**CLIP_TEXT_CONFIG, "max_position_embeddings": max_positions},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _t5_encoder() -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_ENCODER_CONFIG))


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**LLAMA_CONFIG))


def _qwen2_5_vl(tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    token_ids = {"bos_token_id": tokenizer.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS[0]),
                 "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    text_config = {**QWEN2_5_VL_CONFIG["text_config"], **token_ids}
    return Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(**{**QWEN2_5_VL_CONFIG, "text_config": text_config}))


def _umt5_encoder() -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**T5_ENCODER_CONFIG))


def _autoencoder_kl(config: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**config)


def _flux_transformer(config: dict[str, Any] = FLUX_TRANSFORMER_CONFIG) -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**config)


def _hidream_transformer() -> Any:
    from diffusers import HiDreamImageTransformer2DModel

    return HiDreamImageTransformer2DModel(**HIDREAM_TRANSFORMER_CONFIG)


def _sd_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SD_UNET_CONFIG)


def _wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**WAN_VAE_CONFIG)


def _wan_transformer(config: dict[str, Any] = WAN_TRANSFORMER_CONFIG) -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**config)


def _hunyuan_video_vae() -> Any:
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(**KANDINSKY5_VAE_CONFIG)


def _kandinsky5_transformer() -> Any:
    from diffusers import Kandinsky5Transformer3DModel

    return Kandinsky5Transformer3DModel(**KANDINSKY5_TRANSFORMER_CONFIG)


def _flow_match_scheduler(config: dict[str, Any]) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def _ddim_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_SCHEDULER_CONFIG)


# Tokenizers


def _clip_tokenizer() -> Any:
    """A byte-level BPE CLIP tokenizer: every byte is in the vocabulary, so nothing maps to unk."""
    from transformers import CLIPTokenizer

    byte_symbols = list(_bytes_to_unicode().values())
    vocab = byte_symbols + [symbol + CLIP_END_OF_WORD for symbol in byte_symbols]
    merges = _train_bpe_merges(_clip_words(TOKENIZER_SENTENCES), CLIP_MAX_MERGES)
    vocab += [left + right for left, right in merges]
    vocab += CLIP_SPECIAL_TOKENS
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(dict.fromkeys(vocab))},
        merges=merges,
        model_max_length=CLIP_MAX_LENGTH,
    )


def _llama_tokenizer() -> Any:
    """A Llama 3 style tokenizer (``PreTrainedTokenizerFast`` over byte-level BPE, a
    beginning-of-text token first): every byte is in the vocabulary, so nothing maps to unk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    merges = _train_bpe_merges(_llama_words(TOKENIZER_SENTENCES), LLAMA_MAX_MERGES)
    vocab = [*_bytes_to_unicode().values(), *(left + right for left, right in merges),
             *LLAMA_SPECIAL_TOKENS]
    ids = {token: index for index, token in enumerate(dict.fromkeys(vocab))}
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bos = LLAMA_SPECIAL_TOKENS[0]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids[bos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=LLAMA_SPECIAL_TOKENS[1],
        model_max_length=LLAMA_MAX_LENGTH)


def _qwen2_tokenizer(template: str) -> Any:
    """A Qwen2 tokenizer (byte-level BPE behind Qwen2's pre-tokenizer; its end of text pads, as
    Qwen's does) whose merges are learnt from the training sentences and ``template`` counted
    twice, so that each word of the template is one token, as in Qwen's vocabulary. Every byte
    is in the vocabulary, so nothing maps to unk."""
    from transformers import Qwen2Tokenizer

    endoftext, im_start, im_end = QWEN_SPECIAL_TOKENS
    for special in QWEN_SPECIAL_TOKENS:
        template = template.replace(special, "\n")
    words = _llama_words((*TOKENIZER_SENTENCES, template, template))
    merges = _train_bpe_merges(words, QWEN_MAX_MERGES)
    vocab = [*_bytes_to_unicode().values(), *(left + right for left, right in merges),
             *QWEN_SPECIAL_TOKENS]
    return Qwen2Tokenizer(
        vocab={token: index for index, token in enumerate(dict.fromkeys(vocab))},
        merges=merges, eos_token=im_end, pad_token=endoftext,
        additional_special_tokens=[im_start, im_end], model_max_length=QWEN_MAX_LENGTH)


def _t5_tokenizer() -> Any:
    """A unigram T5 tokenizer whose pieces are the training words and single characters."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=_unigram_vocab(TOKENIZER_SENTENCES), extra_ids=T5_EXTRA_IDS)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character, as byte-level BPE uses it."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    for shift, byte in enumerate(b for b in range(256) if b not in mapping):
        mapping[byte] = chr(256 + shift)
    return mapping


def _clip_words(sentences: tuple[str, ...]) -> Counter[tuple[str, ...]]:
    """Each pre-tokenised word as byte-level symbols, the last one marked as a word end."""
    byte_map = _bytes_to_unicode()
    words: Counter[tuple[str, ...]] = Counter()
    for sentence in sentences:
        for word in CLIP_WORD_PATTERN.findall(sentence.lower()):
            symbols = [byte_map[byte] for byte in word.encode()]
            symbols[-1] += CLIP_END_OF_WORD
            words[tuple(symbols)] += 1
    return words


def _llama_words(sentences: tuple[str, ...]) -> Counter[tuple[str, ...]]:
    """Each pre-tokenised word (with its leading space) as byte-level symbols."""
    byte_map = _bytes_to_unicode()
    return Counter(tuple(byte_map[byte] for byte in word.encode())
                   for sentence in sentences for word in LLAMA_WORD_PATTERN.findall(sentence))


def _train_bpe_merges(words: Counter[tuple[str, ...]], max_merges: int
                      ) -> list[tuple[str, str]]:
    """Plain BPE over ``words`` (symbol tuples with their counts): merge the most frequent
    pair (ties: alphabetical) while some pair repeats."""
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < 2:
            break
        merges.append(best)
        words = Counter({_merge_pair(word, best): count for word, count in words.items()})
    return merges


def _merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    index = 0
    while index < len(word):
        if word[index : index + 2] == pair:
            merged.append(pair[0] + pair[1])
            index += 2
        else:
            merged.append(word[index])
            index += 1
    return tuple(merged)


def _unigram_vocab(sentences: tuple[str, ...]) -> list[tuple[str, float]]:
    """Pieces scored by log relative frequency, most likely first.

    Every character of ``T5_ALPHABET`` is counted once more, so each one is a piece.
    """
    counts: Counter[str] = Counter(T5_ALPHABET)
    for sentence in sentences:
        for word in sentence.split():
            counts[T5_WORD_BOUNDARY + word] += 1
            counts[T5_WORD_BOUNDARY] += 1
            counts.update(word)
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    pieces = [(piece, math.log(count / total)) for piece, count in ranked]
    return [(token, 0.0) for token in T5_SPECIAL_TOKENS] + pieces
