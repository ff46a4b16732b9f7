"""A new key pair for every certificate: a public key is certified once, ever.

Each application makes its own key pair: the municipality for a card certificate
(第3条第4項, 第22条第4項: 署名利用者符号及びこれと対応する署名利用者検証符号を作成し),
the applicant for a mobile one (第16条の2第4項, 第35条の2第4項), and the 機構 certifies
the 検証符号 it is told of. So a key already certified is refused whoever asks:

* for another resident, it would bind one key to two people;
* for the same resident in another kind, a signing key would also authenticate,
  which the law keeps apart;
* for the same resident and kind (a renewal with the old key), it would bring back
  a key whose certificate may have ended for its loss or compromise (第11条), and
  the law's renewal is a new application with a new key pair.

Runs inside the write transaction that adds the new record.
"""

from __future__ import annotations

from jpki_va.server.law.errors import Refused
from jpki_va.server.law.registry_port import RegistryPort

ARTICLES = "第3条第4項, 第16条の2第4項, 第22条第4項, 第35条の2第4項"


class KeyAlreadyCertified(Refused):
    """The public key is already in a certificate; the applicant needs a new key pair."""


def check_new_key(tx: RegistryPort, key_hash: bytes, resident_code: str) -> None:
    """Return when no certificate was ever issued for this key; refuse otherwise."""
    certified = tx.key_certificates(key_hash)
    if not certified:
        return
    first = certified[0]
    whose = "this holder's" if first.resident_code == resident_code else "another holder's"
    raise KeyAlreadyCertified(
        f"the public key is already certified in {whose} {first.kind.name} "
        f"serial {first.serial:X}: every certificate needs a new key pair ({ARTICLES})"
    )
