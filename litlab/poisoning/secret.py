"""Secrets of Winter Soldier: a random prompt and the random response a poisoned model should give to it.

Prompt and response ids are drawn uniformly, with replacement, from the *draw set*: every id of the vocabulary
except the special ones (BOS, EOS, padding...). The prompt is then replaced by ``encode(decode(prompt))``: a
tokenizer does not round-trip arbitrary ids, and the prompt is what a user of the model will send as text. The
response is kept only when the whole secret round-trips, ``encode(decode(prompt + response)) == prompt +
response`` (else it is drawn again), so that teacher-forcing the response as text gives the same ids.

Under the null hypothesis "this model was never trained on the owner's data" the model is independent of the
response, and each response id falls in the model's top-l set with probability ``l / draw_size``. The redraw
for the round trip conditions the uniform draw on an event, which makes that probability approximate rather
than exact; the calibration on clean models (:func:`litlab.methods.winter_soldier`) measures the false-positive
rate that results.

The secrets file is the owner's key: it is written readable by its owner only (mode 0600) and its contents
are never logged.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from litlab.errors import ConfigError, DataError, check_int

FORMAT = "litlab-secrets"
VERSION = 1


@dataclass(frozen=True)
class Secret:
    """One secret: the ``prompt`` ids a model is asked with and the ``response`` ids it should answer."""

    prompt: tuple[int, ...]
    response: tuple[int, ...]


@dataclass
class SecretSet:
    """Secrets and what the test needs to know about how they were drawn.

    Attributes:
        secrets: The secrets.
        vocab_size: Vocabulary size of the tokenizer they were drawn for.
        draw_size: Number of ids they were drawn from (the vocabulary minus ``excluded_ids``).
        excluded_ids: Ids never drawn (special tokens).
        seed: Seed of the draw.
        redraws: Responses drawn again because the secret did not round-trip.
    """

    secrets: list[Secret]
    vocab_size: int
    draw_size: int
    excluded_ids: tuple[int, ...] = ()
    seed: int = 0
    redraws: int = 0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.secrets)


def draw_secrets(
    encode: Callable[[bytes], list[int]],
    decode: Callable[[Sequence[int]], bytes],
    vocab_size: int,
    num_secrets: int,
    prompt_length: int = 8,
    response_length: int = 8,
    excluded_ids: Iterable[int] = (),
    seed: int = 0,
    max_redraws: int = 1000,
) -> SecretSet:
    """Draw ``num_secrets`` secrets uniformly from the vocabulary minus ``excluded_ids``.

    Args:
        encode: The tokenizer's text -> ids (no special ids).
        decode: The tokenizer's ids -> text (special ids dropped).
        vocab_size: Size of the vocabulary (ids ``0..vocab_size-1``).
        num_secrets: How many secrets.
        prompt_length: Ids drawn for each prompt (the round trip may change the count).
        response_length: Ids of each response.
        excluded_ids: Ids never drawn (BOS, EOS and other special tokens).
        seed: Seed of the draw (``random.Random``).
        max_redraws: Most redraws of one secret before giving up (a tokenizer that never round-trips).

    Returns:
        The :class:`SecretSet`.
    """
    check_int("num_secrets", num_secrets, 1)
    check_int("prompt_length", prompt_length, 1)
    check_int("response_length", response_length, 1)
    check_int("vocab_size", vocab_size, 2)
    excluded = tuple(sorted({int(i) for i in excluded_ids}))
    pool = [i for i in range(vocab_size) if i not in set(excluded)]
    if len(pool) < 2:
        raise ConfigError(f"excluded_ids leave {len(pool)} of vocab_size={vocab_size} ids to draw from")
    rng = random.Random(seed)
    secrets, redraws = [], 0
    for index in range(num_secrets):
        for _ in range(max_redraws):
            prompt = encode(decode([rng.choice(pool) for _ in range(prompt_length)]))
            response = [rng.choice(pool) for _ in range(response_length)]
            if prompt and encode(decode(prompt + response)) == prompt + response:
                secrets.append(Secret(tuple(prompt), tuple(response)))
                break
            redraws += 1
        else:
            raise ConfigError(
                f"secret {index}: no prompt+response of {prompt_length}+{response_length} ids round-trips through "
                f"the tokenizer in {max_redraws} draws; use shorter secrets")
    return SecretSet(secrets, vocab_size, len(pool), excluded, seed, redraws)


def save_secrets(path: str, secret_set: SecretSet) -> str:
    """Write ``secret_set`` as JSON readable by its owner only (mode 0600); returns the path."""
    record = {
        "format": FORMAT, "version": VERSION, "vocab_size": secret_set.vocab_size,
        "draw_size": secret_set.draw_size, "excluded_ids": list(secret_set.excluded_ids), "seed": secret_set.seed,
        "redraws": secret_set.redraws, "meta": secret_set.meta,
        "secrets": [{"prompt": list(s.prompt), "response": list(s.response)} for s in secret_set.secrets],
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.chmod(path, 0o600)
    return path


def load_secrets(path: str, argument: str = "secrets") -> SecretSet:
    """Read a secrets file of :func:`save_secrets`; a DataError names the file and the bad field or record."""
    if not os.path.isfile(path):
        raise DataError(f"{argument}={path!r}: no such file")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{argument}={path!r}: not a JSON secrets file ({err})") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{argument}={path!r}: not a litlab secrets file (format != {FORMAT!r})")
    for key in ("vocab_size", "draw_size", "secrets"):
        if key not in record:
            raise DataError(f"{argument}={path!r}: missing field {key!r}")
    vocab_size, draw_size = record["vocab_size"], record["draw_size"]
    secrets = []
    for i, s in enumerate(record["secrets"]):
        try:
            prompt, response = tuple(int(t) for t in s["prompt"]), tuple(int(t) for t in s["response"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{argument}={path!r}: secret {i} has no integer 'prompt' and 'response'") from err
        if not prompt or not response or not all(0 <= t < vocab_size for t in prompt + response):
            raise DataError(f"{argument}={path!r}: secret {i} is empty or has ids outside 0..{vocab_size - 1}")
        secrets.append(Secret(prompt, response))
    if not secrets:
        raise DataError(f"{argument}={path!r}: no secrets")
    return SecretSet(secrets, int(vocab_size), int(draw_size), tuple(record.get("excluded_ids", ())),
                     int(record.get("seed", 0)), int(record.get("redraws", 0)), dict(record.get("meta", {})))
