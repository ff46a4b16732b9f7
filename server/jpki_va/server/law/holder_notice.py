"""通知 to a holder whose certificate lost effect by a record error.

第15条第2項 (CARD_SIGN), 第16条の14第2項 (MOBILE_SIGN), 第34条第2項 (CARD_AUTH) and
第35条の14第2項 (MOBILE_AUTH); 業務方法書第5条(6)(14): when a certificate loses effect
because J-LIS recorded a record error (記録誤り等, cause 3 of 第15条第1項 and its
twins), J-LIS must promptly (速やかに) tell the holder two things: that the
certificate had a record error, and that it lost effect. No other cause needs a
notice: a mobile certificate that follows its card certificate (第16条の13) lost
effect by its own cause 4, not by a record error of its own.

The notice is written to the registry's outbox in the transaction that records the
loss, so there is no loss without its notice and no notice without its loss.
"""

from __future__ import annotations

from jpki_va.core.domain import CertKind, Loss, LossCause
from jpki_va.server.law.registry_port import RegistryPort
from jpki_va.server.model.registry_values import CertificateRecord, HolderNotice

NOTICE_ARTICLES = {
    CertKind.CARD_SIGN: ("第15条第2項", "個人番号カード用署名用電子証明書"),
    CertKind.MOBILE_SIGN: ("第16条の14第2項", "移動端末設備用署名用電子証明書"),
    CertKind.CARD_AUTH: ("第34条第2項", "個人番号カード用利用者証明用電子証明書"),
    CertKind.MOBILE_AUTH: ("第35条の14第2項", "移動端末設備用利用者証明用電子証明書"),
}


def notice_for(record: CertificateRecord, loss: Loss) -> HolderNotice | None:
    """The notice a loss requires, or None when the law asks for none."""
    if loss.cause is not LossCause.RECORD_ERROR:
        return None
    article, law_name = NOTICE_ARTICLES[record.kind]
    holder = record.holder
    lost = loss.time.isoformat(timespec="seconds")
    text = (
        f"{holder.name} 様\n\n"
        f"あなたの{law_name}(発行の番号 {record.serial:X})に記録誤り等があったため、"
        f"当該電子証明書は {lost} に効力を失いました。\n"
        f"(電子署名等に係る地方公共団体情報システム機構の認証業務に関する法律 {article})\n"
    )
    return HolderNotice(
        id=0,
        kind=record.kind,
        serial=record.serial,
        resident_code=record.resident_code,
        municipality_code=record.partition,
        name=holder.name,
        address=holder.address,
        article=article,
        lost_at=loss.time,
        text=text,
    )


def record_notice(tx: RegistryPort, record: CertificateRecord, loss: Loss) -> HolderNotice | None:
    """In the loss's own transaction: the notice it requires, put in the outbox."""
    notice = notice_for(record, loss)
    return None if notice is None else tx.add_notice(notice)
