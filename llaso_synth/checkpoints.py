"""Tiny checkpoints of the real LLaSO-Base architectures, written with ``save_pretrained`` the
way the released ones are, for tests, the demo and the GPU check (nothing is downloaded):

* ``encoder/``: a ``WhisperForConditionalGeneration`` with whisper-large-v3's fields (128 mel
  bins, 1,500 source positions, its vocabulary and special ids) at toy width, saved in fp16;
* ``lm/``: a Llama-3.2-style ``LlamaForCausalLM`` (llama3 RoPE scaling, tied embeddings,
  grouped-query attention) at toy width, saved in bf16, with a generation config;
* ``lm/`` also holds a Llama-3-style tokenizer: byte-level BPE, the regular vocabulary
  first, then Llama-3's special tokens (``<|begin_of_text|>``, ``<|eot_id|>``, headers,
  ``<|finetune_right_pad_id|>``, reserved tokens), eos ``<|eot_id|>``, no pad token, and
  Llama-3's chat template.

Widths are parameters, so the same layouts serve at benchmark scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
RESERVED_TOKENS = 8
"""Reserved special tokens kept (Llama-3 has 248; the chat format uses the first three)."""


def llama3_special_tokens(reserved: int = RESERVED_TOKENS) -> list[str]:
    """Llama-3's special tokens in id order (ids 128000.. in the real vocabulary)."""
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(3, reserved)]


def llama3_tokenizer(texts: list[str] | None = None, regular: int = 600):
    """A Llama-3-style ``PreTrainedTokenizerFast``: byte-level BPE of ``regular`` entries
    trained on ``texts`` (default: the chat module's English + Chinese sample), then the
    special tokens of :func:`llama3_special_tokens`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from llaso_data.stream import chat

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=regular, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(list(texts or chat._TINY_CORPUS), trainer)
    specials = llama3_special_tokens()
    backend.add_special_tokens(specials)
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                        eos_token="<|eot_id|>", clean_up_tokenization_spaces=True,
                                        model_input_names=["input_ids", "attention_mask"])
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class Widths:
    """Toy (default) or benchmark widths of the two architectures."""

    whisper_d_model: int = 64
    whisper_layers: int = 2
    whisper_heads: int = 2
    whisper_ffn: int = 128
    lm_hidden: int = 64
    lm_intermediate: int = 128
    lm_layers: int = 2
    lm_heads: int = 4
    lm_kv_heads: int = 2


LLASO_BASE = Widths(whisper_d_model=1280, whisper_layers=32, whisper_heads=20, whisper_ffn=5120,
                    lm_hidden=3072, lm_intermediate=8192, lm_layers=28, lm_heads=24, lm_kv_heads=8)
"""whisper-large-v3's encoder and Llama-3.2-3B's dimensions (random weights)."""


def write_checkpoints(root: Path, widths: Widths = Widths(), seed: int = 0) -> dict[str, Path]:
    """Write ``root/encoder`` (fp16 Whisper) and ``root/lm`` (bf16 Llama + tokenizer); returns
    ``{"encoder": ..., "lm": ..., "tokenizer": ...}`` (the tokenizer lives in ``lm/``)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    root = Path(root)
    whisper = WhisperConfig(
        vocab_size=51866, num_mel_bins=128, d_model=widths.whisper_d_model,
        encoder_layers=widths.whisper_layers, encoder_attention_heads=widths.whisper_heads,
        encoder_ffn_dim=widths.whisper_ffn, decoder_layers=1, decoder_attention_heads=widths.whisper_heads,
        decoder_ffn_dim=widths.whisper_ffn, max_source_positions=1500, max_target_positions=448,
        pad_token_id=50256, bos_token_id=50257, eos_token_id=50257, decoder_start_token_id=50258,
        begin_suppress_tokens=[220, 50257], activation_function="gelu", scale_embedding=False)
    WhisperForConditionalGeneration(whisper).to(torch.float16).save_pretrained(root / "encoder")

    tokenizer = llama3_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")}
    llama = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=widths.lm_hidden, intermediate_size=widths.lm_intermediate,
        num_hidden_layers=widths.lm_layers, num_attention_heads=widths.lm_heads,
        num_key_value_heads=widths.lm_kv_heads, head_dim=widths.lm_hidden // widths.lm_heads,
        hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "high_freq_factor": 4.0,
                         "low_freq_factor": 1.0, "original_max_position_embeddings": 8192},
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=[ids["<|end_of_text|>"], ids["<|eot_id|>"]])
    lm = LlamaForCausalLM(llama).to(torch.bfloat16)
    lm.generation_config = GenerationConfig(bos_token_id=llama.bos_token_id, eos_token_id=llama.eos_token_id,
                                            do_sample=True, temperature=0.6, top_p=0.9)
    lm.save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    return {"encoder": root / "encoder", "lm": root / "lm", "tokenizer": root / "lm"}
