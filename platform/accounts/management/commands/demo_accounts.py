"""``python manage.py demo_accounts``: make the demo accounts and print them."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.demo import DEMO_ACCOUNTS, DEMO_FIXTURE
from accounts.roles import role_of


class Command(BaseCommand):
    help = (
        "Make one submitter, one moderator and one admin (fixtures/demo_accounts.json) "
        "and print them; an existing account of the same name that is not the demo one "
        "is left as it is."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            # The passwords are public (README, this command's output): an admin
            # with a known password must never reach a real install.
            raise CommandError(
                "demo accounts are for local runs only (DEBUG is off in these settings); "
                "create real accounts with `manage.py createsuperuser`."
            )
        left_alone = load_demo_accounts()
        self.stdout.write("Demo accounts (local use only):")
        for username, password, role in DEMO_ACCOUNTS:
            if username in left_alone:
                self.stdout.write(
                    f"  {role:<10} user {username:<10} not made: an account of that name "
                    "already exists (not the demo one); it is left as it is"
                )
                continue
            user = authenticate(username=username, password=password)
            if user is None or role_of(user) != role:
                raise CommandError(f"demo account {username} does not match the fixture")
            self.stdout.write(f"  {role:<10} user {username:<10} password {password}")


def load_demo_accounts() -> set[str]:
    """Create the fixture's accounts by user name, or bring existing demo
    accounts (those that still take the demo password) back to the fixture;
    the names whose accounts belong to someone else. Not ``loaddata``: its
    fixed ids would overwrite whichever users hold them, and it fails on a
    name an operator already took (``createsuperuser admin``)."""
    entries = json.loads(DEMO_FIXTURE.read_text(encoding="utf-8"))
    groups = {e["pk"]: e["fields"]["name"] for e in entries if e["model"] == "auth.group"}
    passwords = {username: password for username, password, _ in DEMO_ACCOUNTS}
    left_alone: set[str] = set()
    with transaction.atomic():
        for entry in (e for e in entries if e["model"] == "auth.user"):
            fields = entry["fields"]
            username = fields["username"]
            user = User.objects.filter(username=username).first()
            if user is not None and not user.check_password(passwords[username]):
                left_alone.add(username)
                continue
            user = user or User(username=username)
            user.password = fields["password"]
            user.email = fields["email"]
            user.is_superuser = fields["is_superuser"]
            user.is_staff = fields["is_staff"]
            user.is_active = fields["is_active"]
            user.save()
            user.groups.set(
                [Group.objects.get_or_create(name=groups[pk])[0] for pk in fields["groups"]]
            )
    return left_alone
