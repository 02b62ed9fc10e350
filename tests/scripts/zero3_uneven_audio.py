"""Run under torchrun with 2 ranks: rank 0 trains on batches with audio, rank 1 on batches
without any, through a real ZeRO-3 engine. Exits 0 after a few steps if nothing hangs."""

import sys

import deepspeed
import torch
import torch.distributed as dist

from llaso_train.config import DataConfig, ModelConfig, TrainConfig
from llaso_train.model import build_model
from llaso_train.distributed import shutdown_distributed
from llaso_train.recipe import deepspeed_config, freeze_for_stage

deepspeed.init_distributed(dist_backend="gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model_config = ModelConfig(
    encoder={"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "num_mel_bins": 80},
    lm={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64},
    stack=5)
config = TrainConfig(stage="instruct", model=model_config, data=DataConfig(shards="unread"), zero_stage=3, bf16=False)
model = build_model(model_config, vocab_size=64, audio_pad_id=3)
freeze_for_stage(model, config)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(config, False))
for step in range(int(sys.argv[1])):
    ids = torch.randint(4, 64, (2, 24))
    if rank == 0:
        ids[:, 2:12] = 3
        batch = dict(chunks=torch.randn(2, 8000), chunk_lengths=torch.tensor([8000, 6000]),
                     chunk_sample=torch.tensor([0, 1]), chunk_start=torch.tensor([2, 2]),
                     chunk_tokens=torch.tensor([5, 4]))
    else:
        batch = dict(chunks=torch.zeros(0, 0), chunk_lengths=torch.zeros(0, dtype=torch.int64),
                     chunk_sample=torch.zeros(0, dtype=torch.int64), chunk_start=torch.zeros(0, dtype=torch.int64),
                     chunk_tokens=torch.zeros(0, dtype=torch.int64))
    loss = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, **batch)
    engine.backward(loss)
    engine.step()
    print(f"rank {rank} step {step} loss {loss.item():.4f}", flush=True)
shutdown_distributed()
