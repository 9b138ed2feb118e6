"""``python manage.py demo_accounts``: load the demo accounts and print them."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from accounts.demo import DEMO_ACCOUNTS, DEMO_FIXTURE
from accounts.roles import role_of


class Command(BaseCommand):
    help = "Load one submitter, one moderator and one admin from fixtures/ and print them."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            # The passwords are public (README, this command's output): an admin
            # with a known password must never reach a real install.
            raise CommandError(
                "demo accounts are for local runs only (DEBUG is off in these settings); "
                "create real accounts with `manage.py createsuperuser`."
            )
        call_command("loaddata", str(DEMO_FIXTURE), verbosity=0)
        self.stdout.write("Demo accounts (local use only):")
        for username, password, role in DEMO_ACCOUNTS:
            user = authenticate(username=username, password=password)
            if user is None or role_of(user) != role:
                raise CommandError(f"demo account {username} does not match the fixture")
            self.stdout.write(f"  {role:<10} user {username:<10} password {password}")
