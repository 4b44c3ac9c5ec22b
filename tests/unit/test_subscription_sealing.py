"""Signing secrets sealed on the subscriptions topic, and the key rotated."""

from __future__ import annotations

import pytest

from services.delivery.adapters import (
    SealedSecretError,
    SecretSealer,
    needs_resealing,
    subscription_from_record,
    subscription_record,
)
from services.delivery.domain import Subscription, SubscriptionRequest

pytestmark = pytest.mark.unit


def test_a_rotated_key_opens_what_the_old_one_sealed_and_seals_with_the_new_one() -> None:
    old, new = SecretSealer.new_key(), SecretSealer.new_key()
    subscription = Subscription.create(SubscriptionRequest(url="https://p.example/a"))
    sealed_before = subscription_record(subscription, SecretSealer(old))

    rotating = SecretSealer(f"{new}, {old}")  # the first seals, any opens
    assert subscription_from_record(sealed_before, rotating) == subscription
    sealed_after = subscription_record(subscription, rotating)
    assert subscription.secret.encode() not in sealed_after

    # Once every subscription was written again, the old key can go.
    assert subscription_from_record(sealed_after, SecretSealer(new)) == subscription
    with pytest.raises(SealedSecretError):
        subscription_from_record(sealed_before, SecretSealer(new))


@pytest.mark.parametrize("keys", ["", " , ", "not-a-key", f"{SecretSealer.new_key()},nope"])
def test_keys_that_are_not_fernet_keys_are_refused_with_the_setting_named(keys: str) -> None:
    with pytest.raises(ValueError, match="NEWSFLOW_DELIVERY_SECRETS_KEY"):
        SecretSealer(keys)


def test_records_in_plain_text_or_sealed_with_an_older_key_need_resealing() -> None:
    old, new = SecretSealer.new_key(), SecretSealer.new_key()
    rotating = SecretSealer(f"{new},{old}")
    subscription = Subscription.create(SubscriptionRequest(url="https://p.example/a"))

    assert needs_resealing(subscription_record(subscription, None), rotating)
    assert needs_resealing(subscription_record(subscription, SecretSealer(old)), rotating)
    assert not needs_resealing(subscription_record(subscription, rotating), rotating)
    # Without a key nothing can be sealed: nothing to do.
    assert not needs_resealing(subscription_record(subscription, None), None)
