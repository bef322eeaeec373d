"""The tokenizer wrapper: a Hugging Face ``tokenizer.json`` plus mm1data's special tokens.

Added special tokens: ``<pad>``, ``<image>`` (one image slot is ``image_tokens`` copies of it),
``<image_start>`` and ``<image_end>``. End-of-text is the tokenizer's own (``<|endoftext|>``,
``</s>``, ...) or an added ``<|endoftext|>`` when it has none. Text is encoded with special-token
matching off, so a caption that literally contains ``<image>`` or ``<|endoftext|>`` never yields
a special id.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer

from mm1data.errors import UsageError

BUNDLED = "gpt2-tokenizer.json"
"""The default tokenizer: OpenAI's GPT-2 byte-level BPE (50,257 entries, MIT licence), as shipped in
allenai/OLMo's test fixtures (Apache-2.0)."""

ADDED = {"pad": "<pad>", "image": "<image>", "image_start": "<image_start>", "image_end": "<image_end>"}
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>")


def bundled_tokenizer_path() -> Path:
    """Path of the tokenizer.json shipped inside the package."""
    return Path(str(resources.files("mm1data.tokens") / BUNDLED))


class TextTokenizer:
    """A ``tokenizer.json`` with the image/pad special tokens added; ``ids`` names every special id."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else bundled_tokenizer_path()
        if not self.path.is_file():
            raise UsageError(f"tokenizer not found: {self.path}")
        raw = self.path.read_bytes()
        try:
            self.tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on bad json
            raise UsageError(f"{self.path} is not a Hugging Face tokenizer.json: {str(e)[:200]}") from e
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.name = "gpt2" if self.path.name == BUNDLED else self.path.name.removesuffix(".json")
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        eos = next((n for n in EOS_NAMES if n in vocab), None)
        names = {**ADDED, "eos": eos or "<|endoftext|>"}
        self.tokenizer.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in names.values()]
        )
        self.tokenizer.encode_special_tokens = True
        self.ids: dict[str, int] = {k: self.tokenizer.token_to_id(v) for k, v in names.items()}
        self.ids = {k: self.ids[k] for k in ("pad", "eos", "image", "image_start", "image_end")}

    @cached_property
    def vocab_size(self) -> int:
        """Vocabulary size including the added tokens (ids are < this)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS added; special tokens in the text are plain text)."""
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, special tokens kept (``<image>`` etc. appear literally)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def manifest(self) -> dict:
        """The manifest's ``tokenizer`` entry: name, sha256 of the json, vocab size."""
        return {"name": self.name, "sha256": self.sha256, "vocab_size": self.vocab_size}
