"""GPT-2's byte-level BPE as a `seqio.Vocabulary`, built from the rank file `openai-whisper` ships
(`whisper/assets/gpt2.tiktoken`, the 50,256 mergeable byte strings of GPT-2 with their ranks), on HF
`tokenizers`' BPE model; its ids equal tiktoken's `gpt2` encoding and transformers' GPT2TokenizerFast.

A rank file lists tokens, not merges. GPT-2's merge that makes the token of rank r joins the two pieces that BPE
over the ranks below r leaves of that token's bytes, so `gpt2_merges` recovers the merge list by running BPE
once per token. Byte-level: every byte is first mapped to a printable character (GPT-2's `bytes_to_unicode`),
which is how `tokenizers` stores byte-level vocabularies.

Ids: 0..50255 are the BPE tokens, 50256 is `<|endoftext|>` (`eos_id`). Text that contains the string
"<|endoftext|>" is encoded as ordinary text (tiktoken's `encode_ordinary`), never as EOS. seqio's `pad_id` is 0,
which in GPT-2's vocabulary is also the token "!": GPT-2 has no padding token, so batches must mark padding with
their loss weights and masks, never by the id, and sequences to decode should end in EOS (decoding stops there).
"""
import base64
import functools
import importlib.util
import os
from typing import Optional, Sequence

import tokenizers

from plmjax.data.vocabularies import TokenizersVocabulary

ENDOFTEXT = "<|endoftext|>"
GPT2_RANKS = os.path.join("whisper", "assets", "gpt2.tiktoken")


def gpt2_rank_file() -> str:
    """The path of `whisper/assets/gpt2.tiktoken` in the installed openai-whisper package (never imported)."""
    spec = importlib.util.find_spec("whisper")
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            path = os.path.join(location, "assets", "gpt2.tiktoken")
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(f"GPT-2's rank file {GPT2_RANKS} was not found: `pip install --no-deps openai-whisper` "
                            "installs it (or pass rank_file=).")


def read_ranks(rank_file: str) -> dict[bytes, int]:
    """A tiktoken rank file ("<base64 token> <rank>" per line) -> {token bytes: rank}."""
    ranks = {}
    with open(rank_file, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters (spaces and controls are shifted)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + shift)
            shift += 1
    return chars


def _bpe(token: bytes, ranks: dict[bytes, int], max_rank: int) -> list[bytes]:
    """Byte pair encoding of `token` with the merges of rank < max_rank (the lowest rank merges first)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best, best_rank = None, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def gpt2_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The ordered merge list that produces every multi-byte token at its rank."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _bpe(token, ranks, rank)
        if len(parts) != 2:
            raise ValueError(f"Token {token!r} (rank {rank}) is not one merge of lower-ranked tokens: not a BPE rank "
                             "file.")
        merges.append((parts[0], parts[1]))
    return merges


@functools.lru_cache(maxsize=None)
def _load_tokenizer(rank_file: str, unused_mtime: int) -> tokenizers.Tokenizer:
    ranks = read_ranks(rank_file)
    chars = bytes_to_unicode()
    text = lambda token: "".join(chars[b] for b in token)  # noqa: E731
    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in gpt2_merges(ranks)]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    return tokenizer


class ByteLevelBpeVocabulary(TokenizersVocabulary):
    """GPT-2's byte-level BPE from a tiktoken rank file (default: openai-whisper's `gpt2.tiktoken`)."""

    def __init__(self, rank_file: Optional[str] = None):
        super().__init__(extra_ids=0)
        self._rank_file = os.fspath(rank_file) if rank_file else gpt2_rank_file()
        if not os.path.isfile(self._rank_file):
            raise FileNotFoundError(f"BPE rank file not found: {self._rank_file!r}.")

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        return _load_tokenizer(self._rank_file, os.stat(self._rank_file).st_mtime_ns)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.get_vocab_size()  # <|endoftext|> follows the BPE tokens: 50256 for GPT-2

    @property
    def unk_id(self) -> Optional[int]:
        return None  # byte-level: every text has an encoding

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size() + 1  # + <|endoftext|>

    def _decode(self, ids: Sequence[int]) -> str:
        """Up to the first EOS (seqio's decode_tf fills what follows it with pad_id 0, which is "!" here)."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return super()._decode([i for i in ids if 0 <= i < self.eos_id])

    def __eq__(self, other):
        return isinstance(other, ByteLevelBpeVocabulary) and self._rank_file == other._rank_file

    def __hash__(self):
        return hash(self._rank_file)

    def __str__(self) -> str:
        return f"ByteLevelBpeVocabulary(rank_file={self._rank_file})"
