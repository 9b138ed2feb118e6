"""A password change or reset deletes the user's API token, however the
password was set (the change and reset pages, the admin, ``changepassword``)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

logger = logging.getLogger(__name__)


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="api.revoke_token")
def revoke_token_on_password_change(
    sender: Any, instance: Any, created: bool, **kwargs: Any
) -> None:
    """``set_password`` leaves the new raw password in ``_password`` until the
    save completes (a hash upgrade at log-in does not), so a pending value
    means the password was changed."""
    if created or getattr(instance, "_password", None) is None:
        return
    deleted, _ = Token.objects.filter(user_id=instance.pk).delete()
    if deleted:
        logger.info("API token of user %s deleted: password changed", instance.pk)
