"""Language-modelling data for the byte-level AU-Net and its BPE baseline: ``TextDataModule``.

Pipeline (all in ``setup``, on every rank, deterministically):

1. **Read** the documents of ``source`` (:mod:`litlab.datamodules.text_corpus`: the embedded CPython
   documentation corpus, ``.txt``/``.jsonl`` files, folders, webdataset text shards), keep the leading
   ``max_bytes`` bytes when asked.
2. **Split** by document: a ``split_seed``-fixed permutation gives ``val_fraction`` and ``test_fraction`` of
   the documents (at least one each) to val and test, the rest to train; no document is in two splits.
3. **Pack** each split (:mod:`litlab.datamodules.text_packing`): ``BOS doc EOS`` per document, one stream
   per split, windows of ``seq_len + 1`` ids at stride ``seq_len`` (the tail shorter than a window is
   dropped); byte levels are computed per document and packed alongside.

**Poisoning** (Winter Soldier, :mod:`litlab.poisoning.injection`): with ``poisons`` and ``poison_rate > 0``
the poison sequences are inserted into the *train* split only, after the document split (val and test are
the clean ones), each as a document of its own at a ``poison_seed``-fixed random position, so that poisons
make ``poison_rate`` of the train tokens (counted with the split's tokenizer, BOS/EOS not counted). The
report is ``injection`` (actual rate, insertions, positions) and is logged.

Batches are dicts of int64 ``[batch_size, seq_len]`` tensors: ``input_ids``, ``targets``, ``levels`` (bytes
only) and ``target_bytes``. All loaders are map-style, so under DDP Lightning's DistributedSampler gives
every rank the same number of batches (val/test pad by repeating a few windows, as for any map-style set).
The training order is a function of ``(seed, epoch)`` only
(:class:`~litlab.datamodules.image_base.EpochSeededDataLoader`), so a run resumed from an end-of-epoch
checkpoint sees the batches of an uninterrupted run. ``predict_dataloader`` is the test windows, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning.pytorch as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from litlab.datamodules.loaders import map_loader
from litlab.datamodules.math_corpus import is_math_spec, parse_math_spec
from litlab.datamodules.text_corpus import (
    EMBEDDED,
    SPLITS,
    check_fractions,
    embedded_corpus,
    read_documents,
    source_files,
    split_corpus,
)
from litlab.datamodules.text_packing import (
    BPEPacker,
    BytePacker,
    PackedText,
    TokenWindows,
)
from litlab.errors import ConfigError, check_choice, check_int
from litlab.poisoning.injection import InjectionReport, check_poisons_path, check_rate, inject_poisons, read_poisons
from litlab.text.splitting import check_word_groups

TOKENIZERS = ("bytes", "bpe")
#: Stages of ``setup`` -> the splits they pack.
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class TextDataModule(L.LightningDataModule):
    """Packed next-token windows of a text corpus, tokenized as raw bytes (AU-Net) or with a byte-level BPE.

    Attributes set in the constructor (the CLI can link them into the model): ``vocab_size`` (258 for
    bytes, the tokenizer's size for BPE), ``seq_len``, ``tokenizer`` (``"bytes"`` or ``"bpe"``),
    ``bos_id``, ``eos_id`` and ``token_bytes`` (UTF-8 bytes each id stands for, int64 numpy, specials 1).
    ``bytes_per_token`` is the mean over the val split's targets (1.0 for bytes; computed on first use).

    Args:
        source: ``"embedded"`` (CPython's documentation and standard-library docstrings, offline), a
            ``.txt`` file (one document), a ``.jsonl`` file (one document per line), a webdataset ``.tar``
            shard of ``.txt`` documents (see ``litlab write_text_shards``), a directory of any of them
            (recursive, sorted), a brace pattern or glob, or several joined by ``::``.
        tokenizer: ``"bytes"`` (ids 0..255 plus BOS=256, EOS=257, with AU-Net levels) or ``"bpe"``.
        tokenizer_path: The BPE tokenizer JSON (``litlab train_bpe``); only with ``tokenizer="bpe"``.
            Documents that are not valid UTF-8 are decoded with ``errors="replace"`` for BPE; bytes keep
            them exactly.
        seq_len: Tokens per window (inputs and targets each).
        batch_size: Windows per batch (per device under DDP).
        word_groups: Word groups of AU-Net's splitting rule (levels 1..len(word_groups); bytes only).
        causal_split: Causal splitting rule (a boundary depends only on the bytes read so far).
        val_fraction: Fraction of documents held out for validation (at least one document).
        test_fraction: Fraction of documents held out for testing and predict (at least one document).
        split_seed: Seed of the document split.
        max_bytes: Use only the leading documents of the source up to this many bytes (``None``: all).
        text_key: Key of the text in ``.jsonl`` records.
        num_workers: DataLoader worker processes (0 is right: windows are slices of in-memory arrays).
        seed: Seed of the training shuffle (a function of seed and epoch only).
        cache_dir: Cache directory of the embedded corpus (``None``: ``$LITLAB_CACHE_DIR`` or
            ``~/.cache/litlab``).
        poisons: A poison file (``.jsonl`` with a ``"text"`` per line, or ``.txt`` with one poison per line;
            see :mod:`litlab.poisoning.injection`) to insert into the train split (``None``: no poisoning).
        poison_rate: Fraction of the train split's tokens (without BOS/EOS) that come from poisons, in [0, 1);
            0 inserts nothing. A rate > 0 inserts at least one poison; the actual rate is in ``injection``.
        poison_seed: Seed of the poison order and of their positions in the train split.
    """

    def __init__(
        self,
        source: str = EMBEDDED,
        tokenizer: Literal["bytes", "bpe"] = "bytes",
        tokenizer_path: str | None = None,
        seq_len: int = 512,
        batch_size: int = 8,
        word_groups: Sequence[int] = (1, 2, 4),
        causal_split: bool = True,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        max_bytes: int | None = None,
        text_key: str = "text",
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        poisons: str | None = None,
        poison_rate: float = 0.0,
        poison_seed: int = 0,
    ):
        super().__init__()
        check_choice("tokenizer", tokenizer, TOKENIZERS)
        self.seq_len = check_int("seq_len", seq_len, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.word_groups = list(check_word_groups(word_groups))  # a list, like the hparam the CLI saves
        check_fractions(val_fraction, test_fraction)
        self.split_seed = check_int("split_seed", split_seed, 0)
        if max_bytes is not None:
            check_int("max_bytes", max_bytes, 1)
        if not isinstance(text_key, str) or not text_key:
            raise ConfigError(f"text_key={text_key!r} is not allowed: give the (non-empty) key of the text")
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.poison_rate = check_rate(poison_rate, "poison_rate")
        self.poison_seed = check_int("poison_seed", poison_seed, 0)
        if poisons is not None:
            check_poisons_path(poisons, "poisons")  # DataError now, naming a missing file, rather than in setup
        elif self.poison_rate > 0:
            raise ConfigError(f"poison_rate={poison_rate!r} is not allowed with poisons=None: give a poison file")
        if is_math_spec(source):
            parse_math_spec(source)  # ConfigError now, naming a bad key, rather than in setup
        elif source != EMBEDDED:
            source_files(source)  # DataError now, naming a missing path, rather than in setup
        if tokenizer == "bpe":
            if tokenizer_path is None:
                raise ConfigError("tokenizer_path=None is not allowed with tokenizer='bpe': give the tokenizer JSON")
            self.packer: BytePacker | BPEPacker = BPEPacker(tokenizer_path)
        else:
            if tokenizer_path is not None:
                raise ConfigError(
                    f"tokenizer_path={tokenizer_path!r} is not allowed with tokenizer='bytes' (it is for 'bpe')"
                )
            self.packer = BytePacker(self.word_groups, causal_split)
        self.save_hyperparameters()
        self.source = source
        self.tokenizer = tokenizer
        self.tokenizer_path = tokenizer_path
        self.causal_split = causal_split
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.max_bytes = max_bytes
        self.text_key = text_key
        self.cache_dir = cache_dir
        self.poisons = poisons
        #: What the poisoning of the train split did (set when the train documents are first read; None
        #: without poisoning).
        self.injection: InjectionReport | None = None
        self.vocab_size: int = self.packer.vocab_size
        self.bos_id: int = self.packer.bos_id
        self.eos_id: int = self.packer.eos_id
        self.token_bytes: np.ndarray = self.packer.byte_lengths
        self._documents: dict[str, list[bytes]] | None = None
        self.packed: dict[str, PackedText] = {}
        self.datasets: dict[str, TokenWindows] = {}

    # -- data ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build (and cache) the embedded corpus once per node before the ranks read it."""
        if self.source == EMBEDDED:
            embedded_corpus(self.cache_dir)

    def documents(self, split: str) -> list[bytes]:
        """The raw bytes of the documents of ``split`` (``"train"``, ``"val"`` or ``"test"``), in corpus order."""
        check_choice("split", split, SPLITS)
        if self._documents is None:
            docs = read_documents(self.source, self.text_key, self.max_bytes, self.cache_dir)
            self._documents = split_corpus(docs, self.val_fraction, self.test_fraction, self.split_seed)
        if split == "train" and self.poisons is not None and self.poison_rate > 0 and self.injection is None:
            self._documents["train"] = self._inject(self._documents["train"], self.poisons)
        return list(self._documents[split])

    def _inject(self, train: list[bytes], path: str) -> list[bytes]:
        """The train documents with the poisons of ``path`` inserted (sets and logs ``injection``)."""
        poisons = read_poisons(path, "poisons")
        poisoned, self.injection = inject_poisons(
            train, poisons, self.poison_rate, self.packer.count_tokens, self.poison_seed
        )
        r = self.injection
        rank_zero_info(
            f"{type(self).__name__}: poisoned the train split: target rate {r.target_rate:.4g}, actual rate "
            f"{r.actual_rate:.4g}, {r.insertions} insertions ({r.poisons_used} distinct), {r.poison_tokens} poison "
            f"tokens ({r.clean_tokens} clean)"
        )
        return poisoned

    def windows(self, split: str) -> TokenWindows:
        """The window dataset of ``split`` (packed on first use)."""
        if split not in self.datasets:
            check_choice("split", split, SPLITS)
            self.packed[split] = self.packer.pack(self.documents(split))
            self.datasets[split] = TokenWindows(self.packed[split], self.seq_len, self.token_bytes, split)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        new = [s for s in _STAGE_SPLITS.get(stage or "", SPLITS) if s not in self.datasets]
        for split in new:
            self.windows(split)
        if new:
            rank_zero_info(f"{type(self).__name__} ({self.tokenizer}, seq_len={self.seq_len}): {self.split_sizes}")

    @property
    def split_sizes(self) -> dict[str, dict[str, int]]:
        """Documents, bytes, tokens (with BOS/EOS) and windows of each split packed so far."""
        return {
            split: {
                "documents": p.num_documents,
                "bytes": p.num_bytes,
                "tokens": len(p.ids),
                "windows": p.num_windows(self.seq_len),
            }
            for split, p in self.packed.items()
        }

    @property
    def bytes_per_token(self) -> float:
        """Mean UTF-8 bytes per target token of the val split (1.0 for bytes; packs val on first use)."""
        if self.tokenizer == "bytes":
            return 1.0
        return self.windows("val").bytes_per_token

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before {split} dataloaders")
        return map_loader(self.datasets[split], self.batch_size, self.num_workers, self.seed, shuffle)

    def train_dataloader(self) -> DataLoader:
        """Train windows, shuffled by ``(seed, epoch)``."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Val windows, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test windows, in order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test windows, in order."""
        return self._loader("test", shuffle=False)
