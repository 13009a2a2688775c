"""``litlab train_bpe``: learn a byte-level BPE (:mod:`litlab.text.bpe`) on the train split of a text source.

The merges are learned on the *train split* documents (the same document split as
:class:`~litlab.datamodules.text.TextDataModule` with the same ``val_fraction``, ``test_fraction``,
``split_seed`` and ``max_bytes``), so validation and test text is never seen by the tokenizer.
"""

from __future__ import annotations

import logging
import os
import tempfile

from tokenizers import pre_tokenizers, trainers

from litlab.datamodules.text_corpus import EMBEDDED, read_documents, split_corpus
from litlab.errors import ConfigError
from litlab.text.bpe import SPECIAL_TOKENS, decode_document, new_bpe_tokenizer

log = logging.getLogger(__name__)


def train_bpe(
    source: str = EMBEDDED,
    output: str = "bpe-tokenizer.json",
    vocab_size: int = 4096,
    min_frequency: int = 2,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    max_bytes: int | None = None,
    text_key: str = "text",
    cache_dir: str | None = None,
) -> str:
    """Train a byte-level BPE tokenizer on the train split of a text source and save it as JSON.

    Args:
        source: ``"embedded"`` (CPython's documentation), a ``.txt``/``.jsonl``/``.tar`` file, a directory,
            brace pattern or glob; as ``TextDataModule.source``.
        output: Path of the tokenizer JSON to write (directories are created).
        vocab_size: Vocabulary size, including the 256 byte tokens and the specials ``<bos>``, ``<eos>``.
        min_frequency: Minimum count of a pair to be merged.
        val_fraction: Fraction of documents held out for validation (as in the datamodule; not trained on).
        test_fraction: Fraction of documents held out for testing (as in the datamodule; not trained on).
        split_seed: Seed of the document split (as in the datamodule).
        max_bytes: Use only the leading documents up to this many bytes (as in the datamodule).
        text_key: Key of the text in ``.jsonl`` records.
        cache_dir: Cache directory of the embedded corpus.

    Returns:
        The path written.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size={vocab_size!r} is not allowed: it must be an integer >= 258 (256 bytes + 2 specials)")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ConfigError(f"min_frequency={min_frequency!r} is not allowed: it must be an integer >= 1")
    if not isinstance(output, str) or not output or os.path.isdir(output):
        raise ConfigError(f"output={output!r} is not allowed: give the path of a JSON file to write")
    docs = read_documents(source, text_key=text_key, max_bytes=max_bytes, cache_dir=cache_dir)
    train = split_corpus(docs, val_fraction, test_fraction, split_seed)["train"]
    tokenizer = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((decode_document(d) for d in train), trainer=trainer, length=len(train))
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".bpe-", suffix=".json")
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    log.info(
        "trained a %d-token BPE on %d train documents (%d bytes) of %s: %s",
        tokenizer.get_vocab_size(),
        len(train),
        sum(len(d) for d in train),
        source,
        output,
    )
    return output
