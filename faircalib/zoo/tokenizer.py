"""Character-level tokenizer of the shipped tiny dLLMs.

One id per character of a fixed alphabet, after three specials: `<pad>` (batch padding, never attended to),
`<mask>` (the diffusion mask token) and `<eos>` (end of answer; generations are padded with it up to their
length, as LLaDA's SFT data is). Saved as `tokenizer.json` beside the model weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from faircalib.atomic import write_json

SPECIAL_TOKENS = ("<pad>", "<mask>", "<eos>")
DEFAULT_ALPHABET = "0123456789+-*=:abcdefghijklmnopqrstuvwxyz"
TOKENIZER_FILE = "tokenizer.json"


class CharTokenizer:
    """Maps each character of `alphabet` to one id; ids 0, 1, 2 are pad, mask, eos."""

    def __init__(self, alphabet: str = DEFAULT_ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"zoo.tokenizer: alphabet {alphabet!r} repeats characters; give each character once")
        self.alphabet = alphabet
        self.pad_token_id, self.mask_token_id, self.eos_token_id = range(len(SPECIAL_TOKENS))
        self._char_to_id = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.alphabet)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        """str -> ids (no specials added)."""
        unknown = sorted(set(text) - self._char_to_id.keys())
        if unknown:
            raise ValueError(
                f"zoo.tokenizer: characters {unknown} of {text!r} are not in the alphabet {self.alphabet!r}; "
                "use only those characters or build the tokenizer with a larger alphabet"
            )
        return [self._char_to_id[c] for c in text]

    def decode(self, ids) -> str:
        """ids (list or 1-D tensor) -> str, stopping at the first eos; pad and mask ids are skipped."""
        chars = []
        for i in (int(i) for i in ids):
            if i == self.eos_token_id:
                break
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"zoo.tokenizer: id {i} is outside this tokenizer's {self.vocab_size} ids; the "
                                 f"model's vocab_size does not match the tokenizer it was saved with")
            if i >= len(SPECIAL_TOKENS):
                chars.append(self.alphabet[i - len(SPECIAL_TOKENS)])
        return "".join(chars)

    def save(self, directory) -> Path:
        """Writes `directory/tokenizer.json` atomically; returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"type": "char", "special_tokens": list(SPECIAL_TOKENS), "alphabet": self.alphabet}
        return write_json(directory / TOKENIZER_FILE, payload, indent=1)

    @classmethod
    def load(cls, directory) -> "CharTokenizer":
        """Reads `directory/tokenizer.json` (or the file itself when given its path)."""
        path = Path(directory)
        path = path if path.is_file() else path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"zoo.tokenizer: no {TOKENIZER_FILE} at {path}; save one with CharTokenizer.save")
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("type") != "char" or tuple(payload.get("special_tokens", ())) != SPECIAL_TOKENS:
            raise ValueError(
                f"zoo.tokenizer: {path} is not a character tokenizer with specials {SPECIAL_TOKENS}; "
                "it was written by something else"
            )
        return cls(payload["alphabet"])

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other.alphabet == self.alphabet

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, alphabet={self.alphabet!r})"
