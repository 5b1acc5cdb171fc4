"""Write a tiny random Qwen3 embedding model to a directory. Runs in the vLLM environment.

``python make_tiny_qwen3.py DEST [--context N]``: a ``Qwen3ForCausalLM`` with 2 layers,
hidden size 64 and head_dim 64 (head_dim 16 crashes vLLM's CPU attention on the first
request: "Unsupported CPU attention configuration", engines.md), random weights from a
fixed seed, float32 safetensors, and a 512-token byte-level BPE tokenizer trained here on
a fixed corpus (no hub access). The tokenizer appends ``<|endoftext|>`` like
Qwen3-Embedding's does, so last-token pooling reads that token. ``config.json`` says
``is_matryoshka: true`` so engines accept ``dimensions``. The vectors mean nothing; the
model exists to exercise last-token pooling, Matryoshka truncation and a short context.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

SEED = 20261201
VOCAB = 512
EOS = "<|endoftext|>"

_WORD_TEXT = (
    "the a an of to in on at for with from by is are was were be been has have had it this "
    "that these those cat dog bird fish guitar piano song music market stock price fell rose "
    "bank river water tree forest city road car train plane ship sun moon star sky rain snow "
    "cold warm hot engine plug glow model vector search query document embedding kubernetes "
    "pod node cluster request response server client token context length dimension one two "
    "three four five six seven eight nine ten hello world quick brown fox jumps over lazy"
)
WORDS = _WORD_TEXT.split()


def corpus() -> list[str]:
    rng = random.Random(SEED)
    lines = []
    for _ in range(4000):
        n = rng.randint(3, 16)
        lines.append(" ".join(rng.choice(WORDS) for _ in range(n)) + rng.choice([".", "?", "!"]))
    return lines


def tokenizer(context: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, model_max_length=context
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("dest", type=Path)
    p.add_argument("--context", type=int, default=128)
    args = p.parse_args()
    tok = tokenizer(args.context)
    torch.manual_seed(SEED)
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=args.context,
        tie_word_embeddings=True,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        torch_dtype="float32",
    )
    model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    args.dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.dest, safe_serialization=True)
    tok.save_pretrained(args.dest)
    # Matryoshka: both SGLang and vLLM read is_matryoshka from the model config.
    cfg_path = args.dest / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["is_matryoshka"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"tiny Qwen3 written to {args.dest}: vocab {len(tok)}, context {args.context}")


if __name__ == "__main__":
    main()
