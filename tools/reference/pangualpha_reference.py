"""A plain PyTorch reference implementation of PanGu-α (`PanguAlphaHeadModel`).

No Hugging Face class exists for PanGu-α, so this module is written from the paper
(Zeng et al. 2021, "PanGu-α: Large-scale Autoregressive Pretrained Chinese Language Models
with Auto-parallel Computation", section 3.1) and MindFormers' model card / config names:

* token embedding + learned position embedding (`seq_length` positions), embedding dropout;
* `num_layers - 1` GPT-style pre-LayerNorm transformer layers (q/k/v/output projections
  `dense1`/`dense2`/`dense3`/`projection` with biases, softmax(q kᵀ / sqrt(d)) with a causal
  and key-padding mask, MLP `mapping` -> activation -> `projection`);
* a final LayerNorm over those layers' output;
* the top query layer: a transformer layer whose attention *query* is computed from a
  separate learned embedding of the position (`top_query_embedding`) instead of the hidden
  state, while keys and values come from the LayerNorm'd hidden state;
* logits = top query layer output @ token embedding ᵀ (the head is tied, no final norm).

`post_layernorm_residual` (MindFormers' option) takes the residual from the LayerNorm output.
`fast_gelu` is MindSpore's FastGeLU, x * sigmoid(1.702 x).

The model derives from transformers' PreTrainedModel + GenerationMixin only so that the
fixtures' greedy and beam-search ids come from the same `generate` as every other family.
Parameter names follow MindFormers' module hierarchy (`backbone.blocks.N.attention.dense1`,
...) with PyTorch's `weight`/`bias` and `[out, in]` linear layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast


class PanguAlphaConfig(PretrainedConfig):
    model_type = "pangualpha"
    # generate() sizes its cache through the usual names.
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                     "max_position_embeddings": "seq_length"}

    def __init__(self, vocab_size=40000, hidden_size=2560, ffn_hidden_size=10240, num_layers=32,
                 num_heads=32, seq_length=1024, hidden_act="fast_gelu", layernorm_epsilon=1e-5,
                 embedding_dropout_prob=0.1, hidden_dropout_rate=0.1, attention_dropout_rate=0.1,
                 post_layernorm_residual=False, initializer_range=0.02, pad_token_id=6,
                 eos_token_id=8, bos_token_id=None, use_past=False, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.seq_length = seq_length
        self.hidden_act = hidden_act
        self.layernorm_epsilon = layernorm_epsilon
        self.embedding_dropout_prob = embedding_dropout_prob
        self.hidden_dropout_rate = hidden_dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.post_layernorm_residual = post_layernorm_residual
        self.initializer_range = initializer_range
        self.use_past = use_past
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                         **kwargs)


def activation(name):
    if name == "fast_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name}")


class Embedding(nn.Module):
    def __init__(self, n, dim):
        super().__init__()
        self.embedding_table = nn.Parameter(torch.zeros(n, dim))

    def forward(self, ids):
        return F.embedding(ids, self.embedding_table)


class Attention(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        h = cfg.hidden_size
        self.n, self.d, self.layer_idx = cfg.num_heads, h // cfg.num_heads, layer_idx
        self.dense1 = nn.Linear(h, h)  # query
        self.dense2 = nn.Linear(h, h)  # key
        self.dense3 = nn.Linear(h, h)  # value
        self.projection = nn.Linear(h, h)
        self.dropout = cfg.attention_dropout_rate

    def forward(self, query_in, kv_in, mask, cache):
        b, t, _ = query_in.shape
        split = lambda y: y.view(b, t, self.n, self.d).transpose(1, 2)
        q, k, v = split(self.dense1(query_in)), split(self.dense2(kv_in)), split(self.dense3(kv_in))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d) + mask
        probs = F.dropout(scores.float().softmax(-1).to(q.dtype), self.dropout, self.training)
        out = (probs @ v).transpose(1, 2).reshape(b, t, self.n * self.d)
        return self.projection(out)


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.mapping = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size)
        self.projection = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)

    def forward(self, x):
        return self.projection(self.act(self.mapping(x)))


class Layer(nn.Module):
    """A pre-LayerNorm transformer layer; as the top query layer, the attention query comes
    from `query_vector` instead of the normalised hidden state."""

    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.layernorm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.attention = Attention(cfg, layer_idx)
        self.layernorm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.output = FeedForward(cfg)
        self.post_ln = cfg.post_layernorm_residual
        self.p = cfg.hidden_dropout_rate

    def forward(self, x, mask, cache, query_vector=None):
        ln = self.layernorm1(x)
        q_in = ln if query_vector is None else query_vector
        attn = F.dropout(self.attention(q_in, ln, mask, cache), self.p, self.training)
        x = (ln if self.post_ln else x) + attn
        ln = self.layernorm2(x)
        mlp = F.dropout(self.output(ln), self.p, self.training)
        return (ln if self.post_ln else x) + mlp


class EmbeddingLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word_embedding = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = Embedding(cfg.seq_length, cfg.hidden_size)
        self.p = cfg.embedding_dropout_prob

    def forward(self, ids, pos):
        return F.dropout(self.word_embedding(ids) + self.position_embedding(pos), self.p, self.training)


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embedding = EmbeddingLayer(cfg)
        self.blocks = nn.ModuleList([Layer(cfg, i) for i in range(cfg.num_layers - 1)])
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.top_query_embedding = Embedding(cfg.seq_length, cfg.hidden_size)
        self.top_query_layer = Layer(cfg, cfg.num_layers - 1)


class PanguAlphaHeadModel(PreTrainedModel, GenerationMixin):
    config_class = PanguAlphaConfig
    base_model_prefix = "backbone"

    def __init__(self, config):
        super().__init__(config)
        self.backbone = Backbone(config)
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Embedding):
            nn.init.normal_(module.embedding_table, std=std)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
            else:
                position_ids = torch.arange(past, past + t).unsqueeze(0).expand(b, t)
        # Causal + key-padding mask, additive; every query keeps its own position so padding
        # rows stay finite (their outputs are never read).
        q_pos = torch.arange(past, past + t)[:, None]
        k_pos = torch.arange(past + t)[None, :]
        allowed = (k_pos <= q_pos)[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        allowed = allowed | (k_pos == q_pos)[None, None]
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))

        bb = self.backbone
        x = bb.embedding(input_ids, position_ids)
        for blk in bb.blocks:
            x = blk(x, mask, cache)
        x = bb.layernorm(x)
        x = bb.top_query_layer(x, mask, cache, query_vector=bb.top_query_embedding(position_ids))
        logits = x @ bb.embedding.word_embedding.embedding_table.T
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache if use_cache else None)
