"""Stand-ins for the published remote-code models (loaded with trust_remote_code=True in test_remote.py).

Same module names as LLaDA and Dream, but the public files' call conventions: an LLaDA block is called as
`block(x, attention_bias=None, layer_past=None, use_cache=False) -> (x, cache)` and computes its own rotary
embedding; a Dream layer as `layer(hidden_states, attention_mask=None, position_ids=None,
position_embeddings=(cos, sin) in the activation dtype) -> (hidden_states,)`. They are not BlockwiseLM models, so
the adapter must run them through faircalib.models.remote.
"""
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from faircalib.models.dream import DreamBaseModel, DreamConfig, DreamDecoderLayer
from faircalib.models.llada import LLaDABlock, LLaDAConfig, LLaDAModel
from faircalib.models.rope import rotary_cos_sin
from faircalib.models.weight_init import init_module_


class RemoteLLaDAConfig(LLaDAConfig):
    model_type = "remote-llada"


class RemoteDreamConfig(DreamConfig):
    model_type = "remote-dream"


class RemoteStyleLLaDABlock(LLaDABlock):
    def __init__(self, config):
        super().__init__(config)
        self.head_dim, self.theta = config.d_model // config.n_heads, config.rope_theta

    def forward(self, x, attention_bias=None, layer_past=None, use_cache=False):
        position_embeddings = rotary_cos_sin(torch.arange(x.shape[1])[None], self.head_dim, self.theta)
        return super().forward(x, position_embeddings), None


class RemoteStyleDreamLayer(DreamDecoderLayer):
    def forward(self, hidden_states, attention_mask=None, position_ids=None, position_embeddings=None, **kwargs):
        cos, sin = position_embeddings
        assert cos.dtype == hidden_states.dtype, "the published Dream code passes cos/sin in the activation dtype"
        return (super().forward(hidden_states, (cos.float(), sin.float()), attention_mask),)


class RemoteLLaDAModelLM(PreTrainedModel):
    config_class = RemoteLLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.model.transformer.blocks = nn.ModuleList(RemoteStyleLLaDABlock(config) for _ in range(config.n_layers))
        self.post_init()

    def _init_weights(self, module):
        init_module_(module, 0.02)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        x = self.model.transformer.wte(input_ids)
        for block in self.model.transformer.blocks:
            x, _ = block(x)
        return MaskedLMOutput(logits=self.model.transformer.ff_out(self.model.transformer.ln_f(x)))


class RemoteDreamModel(PreTrainedModel):
    config_class = RemoteDreamConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.model.layers = nn.ModuleList(RemoteStyleDreamLayer(config) for _ in range(config.num_hidden_layers))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        init_module_(module, 0.02)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        hidden = self.model.embed_tokens(input_ids)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rotary_cos_sin(torch.arange(input_ids.shape[1])[None], head_dim, self.config.rope_theta)
        for layer in self.model.layers:
            hidden = layer(hidden, position_embeddings=(cos.to(hidden.dtype), sin.to(hidden.dtype)))[0]
        return MaskedLMOutput(logits=self.lm_head(self.model.norm(hidden)))
