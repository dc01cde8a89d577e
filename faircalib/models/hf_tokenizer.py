"""A real checkpoint's Hugging Face tokenizer behind the interface the commands use with the task-suite
`CharTokenizer` (`encode`, `decode`, `pad_token_id`, `eos_token_id`), so that `faircalib generate` answers prompts
with LLaDA/Dream checkpoints and the W4A4 exports made from them (which carry their tokenizer files)."""
from __future__ import annotations

import os


class HFTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    @classmethod
    def load(cls, directory: str | os.PathLike, trust_remote_code: bool = False) -> "HFTokenizer":
        """`transformers.AutoTokenizer` from the local directory only (nothing is downloaded)."""
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                 trust_remote_code=trust_remote_code))

    def encode(self, text: str) -> list[int]:
        """The tokenizer's own encoding, special tokens (e.g. a BOS) included, as the checkpoints' examples use it."""
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids) -> str:
        """ids (list or 1-D tensor) -> text up to the first eos, special tokens dropped (as `CharTokenizer.decode`)."""
        ids = [int(i) for i in ids]
        if self.eos_token_id in ids:
            ids = ids[:ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)
