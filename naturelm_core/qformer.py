"""The window-level Q-Former: BERT-style layers that turn a window of BEATs tokens into query vectors.

Upstream builds it from transformers' BERT and then deletes the text parts (word and position
embeddings, the text feed-forward); what remains is written out here with the published names
(`bert.encoder.layer.{i}.attention.self.query`, ...). Every layer self-attends over the queries,
cross-attends to the window's audio tokens, and runs the query feed-forward. No attention mask:
upstream's masks are all ones. Inference only, so no dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from naturelm_core.config import NatureLMConfig

LAYER_NORM_EPS = 1e-12
# bert-base-uncased's max_position_embeddings: the size of an unused buffer that is in the checkpoint.
MAX_POSITION_EMBEDDINGS = 512


class QFormerSelfAttention(nn.Module):
    """Multi-head attention of `hidden_states` over `context` (itself, or the audio tokens)."""

    def __init__(self, hidden_size: int, num_heads: int, context_width: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(context_width, hidden_size)
        self.value = nn.Linear(context_width, hidden_size)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: Tensor, context: Tensor) -> Tensor:
        q = self._split_heads(self.query(hidden_states))
        k = self._split_heads(self.key(context))
        v = self._split_heads(self.value(context))
        y = F.scaled_dot_product_attention(q, k, v)
        return y.transpose(1, 2).flatten(2)


class QFormerAddNorm(nn.Module):
    """BERT's output block: LayerNorm(dense(x) + residual)."""

    def __init__(self, in_features: int, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class QFormerAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, context_width: int) -> None:
        super().__init__()
        self.self = QFormerSelfAttention(hidden_size, num_heads, context_width)
        self.output = QFormerAddNorm(hidden_size, hidden_size)

    def forward(self, hidden_states: Tensor, context: Tensor) -> Tensor:
        return self.output(self.self(hidden_states, context), hidden_states)


class QFormerIntermediate(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class QFormerLayer(nn.Module):
    def __init__(self, config: NatureLMConfig) -> None:
        super().__init__()
        hidden, heads = config.qformer_hidden_size, config.qformer_num_heads
        self.attention = QFormerAttention(hidden, heads, context_width=hidden)
        self.crossattention = QFormerAttention(hidden, heads, context_width=config.beats_cfg.encoder_embed_dim)
        self.intermediate_query = QFormerIntermediate(hidden, config.qformer_intermediate_size)
        self.output_query = QFormerAddNorm(config.qformer_intermediate_size, hidden)

    def forward(self, queries: Tensor, audio_tokens: Tensor) -> Tensor:
        queries = self.attention(queries, queries)
        queries = self.crossattention(queries, audio_tokens)
        return self.output_query(self.intermediate_query(queries), queries)


class QFormerEmbeddings(nn.Module):
    """Only a LayerNorm on the query tokens; `position_ids` is kept because the checkpoint has it."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.register_buffer("position_ids", torch.arange(MAX_POSITION_EMBEDDINGS).unsqueeze(0))

    def forward(self, query_embeds: Tensor) -> Tensor:
        return self.LayerNorm(query_embeds)


class QFormerEncoder(nn.Module):
    def __init__(self, config: NatureLMConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(QFormerLayer(config) for _ in range(config.qformer_num_layers))

    def forward(self, queries: Tensor, audio_tokens: Tensor) -> Tensor:
        for layer in self.layer:
            queries = layer(queries, audio_tokens)
        return queries


class QFormerBert(nn.Module):
    def __init__(self, config: NatureLMConfig) -> None:
        super().__init__()
        self.embeddings = QFormerEmbeddings(config.qformer_hidden_size)
        self.encoder = QFormerEncoder(config)

    def forward(self, query_embeds: Tensor, audio_tokens: Tensor) -> Tensor:
        return self.encoder(self.embeddings(query_embeds), audio_tokens)


class QFormer(nn.Module):
    """Query tokens [N, Q, hidden] attending to audio windows [N, W, beats_dim] -> [N, Q, hidden].

    The `bert` level exists only to reproduce the published `audio_Qformer.bert.*` names.
    """

    def __init__(self, config: NatureLMConfig) -> None:
        super().__init__()
        self.bert = QFormerBert(config)

    def forward(self, query_embeds: Tensor, audio_tokens: Tensor) -> Tensor:
        return self.bert(query_embeds, audio_tokens)
