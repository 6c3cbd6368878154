"""Encrypted Temporal payloads (docs/encryption.md): AES-256-GCM, keys from PLAYBOOK_PAYLOAD_KEYS.

Every payload the engine hands to Temporal (workflow and activity inputs and results, signals, queries,
heartbeat details, schedule actions, and with `data_converter` failure messages) is serialised, then
encrypted here, so Temporal's history holds ciphertext and the id of the key that made it. Workers, the API
and the CLI decrypt with the same keys; the Web UI and the `temporal` CLI through the API's /codec endpoint.

Rotation: the setting holds several keys; the first encrypts, every one decrypts. Put a new key first and keep
the old ones as long as histories encrypted with them are kept (retention) or read. A payload that was never
encrypted (written before the setting was on) is passed through as it is, so turning encryption on does not
make older runs unreadable.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

ENCODING = b"binary/encrypted"  # metadata "encoding" of an encrypted payload (the samples' and other SDKs' name)
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce; random per payload (2^32 payloads per key keep the collision risk negligible)
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SETTING = "PLAYBOOK_PAYLOAD_KEYS"


class PayloadDecryptError(ValueError):
    """A payload that cannot be decrypted: its key is not among the configured ones, or it was altered.
    The message names the key id, never a key."""


@dataclass(frozen=True)
class PayloadKeys:
    """The keys of PLAYBOOK_PAYLOAD_KEYS in their order: the first encrypts, all decrypt."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError(f"{SETTING} holds no key")

    @property
    def current(self) -> str:
        """The id of the key that encrypts."""
        return self.keys[0][0]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(key_id for key_id, _ in self.keys)

    def __repr__(self) -> str:  # never the keys themselves
        return f"PayloadKeys(ids={self.ids!r})"


def parse_payload_keys(text: str) -> PayloadKeys:
    """PLAYBOOK_PAYLOAD_KEYS ("KEY_ID:BASE64_32_BYTES[,KEY_ID:BASE64...]") as keys; ValueError with a one-line
    message (naming the key id or the entry's position, never a key) when it cannot be used."""
    keys: list[tuple[str, bytes]] = []
    entries = [entry.strip() for entry in text.split(",")]
    if not any(entries):
        raise ValueError(f"{SETTING} is empty: give KEY_ID:BASE64 (make one with `playbook keys new`)")
    for position, entry in enumerate(entries, start=1):
        if not entry:
            raise ValueError(f"{SETTING}: entry {position} is empty (a stray comma?)")
        key_id, colon, encoded = entry.partition(":")
        key_id, encoded = key_id.strip(), encoded.strip()
        if not colon or not key_id:
            raise ValueError(f"{SETTING}: entry {position} is not KEY_ID:BASE64 (make one with `playbook keys new`)")
        if not KEY_ID.fullmatch(key_id):
            raise ValueError(
                f"{SETTING}: key id {key_id[:64]!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)"
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{SETTING}: the key of id {key_id!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ValueError(
                f"{SETTING}: the key of id {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES} "
                "(make one with `playbook keys new`)"
            )
        if any(key_id == known for known, _ in keys):
            raise ValueError(f"{SETTING}: key id {key_id!r} appears twice")
        keys.append((key_id, key))
    return PayloadKeys(tuple(keys))


def new_key(key_id: str | None = None) -> str:
    """A fresh "KEY_ID:BASE64" entry for PLAYBOOK_PAYLOAD_KEYS (the id defaults to a random short one)."""
    key_id = key_id or f"k{secrets.token_hex(4)}"
    if not KEY_ID.fullmatch(key_id):
        raise ValueError(
            f"key id {key_id[:64]!r} must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=KEY_BYTES * 8)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole serialised payload (its metadata included, so the encoding and type of the value
    are hidden too). Data: 12-byte random nonce + ciphertext + 16-byte tag; the key id is authenticated as
    associated data, so a payload relabelled with another key id fails like a tampered one."""

    def __init__(self, keys: PayloadKeys) -> None:
        super().__init__()
        self._current = keys.current
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys}

    @property
    def key_id(self) -> str:
        return self._current

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._current.encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._current].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # never encrypted (written before encryption was on): as it is
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            known = ", ".join(self._ciphers)
            raise PayloadDecryptError(
                f"payload encrypted with key id {key_id!r}, which is not in {SETTING} (it has {known}): "
                "add that key back to decrypt it"
            )
        data = payload.data
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise PayloadDecryptError(
                f"payload encrypted with key id {key_id!r} does not authenticate: it was altered, or the key of "
                "that id is not the one that encrypted it"
            ) from None
        return Payload.FromString(plain)


def codec(keys_text: str) -> EncryptionCodec | None:
    """The codec of a PLAYBOOK_PAYLOAD_KEYS value; None when it is empty (payloads in clear)."""
    return EncryptionCodec(parse_payload_keys(keys_text)) if keys_text.strip() else None


def with_codec(converter: DataConverter, payload_codec: PayloadCodec | None) -> DataConverter:
    """The converter with the codec; failures' messages and stack traces then go into their encoded attributes,
    encrypted too (an error text can quote an address). Without a codec, the converter as it is."""
    if payload_codec is None:
        return converter
    return dataclasses.replace(
        converter, payload_codec=payload_codec, failure_converter_class=DefaultFailureConverterWithEncodedAttributes
    )
